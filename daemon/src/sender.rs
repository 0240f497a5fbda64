//! The sender: drains the outbox to the relay, one recipient at a time and in order.
//!
//! It is written against [`Transport`], the two things it needs from a relay connection,
//! so the loop can be driven by the real QUIC link or by a test double. Order within a
//! conversation holds because each recipient's rows go out strictly one after the other,
//! each only after the relay acknowledged the previous one.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand_core::OsRng;
use tokio_util::sync::CancellationToken;

use crate::account::Account;
use crate::clock::PATH;
use crate::e2e::{self, DeviceBundle};
use crate::outbox::{self, Outgoing, Prepared};
use crate::relay::{RelayApi, RelayError, check};
use crate::store::StoreError;
use crate::trust;
use crate::{Daemon, now_ms};
use letstalk_ipc::ErrorKind;
use letstalk_wire::{Copy, Request, Response};
use rand_core::{CryptoRng, RngCore};
use rusqlite::Connection;

/// Outbox rows read (and, when not sealed yet, encrypted in one transaction) per step
/// of the drain; they go out in as few frames as hold them (`chunks`) and are marked sent
/// in one commit. 256 rather than 64: a sustained flow delivered 10 % more with a
/// quarter of the steps (bench/README). At most 256 texts of 64 KiB in memory at once.
const BATCH: usize = 256;

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

/// What the relay answered a message for every device of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopiesSent {
    /// Stored for every device.
    Sent,
    /// Nothing stored: the copies did not name exactly the account's devices (minus
    /// this one, for our own account). `missing` have no copy, `extra` are no devices of
    /// it (any more).
    Mismatch { missing: Vec<u32>, extra: Vec<u32> },
}

/// What the sender needs from a relay connection.
pub trait Transport: Send + Sync + 'static {
    /// The prekey bundles of `user`'s devices (`devices` empty: all of them); takes one
    /// one-time prekey of each.
    fn fetch_bundles(
        &self,
        user: &str,
        devices: &[u32],
    ) -> impl Future<Output = Result<Vec<DeviceBundle>, TransportError>> + Send;
    /// Hands one message to every device of `to`, one ciphertext each; returns once the
    /// relay stored all of them, or that the copies do not match the account's devices
    /// (then nothing was stored). `msg_id` is the same on every retransmission, so the
    /// relay stores it once.
    fn send_copies(
        &self,
        to: &str,
        msg_id: &str,
        copies: &[Copy],
    ) -> impl Future<Output = Result<CopiesSent, TransportError>> + Send;
    /// Hands several messages for `to`, each with its copies, in order, stored by the
    /// relay in one transaction: `Sent` once all are stored, `Mismatch` (nothing stored)
    /// when any one's copies do not fit. `None` when the relay does not take batches:
    /// then they go one by one ([`send_copies`]).
    ///
    /// [`send_copies`]: Transport::send_copies
    fn send_copies_batch(
        &self,
        _to: &str,
        _batch: &[(&str, &[Copy])],
    ) -> impl Future<Output = Option<Result<CopiesSent, TransportError>>> + Send {
        async { None }
    }
    /// Learns, once, whether the relay serves the per-device requests, before the first
    /// message needs to know (the sender is woken on every connection): a message to
    /// someone new then costs no extra round trip to find out. `user` is our account.
    fn probe(&self, _user: &str) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// Whether the relay keeps one device per account (it answers the per-device
    /// requests `Unsupported`): rows with one copy each then go in batches ([`send`]).
    ///
    /// [`send`]: Transport::send
    fn single_device(&self) -> bool {
        false
    }
    /// Hands envelopes for one recipient's only device to the relay, in order; returns
    /// once the relay has stored all of them. Each `relay_id` is the same on every
    /// retransmission, so the relay stores each once. Used while [`single_device`].
    ///
    /// [`single_device`]: Transport::single_device
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
        let mut wait = match outcome {
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
        // A row that waits (a delivery receipt gathering others) wakes the sender when
        // it is due.
        let now = now_ms();
        if let Ok(Some(due)) = daemon.store.read(move |c| outbox::next_due(c, now)).await {
            let until = Duration::from_millis(u64::try_from(due - now).unwrap_or(0));
            wait = Some(wait.map_or(until, |w| w.min(until)));
        }
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
    if let Some(me) = daemon.user() {
        transport.probe(&me).await;
    }
    let recipients = match daemon.store.read(|c| outbox::pending_recipients(c, now_ms())).await {
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

/// Mismatch answers in a row, without a row sent in between, before the recipient is
/// left for the next round (a device whose bundle cannot be had, a relay that keeps
/// changing its answer).
const MAX_MISMATCHES: usize = 4;

async fn drain_one<T: Transport>(
    daemon: &Arc<Daemon>,
    transport: &T,
    recipient: &str,
) -> Result<(), ()> {
    let mut bundles: Option<Vec<DeviceBundle>> = None;
    let mut mismatches = 0;
    loop {
        let _gate = daemon.outbox_gate.lock().await;
        // Rows sealed in the transaction that queued them go out as they are, read here
        // without a transaction; the rest are sealed (and committed) by `prepare_next`.
        let ready = match &bundles {
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
                let (r, b) = (recipient.to_owned(), bundles.take());
                daemon
                    .store
                    .call(move |c| {
                        let Some(me) = Account::load(c)? else { return Ok(Prepared::Empty) };
                        prepare_next(c, &me, &r, b.as_deref(), BATCH, &mut OsRng, now_ms())
                    })
                    .await
            }
        };
        let batch = match prepared {
            Ok(Prepared::Empty) => return Ok(()),
            Ok(Prepared::NeedBundle) => {
                match transport.fetch_bundles(recipient, &[]).await {
                    Ok(b) if b.is_empty() && !is_own(daemon, recipient) => {
                        fail_head(daemon, recipient, "the recipient has no device").await;
                    }
                    Ok(b) => bundles = Some(b),
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
        let (done, outcome) =
            if transport.single_device() && batch.iter().all(|o| o.copies.len() == 1) {
                (send_batches(daemon, transport, recipient, &batch).await, Sent::Through)
            } else {
                send_copies_batches(daemon, transport, recipient, &batch).await
            };
        let progressed = !done.is_empty();
        if progressed {
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
            mismatches = 0;
        }
        match outcome {
            Sent::Through => {}
            Sent::Deferred => return Err(()),
            Sent::Mismatch { missing, extra } => {
                mismatches += 1;
                if mismatches > MAX_MISMATCHES {
                    tracing::debug!("the relay's device list and ours keep differing; later");
                    return Err(());
                }
                drop(_gate);
                fix_devices(daemon, transport, recipient, missing, extra).await?;
            }
        }
    }
}

/// How sending a batch ended.
enum Sent {
    /// Every row was handed over (or refused for good).
    Through,
    /// The relay is away or busy: retry later.
    Deferred,
    /// The copies of the first row not sent did not match the recipient's devices.
    Mismatch { missing: Vec<u32>, extra: Vec<u32> },
}

/// Whether `user` is our own account.
fn is_own(daemon: &Daemon, user: &str) -> bool {
    daemon.user().as_deref() == Some(user)
}

/// A relay with one device per account: the rows' only copies, in order, in as few
/// requests as the frame size allows (the relay stores each request's messages in one
/// transaction, in the order given). Returns the rows it handed over.
async fn send_batches<T: Transport>(
    daemon: &Arc<Daemon>,
    transport: &T,
    recipient: &str,
    batch: &[Outgoing],
) -> Vec<i64> {
    let mut done = Vec::with_capacity(batch.len());
    for chunk in chunks(batch) {
        let items: Vec<(&str, &[u8])> = chunk
            .iter()
            .filter_map(|o| Some((o.relay_id.as_str(), o.copies.first()?.body.as_slice())))
            .collect();
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
                    refused(daemon, o.seq, &reason).await;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "send deferred");
                break;
            }
        }
    }
    done
}

/// Rows with their copies for each device, as many per request as a frame holds
/// (`SendCopiesBatch`, stored in order in one relay transaction): a backlog costs a
/// round trip and a relay commit per chunk, not per message. A chunk the relay does
/// not take whole (a mismatch, a refusal, no batches on this relay) goes on row by row
/// ([`send_each`]), which finds the row and hands over the ones before it.
async fn send_copies_batches<T: Transport>(
    daemon: &Arc<Daemon>,
    transport: &T,
    recipient: &str,
    batch: &[Outgoing],
) -> (Vec<i64>, Sent) {
    let mut done = Vec::with_capacity(batch.len());
    for chunk in chunks(batch) {
        if chunk.len() > 1 {
            let items: Vec<(&str, &[Copy])> =
                chunk.iter().map(|o| (o.relay_id.as_str(), o.copies.as_slice())).collect();
            for o in chunk {
                tracing::debug!(target: PATH, relay = %o.relay_id, "handed");
            }
            match transport.send_copies_batch(recipient, &items).await {
                Some(Ok(CopiesSent::Sent)) => {
                    for o in chunk {
                        tracing::debug!(target: PATH, relay = %o.relay_id, "relay_stored");
                    }
                    done.extend(chunk.iter().map(|o| o.seq));
                    continue;
                }
                Some(Err(e @ (TransportError::Unavailable | TransportError::Busy(_)))) => {
                    tracing::debug!(error = %e, "send deferred");
                    return (done, Sent::Deferred);
                }
                Some(Ok(CopiesSent::Mismatch { .. }) | Err(TransportError::Refused(_))) | None => {}
            }
        }
        let rest = batch.get(done.len()..).unwrap_or_default();
        let (each, outcome) = send_each(daemon, transport, recipient, rest).await;
        done.extend(each);
        return (done, outcome);
    }
    (done, Sent::Through)
}

/// Every row with its copies for each device, one `SendCopies` each, strictly in order
/// (the next only after the relay stored the previous: requests on separate streams
/// could be stored out of order). Stops at the first mismatch. Returns the rows handed
/// over and how it ended.
async fn send_each<T: Transport>(
    daemon: &Arc<Daemon>,
    transport: &T,
    recipient: &str,
    batch: &[Outgoing],
) -> (Vec<i64>, Sent) {
    let mut done = Vec::with_capacity(batch.len());
    for o in batch {
        tracing::debug!(target: PATH, relay = %o.relay_id, "handed");
        match transport.send_copies(recipient, &o.relay_id, &o.copies).await {
            Ok(CopiesSent::Sent) => {
                tracing::debug!(target: PATH, relay = %o.relay_id, "relay_stored");
                done.push(o.seq);
            }
            Ok(CopiesSent::Mismatch { missing, extra }) => {
                return (done, Sent::Mismatch { missing, extra });
            }
            Err(TransportError::Refused(reason)) => refused(daemon, o.seq, &reason).await,
            Err(e) => {
                tracing::debug!(error = %e, "send deferred");
                return (done, Sent::Deferred);
            }
        }
    }
    (done, Sent::Through)
}

/// The relay refused outbox row `seq` for good: its message fails.
async fn refused(daemon: &Arc<Daemon>, seq: i64, reason: &str) {
    let reason = reason.to_owned();
    if let Ok(Some(event)) =
        daemon.store.call(move |c| outbox::failed(c, seq, &reason, now_ms())).await
    {
        daemon.bus.published(event);
    }
}

/// The relay said `recipient`'s devices are not the ones we sealed for: sessions with
/// `extra` devices end and their copies go; `missing` devices without a session get one
/// from a fresh bundle; every queued row gets a new encryption for each missing device.
async fn fix_devices<T: Transport>(
    daemon: &Arc<Daemon>,
    transport: &T,
    recipient: &str,
    missing: Vec<u32>,
    extra: Vec<u32>,
) -> Result<(), ()> {
    let r = recipient.to_owned();
    let have = daemon.store.read(move |c| e2e::current_devices(c, &r)).await.map_err(|e| {
        tracing::warn!(error = %e, "reading sessions");
    })?;
    let need: Vec<u32> = missing.iter().copied().filter(|d| !have.contains(d)).collect();
    let bundles = if need.is_empty() {
        Vec::new()
    } else {
        match transport.fetch_bundles(recipient, &need).await {
            Ok(b) => b,
            // A device gone meanwhile: the next answer says so.
            Err(TransportError::Refused(reason)) => {
                tracing::debug!(reason = %reason, "no bundle for a missing device");
                Vec::new()
            }
            Err(e) => {
                tracing::debug!(error = %e, "no prekey bundle yet");
                return Err(());
            }
        }
    };
    let r = recipient.to_owned();
    let outcome = daemon
        .store
        .call(move |c| {
            let Some(me) = Account::load(c)? else { return Ok(None) };
            apply_devices(c, &me, &r, &missing, &extra, &bundles, &mut OsRng, now_ms())
        })
        .await;
    match outcome {
        Ok(event) => {
            if let Some(seq) = event {
                daemon.bus.published(seq);
            }
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "applying the recipient's devices");
            Err(())
        }
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
        let cost = o.copies.iter().map(|c| c.body.len()).sum::<usize>() + o.relay_id.len() + 8;
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

/// The oldest outbox rows for `recipient` (at most `max`), each encrypted once for every
/// device of the recipient we hold a session with and ready to transmit. Encrypting a
/// batch in one transaction costs one disk sync for all of them, and the ciphertexts are
/// committed before any of them leaves the device. `bundles` (the recipient's, fetched
/// after [`Prepared::NeedBundle`]) start a session with each of those devices first.
///
/// A recipient whose new identity key the user has not accepted gets nothing
/// ([`Prepared::Held`]); a bundle with a new key is recorded (and shown) first.
pub fn prepare_next(
    conn: &mut Connection,
    me: &Account,
    recipient: &str,
    bundles: Option<&[DeviceBundle]>,
    max: usize,
    rng: &mut (impl RngCore + CryptoRng),
    now: i64,
) -> Result<Prepared, StoreError> {
    let tx = conn.transaction()?;
    let mut event = None;
    if !recipient.starts_with("group:") {
        if trust::is_untrusted(&tx, recipient)? {
            return Ok(Prepared::Held { event: None });
        }
        if let Some(bundles) = bundles {
            let own = recipient == me.user_id;
            let bundles = usable(me, recipient, bundles);
            if own && bundles.is_empty() {
                // Our account has no other device: what is queued for it (sent copies,
                // read syncs, a note to self) has reached every device there is.
                outbox::set_known_devices(&tx, recipient, &[], now)?;
                let seqs = outbox::queued_seqs(&tx, recipient)?;
                let event = outbox::sent(&tx, &seqs, now)?;
                tx.commit()?;
                return Ok(Prepared::Ready(Vec::new(), event));
            }
            match start_sessions(&tx, me, recipient, &bundles, rng, now)? {
                Ok(e) => event = e,
                Err(held) => {
                    tx.commit()?;
                    return Ok(held);
                }
            }
            if own {
                let devices: Vec<u32> = bundles.iter().map(|b| b.device).collect();
                outbox::set_known_devices(&tx, recipient, &devices, now)?;
            }
        }
        e2e::seal_queued(&tx, recipient, max, rng, now)?;
    }
    let (ready, any) = outbox::ready_prefix(&tx, recipient, max)?;
    if ready.is_empty() {
        // Queued rows, none sealed: there is no session with any of its devices.
        return Ok(if any { Prepared::NeedBundle } else { Prepared::Empty });
    }
    tx.commit()?;
    Ok(Prepared::Ready(ready, event))
}

/// The bundles a session may start from: for our own account, those of our other
/// devices that carry our own identity key (the relay cannot make us talk to a device
/// that is not the account's); for anyone else, all of them.
fn usable(me: &Account, recipient: &str, bundles: &[DeviceBundle]) -> Vec<DeviceBundle> {
    if recipient != me.user_id {
        return bundles.to_vec();
    }
    let mine = letstalk_link::SigningKey::from_bytes(&me.device_key).verifying_key().to_bytes();
    let identity = me.identity.public();
    bundles
        .iter()
        .filter(|b| b.device_key != mine)
        .filter(|b| {
            let ours = b.bundle.identity == identity;
            if !ours {
                tracing::warn!("a bundle of our own account with another identity key; ignored");
            }
            ours
        })
        .cloned()
        .collect()
}

/// Starts a session with each bundle's device, after its identity key is recorded
/// (`trust::observe`; our own account's was checked by [`usable`]). `Err` with what to
/// answer when the key waits for the user's acceptance; else the event written.
fn start_sessions(
    tx: &Connection,
    me: &Account,
    recipient: &str,
    bundles: &[DeviceBundle],
    rng: &mut (impl RngCore + CryptoRng),
    now: i64,
) -> Result<Result<Option<u64>, Prepared>, StoreError> {
    let mut event = None;
    for b in bundles {
        if recipient != me.user_id {
            let seen = trust::observe(tx, recipient, &b.bundle.identity, now)?;
            if seen.untrusted {
                return Ok(Err(Prepared::Held { event: seen.event }));
            }
            event = seen.event.or(event);
        }
        e2e::start_session(tx, me, recipient, b, rng, now)?;
    }
    Ok(Ok(event))
}

/// Applies a mismatch answer for `recipient` in one transaction: the sessions with
/// `extra` devices and their queued copies go; `bundles` (of missing devices we had no
/// session with) start sessions; every queued row gets a copy for each `missing` device,
/// a new encryption of its kept plaintext (the copies it has are left alone). For our own
/// account, the list of our other devices is updated. Returns the event written, if any.
#[allow(clippy::too_many_arguments)]
pub fn apply_devices(
    conn: &mut Connection,
    me: &Account,
    recipient: &str,
    missing: &[u32],
    extra: &[u32],
    bundles: &[DeviceBundle],
    rng: &mut (impl RngCore + CryptoRng),
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let tx = conn.transaction()?;
    e2e::forget_devices(&tx, recipient, extra)?;
    let bundles: Vec<DeviceBundle> = usable(me, recipient, bundles)
        .into_iter()
        .filter(|b| missing.contains(&b.device))
        .collect();
    let event = match start_sessions(&tx, me, recipient, &bundles, rng, now)? {
        Ok(e) => e,
        Err(Prepared::Held { event }) => {
            tx.commit()?;
            return Ok(event);
        }
        Err(_) => None,
    };
    let without = e2e::seal_for_devices(&tx, recipient, missing, rng, now)?;
    if !without.is_empty() {
        tracing::debug!(n = without.len(), "missing devices without a session yet");
    }
    let mut event = event;
    if !missing.is_empty() {
        // Queued before this daemon knew devices, its plaintext not kept: it can reach
        // the new device only as a new message, so it fails (the user sees it and can
        // send it again) instead of blocking the conversation.
        for seq in outbox::sealed_before_devices(&tx, recipient)? {
            let error = crate::messages::error_text(
                None,
                "the recipient's devices changed before it could be sent",
            );
            event = outbox::failed_in(&tx, seq, &error, now)?.or(event);
        }
    }
    if recipient != me.user_id {
        // Group sender keys follow the member's devices: a new one gets our current key,
        // a removed one makes our key rotate before our next group message.
        crate::groups::devices_removed(&tx, recipient, extra)?;
        if !missing.is_empty() {
            crate::groups::devices_added(&tx, recipient, now)?;
        }
    }
    if recipient == me.user_id {
        let mut devices = outbox::known_devices(&tx, recipient)?.unwrap_or_default();
        devices.retain(|d| !extra.contains(d));
        devices.extend(missing.iter().filter(|d| !without.contains(d)));
        devices.sort_unstable();
        devices.dedup();
        outbox::set_known_devices(&tx, recipient, &devices, now)?;
    }
    tx.commit()?;
    Ok(event)
}

/// The sender's [`Transport`] over the relay (built by the composition root).
///
/// A relay that answers the per-device requests `Unsupported` keeps one device per
/// account (device 1): then bundles come from `FetchBundle`, copies go with `Send` and
/// `SendBatch`, and a set of copies other than exactly one for device 1 is answered as
/// that relay's mismatch would be. The per-device requests are tried again every
/// [`REPROBE`], so a relay upgraded under a running daemon is noticed.
#[derive(Debug)]
pub struct RelayTransport {
    api: Arc<dyn RelayApi>,
    /// Since when the relay is known to keep one device per account.
    single_since: std::sync::Mutex<Option<std::time::Instant>>,
    /// Whether the relay answered [`Transport::probe`].
    probed: std::sync::atomic::AtomicBool,
}

/// How long a relay answering `Unsupported` is taken to keep one device per account.
const REPROBE: Duration = Duration::from_secs(600);

impl RelayTransport {
    pub fn new(api: Arc<dyn RelayApi>) -> Self {
        Self {
            api,
            single_since: std::sync::Mutex::new(None),
            probed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn single(&self) -> std::sync::MutexGuard<'_, Option<std::time::Instant>> {
        self.single_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_single(&self) -> bool {
        self.single().is_some_and(|t| t.elapsed() < REPROBE)
    }

    /// Whether `e` says the relay does not serve per-device requests (and remembers it).
    fn unsupported(&self, e: &RelayError) -> bool {
        let yes =
            matches!(e, RelayError::Refused { kind: letstalk_wire::ErrorKind::Unsupported, .. });
        if yes {
            tracing::debug!("the relay keeps one device per account");
            *self.single() = Some(std::time::Instant::now());
        }
        yes
    }

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

    async fn request(&self, request: Request) -> Result<Response, RelayError> {
        self.api.request(request).await.and_then(check)
    }
}

/// A directory bundle as a [`DeviceBundle`], or why not.
fn device_bundle(b: &letstalk_wire::Bundle) -> Result<DeviceBundle, String> {
    Ok(DeviceBundle {
        device: b.device_id,
        device_key: b.device_key,
        bundle: crate::keys::bundle_from_wire(b)?,
    })
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
    async fn fetch_bundles(
        &self,
        user: &str,
        devices: &[u32],
    ) -> Result<Vec<DeviceBundle>, TransportError> {
        if !self.is_single() {
            let request =
                Request::FetchBundles { user_id: user.to_owned(), devices: devices.to_vec() };
            match self.request(request).await {
                Ok(Response::Bundles { bundles }) => {
                    let mut out = Vec::with_capacity(bundles.len());
                    let mut why = None;
                    for b in &bundles {
                        match device_bundle(b) {
                            Ok(b) => out.push(b),
                            Err(e) => why = Some(e),
                        }
                    }
                    // A device with a broken bundle is left out (the relay names it
                    // missing again); with none usable the message fails.
                    return match why {
                        Some(why) if out.is_empty() => Err(TransportError::Refused(why)),
                        _ => Ok(out),
                    };
                }
                Ok(_) => return Err(TransportError::Busy("unexpected answer".into())),
                Err(e) if self.unsupported(&e) => {}
                Err(e) => return Err(Self::classify(e)),
            }
        }
        match self.request(Request::FetchBundle { user_id: user.to_owned() }).await {
            Ok(Response::Bundle(b)) => {
                let b = device_bundle(&b).map_err(TransportError::Refused)?;
                Ok(if devices.is_empty() || devices.contains(&b.device) { vec![b] } else { vec![] })
            }
            Ok(_) => Err(TransportError::Busy("unexpected answer".into())),
            Err(e) => Err(Self::classify(e)),
        }
    }

    async fn send_copies(
        &self,
        to: &str,
        msg_id: &str,
        copies: &[Copy],
    ) -> Result<CopiesSent, TransportError> {
        if !self.is_single() {
            let request = Request::SendCopies {
                to: to.to_owned(),
                msg_id: msg_id.to_owned(),
                copies: copies.to_vec(),
            };
            match self.request(request).await {
                Ok(Response::Sent { .. }) => return Ok(CopiesSent::Sent),
                Ok(Response::Mismatch { missing, extra }) => {
                    return Ok(CopiesSent::Mismatch { missing, extra });
                }
                Ok(_) => return Err(TransportError::Busy("unexpected answer".into())),
                Err(e) if self.unsupported(&e) => {}
                Err(e) => return Err(Self::classify(e)),
            }
        }
        // One device per account, device 1: what that relay's mismatch would say.
        let extra: Vec<u32> = copies.iter().map(|c| c.device_id).filter(|d| *d != 1).collect();
        let Some(only) = copies.iter().find(|c| c.device_id == 1) else {
            return Ok(CopiesSent::Mismatch { missing: vec![1], extra });
        };
        if !extra.is_empty() {
            return Ok(CopiesSent::Mismatch { missing: vec![], extra });
        }
        let request =
            Request::Send { to: to.to_owned(), msg_id: msg_id.to_owned(), body: only.body.clone() };
        match self.request(request).await {
            Ok(Response::Sent { .. }) => Ok(CopiesSent::Sent),
            Ok(_) => Err(TransportError::Busy("unexpected answer".into())),
            Err(e) => Err(Self::classify(e)),
        }
    }

    async fn send_copies_batch(
        &self,
        to: &str,
        batch: &[(&str, &[Copy])],
    ) -> Option<Result<CopiesSent, TransportError>> {
        if self.is_single() {
            return None;
        }
        let messages = batch
            .iter()
            .map(|(id, copies)| letstalk_wire::OutboundCopies {
                msg_id: (*id).to_owned(),
                copies: copies.to_vec(),
            })
            .collect();
        let request = Request::SendCopiesBatch { to: to.to_owned(), messages };
        Some(match self.request(request).await {
            Ok(Response::Sent { .. }) => Ok(CopiesSent::Sent),
            Ok(Response::Mismatch { missing, extra }) => {
                Ok(CopiesSent::Mismatch { missing, extra })
            }
            Ok(_) => Err(TransportError::Busy("unexpected answer".into())),
            // A relay from before batches of copies: one by one, as before.
            Err(RelayError::Refused { kind: letstalk_wire::ErrorKind::Unsupported, .. }) => {
                return None;
            }
            Err(e) => Err(Self::classify(e)),
        })
    }

    async fn probe(&self, user: &str) {
        use std::sync::atomic::Ordering;
        if self.probed.load(Ordering::Relaxed) {
            return;
        }
        // Our own device list: harmless, and answered `Unsupported` by a relay that keeps
        // one device per account.
        match self.request(Request::ListDevices { user_id: user.to_owned() }).await {
            Err(RelayError::Unavailable) => {}
            answer => {
                if let Err(e) = &answer {
                    self.unsupported(e);
                }
                self.probed.store(true, Ordering::Relaxed);
            }
        }
    }

    fn single_device(&self) -> bool {
        self.is_single()
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
        match self.request(request).await {
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
        match self.request(request).await {
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
        match self.request(request).await {
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

#[cfg(test)]
mod tests;
