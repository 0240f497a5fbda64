//! Groups: membership as the admins set it, Signal-style sender keys, and group messages.
//!
//! Membership: an admin's change is a full snapshot of the group ([`Content::Group`]:
//! name, members, admins, a version) sent over the pairwise sessions to every member old
//! and new. A device applies a snapshot only from someone it knows as an admin, and only
//! if its version is newer. A group it has not seen is accepted only from a sender who
//! proves to be its admin ([`proves_admin`]): the group id is a hash of the creator's
//! user id, identity key and a nonce ([`derive_id`]), and every admin after the creator
//! holds a grant signed by the identity key of the admin before it (the last admin
//! leaving signs one for the member who takes over), so the chain ends at the identity
//! key of the pairwise session the snapshot came through. A member leaving tells
//! everyone ([`Content::GroupLeave`]).
//!
//! Sender keys: each member encrypts its group messages once with its own sender key
//! (chain key plus Ed25519 signing key, `letstalk_crypto::SenderKey`) and hands the key
//! to the other members over the pairwise sessions. Whenever the membership changes,
//! every member marks its key stale and rotates it before its next message, handing the
//! new generation only to the current members: a removed member never gets the key of
//! anything sent after its removal (and the relay no longer fans messages out to it).
//!
//! Devices: every device of an account has its own sender key (linking does not carry
//! it), so a receiver keeps one per (member, device), the device being the one the relay
//! names as the sender of the pairwise message that carried it (no device can hand out a
//! key for another). The pairwise distribution reaches every device of a member. When we
//! learn that a member has a device we did not hand our key to (the relay's mismatch
//! names it missing, or a key or message comes from a device of it new to us), our
//! current key goes to that member again; when a member's device is removed (the
//! mismatch names it extra), our key rotates before the next message, as when a member
//! leaves. A device that gets a group message from a device it holds no key of asks its
//! sender ([`Content::SenderKeyRequest`], bounded), who sends the key and, pairwise, the
//! message again ([`Content::GroupResend`]). Our own other devices get our group texts as
//! pairwise sent copies and never hold our sender key.
//!
//! A group message is one relay request (`SendGroup`) carrying one ciphertext for every
//! recipient: `'G' | gid_len u8 | gid | sender-key message`. A message that arrives
//! before its sender's key or before the update naming its sender waits, still
//! encrypted, in `group_pending` and is retried when either arrives; a sender key from
//! someone who is not (yet) a member waits in `group_keys_held` and becomes a key only
//! once a snapshot names its sender. Both are bounded: per group, per stranger, in all.

use std::collections::{BTreeMap, BTreeSet};

use rand_core::{CryptoRng, RngCore};
use rusqlite::{Connection, OptionalExtension, params};

use letstalk_crypto::{IdentityKeyPair, PublicIdentity};
use letstalk_ipc::types::{EventBody, Group};

use crate::content::{Content, Grant};
use crate::events::Effects;
use crate::store::StoreError;
use crate::{events, messages};

/// First byte of a group message body (pairwise envelopes start with their version, 1).
pub const FRAME_TAG: u8 = b'G';
/// Most members of a group, the creator included.
pub const MAX_MEMBERS: usize = 256;
/// Most undecryptable-yet messages kept per group.
const MAX_PENDING: i64 = 1000;
/// Most waiting messages from one sender who is not a member of the group as we know it
/// (or of a group we do not know), over all groups.
const MAX_PENDING_STRANGER: i64 = 100;
/// Most waiting messages, and their bytes, in all.
const MAX_PENDING_TOTAL: i64 = 5000;
const MAX_PENDING_BYTES: i64 = 32 * 1024 * 1024;
/// The largest group message kept waiting (a 64 KiB text, escaped, fits).
const MAX_PENDING_BODY: usize = 512 * 1024;
/// Most sender keys held for a sender who is not a member yet, and in all.
const MAX_HELD_KEYS_PER_SENDER: i64 = 8;
const MAX_HELD_KEYS: i64 = 256;

mod incoming;
mod keys;
mod origin;

use incoming::retry_pending;
pub use incoming::{on_message, on_resend};
use keys::{crypto, release_held_keys, sender_key};
pub use keys::{devices_added, devices_removed, distribute_keys, on_key_request, on_sender_key};
use origin::chain_end;
pub use origin::{Proof, derive_id, new_origin, proves_admin, sign_grant};

/// A group's membership as this device knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub version: u64,
    pub members: BTreeSet<String>,
    pub admins: BTreeSet<String>,
    /// `None` for a group made before groups carried one.
    pub proof: Option<Proof>,
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

    /// The snapshot admin `sender` sends (with its chain, when it holds one).
    pub fn content(&self, sender: &str) -> Content {
        Content::Group {
            gid: self.id.clone(),
            name: self.name.clone(),
            members: self.members.iter().cloned().collect(),
            admins: self.admins.iter().cloned().collect(),
            ver: self.version,
            created: self.created_at,
            origin: self.proof.as_ref().and_then(|p| p.origin_for(sender)),
        }
    }

    pub fn conversation(&self) -> String {
        format!("group:{}", self.id)
    }
}

/// A text or file another device of our account (`me`) sent in a group (a
/// [`Content::Sent`] or [`Content::SentFile`] to `group:<gid>`): shown as ours only in a
/// group we are in; refused otherwise.
pub fn apply_sent(
    tx: &Connection,
    me: &str,
    sent: Content,
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    let (Content::Sent { to, .. } | Content::SentFile { to, .. }) = &sent else {
        return Ok(Ok(Effects::default()));
    };
    let member = match to.strip_prefix("group:") {
        Some(gid) if valid_id(gid) => matches!(load(tx, gid)?, Some((_, true))),
        _ => false,
    };
    if !member {
        return Ok(Err("a sent copy for a group we are not in".into()));
    }
    match sent {
        Content::SentFile { to, file } => crate::files::rows::show_sent(tx, me, &to, &file, now),
        sent => crate::texts::show_sent(tx, me, sent, now),
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
    type Row = (String, i64, i64, bool, Option<String>);
    let row: Option<Row> = conn
        .prepare_cached(
            "SELECT name, created_at, version, member, origin FROM groups WHERE group_id = ?1",
        )?
        .query_row(params![gid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .optional()?;
    let Some((name, created_at, version, member, origin)) = row else { return Ok(None) };
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
        proof: origin.and_then(|o| serde_json::from_str(&o).ok()),
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
    let origin = g.proof.as_ref().and_then(|p| serde_json::to_string(p).ok());
    conn.prepare_cached(
        "INSERT INTO groups (group_id, name, created_at, version, member, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (group_id) DO UPDATE SET name = excluded.name, version = excluded.version,
            member = excluded.member, origin = excluded.origin",
    )?
    .execute(params![
        g.id,
        g.name,
        g.created_at,
        i64::try_from(g.version).unwrap_or(i64::MAX),
        member,
        origin
    ])?;
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
        messages::system_message(conn, &id, &conversation, &text, now)?;
    }
    events::append(conn, &EventBody::GroupChanged { group: new.to_ipc() }, now)
}

/// Queues the group's snapshot, as admin `me` sends it, to each of `to` over the
/// pairwise sessions, and to our own account's other devices (they apply it as from
/// any admin: `on_update`).
pub fn announce<'a>(
    conn: &Connection,
    g: &GroupState,
    me: &str,
    to: impl IntoIterator<Item = &'a String>,
    now: i64,
) -> Result<bool, StoreError> {
    let content = g.content(me);
    let mut queued = false;
    for user in to {
        crate::outbox::enqueue(conn, user, None, &content, now)?;
        queued = true;
    }
    if crate::outbox::own_devices_may_exist(conn, me)? {
        crate::outbox::enqueue(conn, me, None, &content, now)?;
        queued = true;
    }
    Ok(queued)
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
    let relay_id = uuid::Uuid::now_v7().to_string();
    conn.prepare_cached(
        "INSERT INTO outbox (recipient, message_id, envelope, relay_id, created_at, fanout)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        g.conversation(),
        message_id,
        frame(&g.id, &ciphertext),
        relay_id,
        now,
        fanout
    ])?;
    // Kept for a while for a device of a member that cannot read it (linked after we
    // handed our key out): it asks, and gets it pairwise (`on_key_request`).
    crate::outbox::keep_for_resend(
        conn,
        &relay_id,
        &g.conversation(),
        Some(message_id),
        &plaintext,
        0,
        now,
    )?;
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
        && members.iter().all(|m| crate::validate::user_id("member", m).is_ok_and(|v| v == *m))
        && admins.is_subset(&members);
    ok.then_some((members, admins))
}

/// Applies a group snapshot `sender` sent, if `sender` may set it: a known admin of a
/// group we know (and a newer version), or for a group we have not seen, a sender whose
/// snapshot proves it is an admin (see the module doc) and names us as a member.
/// `sender_key` is the identity key of the pairwise session the snapshot came through.
pub fn on_update(
    conn: &Connection,
    me: &str,
    sender: &str,
    sender_key: &PublicIdentity,
    update: &Content,
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    let Content::Group { gid, name, members, admins, ver, created, origin } = update else {
        return Ok(Err("not a group update".into()));
    };
    let Some((members, admins)) = checked_update(gid, name, members, admins) else {
        return Ok(Err("malformed group update".into()));
    };
    let old = load(conn, gid)?.map(|(g, _)| g);
    let proven = origin.as_ref().is_some_and(|o| proves_admin(gid, o, sender, sender_key));
    let allowed = match &old {
        Some(o) => o.admins.contains(sender) && *ver > o.version,
        None => proven && admins.contains(sender) && members.contains(me),
    };
    if !allowed {
        return Ok(Err("group update from a non-admin, unproven or out of date".into()));
    }
    // Keep the proof, with the sender's chain when it brought a sound one, and only the
    // chains of those still admins.
    let mut proof = old.as_ref().and_then(|o| o.proof.clone());
    if let (true, Some(o)) = (proven, origin) {
        match &mut proof {
            Some(p) if p.same_root(o) => {
                p.chains.insert(sender.to_owned(), o.grants.clone());
            }
            Some(_) => {}
            None => {
                proof = Some(Proof {
                    creator: o.creator.clone(),
                    key: o.key.clone(),
                    nonce: o.nonce.clone(),
                    chains: BTreeMap::from([(sender.to_owned(), o.grants.clone())]),
                });
            }
        }
    }
    if let Some(p) = &mut proof {
        p.chains.retain(|admin, _| admins.contains(admin));
    }
    let new = GroupState {
        id: gid.clone(),
        name: name.clone(),
        created_at: old.as_ref().map_or(*created, |o| o.created_at),
        version: *ver,
        members,
        admins,
        proof,
    };
    let seq = apply(conn, me, old.as_ref(), &new, sender, now)?;
    release_held_keys(conn, &new, new.members.contains(me))?;
    let mut effects = retry_pending(conn, me, gid, None, now)?;
    effects.last_event = effects.last_event.max(Some(seq));
    Ok(Ok(effects))
}

/// `sender` left the group: drop them (promoting the first remaining member when no
/// admin is left, the same choice on every device). A `grant` the last admin signed for
/// that member extends the leaver's chain to it, once checked.
pub fn on_leave(
    conn: &Connection,
    me: &str,
    sender: &str,
    gid: &str,
    grant: Option<&Grant>,
    now: i64,
) -> Result<Effects, StoreError> {
    let Some((old, _)) = load(conn, gid)? else { return Ok(Effects::default()) };
    if !old.members.contains(sender) {
        return Ok(Effects::default());
    }
    let mut new = without(&old, sender);
    if let (Some(grant), Some(p)) = (grant, &mut new.proof)
        && new.admins.contains(&grant.admin)
        && !old.admins.contains(&grant.admin)
        && let Some(mut origin) = p.origin_for(sender)
    {
        origin.grants.push(grant.clone());
        if chain_end(gid, &origin).is_some_and(|(admin, _)| admin == grant.admin) {
            p.chains.insert(grant.admin.clone(), origin.grants);
        }
    }
    if let Some(p) = &mut new.proof {
        p.chains.retain(|admin, _| new.admins.contains(admin));
    }
    let seq = apply(conn, me, Some(&old), &new, sender, now)?;
    Ok(Effects { last_event: Some(seq), queued: false })
}

/// The grant the last admin `me` (identity `identity`) signs, leaving, for the member who
/// becomes admin in `new`: `None` when an admin remains, when we hold no chain to extend,
/// or when we have no session with that member (so do not know its identity key).
pub fn successor_grant(
    conn: &Connection,
    old: &GroupState,
    new: &GroupState,
    me: &str,
    identity: &IdentityKeyPair,
) -> Result<Option<Grant>, StoreError> {
    let Some(successor) = new.admins.difference(&old.admins).next() else { return Ok(None) };
    if !old.proof.as_ref().is_some_and(|p| p.chains.contains_key(me)) {
        return Ok(None);
    }
    let Some(session) = crate::e2e::load_session(conn, successor)? else { return Ok(None) };
    Ok(Some(sign_grant(&old.id, identity, successor, session.remote_identity())))
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

#[cfg(test)]
mod tests;
