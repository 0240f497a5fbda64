//! Group messages received: opened with the sender's key and shown, or kept, still
//! encrypted, until the key or the membership news arrives (bounded), then retried.

use rusqlite::{Connection, OptionalExtension, params};

use letstalk_crypto::SenderKeyReceiver;

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
        Opened::Content(content) => apply_content(conn, sender, gid, content, now),
        Opened::Dropped(why) => Ok(Err(why)),
        Opened::Later => {
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

/// Retries the waiting messages of a group (of one sender, or all), in arrival order.
pub(super) fn retry_pending(
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
            match apply_content(conn, &from, gid, content, now)? {
                Ok(e) => effects.merge(e),
                Err(why) => tracing::warn!(reason = %why, "dropped a waiting group message"),
            }
        }
    }
    Ok(effects)
}
