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
use crate::delivery::{self, Prepared};
use crate::{Daemon, now_ms};

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
    let recipients = match daemon.store.call(|c| delivery::pending_recipients(c)).await {
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
        let r = recipient.to_owned();
        let b = bundle.take();
        let prepared = daemon
            .store
            .call(move |c| {
                let Some(me) = Account::load(c)? else { return Ok(Prepared::Empty) };
                delivery::prepare_next(c, &me, &r, b.as_ref(), BATCH, &mut OsRng, now_ms())
            })
            .await;
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
            match transport.send(recipient, &items).await {
                Ok(()) => done.extend(chunk.iter().map(|o| o.seq)),
                Err(TransportError::Refused(reason)) => {
                    for o in chunk {
                        let (seq, reason) = (o.seq, reason.clone());
                        if let Ok(Some(event)) = daemon
                            .store
                            .call(move |c| delivery::failed(c, seq, &reason, now_ms()))
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
            match daemon.store.call(move |c| delivery::sent(c, &done, now_ms())).await {
                Ok(Some(event)) => daemon.bus.published(event),
                Ok(None) => {}
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
    let pending = daemon.store.call(|c| crate::diagnostics::pending(c)).await.map_err(|e| {
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
    batch: &[delivery::Outgoing],
) -> Result<(), ()> {
    for o in batch {
        let to = o.fanout.clone().unwrap_or_default();
        let seq = o.seq;
        let outcome = match transport.send_group(&to, &o.relay_id, &o.envelope).await {
            Ok(refused) => {
                daemon.store.call(move |c| delivery::group_sent(c, seq, &refused, now_ms())).await
            }
            Err(TransportError::Refused(reason)) => {
                daemon.store.call(move |c| delivery::failed(c, seq, &reason, now_ms())).await
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
fn chunks(batch: &[delivery::Outgoing]) -> Vec<&[delivery::Outgoing]> {
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
                Some(seq) => delivery::failed(c, seq, &reason, now_ms()),
                None => Ok(None),
            }
        })
        .await;
    if let Ok(Some(event)) = result {
        daemon.bus.published(event);
    }
}
