//! Calls: signalling as end-to-end messages, the call log, and the media path.
//!
//! Signalling: `calls.start` stores a ringing call and queues an offer carrying a fresh
//! 32-byte media key; the callee's `calls.accept` queues an answer, `calls.reject` and
//! `calls.hangup` an end with its reason. These travel through the outbox like any
//! message (encrypted, in order, exactly once). A call rings at most the configured
//! timeout, then it is `missed` on both sides (each side applies the timeout itself,
//! and the caller tells the callee). A second call while one rings or runs is `busy`.
//!
//! Media: each side of a live call has a `SOCK_SEQPACKET` socket (mode 0600) beside
//! the IPC socket. Frames the frontend writes are sealed (ChaCha20-Poly1305, SFrame
//! style: the caller is sender 1, the callee sender 2, the nonce is the sender and the
//! frame counter) and sent as QUIC datagrams through the relay, paced, along a route both
//! devices asked the relay for. Received frames are opened, frames older than the
//! newest one delivered are dropped as late, and the rest are written to the socket
//! without waiting: a frontend that does not read loses frames, it never queues them.
//!
//! **Hook for blocking:** [`refuses_calls_from`] decides whether an offer is refused
//! (the contact is blocked, or "block everyone" is on).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use letstalk_crypto::media::{CallKey, FrameOpener, FrameSealer};
use letstalk_ipc::types::{
    Call, CallEndReason, CallEntry, CallMedia, CallState, Direction, EventBody,
};
use letstalk_wire::{MAX_MEDIA_FRAME, MediaDatagram, Request};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::content::{Content, Secret};
use crate::delivery::{self, Effects};
use crate::relay::RelayApi;
use crate::store::StoreError;
use crate::{Daemon, events, now_ms};

/// The caller's and the callee's sender ids in the frame sealing.
const CALLER: u32 = 1;
const CALLEE: u32 = 2;
/// Frames waiting to be paced out; a full queue drops the new frame.
const PACE_QUEUE: usize = 64;
/// A frame that waited this long to go out is late: dropped.
const MAX_FRAME_AGE: Duration = Duration::from_millis(150);
/// Pacing: at most one datagram per this gap on average, with a small burst.
const PACE_GAP: Duration = Duration::from_micros(500);
const PACE_BURST: u32 = 8;
/// Received datagrams queued per call before the newest are dropped.
const INBOUND_QUEUE: usize = 64;
/// How often the manager looks at the calls while one is not over.
const RECONCILE_EVERY: Duration = Duration::from_millis(250);
/// An offer older than this is logged as missed at once (the longest ring timeout).
const MAX_OFFER_AGE_MS: i64 = 600_000;

/// One live call's media on this side.
#[derive(Debug)]
struct Live {
    route: [u8; 16],
    cancel: CancellationToken,
    inbound: mpsc::Sender<bytes::Bytes>,
    socket: PathBuf,
}

/// The calls of this daemon that carry media now, and the manager's wake-up.
#[derive(Debug, Default)]
pub struct Calls {
    live: Mutex<BTreeMap<String, Live>>,
    wake: Notify,
    root: CancellationToken,
}

impl Calls {
    pub fn new(root: CancellationToken) -> Self {
        Self { live: Mutex::default(), wake: Notify::new(), root }
    }

    /// Tells the manager to look at the calls again (signalling arrived).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Live>> {
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The relay's 16-byte route id for a call id (a UUID).
pub fn route_id(call_id: &str) -> Option<[u8; 16]> {
    // Only the canonical form: two spellings of one UUID would share a route and socket.
    crate::localid::LocalId::parse(call_id).map(|id| *id.as_bytes())
}

fn media_str(m: CallMedia) -> &'static str {
    match m {
        CallMedia::Audio => "audio",
        CallMedia::Video => "video",
    }
}

fn reason_str(r: CallEndReason) -> &'static str {
    match r {
        CallEndReason::Hangup => "hangup",
        CallEndReason::Rejected => "rejected",
        CallEndReason::Missed => "missed",
        CallEndReason::Failed => "failed",
        CallEndReason::Busy => "busy",
    }
}

fn parse_reason(s: &str) -> Option<CallEndReason> {
    Some(match s {
        "hangup" => CallEndReason::Hangup,
        "rejected" => CallEndReason::Rejected,
        "missed" => CallEndReason::Missed,
        "failed" => CallEndReason::Failed,
        "busy" => CallEndReason::Busy,
        _ => return None,
    })
}

const COLUMNS: &str =
    "call_id, peer, direction, media, state, started_at, answered_at, ended_at, end_reason";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Call> {
    let direction: String = r.get(2)?;
    let media: String = r.get(3)?;
    let state: String = r.get(4)?;
    let reason: Option<String> = r.get(8)?;
    let answered_at: Option<i64> = r.get(6)?;
    let ended_at: Option<i64> = r.get(7)?;
    let duration_s = ended_at.map(|end| {
        answered_at.map(|a| u64::try_from((end - a).max(0) / 1000).unwrap_or(0)).unwrap_or(0)
    });
    Ok(Call {
        call_id: r.get(0)?,
        peer: r.get(1)?,
        direction: if direction == "in" { Direction::In } else { Direction::Out },
        media: if media == "video" { CallMedia::Video } else { CallMedia::Audio },
        state: match state.as_str() {
            "ringing" => CallState::Ringing,
            "active" => CallState::Active,
            _ => CallState::Ended,
        },
        started_at: r.get(5)?,
        answered_at,
        ended_at,
        duration_s,
        end_reason: reason.as_deref().and_then(parse_reason),
    })
}

/// One call.
pub fn get(conn: &Connection, call_id: &str) -> Result<Option<Call>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM calls WHERE call_id = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row(params![call_id], from_row).optional()?)
}

/// The call log, most recent first.
pub fn list(conn: &Connection, limit: u32) -> Result<Vec<Call>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM calls ORDER BY started_at DESC, rowid DESC LIMIT ?1");
    let rows = conn
        .prepare_cached(&sql)?
        .query_map(params![limit], from_row)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// A call that rings or runs now, other than `except`.
pub fn busy(conn: &Connection, except: Option<&str>) -> Result<bool, StoreError> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM calls WHERE state != 'ended' AND call_id != coalesce(?1, '')",
        )?
        .query_row(params![except], |r| r.get(0))?;
    Ok(n > 0)
}

/// The media key of a call that may carry media.
pub fn key(conn: &Connection, call_id: &str) -> Result<Option<CallKey>, StoreError> {
    let k: Option<Option<Vec<u8>>> = conn
        .prepare_cached("SELECT call_key FROM calls WHERE call_id = ?1")?
        .query_row(params![call_id], |r| r.get(0))
        .optional()?;
    let Some(Some(k)) = k else { return Ok(None) };
    let k = zeroize::Zeroizing::new(k);
    Ok(<[u8; 32]>::try_from(k.as_slice()).ok().map(CallKey::from_bytes))
}

/// The call log as diagnostics reports carry it (time, duration, receiver), oldest
/// first: ended calls only, the most recent 200.
/// The call log as diagnostics reports carry it: who called whom (`me` is this
/// account), when, and how long.
pub fn log_entries(conn: &Connection, me: &str) -> Result<Vec<CallEntry>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM calls WHERE state = 'ended' ORDER BY started_at DESC LIMIT 200"
    );
    let mut calls =
        conn.prepare_cached(&sql)?.query_map([], from_row)?.collect::<Result<Vec<_>, _>>()?;
    calls.reverse();
    Ok(calls
        .into_iter()
        .map(|c| {
            let (caller, receiver) = match c.direction {
                Direction::Out => (me.to_owned(), c.peer),
                Direction::In => (c.peer, me.to_owned()),
            };
            CallEntry {
                started_at: c.started_at,
                duration_s: c.duration_s.unwrap_or(0),
                direction: c.direction,
                caller,
                receiver,
            }
        })
        .collect())
}

/// Whether an offer from `sender` is refused: the contact is blocked, or "block
/// everyone" is on. A refused offer is dropped without an answer (the relay has already
/// told the caller `blocked` when it refused the message itself).
pub fn refuses_calls_from(conn: &Connection, sender: &str) -> Result<bool, StoreError> {
    Ok(delivery::is_blocked(conn, sender)? || delivery::blocks_everyone(conn)?)
}

fn event(conn: &Connection, call_id: &str, incoming: bool, now: i64) -> Result<u64, StoreError> {
    let call = get(conn, call_id)?.ok_or_else(|| StoreError::Io {
        context: "call".into(),
        source: std::io::Error::other("vanished"),
    })?;
    let body =
        if incoming { EventBody::CallIncoming { call } } else { EventBody::CallState { call } };
    events::append(conn, &body, now)
}

/// Inserts a new call (inside the caller's transaction).
pub fn insert(
    tx: &Connection,
    call_id: &str,
    peer: &str,
    direction: Direction,
    media: CallMedia,
    key: Option<&CallKey>,
    now: i64,
) -> Result<(), StoreError> {
    let key = key.map(CallKey::to_bytes);
    tx.prepare_cached(
        "INSERT INTO calls (call_id, peer, direction, media, state, started_at, call_key)
         VALUES (?1, ?2, ?3, ?4, 'ringing', ?5, ?6)",
    )?
    .execute(params![
        call_id,
        peer,
        if direction == Direction::In { "in" } else { "out" },
        media_str(media),
        now,
        key.as_ref().map(|k| k.as_slice())
    ])?;
    Ok(())
}

/// Moves a ringing call to active (inside the caller's transaction); returns its event.
pub fn answered(tx: &Connection, call_id: &str, now: i64) -> Result<Option<u64>, StoreError> {
    let n = tx
        .prepare_cached(
            "UPDATE calls SET state = 'active', answered_at = ?2 WHERE call_id = ?1 AND state = 'ringing'",
        )?
        .execute(params![call_id, now])?;
    if n == 0 {
        return Ok(None);
    }
    event(tx, call_id, false, now).map(Some)
}

/// Ends a call that has not ended (inside the caller's transaction), forgetting its
/// key; returns its event.
pub fn ended(
    tx: &Connection,
    call_id: &str,
    reason: CallEndReason,
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let n = tx
        .prepare_cached(
            "UPDATE calls SET state = 'ended', ended_at = ?2, end_reason = ?3, call_key = NULL
             WHERE call_id = ?1 AND state != 'ended'",
        )?
        .execute(params![call_id, now, reason_str(reason)])?;
    if n == 0 {
        return Ok(None);
    }
    event(tx, call_id, false, now).map(Some)
}

/// Queues signalling for `peer` (inside the caller's transaction).
pub fn signal(tx: &Connection, peer: &str, content: &Content, now: i64) -> Result<(), StoreError> {
    delivery::enqueue(tx, peer, None, content, now)
}

/// Applies call signalling from `sender` (inside the receive transaction).
pub fn receive(
    tx: &Connection,
    sender: &str,
    content: &Content,
    now: i64,
) -> Result<Effects, StoreError> {
    let mut out = Effects::default();
    match content {
        Content::CallOffer { call_id, at, media, key } => {
            if route_id(call_id).is_none() || get(tx, call_id)?.is_some() {
                return Ok(out);
            }
            let media = if media == "video" { CallMedia::Video } else { CallMedia::Audio };
            let end =
                |reason: &str| Content::CallEnd { call_id: call_id.clone(), reason: reason.into() };
            if refuses_calls_from(tx, sender)? {
                return Ok(out);
            }
            let key = hex::decode(&key.0).ok().and_then(|k| <[u8; 32]>::try_from(k).ok());
            let Some(key) = key.map(CallKey::from_bytes) else { return Ok(out) };
            insert(tx, call_id, sender, Direction::In, media, Some(&key), now)?;
            if busy(tx, Some(call_id))? {
                out.last_event = ended(tx, call_id, CallEndReason::Busy, now)?;
                signal(tx, sender, &end("busy"), now)?;
                out.queued = true;
            } else if now - at > MAX_OFFER_AGE_MS {
                out.last_event = ended(tx, call_id, CallEndReason::Missed, now)?;
            } else {
                out.last_event = Some(event(tx, call_id, true, now)?);
            }
        }
        Content::CallAnswer { call_id } => {
            if let Some(call) = get(tx, call_id)?
                && call.peer == sender
                && call.direction == Direction::Out
            {
                out.last_event = answered(tx, call_id, now)?;
            }
        }
        Content::CallEnd { call_id, reason } => {
            if let Some(call) = get(tx, call_id)?
                && call.peer == sender
            {
                let reason = match (parse_reason(reason), call.state, call.direction) {
                    // The caller gave up before we answered: missed, for us.
                    (Some(CallEndReason::Hangup), CallState::Ringing, Direction::In) => {
                        CallEndReason::Missed
                    }
                    (Some(r), _, _) => r,
                    (None, _, _) => CallEndReason::Failed,
                };
                out.last_event = ended(tx, call_id, reason, now)?;
            }
        }
        _ => {}
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Media

/// Where the media sockets of calls live: `calls/` beside the IPC socket.
pub fn socket_dir(daemon: &Daemon) -> PathBuf {
    crate::files::runtime_dir(daemon).join("calls")
}

/// Sets up this side's media for a live call: the socket (0600), the relay route, and
/// the task moving frames. Returns the socket's path.
pub async fn start_media(
    daemon: &Arc<Daemon>,
    relay: &Arc<dyn RelayApi>,
    call: &Call,
    key: CallKey,
) -> Result<PathBuf, String> {
    if let Some(l) = daemon.calls.lock().get(&call.call_id) {
        return Ok(l.socket.clone());
    }
    let route = route_id(&call.call_id).ok_or("bad call id")?;
    let dir = socket_dir(daemon);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let path = dir.join(format!("{}.sock", uuid::Uuid::from_bytes(route).simple()));
    let _ = std::fs::remove_file(&path);
    let listener = tokio_seqpacket::UnixSeqpacketListener::bind(&path)
        .map_err(|e| format!("media socket {}: {e}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("media socket {}: {e}", path.display()))?;
    }
    crate::relay::expect_ok(
        relay.as_ref(),
        Request::CallRoute { call_id: route, peer: call.peer.clone() },
    )
    .await
    .map_err(|e| {
        let _ = std::fs::remove_file(&path);
        e.to_string()
    })?;
    let (me, peer) = match call.direction {
        Direction::Out => (CALLER, CALLEE),
        Direction::In => (CALLEE, CALLER),
    };
    let sealer = FrameSealer::new(&key, me).map_err(|e| e.to_string())?;
    let opener = FrameOpener::new(&key);
    let cancel = daemon.calls.root.child_token();
    let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    daemon.calls.lock().insert(
        call.call_id.clone(),
        Live { route, cancel: cancel.clone(), inbound, socket: path.clone() },
    );
    let media = Media { relay: relay.clone(), route, peer_sender: peer, sealer, opener };
    tokio::spawn(media.run(listener, inbound_rx, cancel));
    tracing::info!(media = ?call.media, "call media up");
    Ok(path)
}

/// Ends a call as failed here and tells the peer; the event's seq.
pub fn failed(
    tx: &Connection,
    call_id: &str,
    peer: &str,
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let seq = ended(tx, call_id, CallEndReason::Failed, now)?;
    let end = Content::CallEnd { call_id: call_id.to_owned(), reason: "failed".into() };
    signal(tx, peer, &end, now)?;
    Ok(seq)
}

/// Tears down the media of every call (restore defaults).
pub fn stop_all_media(daemon: &Daemon, relay: Option<&Arc<dyn RelayApi>>) {
    let ids: Vec<String> = daemon.calls.lock().keys().cloned().collect();
    for id in ids {
        stop_media(daemon, relay, &id);
    }
}

/// Tears down this side's media for a call: the task, the socket, the relay route.
pub fn stop_media(daemon: &Daemon, relay: Option<&Arc<dyn RelayApi>>, call_id: &str) {
    let live = daemon.calls.lock().remove(call_id);
    let Some(live) = live else { return };
    live.cancel.cancel();
    let _ = std::fs::remove_file(&live.socket);
    if let Some(relay) = relay {
        let relay = relay.clone();
        tokio::spawn(async move {
            let _ = crate::relay::expect_ok(
                relay.as_ref(),
                Request::CallUnroute { call_id: live.route },
            )
            .await;
        });
    }
    tracing::info!("call media down");
}

struct Media {
    relay: Arc<dyn RelayApi>,
    route: [u8; 16],
    peer_sender: u32,
    sealer: FrameSealer,
    opener: FrameOpener,
}

impl Media {
    async fn run(
        self,
        mut listener: tokio_seqpacket::UnixSeqpacketListener,
        mut inbound: mpsc::Receiver<bytes::Bytes>,
        cancel: CancellationToken,
    ) {
        let Self { relay, route, peer_sender, sealer, mut opener } = self;
        let (pace_tx, pace_rx) = mpsc::channel::<(Instant, Vec<u8>)>(PACE_QUEUE);
        tokio::spawn(pacer(relay, route, sealer, pace_rx, cancel.clone()));
        let mut socket: Option<tokio_seqpacket::UnixSeqpacket> = None;
        let mut last_delivered: Option<u64> = None;
        let mut buf = vec![0u8; 2048];
        let (mut late, mut bad) = (0u64, 0u64);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                accepted = listener.accept(), if socket.is_none() => match accepted {
                    Ok(s) => socket = Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "media socket accept");
                        break;
                    }
                },
                n = async { match &socket { Some(s) => s.recv(&mut buf).await, None => std::future::pending().await } } => {
                    match n {
                        // The frontend went away: wait for it to connect again.
                        Err(_) => socket = None,
                        Ok(info) if info.bytes_read() == 0 => socket = None,
                        Ok(info) => {
                            let n = info.bytes_read();
                            let frame = buf.get(..n).unwrap_or_default();
                            if info.truncated()
                                || n > MAX_MEDIA_FRAME
                                || !matches!(frame.first(), Some(0 | 1))
                            {
                                bad += 1;
                                continue;
                            }
                            if pace_tx.try_send((Instant::now(), frame.to_vec())).is_err() {
                                late += 1;
                            }
                        }
                    }
                }
                Some(d) = inbound.recv() => {
                    let Ok(parsed) = MediaDatagram::decode(&d) else { bad += 1; continue };
                    let Ok(opened) = opener.open(parsed.sealed) else { bad += 1; continue };
                    if opened.sender != peer_sender {
                        bad += 1;
                        continue;
                    }
                    // Order is kept: a frame older than one already delivered is late.
                    if last_delivered.is_some_and(|l| opened.counter <= l) {
                        late += 1;
                        continue;
                    }
                    last_delivered = Some(opened.counter);
                    if let Some(s) = &socket {
                        // Never wait for the frontend: a frame it cannot take now is lost.
                        match s.send(&opened.payload).now_or_never() {
                            Some(Ok(_)) => {}
                            _ => late += 1,
                        }
                    }
                }
            }
        }
        if late + bad > 0 {
            tracing::debug!(late, bad, "media frames dropped");
        }
    }
}

/// Seals and sends queued frames, spaced by [`PACE_GAP`] (a burst of [`PACE_BURST`]
/// may go at once): unpaced datagram bursts lose far more on real paths. A frame that
/// waited over [`MAX_FRAME_AGE`] is dropped.
async fn pacer(
    relay: Arc<dyn RelayApi>,
    route: [u8; 16],
    mut sealer: FrameSealer,
    mut rx: mpsc::Receiver<(Instant, Vec<u8>)>,
    cancel: CancellationToken,
) {
    let mut next = Instant::now();
    let mut dropped = 0u64;
    loop {
        let (queued_at, frame) = tokio::select! {
            () = cancel.cancelled() => break,
            f = rx.recv() => match f { Some(f) => f, None => break },
        };
        if queued_at.elapsed() > MAX_FRAME_AGE {
            dropped += 1;
            continue;
        }
        let now = Instant::now();
        let earliest = next.checked_sub(PACE_GAP * PACE_BURST).unwrap_or(next);
        if now < earliest {
            tokio::time::sleep_until((earliest).into()).await;
        }
        next = next.max(now - PACE_GAP * PACE_BURST) + PACE_GAP;
        let Ok(sealed) = sealer.seal(&frame) else { break };
        let Ok(datagram) = (MediaDatagram { call_id: route, sealed: &sealed }).encode() else {
            dropped += 1;
            continue;
        };
        if relay.send_datagram(datagram).is_err() {
            dropped += 1;
        }
    }
    if dropped > 0 {
        tracing::debug!(dropped, "outgoing media frames dropped");
    }
}

// ---------------------------------------------------------------------------------------
// The manager

/// Dispatches received datagrams to their calls, enforces the ring timeout, and tears
/// down media of calls that ended (on either side), until `cancel`.
pub async fn run(daemon: Arc<Daemon>, relay: Arc<dyn RelayApi>, cancel: CancellationToken) {
    let Some(mut datagrams) = relay.take_datagrams() else { return };
    // Media of calls live before a restart cannot resume (the frontend's socket is gone):
    // such calls end as failed on start.
    fail_stale(&daemon).await;
    // The manager looks again every RECONCILE_EVERY only while a call is not over (a
    // ring timeout to enforce, media to tear down when the peer hangs up); with no call
    // it waits for a wake (signalling received, a call started or answered here), so an
    // idle daemon has no timer here.
    let mut busy = reconcile(&daemon, &relay).await;
    loop {
        let recheck = async {
            if busy {
                tokio::time::sleep(RECONCILE_EVERY).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(d) = datagrams.recv() => {
                let Ok(parsed) = MediaDatagram::decode(&d) else { continue };
                let target = daemon
                    .calls
                    .lock()
                    .values()
                    .find(|l| l.route == parsed.call_id)
                    .map(|l| l.inbound.clone());
                if let Some(tx) = target {
                    let _ = tx.try_send(d);
                }
            }
            () = daemon.calls.wake.notified() => busy = reconcile(&daemon, &relay).await,
            () = recheck => busy = reconcile(&daemon, &relay).await,
        }
    }
    let ids: Vec<String> = daemon.calls.lock().keys().cloned().collect();
    for id in ids {
        stop_media(&daemon, None, &id);
    }
}

async fn fail_stale(daemon: &Arc<Daemon>) {
    let seqs = daemon
        .store
        .call(|c| {
            let tx = c.transaction()?;
            let ids: Vec<(String, String)> = tx
                .prepare_cached("SELECT call_id, peer FROM calls WHERE state = 'active'")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut last = None;
            let now = now_ms();
            for (id, peer) in ids {
                last = failed(&tx, &id, &peer, now)?.or(last);
            }
            tx.commit()?;
            Ok(last)
        })
        .await;
    if let Ok(Some(seq)) = seqs {
        daemon.bus.published(seq);
        daemon.wake_sender();
    }
}

/// Ends calls that rang too long and stops the media of calls that ended; `true` while
/// some call is not over (or the store could not be read: look again soon).
async fn reconcile(daemon: &Arc<Daemon>, relay: &Arc<dyn RelayApi>) -> bool {
    let timeout = i64::try_from(daemon.config.ring_timeout.as_millis()).unwrap_or(i64::MAX);
    let outcome = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            let expired: Vec<(String, String, String)> = tx
                .prepare_cached(
                    "SELECT call_id, peer, direction FROM calls
                     WHERE state = 'ringing' AND started_at <= ?1",
                )?
                .query_map(params![now - timeout], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let mut last = None;
            let mut queued = false;
            for (id, peer, direction) in expired {
                last = ended(&tx, &id, CallEndReason::Missed, now)?.or(last);
                if direction == "out" {
                    signal(
                        &tx,
                        &peer,
                        &Content::CallEnd { call_id: id, reason: "missed".into() },
                        now,
                    )?;
                    queued = true;
                }
            }
            let live: Vec<String> = tx
                .prepare_cached("SELECT call_id FROM calls WHERE state != 'ended'")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            tx.commit()?;
            Ok((last, queued, live))
        })
        .await;
    let Ok((last, queued, live)) = outcome else { return true };
    if let Some(seq) = last {
        daemon.bus.published(seq);
    }
    if queued {
        daemon.wake_sender();
    }
    let gone: Vec<String> =
        daemon.calls.lock().keys().filter(|id| !live.contains(id)).cloned().collect();
    for id in gone {
        stop_media(daemon, Some(relay), &id);
    }
    !live.is_empty()
}

/// The signalling content that starts a call.
pub fn offer(call_id: &str, media: CallMedia, key: &CallKey, now: i64) -> Content {
    Content::CallOffer {
        call_id: call_id.to_owned(),
        at: now,
        media: media_str(media).to_owned(),
        key: Secret(hex::encode(key.to_bytes().as_slice())),
    }
}
