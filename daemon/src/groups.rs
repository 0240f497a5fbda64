//! Groups: membership as the admins set it, Signal-style sender keys, and group messages.
//!
//! Membership: an admin's change is a full snapshot of the group ([`Content::Group`]:
//! name, members, admins, a version) sent over the pairwise sessions to every member old
//! and new. A device applies a snapshot only from someone it knows as an admin (or, for
//! a group it does not know yet, from an admin named in the snapshot that lists this
//! device's user) and only if its version is newer. A member leaving tells everyone
//! ([`Content::GroupLeave`]).
//!
//! Sender keys: each member encrypts its group messages once with its own sender key
//! (chain key plus Ed25519 signing key, `letstalk_crypto::SenderKey`) and hands the key
//! to the other members over the pairwise sessions. Whenever the membership changes,
//! every member marks its key stale and rotates it before its next message, handing the
//! new generation only to the current members: a removed member never gets the key of
//! anything sent after its removal (and the relay no longer fans messages out to it).
//!
//! A group message is one relay request (`SendGroup`) carrying one ciphertext for every
//! recipient: `'G' | gid_len u8 | gid | sender-key message`. A message that arrives
//! before its sender's key or before the update naming its sender waits, still
//! encrypted, in `group_pending` and is retried when either arrives.

use std::collections::BTreeSet;

use rand_core::{CryptoRng, RngCore};
use rusqlite::{Connection, OptionalExtension, params};

use letstalk_crypto::{SenderKey, SenderKeyDistribution, SenderKeyReceiver};
use letstalk_ipc::types::{EventBody, Group};

use crate::content::Content;
use crate::delivery::{self, Effects};
use crate::store::StoreError;
use crate::{events, messages};

/// First byte of a group message body (pairwise envelopes start with their version, 1).
pub const FRAME_TAG: u8 = b'G';
/// Most members of a group, the creator included.
pub const MAX_MEMBERS: usize = 256;
/// Most undecryptable-yet messages kept per group.
const MAX_PENDING: i64 = 1000;

/// A group's membership as this device knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub version: u64,
    pub members: BTreeSet<String>,
    pub admins: BTreeSet<String>,
}

impl GroupState {
    pub fn to_ipc(&self) -> Group {
        Group {
            group_id: self.id.clone(),
            name: self.name.clone(),
            members: self.members.iter().cloned().collect(),
            admins: self.admins.iter().cloned().collect(),
            created_at: self.created_at,
        }
    }

    /// The snapshot an admin sends.
    pub fn content(&self) -> Content {
        Content::Group {
            gid: self.id.clone(),
            name: self.name.clone(),
            members: self.members.iter().cloned().collect(),
            admins: self.admins.iter().cloned().collect(),
            ver: self.version,
            created: self.created_at,
        }
    }

    pub fn conversation(&self) -> String {
        format!("group:{}", self.id)
    }
}

/// Whether `id` can name a group: 1 to 64 of `A-Z a-z 0-9 - _`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A group message body for the relay.
pub fn frame(gid: &str, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + gid.len() + message.len());
    out.push(FRAME_TAG);
    out.push(u8::try_from(gid.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(gid.as_bytes());
    out.extend_from_slice(message);
    out
}

/// The group id and sender-key message of a group body; `None` if it is not one.
pub fn parse_frame(body: &[u8]) -> Option<(&str, &[u8])> {
    let (&tag, rest) = body.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if tag != FRAME_TAG || rest.len() < usize::from(len) {
        return None;
    }
    let (gid, message) = rest.split_at(usize::from(len));
    let gid = std::str::from_utf8(gid).ok().filter(|g| valid_id(g))?;
    (!message.is_empty()).then_some((gid, message))
}

/// One group and whether this device's user is still in it.
pub fn load(conn: &Connection, gid: &str) -> Result<Option<(GroupState, bool)>, StoreError> {
    let row: Option<(String, i64, i64, bool)> = conn
        .prepare_cached("SELECT name, created_at, version, member FROM groups WHERE group_id = ?1")?
        .query_row(params![gid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((name, created_at, version, member)) = row else { return Ok(None) };
    let mut members = BTreeSet::new();
    let mut admins = BTreeSet::new();
    let mut stmt =
        conn.prepare_cached("SELECT user_id, admin FROM group_members WHERE group_id = ?1")?;
    for row in
        stmt.query_map(params![gid], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))?
    {
        let (user, admin) = row?;
        if admin {
            admins.insert(user.clone());
        }
        members.insert(user);
    }
    let state = GroupState {
        id: gid.to_owned(),
        name,
        created_at,
        version: u64::try_from(version).unwrap_or(0),
        members,
        admins,
    };
    Ok(Some((state, member)))
}

/// The groups this device's user is a member of, oldest first.
pub fn list(conn: &Connection) -> Result<Vec<Group>, StoreError> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "SELECT group_id FROM groups WHERE member = 1 ORDER BY created_at, group_id",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some((g, _)) = load(conn, &id)? {
            out.push(g.to_ipc());
        }
    }
    Ok(out)
}

/// The group's name, for conversation titles.
pub fn name(conn: &Connection, gid: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT name FROM groups WHERE group_id = ?1")?
        .query_row(params![gid], |r| r.get(0))
        .optional()?)
}

fn save(conn: &Connection, g: &GroupState, member: bool) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO groups (group_id, name, created_at, version, member) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (group_id) DO UPDATE SET name = excluded.name, version = excluded.version,
            member = excluded.member",
    )?
    .execute(params![g.id, g.name, g.created_at, i64::try_from(g.version).unwrap_or(i64::MAX), member])?;
    conn.prepare_cached("DELETE FROM group_members WHERE group_id = ?1")?.execute(params![g.id])?;
    let mut ins = conn.prepare_cached(
        "INSERT INTO group_members (group_id, user_id, admin) VALUES (?1, ?2, ?3)",
    )?;
    for m in &g.members {
        ins.execute(params![g.id, m, g.admins.contains(m)])?;
    }
    Ok(())
}

/// Makes `new` the group's state as seen by `me`: saves it, writes a system message for
/// each change, marks our sender key stale when the membership changed (forgets it when
/// we are out), and appends `group.changed`. Returns the last event's seq.
pub fn apply(
    conn: &Connection,
    me: &str,
    old: Option<&GroupState>,
    new: &GroupState,
    by: &str,
    now: i64,
) -> Result<u64, StoreError> {
    let member = new.members.contains(me);
    save(conn, new, member)?;
    if old.is_some_and(|o| o.members != new.members) {
        conn.prepare_cached("UPDATE groups SET key_stale = 1 WHERE group_id = ?1")?
            .execute(params![new.id])?;
    }
    if !member {
        conn.prepare_cached(
            "UPDATE groups SET sender_key = NULL, key_stale = 0 WHERE group_id = ?1",
        )?
        .execute(params![new.id])?;
    }
    let who = |u: &str| if u == me { "You".to_owned() } else { u.to_owned() };
    let mut notes = Vec::new();
    match old {
        None if by == me => {
            notes.push(format!("You created the group \u{201c}{}\u{201d}", new.name))
        }
        None => notes.push(format!("{by} added you to the group \u{201c}{}\u{201d}", new.name)),
        Some(old) => {
            if old.name != new.name {
                notes.push(format!(
                    "{} renamed the group to \u{201c}{}\u{201d}",
                    who(by),
                    new.name
                ));
            }
            for added in new.members.difference(&old.members) {
                let whom = if added == me { "you".to_owned() } else { added.clone() };
                notes.push(format!("{} added {whom}", who(by)));
            }
            for removed in old.members.difference(&new.members) {
                notes.push(if removed == by {
                    format!("{} left", who(removed))
                } else if removed == me {
                    format!("{by} removed you")
                } else {
                    format!("{} removed {removed}", who(by))
                });
            }
        }
    }
    let conversation = new.conversation();
    for text in notes {
        let id = uuid::Uuid::now_v7().to_string();
        delivery::system_message(conn, &id, &conversation, &text, now)?;
    }
    events::append(conn, &EventBody::GroupChanged { group: new.to_ipc() }, now)
}

/// Queues the group's snapshot to each of `to` over the pairwise sessions.
pub fn announce<'a>(
    conn: &Connection,
    g: &GroupState,
    to: impl IntoIterator<Item = &'a String>,
    now: i64,
) -> Result<bool, StoreError> {
    let content = g.content();
    let mut queued = false;
    for user in to {
        delivery::enqueue(conn, user, None, &content, now)?;
        queued = true;
    }
    Ok(queued)
}

fn crypto(context: &str, e: letstalk_crypto::Error) -> StoreError {
    StoreError::Io { context: context.to_owned(), source: std::io::Error::other(e.to_string()) }
}

/// Our sender key for the group, made or rotated first if needed; a new generation is
/// queued (pairwise) to every other member before anything encrypted with it.
fn sender_key(
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
        (Some(bytes), true) => SenderKey::from_bytes(bytes)
            .and_then(|k| k.rotate(rng))
            .map_err(|e| crypto("rotating the sender key", e))?,
        (None, _) => SenderKey::generate(g.id.as_bytes(), rng)
            .map_err(|e| crypto("making a sender key", e))?,
    };
    let distribution = hex::encode(key.distribution().encode().as_slice());
    let content = Content::SenderKey { gid: g.id.clone(), key: distribution };
    for member in g.members.iter().filter(|m| *m != me) {
        delivery::enqueue(conn, member, None, &content, now)?;
    }
    Ok(key)
}

/// Queues a group text: encrypted once with our sender key, one outbox row that the
/// relay fans out to every other member, each member's state starting at `queued`.
/// Returns whether anything was queued (not when we are alone in the group).
pub fn enqueue_text(
    conn: &Connection,
    me: &str,
    g: &GroupState,
    message_id: &str,
    content: &Content,
    rng: &mut (impl RngCore + CryptoRng),
    now: i64,
) -> Result<bool, StoreError> {
    let others: Vec<&String> = g.members.iter().filter(|m| *m != me).collect();
    if others.is_empty() {
        messages::advance_state(conn, message_id, letstalk_ipc::types::MessageState::Sent)?;
        return Ok(false);
    }
    let mut key = sender_key(conn, me, g, rng, now)?;
    let plaintext = zeroize::Zeroizing::new(content.encode());
    let ciphertext = key.encrypt(&plaintext).map_err(|e| crypto("encrypting", e))?;
    conn.prepare_cached("UPDATE groups SET sender_key = ?2, key_stale = 0 WHERE group_id = ?1")?
        .execute(params![g.id, key.to_bytes().as_slice()])?;
    let fanout = serde_json::to_string(&others).unwrap_or_default();
    conn.prepare_cached(
        "INSERT INTO outbox (recipient, message_id, envelope, relay_id, created_at, fanout)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        g.conversation(),
        message_id,
        frame(&g.id, &ciphertext),
        uuid::Uuid::now_v7().to_string(),
        now,
        fanout
    ])?;
    let mut ins = conn.prepare_cached(
        "INSERT INTO message_members (message_id, member, state) VALUES (?1, ?2, 'queued')",
    )?;
    for m in others {
        ins.execute(params![message_id, m])?;
    }
    Ok(true)
}

/// What a received group update may carry, checked.
fn checked_update(
    gid: &str,
    name: &str,
    members: &[String],
    admins: &[String],
) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    let members: BTreeSet<String> = members.iter().cloned().collect();
    let admins: BTreeSet<String> = admins.iter().cloned().collect();
    let ok = valid_id(gid)
        && !name.trim().is_empty()
        && name.chars().count() <= 64
        && members.len() <= MAX_MEMBERS
        && members.iter().all(|m| crate::validate::user_id("member", m).is_ok())
        && admins.is_subset(&members);
    ok.then_some((members, admins))
}

/// Applies a group snapshot `sender` sent, if `sender` may set it.
pub fn on_update(
    conn: &Connection,
    me: &str,
    sender: &str,
    update: &Content,
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    let Content::Group { gid, name, members, admins, ver, created } = update else {
        return Ok(Err("not a group update".into()));
    };
    let Some((members, admins)) = checked_update(gid, name, members, admins) else {
        return Ok(Err("malformed group update".into()));
    };
    let old = load(conn, gid)?.map(|(g, _)| g);
    let allowed = match &old {
        Some(o) => o.admins.contains(sender) && *ver > o.version,
        None => admins.contains(sender) && members.contains(me),
    };
    if !allowed {
        return Ok(Err("group update from a non-admin or out of date".into()));
    }
    let new = GroupState {
        id: gid.clone(),
        name: name.clone(),
        created_at: old.as_ref().map_or(*created, |o| o.created_at),
        version: *ver,
        members,
        admins,
    };
    let seq = apply(conn, me, old.as_ref(), &new, sender, now)?;
    let mut effects = retry_pending(conn, me, gid, None, now)?;
    effects.last_event = effects.last_event.max(Some(seq));
    Ok(Ok(effects))
}

/// `sender` left the group: drop them (promoting the first remaining member when no
/// admin is left, the same choice on every device).
pub fn on_leave(
    conn: &Connection,
    me: &str,
    sender: &str,
    gid: &str,
    now: i64,
) -> Result<Effects, StoreError> {
    let Some((old, _)) = load(conn, gid)? else { return Ok(Effects::default()) };
    if !old.members.contains(sender) {
        return Ok(Effects::default());
    }
    let new = without(&old, sender);
    let seq = apply(conn, me, Some(&old), &new, sender, now)?;
    Ok(Effects { last_event: Some(seq), queued: false })
}

/// `g` without `user`; when no admin is left, the first remaining member becomes one.
pub fn without(g: &GroupState, user: &str) -> GroupState {
    let mut new = g.clone();
    new.members.remove(user);
    new.admins.remove(user);
    if new.admins.is_empty()
        && let Some(first) = new.members.iter().next()
    {
        new.admins.insert(first.clone());
    }
    new
}

/// Stores a member's sender key, then reads what waited for it.
pub fn on_sender_key(
    conn: &Connection,
    me: &str,
    sender: &str,
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
    let generation = distribution.generation();
    conn.prepare_cached(
        "INSERT INTO group_receivers (group_id, sender, generation, state) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (group_id, sender, generation) DO UPDATE SET state = excluded.state",
    )?
    .execute(params![
        gid,
        sender,
        generation,
        distribution.receiver().to_bytes().as_slice()
    ])?;
    // Older generations are kept one step back, for messages still on their way.
    conn.prepare_cached(
        "DELETE FROM group_receivers WHERE group_id = ?1 AND sender = ?2 AND generation < ?3",
    )?
    .execute(params![gid, sender, i64::from(generation) - 1])?;
    retry_pending(conn, me, gid, Some(sender), now).map(Ok)
}

/// What decrypting a group message came to.
enum Opened {
    /// A text, a file or a file cancel.
    Content(Content),
    /// The key or the membership news is not here yet.
    Later,
    Dropped(String),
}

fn open(conn: &Connection, sender: &str, gid: &str, message: &[u8]) -> Result<Opened, StoreError> {
    let Some((g, member)) = load(conn, gid)? else { return Ok(Opened::Later) };
    if !member {
        return Ok(Opened::Dropped("group message after we left".into()));
    }
    if !g.members.contains(sender) {
        return Ok(Opened::Later);
    }
    let Ok(generation) = SenderKeyReceiver::message_generation(message) else {
        return Ok(Opened::Dropped("malformed group message".into()));
    };
    let state: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT state FROM group_receivers WHERE group_id = ?1 AND sender = ?2 AND generation = ?3",
        )?
        .query_row(params![gid, sender, generation], |r| r.get(0))
        .optional()?;
    let Some(state) = state.map(zeroize::Zeroizing::new) else { return Ok(Opened::Later) };
    let mut receiver =
        SenderKeyReceiver::from_bytes(&state).map_err(|e| crypto("sender key state", e))?;
    let plaintext = match receiver.decrypt(message) {
        Ok(p) => zeroize::Zeroizing::new(p),
        Err(e) => return Ok(Opened::Dropped(format!("group message: {e}"))),
    };
    conn.prepare_cached(
        "UPDATE group_receivers SET state = ?4 WHERE group_id = ?1 AND sender = ?2 AND generation = ?3",
    )?
    .execute(params![gid, sender, generation, receiver.to_bytes().as_slice()])?;
    match Content::decode(&plaintext) {
        Some(c @ (Content::Text { .. } | Content::File { .. } | Content::FileCancel { .. })) => {
            Ok(Opened::Content(c))
        }
        _ => Ok(Opened::Dropped("unknown group content".into())),
    }
}

/// A group message from `sender`: shown, or kept until it can be read.
pub fn on_message(
    conn: &Connection,
    sender: &str,
    gid: &str,
    message: &[u8],
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    match open(conn, sender, gid, message)? {
        Opened::Content(content) => apply_content(conn, sender, gid, content, now).map(Ok),
        Opened::Dropped(why) => Ok(Err(why)),
        Opened::Later => {
            conn.prepare_cached(
                "INSERT INTO group_pending (group_id, sender, body, at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![gid, sender, message, now])?;
            conn.prepare_cached(
                "DELETE FROM group_pending WHERE group_id = ?1 AND id NOT IN
                    (SELECT id FROM group_pending WHERE group_id = ?1 ORDER BY id DESC LIMIT ?2)",
            )?
            .execute(params![gid, MAX_PENDING])?;
            Ok(Ok(Effects::default()))
        }
    }
}

/// Shows what a member sent to the group: a text, or a file (with its cancel).
fn apply_content(
    conn: &Connection,
    sender: &str,
    gid: &str,
    content: Content,
    now: i64,
) -> Result<Effects, StoreError> {
    let conversation = format!("group:{gid}");
    match content {
        Content::Text { .. } => delivery::apply_text(conn, sender, &conversation, content, now),
        _ => crate::files::receive(conn, sender, &conversation, &content, now),
    }
}

/// Retries the waiting messages of a group (of one sender, or all), in arrival order.
fn retry_pending(
    conn: &Connection,
    _me: &str,
    gid: &str,
    sender: Option<&str>,
    now: i64,
) -> Result<Effects, StoreError> {
    let rows: Vec<(i64, String, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT id, sender, body FROM group_pending
             WHERE group_id = ?1 AND (?2 IS NULL OR sender = ?2) ORDER BY id",
        )?
        .query_map(params![gid, sender], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut effects = Effects::default();
    for (id, from, body) in rows {
        let outcome = open(conn, &from, gid, &body)?;
        if matches!(outcome, Opened::Later) {
            continue;
        }
        conn.prepare_cached("DELETE FROM group_pending WHERE id = ?1")?.execute(params![id])?;
        if let Opened::Content(content) = outcome {
            effects.merge(apply_content(conn, &from, gid, content, now)?);
        }
    }
    Ok(effects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::NewMessage;
    use crate::store::Store;
    use letstalk_ipc::types::{Direction, MessageKind, MessageState};
    use rand_core::OsRng;

    struct Device {
        _dir: tempfile::TempDir,
        store: Store,
        me: &'static str,
    }

    fn device(me: &'static str) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        Device { _dir: dir, store, me }
    }

    /// An outbox row: recipient, decoded plaintext, envelope.
    type Row = (String, Option<Content>, Option<Vec<u8>>);

    /// Takes every outbox row of `d`.
    fn take_outbox(d: &Device) -> Vec<Row> {
        d.store
            .with(|c| {
                let rows = c
                    .prepare("SELECT recipient, plaintext, envelope FROM outbox ORDER BY seq")?
                    .query_map([], |r| {
                        let plain: Option<Vec<u8>> = r.get(1)?;
                        Ok((r.get(0)?, plain.and_then(|p| Content::decode(&p)), r.get(2)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                c.execute("DELETE FROM outbox", [])?;
                Ok(rows)
            })
            .unwrap()
    }

    fn send(d: &Device, g: &GroupState, id: &str, text: &str) {
        d.store
            .with(|c| {
                let conversation = g.conversation();
                let new = NewMessage {
                    message_id: id,
                    conversation: &conversation,
                    sender: d.me,
                    direction: Direction::Out,
                    kind: MessageKind::Text,
                    text: Some(text),
                    reply_to: None,
                    client_msg_id: None,
                    created_at: 1,
                    received_at: None,
                    state: MessageState::Queued,
                    read: true,
                };
                messages::insert(c, &new)?;
                let content =
                    Content::Text { id: id.into(), at: 1, text: text.into(), reply_to: None };
                enqueue_text(c, d.me, g, id, &content, &mut OsRng, 1)
            })
            .unwrap();
    }

    /// Hands `from`'s queued sender keys for `to` to `to`.
    fn deliver_keys(rows: &[Row], from: &str, to: &Device) {
        for (recipient, content, _) in rows {
            if let (true, Some(Content::SenderKey { gid, key })) = (recipient == to.me, content) {
                to.store.with(|c| on_sender_key(c, to.me, from, gid, key, 2)).unwrap().unwrap();
            }
        }
    }

    fn group_frame(rows: &[Row]) -> Vec<u8> {
        rows.iter()
            .find_map(|(r, _, e)| r.starts_with("group:").then(|| e.clone()))
            .flatten()
            .unwrap()
    }

    fn shown(d: &Device, id: &str) -> Option<String> {
        d.store.with(|c| messages::get(c, id)).unwrap().and_then(|m| m.text)
    }

    #[test]
    fn a_removed_member_holding_every_old_key_cannot_read_what_follows() {
        let (alice, bob, carol) = (device("alice"), device("bob"), device("carol"));
        let g = GroupState {
            id: "g1".into(),
            name: "Crew".into(),
            created_at: 1,
            version: 1,
            members: ["alice", "bob", "carol"].map(String::from).into(),
            admins: ["alice"].map(String::from).into(),
        };
        for d in [&alice, &bob, &carol] {
            d.store.with(|c| apply(c, d.me, None, &g, "alice", 1)).unwrap();
        }

        send(&alice, &g, "m1", "before");
        let rows = take_outbox(&alice);
        deliver_keys(&rows, "alice", &carol);
        deliver_keys(&rows, "alice", &bob);
        let first = group_frame(&rows);
        let (gid, message) = parse_frame(&first).unwrap();
        for d in [&bob, &carol] {
            d.store.with(|c| on_message(c, "alice", gid, message, 2)).unwrap().unwrap();
            assert_eq!(shown(d, "m1").as_deref(), Some("before"));
        }

        // carol is removed; alice's next message rotates her key, for bob only.
        let after = GroupState { version: 2, ..without(&g, "carol") };
        alice.store.with(|c| apply(c, "alice", Some(&g), &after, "alice", 3)).unwrap();
        send(&alice, &after, "m2", "after carol");
        let rows = take_outbox(&alice);
        assert!(rows.iter().all(|(r, _, _)| r != "carol"), "nothing at all is queued for carol");
        let second = group_frame(&rows);
        assert!(!second.windows(11).any(|w| w == b"after carol"));
        let (gid, message) = parse_frame(&second).unwrap();

        // carol, who never heard of her removal and keeps every key she had, reads nothing.
        carol.store.with(|c| on_message(c, "alice", gid, message, 4)).unwrap().unwrap();
        assert_eq!(shown(&carol, "m2"), None);
        let old_keys: Vec<Vec<u8>> = carol
            .store
            .with(|c| {
                Ok(c.prepare("SELECT state FROM group_receivers")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?)
            })
            .unwrap();
        assert!(!old_keys.is_empty());
        for state in old_keys {
            let mut receiver = SenderKeyReceiver::from_bytes(&state).unwrap();
            assert!(receiver.decrypt(message).is_err());
        }

        // bob gets the new generation and reads it.
        deliver_keys(&rows, "alice", &bob);
        bob.store.with(|c| on_message(c, "alice", gid, message, 4)).unwrap().unwrap();
        assert_eq!(shown(&bob, "m2").as_deref(), Some("after carol"));
    }

    #[test]
    fn a_message_before_its_key_waits_and_is_shown_when_the_key_comes() {
        let (alice, bob) = (device("alice"), device("bob"));
        let g = GroupState {
            id: "g2".into(),
            name: "Two".into(),
            created_at: 1,
            version: 1,
            members: ["alice", "bob"].map(String::from).into(),
            admins: ["alice"].map(String::from).into(),
        };
        alice.store.with(|c| apply(c, "alice", None, &g, "alice", 1)).unwrap();
        send(&alice, &g, "m1", "early");
        let rows = take_outbox(&alice);
        let frame = group_frame(&rows);
        let (gid, message) = parse_frame(&frame).unwrap();
        // Neither the group nor the key is known yet: kept, not shown, not lost.
        bob.store.with(|c| on_message(c, "alice", gid, message, 2)).unwrap().unwrap();
        assert_eq!(shown(&bob, "m1"), None);
        let update = g.content();
        bob.store.with(|c| on_update(c, "bob", "alice", &update, 3)).unwrap().unwrap();
        assert_eq!(shown(&bob, "m1"), None);
        deliver_keys(&rows, "alice", &bob);
        assert_eq!(shown(&bob, "m1").as_deref(), Some("early"));
        // A stranger cannot rewrite the group.
        let forged = GroupState { version: 9, name: "Mine".into(), ..g.clone() }.content();
        let refused = bob.store.with(|c| on_update(c, "bob", "mallory", &forged, 4)).unwrap();
        assert!(refused.is_err());
    }

    #[test]
    fn frames_round_trip_and_refuse_garbage() {
        let body = frame("g-1", b"ciphertext");
        assert_eq!(parse_frame(&body), Some(("g-1", &b"ciphertext"[..])));
        assert_eq!(parse_frame(b""), None);
        assert_eq!(parse_frame(b"G"), None);
        assert_eq!(parse_frame(b"G\x05abc"), None);
        assert_eq!(parse_frame(b"G\x03g-1"), None, "no message");
        assert_eq!(parse_frame(b"G\x03g 1x"), None, "bad id");
        assert_eq!(parse_frame(b"\x01\x03g-1x"), None, "a pairwise envelope");
    }

    #[test]
    fn leaving_admin_hands_over_to_the_first_member() {
        let g = GroupState {
            id: "g".into(),
            name: "n".into(),
            created_at: 1,
            version: 1,
            members: ["alice", "bob", "carol"].map(String::from).into(),
            admins: ["alice"].map(String::from).into(),
        };
        let after = without(&g, "alice");
        assert_eq!(after.admins, ["bob"].map(String::from).into());
        assert_eq!(without(&after, "carol").admins, ["bob"].map(String::from).into());
    }
}
