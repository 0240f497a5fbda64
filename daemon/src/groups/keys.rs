//! Sender keys: ours, made or rotated before a message when the membership changed (or a
//! member's device was removed), and the other members', one per (member, device),
//! stored when they come from a member as we know them and held, within bounds, until a
//! snapshot names their sender. A device of a member we had no key from (a device linked
//! since) gets ours ([`introduce`]); one that cannot read our messages may ask for it
//! ([`on_key_request`]).

use rand_core::{CryptoRng, RngCore};
use rusqlite::{Connection, OptionalExtension, params};

use letstalk_crypto::{SenderKey, SenderKeyDistribution};

use super::incoming::retry_pending;
use super::{GroupState, MAX_HELD_KEYS, MAX_HELD_KEYS_PER_SENDER, load, valid_id};
use crate::content::Content;
use crate::events::Effects;
use crate::store::StoreError;

/// Questions for a sender key (and answers) per (group, peer) within [`REQUEST_WINDOW_MS`].
pub(super) const MAX_REQUESTS: i64 = 20;
pub(super) const REQUEST_WINDOW_MS: i64 = 10 * 60 * 1000;
/// Relay ids one question names that are looked at.
pub(super) const MAX_REQUEST_IDS: usize = 20;
/// How long questions and answers are remembered (so none is answered twice).
const REQUEST_MEMORY_MS: i64 = 2 * 24 * 3600 * 1000;

pub(super) fn crypto(context: &str, e: letstalk_crypto::Error) -> StoreError {
    StoreError::Io { context: context.to_owned(), source: std::io::Error::other(e.to_string()) }
}

/// Our sender key for the group, made or rotated first if needed; a new generation is
/// queued (pairwise) to every other member before anything encrypted with it.
pub(super) fn sender_key(
    conn: &Connection,
    me: &str,
    g: &GroupState,
    rng: &mut (impl RngCore + CryptoRng),
    now: i64,
) -> Result<SenderKey, StoreError> {
    let (stored, stale): (Option<Vec<u8>>, bool) = conn
        .prepare_cached("SELECT sender_key, key_stale FROM groups WHERE group_id = ?1")?
        .query_row(params![g.id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let stored = stored.map(zeroize::Zeroizing::new);
    let key = match (&stored, stale) {
        (Some(bytes), false) => {
            return SenderKey::from_bytes(bytes).map_err(|e| crypto("sender key", e));
        }
        (Some(bytes), true) => {
            let key = SenderKey::from_bytes(bytes)
                .and_then(|k| k.rotate(rng))
                .map_err(|e| crypto("rotating the sender key", e))?;
            tracing::debug!(generation = key.generation(), "our group sender key rotated");
            key
        }
        (None, _) => SenderKey::generate(g.id.as_bytes(), rng)
            .map_err(|e| crypto("making a sender key", e))?,
    };
    let content = distribution(&g.id, &key);
    for member in g.members.iter().filter(|m| *m != me) {
        crate::outbox::enqueue(conn, member, None, &content, now)?;
    }
    Ok(key)
}

fn distribution(gid: &str, key: &SenderKey) -> Content {
    let distribution = hex::encode(key.distribution().encode().as_slice());
    Content::SenderKey { gid: gid.to_owned(), key: distribution }
}

/// This device's sender key for every group we are in with others, made (or rotated)
/// and queued to every member now rather than before our first message: a device just
/// linked introduces itself, so the members hand it their keys in return
/// ([`introduce`]). Returns whether anything was queued.
pub fn distribute_keys(
    conn: &Connection,
    me: &str,
    rng: &mut (impl RngCore + CryptoRng),
    now: i64,
) -> Result<bool, StoreError> {
    let ids: Vec<String> = conn
        .prepare_cached("SELECT group_id FROM groups WHERE member = 1 ORDER BY group_id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut queued = false;
    for gid in ids {
        let Some((g, true)) = load(conn, &gid)? else { continue };
        if g.members.iter().all(|m| m == me) {
            continue;
        }
        let key = sender_key(conn, me, &g, rng, now)?;
        conn.prepare_cached(
            "UPDATE groups SET sender_key = ?2, key_stale = 0 WHERE group_id = ?1",
        )?
        .execute(params![gid, key.to_bytes().as_slice()])?;
        queued = true;
    }
    Ok(queued)
}

/// Queues our current sender key for group `gid` to `member` (pairwise: every device of
/// it gets it), unless we have none, it is stale (the next message rotates and hands the
/// new one to everyone), or one is queued for `member` already (a queued row gets a copy
/// for every device the relay names). Returns whether a row was queued.
pub(super) fn hand_key(
    conn: &Connection,
    gid: &str,
    member: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let row: Option<(Option<Vec<u8>>, bool)> = conn
        .prepare_cached(
            "SELECT sender_key, key_stale FROM groups WHERE group_id = ?1 AND member = 1",
        )?
        .query_row(params![gid], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((Some(bytes), false)) = row else { return Ok(false) };
    let bytes = zeroize::Zeroizing::new(bytes);
    let key = SenderKey::from_bytes(&bytes).map_err(|e| crypto("sender key", e))?;
    if key_queued(conn, gid, member)? {
        return Ok(false);
    }
    crate::outbox::enqueue(conn, member, None, &distribution(gid, &key), now)?;
    Ok(true)
}

/// Whether a sender key for `gid` is in the outbox for `member`, not sent yet.
fn key_queued(conn: &Connection, gid: &str, member: &str) -> Result<bool, StoreError> {
    let rows: Vec<Vec<u8>> = conn
        .prepare_cached(
            "SELECT plaintext FROM outbox WHERE recipient = ?1 AND plaintext IS NOT NULL",
        )?
        .query_map(params![member], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(rows.iter().any(|p| {
        let p = zeroize::Zeroizing::new(p.clone());
        matches!(Content::decode(&p), Some(Content::SenderKey { gid: g, .. }) if g == gid)
    }))
}

/// `sender`'s device `device` is new to us in group `gid` (we hold no key of it, but one
/// of another device of `sender`): a device linked since we handed our key out, which
/// cannot read us. Our key goes to `sender` again (Signal's answer to a device list that
/// grew). Returns whether a row was queued.
pub(super) fn introduce(
    conn: &Connection,
    gid: &str,
    sender: &str,
    device: u32,
    now: i64,
) -> Result<bool, StoreError> {
    let (this, others): (i64, i64) = conn
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE device = ?3), count(*) FILTER (WHERE device != ?3)
             FROM group_receivers WHERE group_id = ?1 AND sender = ?2",
        )?
        .query_row(params![gid, sender, device], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if this > 0 || others == 0 {
        return Ok(false);
    }
    hand_key(conn, gid, sender, now)
}

/// `member`'s account has devices we had no session with (the relay's mismatch named
/// them): our current key of every group we share goes to it again, so the new devices
/// can read what we send next. Returns whether anything was queued.
pub fn devices_added(conn: &Connection, member: &str, now: i64) -> Result<bool, StoreError> {
    let mut queued = false;
    for gid in shared_groups(conn, member)? {
        queued |= hand_key(conn, &gid, member, now)?;
    }
    Ok(queued)
}

/// Devices of `member` are gone (the relay's mismatch named them `extra`): their keys are
/// forgotten, and our key of every group we share with `member` rotates before our next
/// message there, as when a member leaves: a removed device must not read what follows.
pub fn devices_removed(conn: &Connection, member: &str, devices: &[u32]) -> Result<(), StoreError> {
    if devices.is_empty() {
        return Ok(());
    }
    for device in devices {
        conn.prepare_cached("DELETE FROM group_receivers WHERE sender = ?1 AND device = ?2")?
            .execute(params![member, device])?;
    }
    let mut n = 0;
    for gid in shared_groups(conn, member)? {
        n += conn
            .prepare_cached(
                "UPDATE groups SET key_stale = 1 WHERE group_id = ?1 AND sender_key IS NOT NULL",
            )?
            .execute(params![gid])?;
    }
    if n > 0 {
        tracing::debug!(groups = n, "a member's device was removed: our group keys rotate");
    }
    Ok(())
}

/// The groups we are in together with `member`.
fn shared_groups(conn: &Connection, member: &str) -> Result<Vec<String>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT g.group_id FROM groups g JOIN group_members m ON m.group_id = g.group_id
             WHERE g.member = 1 AND m.user_id = ?1 ORDER BY g.group_id",
        )?
        .query_map(params![member], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Stores the sender key of `sender`'s device `device` (the device whose pairwise
/// session carried it: a device cannot hand out a key for another device, of its account
/// or any other), then reads what waited for it. A key is stored only for a group we are
/// in, from one of its members as we know them; from anyone else (a group we have not
/// seen yet, a member not yet named by a snapshot) it is held, within bounds, until a
/// snapshot names its sender ([`release_held_keys`]). A device of a member new to us gets
/// our key in return ([`introduce`]).
pub fn on_sender_key(
    conn: &Connection,
    me: &str,
    sender: &str,
    device: u32,
    gid: &str,
    key_hex: &str,
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    let Ok(bytes) = hex::decode(key_hex).map(zeroize::Zeroizing::new) else {
        return Ok(Err("malformed sender key".into()));
    };
    let Ok(distribution) = SenderKeyDistribution::decode(&bytes) else {
        return Ok(Err("malformed sender key".into()));
    };
    if distribution.group_id() != gid.as_bytes() || !valid_id(gid) {
        return Ok(Err("sender key for another group".into()));
    }
    if sender == me {
        return Ok(Err("our own account's sender key".into()));
    }
    match load(conn, gid)? {
        Some((_, false)) => return Ok(Err("sender key for a group we left".into())),
        Some((g, true)) if g.members.contains(sender) => {}
        _ => {
            let (mine, all): (i64, i64) = conn
                .prepare_cached(
                    "SELECT count(*) FILTER (WHERE sender = ?1), count(*) FROM group_keys_held",
                )?
                .query_row(params![sender], |r| Ok((r.get(0)?, r.get(1)?)))?;
            if mine >= MAX_HELD_KEYS_PER_SENDER || all >= MAX_HELD_KEYS {
                return Ok(Err("sender key from a non-member: too many held".into()));
            }
            conn.prepare_cached(
                "INSERT INTO group_keys_held (group_id, sender, device, generation, distribution, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT DO UPDATE SET distribution = excluded.distribution, at = excluded.at",
            )?
            .execute(params![
                gid,
                sender,
                device,
                distribution.generation(),
                bytes.as_slice(),
                now
            ])?;
            return Ok(Ok(Effects::default()));
        }
    }
    let queued = introduce(conn, gid, sender, device, now)?;
    store_key(conn, gid, sender, device, &distribution)?;
    let mut effects = retry_pending(conn, me, gid, Some((sender, device)), now)?;
    effects.queued |= queued;
    Ok(Ok(effects))
}

fn store_key(
    conn: &Connection,
    gid: &str,
    sender: &str,
    device: u32,
    distribution: &SenderKeyDistribution,
) -> Result<(), StoreError> {
    let generation = distribution.generation();
    let held: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT state FROM group_receivers
             WHERE group_id = ?1 AND sender = ?2 AND device = ?3 AND generation = ?4",
        )?
        .query_row(params![gid, sender, device, generation], |r| r.get(0))
        .optional()?;
    // The same chain handed out again (to a device of ours that lacked it): the state we
    // hold reads on from where it is, and keeps the keys of messages still on their way.
    if let Some(state) = held.map(zeroize::Zeroizing::new)
        && letstalk_crypto::SenderKeyReceiver::from_bytes(&state)
            .is_ok_and(|r| r.signing_public() == distribution.signing_public())
    {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO group_receivers (group_id, sender, device, generation, state)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (group_id, sender, device, generation) DO UPDATE SET state = excluded.state",
    )?
    .execute(params![
        gid,
        sender,
        device,
        generation,
        distribution.receiver().to_bytes().as_slice()
    ])?;
    // Older generations are kept one step back, for messages still on their way.
    conn.prepare_cached(
        "DELETE FROM group_receivers
         WHERE group_id = ?1 AND sender = ?2 AND device = ?3 AND generation < ?4",
    )?
    .execute(params![gid, sender, device, i64::from(generation) - 1])?;
    Ok(())
}

/// After a snapshot: the held keys of senders it names become keys (when we are a
/// member); the held keys of a group we are not in are forgotten.
pub(super) fn release_held_keys(
    conn: &Connection,
    g: &GroupState,
    member: bool,
) -> Result<(), StoreError> {
    let held: Vec<(String, u32, i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT sender, device, generation, distribution FROM group_keys_held
             WHERE group_id = ?1 ORDER BY generation",
        )?
        .query_map(params![g.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    for (sender, device, generation, bytes) in held {
        let bytes = zeroize::Zeroizing::new(bytes);
        if member && !g.members.contains(&sender) {
            continue;
        }
        if member && let Ok(distribution) = SenderKeyDistribution::decode(&bytes) {
            store_key(conn, &g.id, &sender, device, &distribution)?;
        }
        conn.prepare_cached(
            "DELETE FROM group_keys_held
             WHERE group_id = ?1 AND sender = ?2 AND device = ?3 AND generation = ?4",
        )?
        .execute(params![g.id, sender, device, generation])?;
    }
    Ok(())
}

/// Forgets questions and answers older than [`REQUEST_MEMORY_MS`].
fn forget_old_requests(conn: &Connection, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM group_key_requests WHERE at < ?1")?
        .execute(params![now - REQUEST_MEMORY_MS])?;
    Ok(())
}

/// Records a question (`outgoing`) or an answer for `relay_id`, if it is the first for
/// it and fewer than [`MAX_REQUESTS`] were recorded for (`gid`, `peer`) within the
/// window. Returns whether it was recorded (may go ahead).
fn record_request(
    conn: &Connection,
    gid: &str,
    peer: &str,
    relay_id: &str,
    outgoing: bool,
    now: i64,
) -> Result<bool, StoreError> {
    let (seen, recent): (i64, i64) = conn
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE relay_id = ?3), count(*) FILTER (WHERE at >= ?5)
             FROM group_key_requests WHERE group_id = ?1 AND peer = ?2 AND outgoing = ?4",
        )?
        .query_row(params![gid, peer, relay_id, outgoing, now - REQUEST_WINDOW_MS], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    if seen > 0 || recent >= MAX_REQUESTS {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO group_key_requests (group_id, peer, relay_id, outgoing, at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![gid, peer, relay_id, outgoing, now])?;
    Ok(true)
}

/// We cannot read `sender`'s group message `relay_id` in `gid`: we hold no key of the
/// device that sent it (we were linked after it handed its key out). `sender` is asked
/// for its key and the message, once per message and at most [`MAX_REQUESTS`] times per
/// window. Returns whether a question was queued.
pub(super) fn ask_for_key(
    conn: &Connection,
    gid: &str,
    sender: &str,
    relay_id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    forget_old_requests(conn, now)?;
    if !record_request(conn, gid, sender, relay_id, true, now)? {
        return Ok(false);
    }
    let ask = Content::SenderKeyRequest { gid: gid.to_owned(), ids: vec![relay_id.to_owned()] };
    crate::outbox::enqueue(conn, sender, None, &ask, now)?;
    tracing::debug!("asked a member for its group sender key");
    Ok(true)
}

/// `requester` cannot read our group messages `ids` (relay ids) in `gid`. Answered only
/// for a member of a group we are in, only for messages this device sent there that went
/// to `requester` (a member added since never gets what came before it) and whose
/// plaintext is still kept (`outbox::GROUP_RESEND_WINDOW_MS`), each message once and at
/// most [`MAX_REQUESTS`] per window: each goes again pairwise ([`Content::GroupResend`]),
/// and our current key with them. Our own account never asks (its devices get sent
/// copies).
pub fn on_key_request(
    conn: &Connection,
    me: &str,
    requester: &str,
    gid: &str,
    ids: &[String],
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    if requester == me {
        return Ok(Err("our own account asking for our sender key".into()));
    }
    let Some((g, true)) = load(conn, gid)? else {
        return Ok(Err("sender key request for a group we are not in".into()));
    };
    if !g.members.contains(requester) {
        return Ok(Err("sender key request from a non-member".into()));
    }
    forget_old_requests(conn, now)?;
    let conversation = g.conversation();
    let mut answered = false;
    for id in ids.iter().take(MAX_REQUEST_IDS) {
        let kept: Option<(String, Vec<u8>)> = conn
            .prepare_cached(
                "SELECT r.message_id, r.plaintext FROM resend r
                 JOIN message_members m ON m.message_id = r.message_id AND m.member = ?3
                 WHERE r.relay_id = ?1 AND r.recipient = ?2",
            )?
            .query_row(params![id, conversation, requester], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((_, plaintext)) = kept else { continue };
        let plaintext = zeroize::Zeroizing::new(plaintext);
        let Some(
            content @ (Content::Text { .. } | Content::File { .. } | Content::FileCancel { .. }),
        ) = Content::decode(&plaintext)
        else {
            continue;
        };
        if !record_request(conn, gid, requester, id, false, now)? {
            continue;
        }
        let again = Content::GroupResend { gid: gid.to_owned(), content: Box::new(content) };
        crate::outbox::enqueue(conn, requester, None, &again, now)?;
        answered = true;
    }
    if !answered {
        return Ok(Ok(Effects::default()));
    }
    hand_key(conn, gid, requester, now)?;
    tracing::debug!("sent a member our group sender key and messages it could not read");
    Ok(Ok(Effects { last_event: None, queued: true }))
}
