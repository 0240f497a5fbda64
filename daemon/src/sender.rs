//! The sender: drains the outbox to the relay, one recipient at a time and in order.
//!
//! It is written against [`Transport`], the two things it needs from a relay connection,
//! so the loop can be driven by the real QUIC link or by a test double. Order within a
//! conversation holds because each recipient's rows go out strictly one after the other,
//! each only after the relay acknowledged the previous one.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use letstalk_crypto::PreKeyBundle;
use rand_core::OsRng;
use tokio_util::sync::CancellationToken;

use crate::account::Account;
use crate::clock::PATH;
use crate::e2e;
use crate::outbox::{self, Outgoing, Prepared};
use crate::relay::{RelayApi, RelayError, check};
use crate::store::StoreError;
use crate::trust;
use crate::{Daemon, now_ms};
use letstalk_crypto::{Session, SessionRecord};
use letstalk_ipc::ErrorKind;
use letstalk_wire::{Request, Response};
use rand_core::{CryptoRng, RngCore};
use rusqlite::Connection;

/// Outbox rows encrypted per transaction.
const BATCH: usize = 64;

/// Why a transmission did not go through.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Not connected, or the connection dropped: keep the row, retry later.
    #[error("relay unavailable")]
    Unavailable,
    /// The relay refused this transmission for good (no such user, blocked, too large);
    /// the message fails with this reason.
    #[error("{0}")]
    Refused(String),
    /// Refused for now (quota, rate limit): retry later.
    #[error("relay busy: {0}")]
    Busy(String),
}

/// What the sender needs from a relay connection.
pub trait Transport: Send + Sync + 'static {
    /// The prekey bundle of `user`'s device (takes one of its one-time prekeys).
    fn fetch_bundle(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<PreKeyBundle, TransportError>> + Send;
    /// Hands envelopes for one recipient to the relay, in order; returns once the relay
    /// has stored all of them. Each `relay_id` is the same on every retransmission, so
    /// the relay stores each once.
    fn send(
        &self,
        to: &str,
        batch: &[(&str, &[u8])],
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Hands one group message to the relay for every recipient in `to`; returns once
    /// the relay stored it for all of them but the returned refusals (each a recipient
    /// and the error to record for it).
    fn send_group(
        &self,
        to: &[String],
        msg_id: &str,
        body: &[u8],
    ) -> impl Future<Output = Result<Vec<(String, String)>, TransportError>> + Send;
    /// Hands a feedback note or report to the relay (idempotent by `id`).
    fn submit_report(
        &self,
        id: &str,
        kind: letstalk_wire::ReportKind,
        body: &[u8],
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// Runs until cancelled: whenever woken (or every `retry` after a failure), sends what
/// the outbox holds.
pub async fn run<T: Transport>(daemon: Arc<Daemon>, transport: Arc<T>, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let outcome = drain(&daemon, transport.as_ref()).await;
        let wait = match outcome {
            Ok(()) => {
                backoff = Duration::from_millis(250);
                None
            }
            Err(()) => {
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                Some(wait)
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = daemon.sender_wake.notified() => {}
            () = sleep_opt(wait) => {}
        }
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Sends everything queued. `Err` when something must be retried later.
async fn drain<T: Transport>(daemon: &Arc<Daemon>, transport: &T) -> Result<(), ()> {
    let recipients = match daemon.store.read(|c| outbox::pending_recipients(c)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "reading the outbox");
            return Err(());
        }
    };
    let mut all_ok = true;
    for recipient in recipients {
        if drain_one(daemon, transport, &recipient).await.is_err() {
            all_ok = false;
        }
    }
    if drain_reports(daemon, transport).await.is_err() {
        all_ok = false;
    }
    if all_ok { Ok(()) } else { Err(()) }
}

async fn drain_one<T: Transport>(
    daemon: &Arc<Daemon>,
    transport: &T,
    recipient: &str,
) -> Result<(), ()> {
    let mut bundle: Option<PreKeyBundle> = None;
    loop {
        let _gate = daemon.outbox_gate.lock().await;
        // Rows sealed in the transaction that queued them go out as they are, read here
        // without a transaction; the rest are sealed (and committed) by `prepare_next`.
        let ready = match &bundle {
            None => {
                let r = recipient.to_owned();
                daemon
                    .store
                    .read(move |c| {
                        if !r.starts_with("group:") && trust::is_untrusted(c, &r)? {
                            return Ok(None);
                        }
                        outbox::ready(c, &r, BATCH)
                    })
                    .await
            }
            Some(_) => Ok(None),
        };
        let prepared = match ready {
            Ok(Some(rows)) if rows.is_empty() => Ok(Prepared::Empty),
            Ok(Some(rows)) => Ok(Prepared::Ready(rows, None)),
            Ok(None) | Err(_) => {
                let (r, b) = (recipient.to_owned(), bundle.take());
                daemon
                    .store
                    .call(move |c| {
                        let Some(me) = Account::load(c)? else { return Ok(Prepared::Empty) };
                        prepare_next(c, &me, &r, b.as_ref(), BATCH, &mut OsRng, now_ms())
                    })
                    .await
            }
        };
        let batch = match prepared {
            Ok(Prepared::Empty) => return Ok(()),
            Ok(Prepared::NeedBundle) => {
                match transport.fetch_bundle(recipient).await {
                    Ok(b) => bundle = Some(b),
                    Err(TransportError::Refused(reason)) => {
                        fail_head(daemon, recipient, &reason).await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "no prekey bundle yet");
                        return Err(());
                    }
                }
                continue;
            }
            Ok(Prepared::Ready(batch, event)) => {
                if let Some(seq) = event {
                    daemon.bus.published(seq);
                }
                batch
            }
            // Waits for `contacts.trust`, which wakes the sender.
            Ok(Prepared::Held { event }) => {
                if let Some(seq) = event {
                    daemon.bus.published(seq);
                }
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "preparing an outgoing message");
                return Err(());
            }
        };
        if let Some(first) = batch.first()
            && first.fanout.is_some()
        {
            send_group_rows(daemon, transport, &batch).await?;
            continue;
        }
        // In order, in as few requests as the frame size allows: the relay stores each
        // request's messages in one transaction, in the order given.
        let mut done = Vec::with_capacity(batch.len());
        let mut outcome = Ok(());
        for chunk in chunks(&batch) {
            let items: Vec<(&str, &[u8])> =
                chunk.iter().map(|o| (o.relay_id.as_str(), o.envelope.as_slice())).collect();
            for o in chunk {
                tracing::debug!(target: PATH, relay = %o.relay_id, "handed");
            }
            match transport.send(recipient, &items).await {
                Ok(()) => {
                    for o in chunk {
                        tracing::debug!(target: PATH, relay = %o.relay_id, "relay_stored");
                    }
                    done.extend(chunk.iter().map(|o| o.seq));
                }
                Err(TransportError::Refused(reason)) => {
                    for o in chunk {
                        let (seq, reason) = (o.seq, reason.clone());
                        if let Ok(Some(event)) = daemon
                            .store
                            .call(move |c| outbox::failed(c, seq, &reason, now_ms()))
                            .await
                        {
                            daemon.bus.published(event);
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "send deferred");
                    outcome = Err(());
                    break;
                }
            }
        }
        if !done.is_empty() {
            let n = done.len();
            // In the next group commit: under load it shares the disk sync of the sends
            // accepted meanwhile instead of taking one of its own.
            match daemon.writes.run(move |c| outbox::sent(c, &done, now_ms())).await {
                Ok(event) => {
                    tracing::debug!(target: PATH, n, "sent");
                    if let Some(event) = event {
                        daemon.bus.published(event);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "recording sent messages");
                    return Err(());
                }
            }
        }
        outcome?;
    }
}

/// Hands queued feedback notes to the relay; a refused one (malformed) is dropped.
async fn drain_reports<T: Transport>(daemon: &Arc<Daemon>, transport: &T) -> Result<(), ()> {
    let pending = daemon.store.read(|c| crate::diagnostics::pending(c)).await.map_err(|e| {
        tracing::warn!(error = %e, "reading queued feedback");
    })?;
    for (id, kind, body) in pending {
        match transport.submit_report(&id, kind, &body).await {
            Ok(()) => {}
            Err(TransportError::Refused(reason)) => {
                tracing::warn!(reason = %reason, "the relay refused a feedback note; dropped");
            }
            Err(e) => {
                tracing::debug!(error = %e, "feedback deferred");
                return Err(());
            }
        }
        let done = id.clone();
        if let Err(e) = daemon.store.call(move |c| crate::diagnostics::delivered(c, &done)).await {
            tracing::warn!(error = %e, "recording sent feedback");
            return Err(());
        }
    }
    Ok(())
}

/// Sends a group's outbox rows, one relay request each, in order.
async fn send_group_rows<T: Transport>(
    daemon: &Arc<Daemon>,
    transport: &T,
    batch: &[Outgoing],
) -> Result<(), ()> {
    for o in batch {
        let to = o.fanout.clone().unwrap_or_default();
        let seq = o.seq;
        let outcome = match transport.send_group(&to, &o.relay_id, &o.envelope).await {
            Ok(refused) => {
                daemon.store.call(move |c| outbox::group_sent(c, seq, &refused, now_ms())).await
            }
            Err(TransportError::Refused(reason)) => {
                daemon.store.call(move |c| outbox::failed(c, seq, &reason, now_ms())).await
            }
            Err(e) => {
                tracing::debug!(error = %e, "group send deferred");
                return Err(());
            }
        };
        match outcome {
            Ok(Some(event)) => daemon.bus.published(event),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "recording a group send");
                return Err(());
            }
        }
    }
    Ok(())
}

/// Splits a batch into requests that fit a wire frame.
fn chunks(batch: &[Outgoing]) -> Vec<&[Outgoing]> {
    // Leave room for the framing around the bodies.
    const BUDGET: usize = letstalk_wire::MAX_FRAME_LEN - 64 * 1024;
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, o) in batch.iter().enumerate() {
        let cost = o.envelope.len() + o.relay_id.len() + 8;
        if i > start && (size + cost > BUDGET || i - start >= letstalk_wire::MAX_LIST) {
            out.extend(batch.get(start..i));
            start = i;
            size = 0;
        }
        size += cost;
    }
    out.extend(batch.get(start..));
    out.retain(|c| !c.is_empty());
    out
}

/// Fails the oldest queued row for `recipient` (it can never be delivered).
async fn fail_head(daemon: &Arc<Daemon>, recipient: &str, reason: &str) {
    let (r, reason) = (recipient.to_owned(), reason.to_owned());
    let result = daemon
        .store
        .call(move |c| {
            let seq: Option<i64> = {
                use rusqlite::OptionalExtension;
                c.query_row("SELECT min(seq) FROM outbox WHERE recipient = ?1", [&r], |row| {
                    row.get(0)
                })
                .optional()?
                .flatten()
            };
            match seq {
                Some(seq) => outbox::failed(c, seq, &reason, now_ms()),
                None => Ok(None),
            }
        })
        .await;
    if let Ok(Some(event)) = result {
        daemon.bus.published(event);
    }
}

/// The oldest outbox rows for `recipient` (at most `max`), each encrypted once and ready
/// to transmit. Encrypting a batch in one transaction costs one disk sync for all of
/// them, and the ciphertexts are committed before any of them leaves the device.
///
/// A recipient whose new identity key the user has not accepted gets nothing
/// ([`Prepared::Held`]); a bundle with a new key is recorded (and shown) first.
pub fn prepare_next(
    conn: &mut Connection,
    me: &Account,
    recipient: &str,
    bundle: Option<&PreKeyBundle>,
    max: usize,
    rng: &mut (impl RngCore + CryptoRng),
    now: i64,
) -> Result<Prepared, StoreError> {
    let tx = conn.transaction()?;
    let rows = outbox::oldest(&tx, recipient, max)?;
    if rows.is_empty() {
        return Ok(Prepared::Empty);
    }
    let pairwise = !recipient.starts_with("group:");
    if pairwise && trust::is_untrusted(&tx, recipient)? {
        return Ok(Prepared::Held { event: None });
    }
    let mut record: Option<SessionRecord> = None;
    let mut event = None;
    let mut ready = Vec::with_capacity(rows.len());
    for (seq, relay_id, plaintext, envelope, fanout, message_id, attempt) in rows {
        if let Some(envelope) = envelope {
            let fanout = fanout.and_then(|f| serde_json::from_str(&f).ok());
            ready.push(Outgoing {
                seq,
                recipient: recipient.to_owned(),
                relay_id,
                envelope,
                fanout,
            });
            continue;
        }
        if record.is_none() {
            let mut r = e2e::load_record(&tx, recipient)?.unwrap_or_default();
            if r.current().is_none() {
                match bundle {
                    Some(bundle) => {
                        let seen = trust::observe(&tx, recipient, &bundle.identity, now)?;
                        if seen.untrusted {
                            tx.commit()?;
                            return Ok(Prepared::Held { event: seen.event });
                        }
                        event = seen.event;
                        r.promote_new(
                            Session::initiate(&me.identity, bundle, rng)
                                .map_err(|e| e2e::crypto_err("starting a session", e))?,
                        );
                    }
                    None if ready.is_empty() => return Ok(Prepared::NeedBundle),
                    None => break,
                }
            }
            record = Some(r);
        }
        let Some(s) = record.as_mut().and_then(SessionRecord::current_mut) else { break };
        let row = outbox::Unsealed {
            seq,
            relay_id,
            plaintext: zeroize::Zeroizing::new(plaintext.unwrap_or_default()),
            message_id,
            attempt,
        };
        let envelope =
            s.encrypt(&row.plaintext, rng).map_err(|e| e2e::crypto_err("encrypting", e))?;
        outbox::sealed(&tx, recipient, &row, &envelope, now)?;
        ready.push(Outgoing {
            seq,
            recipient: recipient.to_owned(),
            relay_id: row.relay_id,
            envelope,
            fanout: None,
        });
    }
    if let Some(r) = &record {
        e2e::save_record(&tx, recipient, r, now)?;
    }
    tx.commit()?;
    Ok(Prepared::Ready(ready, event))
}

/// The sender's [`Transport`] over the relay (built by the composition root).
#[derive(Debug)]
pub struct RelayTransport(pub Arc<dyn RelayApi>);

impl RelayTransport {
    fn classify(e: RelayError) -> TransportError {
        use TransportError as T;
        use letstalk_wire::ErrorKind as W;
        match e {
            RelayError::Unavailable => T::Unavailable,
            RelayError::Unexpected => T::Busy("unexpected answer".into()),
            RelayError::Refused { kind, message, .. } => match refusal(kind, &message) {
                Some(stored) => T::Refused(stored),
                None if matches!(kind, W::UnknownDevice | W::Unauthenticated) => T::Unavailable,
                None => T::Busy(message),
            },
        }
    }
}

/// A refusal for good, as stored with the failed message (IPC error kind and message);
/// `None` for a refusal that a retry may overcome.
fn refusal(kind: letstalk_wire::ErrorKind, message: &str) -> Option<String> {
    use letstalk_wire::ErrorKind as W;
    let kind = match kind {
        W::NotFound => Some(ErrorKind::NotFound),
        W::Blocked => Some(ErrorKind::Blocked),
        W::TooLarge => Some(ErrorKind::TooLarge),
        W::Invalid => None,
        _ => return None,
    };
    Some(crate::messages::error_text(kind, message))
}

impl Transport for RelayTransport {
    async fn fetch_bundle(&self, user: &str) -> Result<PreKeyBundle, TransportError> {
        match self
            .0
            .request(Request::FetchBundle { user_id: user.to_owned() })
            .await
            .and_then(check)
        {
            Ok(Response::Bundle(b)) => {
                crate::keys::bundle_from_wire(&b).map_err(TransportError::Refused)
            }
            Ok(_) => Err(TransportError::Busy("unexpected answer".into())),
            Err(e) => Err(Self::classify(e)),
        }
    }

    async fn send(&self, to: &str, batch: &[(&str, &[u8])]) -> Result<(), TransportError> {
        let messages = batch
            .iter()
            .map(|(id, body)| letstalk_wire::Outbound {
                msg_id: (*id).to_owned(),
                body: body.to_vec(),
            })
            .collect();
        let request = Request::SendBatch { to: to.to_owned(), messages };
        match self.0.request(request).await.and_then(check) {
            Ok(Response::Sent { .. }) => Ok(()),
            Ok(_) => Err(TransportError::Busy("unexpected answer".into())),
            Err(e) => Err(Self::classify(e)),
        }
    }

    async fn submit_report(
        &self,
        id: &str,
        kind: letstalk_wire::ReportKind,
        body: &[u8],
    ) -> Result<(), TransportError> {
        let request = Request::SubmitReport { id: id.to_owned(), kind, body: body.to_vec() };
        match self.0.request(request).await.and_then(check) {
            Ok(Response::Ok) => Ok(()),
            Ok(_) => Err(TransportError::Busy("unexpected answer".into())),
            Err(e) => Err(Self::classify(e)),
        }
    }

    async fn send_group(
        &self,
        to: &[String],
        msg_id: &str,
        body: &[u8],
    ) -> Result<Vec<(String, String)>, TransportError> {
        let request =
            Request::SendGroup { to: to.to_vec(), msg_id: msg_id.to_owned(), body: body.to_vec() };
        match self.0.request(request).await.and_then(check) {
            Ok(Response::GroupSent { refused, .. }) => Ok(refused
                .into_iter()
                .map(|r| {
                    let reason = match r.kind {
                        letstalk_wire::ErrorKind::Blocked => {
                            "the recipient does not accept your messages"
                        }
                        letstalk_wire::ErrorKind::NotFound => "no such user",
                        _ => "the relay refused the message",
                    };
                    let stored = refusal(r.kind, reason)
                        .unwrap_or_else(|| crate::messages::error_text(None, reason));
                    (r.user_id, stored)
                })
                .collect()),
            Ok(_) => Err(TransportError::Busy("unexpected answer".into())),
            Err(e) => Err(Self::classify(e)),
        }
    }
}
