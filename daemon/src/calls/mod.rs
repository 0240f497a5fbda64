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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use letstalk_crypto::media::{CallKey, FrameOpener, FrameSealer};
use letstalk_ipc::types::{
    Call, CallEndReason, CallEntry, CallMedia, CallState, Direction, EventBody,
};
use letstalk_wire::{MAX_MEDIA_FRAME, MediaDatagram, Request};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::content::{Content, Secret};
use crate::events::Effects;
use crate::relay::RelayApi;
use crate::store::StoreError;
use crate::{Daemon, events, now_ms};

pub mod live;
mod media;

pub use live::Calls;
use live::Live;
pub use media::*;

/// The caller's sender id in the frame sealing.
const CALLER: u32 = 1;

/// A callee device's sender id in the frame sealing: 1 + its device id (device 1 is 2).
/// Sender ids must differ between everyone who seals under one call key (the frame key
/// and nonce come from them): two devices of the callee that accepted at the same
/// instant both send until one gives way (`yields_to`), and must never reuse a nonce.
fn callee_sender(device: u32) -> u32 {
    CALLER.saturating_add(device.max(1))
}

/// Whether frames from `sender` are the peer's: on the caller's side any callee
/// device's, on a callee's only the caller's.
fn from_peer(direction: Direction, sender: u32) -> bool {
    match direction {
        Direction::Out => sender != CALLER,
        Direction::In => sender == CALLER,
    }
}
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
        CallEndReason::AnsweredElsewhere => "answered_elsewhere",
    }
}

fn parse_reason(s: &str) -> Option<CallEndReason> {
    Some(match s {
        "hangup" => CallEndReason::Hangup,
        "rejected" => CallEndReason::Rejected,
        "missed" => CallEndReason::Missed,
        "failed" => CallEndReason::Failed,
        "busy" => CallEndReason::Busy,
        "answered_elsewhere" => CallEndReason::AnsweredElsewhere,
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
    Ok(crate::contacts::is_blocked(conn, sender)? || crate::settings::blocks_everyone(conn)?)
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
    crate::outbox::enqueue(tx, peer, None, content, now).map(drop)
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

/// Applies call signalling from our own account's device `from_device` (inside the
/// receive transaction): a call rings on every device of the callee, and the first to
/// take it tells the others. Its answer ends the call ringing here with
/// `answered_elsewhere`; its refusal ends it as `rejected`. Only an incoming call is
/// touched, never one this device made.
///
/// Two devices that accept at the same instant are both active before either hears of
/// the other. Both apply the same rule to the other's answer: the device with the lower
/// relay device id keeps the call, the other ends it here as `answered_elsewhere`
/// ([`yields_to`]); its media goes down with the manager's next look (`reconcile`), and
/// the caller, who took the first answer, is not told anything. `own_device` is this
/// device's id on the relay; unknown, this device never gives up a call it took.
pub fn receive_own(
    tx: &Connection,
    content: &Content,
    from_device: u32,
    own_device: Option<u32>,
    now: i64,
) -> Result<Effects, StoreError> {
    let (call_id, reason) = match content {
        Content::CallAnswer { call_id } => (call_id, CallEndReason::AnsweredElsewhere),
        Content::CallEnd { call_id, reason } if reason == "rejected" => {
            (call_id, CallEndReason::Rejected)
        }
        _ => return Ok(Effects::default()),
    };
    let mut out = Effects::default();
    let Some(call) = get(tx, call_id)? else { return Ok(out) };
    if call.direction != Direction::In {
        return Ok(out);
    }
    let ends = match (call.state, reason) {
        (CallState::Ringing, _) => true,
        (CallState::Active, CallEndReason::AnsweredElsewhere) => {
            own_device.is_some_and(|me| yields_to(me, from_device))
        }
        _ => false,
    };
    if ends {
        out.last_event = ended(tx, call_id, reason, now)?;
    }
    Ok(out)
}

/// Whether device `me`, having taken a call, gives it up to device `other` of the same
/// account that took it too: the lower device id keeps it. Both devices decide the same
/// way, whatever order the answers arrive in, so exactly one keeps the call.
pub fn yields_to(me: u32, other: u32) -> bool {
    other < me
}

/// Tells our account's other devices that this one took or declined an incoming call
/// (inside the caller's transaction): they stop ringing ([`receive_own`]). To an account
/// with no other device this costs nothing on the wire (the sender marks it sent).
pub fn tell_own_devices(
    tx: &Connection,
    me: &str,
    content: &Content,
    now: i64,
) -> Result<(), StoreError> {
    signal(tx, me, content, now)
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

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0d6f4c1e-58a5-4c3b-9a4b-2f6d8c1a7e90";

    /// Two devices of the callee that accepted at once both seal frames for a moment:
    /// under one call key they must never share a sender id (and so a frame key and
    /// nonce). Every device an account may have gets its own, none the caller's; the
    /// caller takes frames from any of them, a callee only the caller's.
    #[test]
    fn every_device_in_a_call_seals_under_its_own_sender_id() {
        let max = u32::try_from(letstalk_wire::MAX_DEVICES).unwrap();
        let ids: std::collections::BTreeSet<u32> =
            std::iter::once(CALLER).chain((1..=max).map(callee_sender)).collect();
        assert_eq!(ids.len(), 1 + letstalk_wire::MAX_DEVICES);
        assert_eq!(callee_sender(1), 2, "device 1 keeps the sender id it always had");
        assert!(from_peer(Direction::Out, callee_sender(2)) && !from_peer(Direction::Out, CALLER));
        assert!(from_peer(Direction::In, CALLER) && !from_peer(Direction::In, callee_sender(1)));
        // Frame 0 of two callee devices: different nonces, each opens at the caller.
        let key = CallKey::generate(&mut rand_core::OsRng);
        let mut a = FrameSealer::new(&key, callee_sender(1)).unwrap();
        let mut b = FrameSealer::new(&key, callee_sender(2)).unwrap();
        let (fa, fb) = (a.seal(b"x").unwrap(), b.seal(b"x").unwrap());
        assert_ne!(fa.get(..12), fb.get(..12));
        let mut caller = FrameOpener::new(&key);
        for f in [fa, fb] {
            assert!(from_peer(Direction::Out, caller.open(&f).unwrap().sender));
        }
    }

    /// One incoming call from bob, in `state` on this device, then our device `from`'s
    /// `content` about it applied on this device (`own`): the call as it is after.
    fn after(state: CallState, content: Content, from: u32, own: Option<u32>) -> Call {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        store
            .with(|c| {
                let key = CallKey::from_bytes([7; 32]);
                insert(c, ID, "bob", Direction::In, CallMedia::Audio, Some(&key), 1)?;
                if state == CallState::Active {
                    answered(c, ID, 2)?;
                }
                receive_own(c, &content, from, own, 3)?;
                Ok(get(c, ID)?.unwrap())
            })
            .unwrap()
    }

    fn answer() -> Content {
        Content::CallAnswer { call_id: ID.into() }
    }

    /// Two of our devices took one call at the same instant: each hears the other's
    /// answer while its own call is active. The lower device id keeps the call, the other
    /// ends it as answered elsewhere, whatever the ids and whichever answer comes first.
    #[test]
    fn of_two_devices_that_took_a_call_at_once_the_lower_id_keeps_it() {
        for (own, other) in [(1, 2), (2, 1), (2, 5), (7, 3)] {
            let call = after(CallState::Active, answer(), other, Some(own));
            let kept = own < other;
            assert_eq!(call.state == CallState::Active, kept, "{own} vs {other}");
            if !kept {
                assert_eq!(call.end_reason, Some(CallEndReason::AnsweredElsewhere));
            }
            // The other device applies the same rule to this one's answer.
            let theirs = after(CallState::Active, answer(), own, Some(other));
            assert_ne!(theirs.state == CallState::Active, kept, "exactly one keeps it");
        }
        assert!(yields_to(2, 1) && !yields_to(1, 2));
    }

    #[test]
    fn a_ringing_call_ends_whoever_answered_and_a_taken_one_only_by_the_rule() {
        let call = after(CallState::Ringing, answer(), 9, Some(1));
        assert_eq!(
            (call.state, call.end_reason),
            (CallState::Ended, Some(CallEndReason::AnsweredElsewhere))
        );
        let reject = Content::CallEnd { call_id: ID.into(), reason: "rejected".into() };
        let call = after(CallState::Ringing, reject.clone(), 2, Some(1));
        assert_eq!(call.end_reason, Some(CallEndReason::Rejected));
        // A call taken here is never declined by another device, and without knowing its
        // own id a device keeps what it took.
        assert_eq!(after(CallState::Active, reject, 1, Some(2)).state, CallState::Active);
        assert_eq!(after(CallState::Active, answer(), 1, None).state, CallState::Active);
    }
}
