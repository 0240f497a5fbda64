//! Operations on the streams: one-time prekeys claimed by deleting their sequence, the
//! mailbox published in order, read by subject and checked against the recipient's
//! blocks and quota, and the metadata a deleted object leaves behind erased.

use super::*;

pub(super) fn header<'a>(m: &'a jetstream::message::StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(async_nats::HeaderValue::as_str)
}

impl NatsStorage {
    /// Drops every one-time prekey of the account (its device is gone).
    pub(super) async fn purge_one_time(&self, user_id: &str) -> Result<(), StorageError> {
        self.inner
            .prekeys
            .purge()
            .filter(prekeys_subject(user_id))
            .await
            .map_err(|e| backend("purging prekeys", e))?;
        Ok(())
    }

    /// Takes the oldest one-time prekey of `device`: reads it, then deletes it by its
    /// sequence. The stream applies deletes in one order on every replica and only the
    /// first delete of a sequence succeeds, so each key goes to one taker however many
    /// nodes race (compare-and-set on a KV revision is not exact under concurrency on
    /// the nats-server 2.9 that Debian ships; this is).
    pub(super) async fn claim_one_time(
        &self,
        user_id: &str,
        device: &str,
    ) -> Result<Option<PreKey>, StorageError> {
        let subject = prekeys_subject(user_id);
        let prekeys = &self.inner.prekeys;
        let mut next = 1u64;
        for _ in 0..CAS_ATTEMPTS {
            let got = prekeys
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(subject.clone())
                .send()
                .await;
            let m = match got {
                Ok(m) => m,
                Err(e) if matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound) => {
                    return Ok(None);
                }
                Err(e) => return Err(backend("reading prekeys", e)),
            };
            next = m.sequence.saturating_add(1);
            let won = match prekeys.delete_message(m.sequence).await {
                Ok(won) => won,
                Err(e) if e.to_string().contains("no message found") => false,
                Err(e) => return Err(backend("taking a prekey", e)),
            };
            if !won {
                continue;
            }
            let id = header(&m, H_KEY_ID).and_then(|v| v.parse().ok());
            match id {
                // A key of a device that is gone (uploaded in a race with a login) is
                // deleted and skipped.
                Some(id) if header(&m, H_DEVICE) == Some(device) => {
                    return Ok(Some(PreKey { id, key: m.payload.to_vec() }));
                }
                _ => {}
            }
        }
        Err(StorageError::Backend("prekeys: too much contention".into()))
    }

    /// Publishes `envelopes` (one recipient, already checked) in order and waits for
    /// every acknowledgement; the first refusal or failure is the answer.
    pub(super) async fn publish_in_order(
        &self,
        envelopes: Vec<Envelope>,
        from_contact: bool,
    ) -> Result<Vec<Enqueued>, StorageError> {
        let mut acks = Vec::with_capacity(envelopes.len());
        for e in &envelopes {
            let publish = jetstream::message::PublishMessage::build()
                .payload(e.body.clone())
                .message_id(dedupe_id(e))
                .header(H_FROM, e.sender.as_str())
                .header(H_MSG_ID, e.msg_id.as_str())
                .header(H_TS, e.now.to_string().as_str());
            let ack = self
                .inner
                .js
                .send_publish(mailbox_subject(&e.recipient, &e.sender, from_contact), publish)
                .await
                .map_err(publish_error)?;
            acks.push((ack, e.now));
        }
        let mut out = Vec::with_capacity(acks.len());
        let mut first_error = None;
        // Every acknowledgement is awaited, so none is left behind; the first error wins.
        for (ack, now) in acks {
            match ack.await {
                Ok(a) => out.push(Enqueued { server_ts: now, duplicate: a.duplicate }),
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some(publish_error(e));
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Erases the metadata message a deleted object leaves behind (it carries the name).
    pub(super) async fn erase_object_meta(
        &self,
        bucket: &str,
        name: &str,
    ) -> Result<(), StorageError> {
        let stream = self
            .inner
            .js
            .get_stream(format!("OBJ_{bucket}"))
            .await
            .map_err(|e| backend("object store", e))?;
        stream
            .purge()
            .filter(format!("$O.{bucket}.M.{}", base64_url(name.as_bytes())))
            .await
            .map_err(|e| backend("erasing an object", e))?;
        Ok(())
    }

    /// Up to `limit` messages on `subject` (a filter) with a sequence above `after`.
    pub(super) async fn pending_on(
        &self,
        subject: String,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Queued>, StorageError> {
        let mut out = Vec::new();
        let mut next = after.saturating_add(1);
        while out.len() < limit as usize {
            let got = self
                .inner
                .mailbox
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(subject.clone())
                .send()
                .await;
            let m = match got {
                Ok(m) => m,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(backend("reading a mailbox", e)),
            };
            next = m.sequence.saturating_add(1);
            let (Some(sender), Some(msg_id)) = (header(&m, H_FROM), header(&m, H_MSG_ID)) else {
                tracing::warn!(seq = m.sequence, "mailbox message without its headers: skipped");
                continue;
            };
            let server_ts = header(&m, H_TS).and_then(|t| t.parse().ok()).unwrap_or(0);
            out.push(Queued {
                delivery_id: m.sequence,
                sender: sender.to_owned(),
                msg_id: msg_id.to_owned(),
                server_ts,
                body: m.payload.to_vec(),
            });
        }
        Ok(out)
    }

    /// Checks that `recipient` exists and accepts `sender`, and that `adding` more
    /// messages fit in the mailbox and in the strangers' share (the per-sender share is
    /// the stream's per-subject cap); returns whether `sender` is a contact. The counts
    /// are read before publishing, so racing senders may overshoot the total and the
    /// strangers' share by the messages in flight; the per-sender cap is exact.
    pub(super) async fn check_recipient(
        &self,
        recipient: &str,
        sender: &str,
        adding: u64,
        quota: Quota,
    ) -> Result<bool, StorageError> {
        let blocks: Option<(BlocksRec, u64)> =
            read(&self.inner.accounts, &blocks_key(recipient)).await?;
        let from_contact = match blocks {
            None => return Err(StorageError::NotFound),
            Some((b, _)) if b.refuses(sender) => return Err(StorageError::Blocked),
            Some((b, _)) => b.contacts.contains(sender),
        };
        let mut subjects = self
            .inner
            .mailbox
            .clone()
            .info_with_subjects(mailbox_filter(recipient))
            .await
            .map_err(|e| backend("counting a mailbox", e))?;
        let strangers_prefix = format!("{MAILBOX_PREFIX}.{}.s.", token(recipient));
        let (mut total, mut strangers) = (0u64, 0u64);
        while let Some(item) = futures::StreamExt::next(&mut subjects).await {
            let (subject, n) = item.map_err(|e| backend("counting a mailbox", e))?;
            total += n as u64;
            if subject.starts_with(&strangers_prefix) {
                strangers += n as u64;
            }
        }
        if total + adding > quota.max_messages
            || (!from_contact && strangers + adding > quota.stranger_share().0)
        {
            return Err(StorageError::QuotaExceeded);
        }
        Ok(from_contact)
    }
}

pub(super) fn publish_error(e: jetstream::context::PublishError) -> StorageError {
    let text = e.to_string();
    if text.contains("maximum messages per subject") {
        StorageError::QuotaExceeded
    } else {
        backend("storing a message", text)
    }
}
