//! Operations on the streams: one-time prekeys claimed by deleting their sequence, the
//! mailbox published in order, read by subject and checked against the recipient's
//! blocks and quota, and the metadata a deleted object leaves behind erased.

use super::*;

pub(super) fn header<'a>(m: &'a jetstream::message::StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(async_nats::HeaderValue::as_str)
}

impl NatsStorage {
    /// Drops every one-time prekey of the device (it is gone).
    pub(super) async fn purge_one_time(
        &self,
        user_id: &str,
        device_id: u32,
    ) -> Result<(), StorageError> {
        for subject in device_prekey_subjects(user_id, device_id) {
            self.inner
                .prekeys
                .purge()
                .filter(subject)
                .await
                .map_err(|e| backend("purging prekeys", e))?;
        }
        Ok(())
    }

    /// How many one-time prekeys the device holds.
    pub(super) async fn count_one_time(
        &self,
        user_id: &str,
        device_id: u32,
    ) -> Result<u32, StorageError> {
        use futures::TryStreamExt;
        let mut n = 0;
        for subject in device_prekey_subjects(user_id, device_id) {
            let mut subjects = self
                .inner
                .prekeys
                .info_with_subjects(&subject)
                .await
                .map_err(|e| backend("counting prekeys", e))?;
            while let Some((s, count)) =
                subjects.try_next().await.map_err(|e| backend("counting prekeys", e))?
            {
                if s == subject {
                    n += count;
                }
            }
        }
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Takes the oldest one-time prekey of `device`: reads it, then deletes it by its
    /// sequence. The stream applies deletes in one order on every replica and only the
    /// first delete of a sequence succeeds, so each key goes to one taker however many
    /// nodes race (compare-and-set on a KV revision is not exact under concurrency on
    /// the nats-server 2.9 that Debian ships; this is).
    pub(super) async fn claim_one_time(
        &self,
        user_id: &str,
        device_id: u32,
        device: &str,
    ) -> Result<Option<PreKey>, StorageError> {
        for subject in device_prekey_subjects(user_id, device_id) {
            if let Some(p) = self.claim_on(subject, device).await? {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    async fn claim_on(
        &self,
        subject: String,
        device: &str,
    ) -> Result<Option<PreKey>, StorageError> {
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

    /// Publishes the copies of `envelopes` (one recipient, already checked and resolved
    /// to its devices) in order and waits for every acknowledgement; the first refusal
    /// or failure is the answer. An envelope is a duplicate when each of its copies is.
    pub(super) async fn publish_in_order(
        &self,
        envelopes: Vec<(Envelope, Vec<(u32, Bytes)>)>,
        from_contact: bool,
    ) -> Result<Vec<Enqueued>, StorageError> {
        let mut acks = Vec::with_capacity(envelopes.len());
        for (e, copies) in &envelopes {
            let mut mine = Vec::with_capacity(copies.len());
            for (device, body) in copies {
                let publish = jetstream::message::PublishMessage::build()
                    .payload(body.clone())
                    .message_id(dedupe_id(e, *device))
                    .header(H_FROM, e.sender.as_str())
                    .header(H_FROM_DEVICE, e.sender_device.to_string().as_str())
                    .header(H_MSG_ID, e.msg_id.as_str())
                    .header(H_TS, e.now.to_string().as_str());
                let subject = mailbox_subject(&e.recipient, *device, &e.sender, from_contact);
                let ack =
                    self.inner.js.send_publish(subject, publish).await.map_err(publish_error)?;
                mine.push(ack);
            }
            acks.push((mine, e.now));
        }
        let mut out = Vec::with_capacity(acks.len());
        let mut first_error = None;
        // Every acknowledgement is awaited, so none is left behind; the first error wins.
        for (mine, now) in acks {
            let any = !mine.is_empty();
            let mut duplicate = true;
            for ack in mine {
                match ack.await {
                    Ok(a) => duplicate &= a.duplicate,
                    Err(e) => {
                        if first_error.is_none() {
                            first_error = Some(publish_error(e));
                        }
                    }
                }
            }
            out.push(Enqueued { server_ts: now, duplicate: any && duplicate });
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
            // A message stored before devices came from its sender's one device: 1.
            let sender_device = header(&m, H_FROM_DEVICE).and_then(|t| t.parse().ok()).unwrap_or(1);
            out.push(Queued {
                delivery_id: m.sequence,
                sender: sender.to_owned(),
                sender_device,
                msg_id: msg_id.to_owned(),
                server_ts,
                body: m.payload.to_vec(),
            });
        }
        Ok(out)
    }

    /// Checks that `recipient` exists and accepts `sender` (its own account always
    /// does); returns whether `sender` counts as a contact (its own other devices do)
    /// and the recipient's target devices.
    pub(super) async fn recipient_targets(
        &self,
        sender: &str,
        sender_device: u32,
        recipient: &str,
    ) -> Result<(bool, Vec<u32>), StorageError> {
        let blocks: Option<(BlocksRec, u64)> =
            read(&self.inner.accounts, &blocks_key(recipient)).await?;
        let own = sender == recipient;
        let from_contact = match blocks {
            None => return Err(StorageError::NotFound),
            Some(_) if own => true,
            Some((b, _)) if b.refuses(sender) => return Err(StorageError::Blocked),
            Some((b, _)) => b.contacts.contains(sender),
        };
        let account = self.account(recipient).await?.ok_or(StorageError::NotFound)?;
        let devices = account.devices.keys().copied();
        Ok((from_contact, target_devices(sender, sender_device, recipient, devices)))
    }

    /// Checks that `adding` more messages (per device) fit in each device's mailbox and
    /// strangers' share (the per-sender share is the stream's per-subject cap). The
    /// counts are read before publishing, so racing senders may overshoot the total and
    /// the strangers' share by the messages in flight; the per-sender cap is exact.
    pub(super) async fn check_quota(
        &self,
        recipient: &str,
        adding: &BTreeMap<u32, u64>,
        from_contact: bool,
        quota: Quota,
    ) -> Result<(), StorageError> {
        if adding.is_empty() {
            return Ok(());
        }
        let mut subjects = self
            .inner
            .mailbox
            .clone()
            .info_with_subjects(mailbox_filter(recipient))
            .await
            .map_err(|e| backend("counting a mailbox", e))?;
        let mut counts: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        while let Some(item) = futures::StreamExt::next(&mut subjects).await {
            let (subject, n) = item.map_err(|e| backend("counting a mailbox", e))?;
            let Some((device, stranger)) = subject_device(&subject, recipient) else { continue };
            let c = counts.entry(device).or_default();
            c.0 += n as u64;
            if stranger {
                c.1 += n as u64;
            }
        }
        for (device, add) in adding {
            let (total, strangers) = counts.get(device).copied().unwrap_or_default();
            if total + add > quota.max_messages
                || (!from_contact && strangers + add > quota.stranger_share().0)
            {
                return Err(StorageError::QuotaExceeded);
            }
        }
        Ok(())
    }

    /// Checks and publishes `envelopes` for one recipient, in order.
    pub(super) async fn enqueue_for_one(
        &self,
        envelopes: Vec<Envelope>,
        quota: Quota,
    ) -> Result<Vec<Enqueued>, StorageError> {
        let Some(first) = envelopes.first() else { return Ok(Vec::new()) };
        let (from_contact, targets) =
            self.recipient_targets(&first.sender, first.sender_device, &first.recipient).await?;
        let recipient = first.recipient.clone();
        let mut adding = BTreeMap::new();
        let mut resolved = Vec::with_capacity(envelopes.len());
        for e in envelopes {
            let copies = e.copies.clone().resolve(&targets)?;
            for (d, _) in &copies {
                *adding.entry(*d).or_insert(0u64) += 1;
            }
            resolved.push((e, copies));
        }
        self.check_quota(&recipient, &adding, from_contact, quota).await?;
        self.publish_in_order(resolved, from_contact).await
    }

    /// Opens a link rendezvous (see [`Storage::link_open`]).
    pub(super) async fn open_link(&self, l: NewLinkSlot) -> Result<(), StorageError> {
        let links = &self.inner.links;
        let name = hex::encode(l.slot);
        let held: Option<(LinkRec, u64)> = read(links, &name).await?;
        if let Some((rec, _)) = held
            && rec.user != l.user_id
            && rec.expires_at > l.now
        {
            return Err(StorageError::Conflict);
        }
        // The account's older rendezvous goes, and whatever an expired (or this
        // account's earlier) one of the same name left.
        self.close_link(&l.user_id).await?;
        erase(links, &format!("{name}.>")).await?;
        let rec = LinkRec { user: l.user_id.clone(), expires_at: l.expires_at };
        put(links, &name, &rec).await?;
        links
            .put(format!("{name}.hello"), Bytes::from(l.hello))
            .await
            .map_err(|e| backend("writing a link", e))?;
        put(links, &link_owner_key(&l.user_id), &name).await
    }

    /// Erases the account's open rendezvous, if any.
    pub(super) async fn close_link(&self, user_id: &str) -> Result<(), StorageError> {
        let links = &self.inner.links;
        let by = link_owner_key(user_id);
        let open: Option<(String, u64)> = read(links, &by).await?;
        if let Some((name, _)) = open {
            erase(links, &name).await?;
            erase(links, &format!("{name}.>")).await?;
        }
        erase(links, &by).await
    }

    /// Writes a rendezvous cell once (see [`Storage::link_put`]).
    pub(super) async fn put_link(
        &self,
        slot: [u8; 16],
        from: Option<String>,
        data: Vec<u8>,
        now: u64,
    ) -> Result<(), StorageError> {
        let links = &self.inner.links;
        let name = hex::encode(slot);
        let rec: Option<(LinkRec, u64)> = read(links, &name).await?;
        let Some((rec, _)) = rec.filter(|(r, _)| r.expires_at > now) else {
            return Err(StorageError::NotFound);
        };
        let cell = if from.as_deref() == Some(rec.user.as_str()) { "reply" } else { "joined" };
        match links.create(format!("{name}.{cell}"), Bytes::from(data)).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(StorageError::Conflict),
            Err(e) => Err(backend("writing a link", e)),
        }
    }

    /// A rendezvous as it stands (see [`Storage::link_get`]).
    pub(super) async fn get_link(
        &self,
        slot: [u8; 16],
        now: u64,
    ) -> Result<Option<LinkSlot>, StorageError> {
        let links = &self.inner.links;
        let name = hex::encode(slot);
        let rec: Option<(LinkRec, u64)> = read(links, &name).await?;
        if rec.is_none_or(|(r, _)| r.expires_at <= now) {
            return Ok(None);
        }
        let Some(hello) = read_raw(links, &format!("{name}.hello")).await? else {
            return Ok(None);
        };
        Ok(Some(LinkSlot {
            hello,
            joined: read_raw(links, &format!("{name}.joined")).await?,
            reply: read_raw(links, &format!("{name}.reply")).await?,
        }))
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
