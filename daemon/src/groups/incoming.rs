//! Group messages received: opened with the key of the sender's device that sent them
//! and shown, or kept, still encrypted, until the key or the membership news arrives
//! (bounded), then retried. A message from a device we hold no key of at all makes us
//! ask its sender for the key (and the message, pairwise).

use rusqlite::{Connection, OptionalExtension, params};

use letstalk_crypto::SenderKeyReceiver;

use super::keys::{ask_for_key, introduce};
use super::{
    MAX_PENDING, MAX_PENDING_BODY, MAX_PENDING_BYTES, MAX_PENDING_STRANGER, MAX_PENDING_TOTAL,
    crypto, load,
};
use crate::content::Content;
use crate::events::Effects;
use crate::store::StoreError;

/// What decrypting a group message came to.
enum Opened {
    /// A text, a file or a file cancel.
    Content(Content),
    /// The key or the membership news is not here yet; `unknown_device`: we are in the
    /// group with the sender, and hold no key at all of the device that sent it.
    Later {
        unknown_device: bool,
    },
    /// Sent before the point where the key we hold of its device starts (the key came
    /// to us later, in answer to our new device): only its sender can give it to us.
    BeforeOurKey,
    Dropped(String),
}

fn open(
    conn: &Connection,
    sender: &str,
    device: u32,
    gid: &str,
    message: &[u8],
) -> Result<Opened, StoreError> {
    let Some((g, member)) = load(conn, gid)? else {
        return Ok(Opened::Later { unknown_device: false });
    };
    if !member {
        return Ok(Opened::Dropped("group message after we left".into()));
    }
    if !g.members.contains(sender) {
        return Ok(Opened::Later { unknown_device: false });
    }
    let Ok(generation) = SenderKeyReceiver::message_generation(message) else {
        return Ok(Opened::Dropped("malformed group message".into()));
    };
    let state: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT state FROM group_receivers
             WHERE group_id = ?1 AND sender = ?2 AND device = ?3 AND generation = ?4",
        )?
        .query_row(params![gid, sender, device, generation], |r| r.get(0))
        .optional()?;
    let Some(state) = state.map(zeroize::Zeroizing::new) else {
        let known: i64 = conn
            .prepare_cached(
                "SELECT count(*) FROM group_receivers
                 WHERE group_id = ?1 AND sender = ?2 AND device = ?3",
            )?
            .query_row(params![gid, sender, device], |r| r.get(0))?;
        return Ok(Opened::Later { unknown_device: known == 0 });
    };
    let mut receiver =
        SenderKeyReceiver::from_bytes(&state).map_err(|e| crypto("sender key state", e))?;
    let plaintext = match receiver.decrypt(message) {
        Ok(p) => zeroize::Zeroizing::new(p),
        // (A replay under a relay id of its own would end here too: asking its sender
        // for it brings nothing, as the sender knows no such relay id.)
        Err(letstalk_crypto::Error::Duplicate) => return Ok(Opened::BeforeOurKey),
        Err(e) => return Ok(Opened::Dropped(format!("group message: {e}"))),
    };
    conn.prepare_cached(
        "UPDATE group_receivers SET state = ?5
         WHERE group_id = ?1 AND sender = ?2 AND device = ?3 AND generation = ?4",
    )?
    .execute(params![gid, sender, device, generation, receiver.to_bytes().as_slice()])?;
    match Content::decode(&plaintext) {
        Some(c @ (Content::Text { .. } | Content::File { .. } | Content::FileCancel { .. })) => {
            Ok(Opened::Content(c))
        }
        _ => Ok(Opened::Dropped("unknown group content".into())),
    }
}

/// A group message from `sender`'s device `device` (as the relay tells it), delivered as
/// `relay_id`: shown, or kept until it can be read. Kept for want of any key of that
/// device, it makes us ask `sender` for the key and the message ([`ask_for_key`]), and
/// hand it ours if the device is new to us ([`introduce`]).
pub fn on_message(
    conn: &Connection,
    sender: &str,
    device: u32,
    relay_id: &str,
    gid: &str,
    message: &[u8],
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    match open(conn, sender, device, gid, message)? {
        Opened::Content(content) => apply_content(conn, sender, gid, content, now),
        Opened::Dropped(why) => Ok(Err(why)),
        Opened::BeforeOurKey => {
            let queued = ask_for_key(conn, gid, sender, relay_id, now)?;
            Ok(Ok(Effects { last_event: None, queued }))
        }
        Opened::Later { unknown_device } => {
            // Kept within bounds: an oversized body, a stranger (not a member of the group
            // as we know it, or of a group we do not know) with too many waiting, or a
            // full table: dropped.
            if message.len() > MAX_PENDING_BODY {
                return Ok(Err("group message too large to keep waiting".into()));
            }
            let vouched = load(conn, gid)?.is_some_and(|(g, m)| m && g.members.contains(sender));
            let (mine, all, bytes): (i64, i64, i64) = conn
                .prepare_cached(
                    "SELECT count(*) FILTER (WHERE sender = ?1), count(*), coalesce(sum(length(body)), 0)
                     FROM group_pending",
                )?
                .query_row(params![sender], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            if (!vouched && mine >= MAX_PENDING_STRANGER)
                || all >= MAX_PENDING_TOTAL
                || bytes >= MAX_PENDING_BYTES
            {
                return Ok(Err("too many group messages waiting: dropped".into()));
            }
            conn.prepare_cached(
                "INSERT INTO group_pending (group_id, sender, device, relay_id, body, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![gid, sender, device, relay_id, message, now])?;
            conn.prepare_cached(
                "DELETE FROM group_pending WHERE group_id = ?1 AND id NOT IN
                    (SELECT id FROM group_pending WHERE group_id = ?1 ORDER BY id DESC LIMIT ?2)",
            )?
            .execute(params![gid, MAX_PENDING])?;
            let mut effects = Effects::default();
            if unknown_device {
                effects.queued |= introduce(conn, gid, sender, device, now)?;
                effects.queued |= ask_for_key(conn, gid, sender, relay_id, now)?;
            }
            Ok(Ok(effects))
        }
    }
}

/// One of `sender`'s group messages in `gid` sent again pairwise, because we could not
/// read it: shown as the group message it was (once, by its message id), if `sender`
/// is a member of a group we are in.
pub fn on_resend(
    conn: &Connection,
    sender: &str,
    gid: &str,
    content: Content,
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    let Some((g, true)) = load(conn, gid)? else {
        return Ok(Err("a group message again for a group we are not in".into()));
    };
    if !g.members.contains(sender) {
        return Ok(Err("a group message again from a non-member".into()));
    }
    match content {
        c @ (Content::Text { .. } | Content::File { .. } | Content::FileCancel { .. }) => {
            apply_content(conn, sender, gid, c, now)
        }
        _ => Ok(Err("unknown group content".into())),
    }
}

/// Shows what a member sent to the group: a text, or a file (with its cancel).
/// `Ok(Err(why))`: dropped, nothing changed.
fn apply_content(
    conn: &Connection,
    sender: &str,
    gid: &str,
    content: Content,
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    let conversation = format!("group:{gid}");
    match content {
        Content::Text { .. } => {
            crate::texts::apply_text(conn, sender, &conversation, content, now).map(Ok)
        }
        _ => crate::files::rows::receive(conn, sender, &conversation, &content, now),
    }
}

/// Retries the waiting messages of a group (of one sender's device, or all), in arrival
/// order.
pub(super) fn retry_pending(
    conn: &Connection,
    _me: &str,
    gid: &str,
    sender: Option<(&str, u32)>,
    now: i64,
) -> Result<Effects, StoreError> {
    let (who, device) = (sender.map(|s| s.0), sender.map(|s| s.1));
    type Pending = (i64, String, u32, Option<String>, Vec<u8>);
    let rows: Vec<Pending> = conn
        .prepare_cached(
            "SELECT id, sender, device, relay_id, body FROM group_pending
             WHERE group_id = ?1 AND (?2 IS NULL OR (sender = ?2 AND device = ?3)) ORDER BY id",
        )?
        .query_map(params![gid, who, device], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut effects = Effects::default();
    for (id, from, from_device, relay_id, body) in rows {
        let outcome = open(conn, &from, from_device, gid, &body)?;
        if matches!(outcome, Opened::Later { .. }) {
            continue;
        }
        conn.prepare_cached("DELETE FROM group_pending WHERE id = ?1")?.execute(params![id])?;
        if let (Opened::BeforeOurKey, Some(relay_id)) = (&outcome, &relay_id) {
            effects.queued |= ask_for_key(conn, gid, &from, relay_id, now)?;
        }
        if let Opened::Content(content) = outcome {
            match apply_content(conn, &from, gid, content, now)? {
                Ok(e) => effects.merge(e),
                Err(why) => tracing::warn!(reason = %why, "dropped a waiting group message"),
            }
        }
    }
    Ok(effects)
}
