//! Messages as the daemon stores them: rows of `messages`, their conversion to the IPC
//! shape, and the queries behind `messages.*` and `conversations.list`.
//!
//! All functions take a connection or transaction and do no I/O beyond it, so a caller
//! can combine them with the outbox and the event log in one transaction.

use rusqlite::{Connection, OptionalExtension, Row, params};

use std::collections::BTreeMap;

use letstalk_ipc::types::{Direction, EventBody, Message, MessageKind, MessageState};
use letstalk_ipc::{ErrorKind, RpcError};

use crate::events;
use crate::store::StoreError;

/// The columns every query selects, in [`from_row`]'s order.
/// The last one is the file object as JSON (null for messages without a file).
pub const COLUMNS: &str = "message_id, conversation, sender, direction, kind, body, reply_to, \
                           created_at, received_at, state, read, error, \
                           (SELECT json_object('name', f.name, 'size', f.size, 'mime', f.mime, \
                           'sha256', f.sha256, 'path', f.path, 'transfer', f.transfer) \
                           FROM files f WHERE f.message_id = messages.message_id)";

/// A message row as the IPC object.
pub fn from_row(r: &Row<'_>) -> rusqlite::Result<Message> {
    let direction: String = r.get(3)?;
    let kind: String = r.get(4)?;
    let state: String = r.get(9)?;
    let error: Option<String> = r.get(11)?;
    let file: Option<String> = r.get(12)?;
    Ok(Message {
        message_id: r.get(0)?,
        conversation: r.get(1)?,
        from: r.get(2)?,
        direction: if direction == "in" { Direction::In } else { Direction::Out },
        kind: parse_kind(&kind),
        text: r.get(5)?,
        reply_to: r.get(6)?,
        file: file.and_then(|json| serde_json::from_str(&json).ok()),
        created_at: r.get(7)?,
        received_at: r.get(8)?,
        state: parse_state(&state),
        read: r.get::<_, i64>(10)? != 0,
        error: error.as_deref().map(parse_error),
        states: None,
    })
}

/// How a failure is stored: its IPC error kind (if it has one) and message, so the
/// message object can carry the spec's error object (`blocked`, `not_found`, ...).
pub fn error_text(kind: Option<ErrorKind>, message: &str) -> String {
    match kind {
        Some(kind) => format!("{}\t{message}", kind.as_str()),
        None => message.to_owned(),
    }
}

fn parse_error(stored: &str) -> RpcError {
    match stored.split_once('\t') {
        Some((kind, message)) => match ErrorKind::parse(kind) {
            Some(kind) => RpcError::new(kind, message),
            None => RpcError::internal(stored),
        },
        None => RpcError::internal(stored),
    }
}

/// Fills `states` of an outgoing group message from `message_members`.
pub fn fill_states(conn: &Connection, m: &mut Message) -> Result<(), StoreError> {
    if m.direction != Direction::Out || !m.conversation.starts_with("group:") {
        return Ok(());
    }
    let mut stmt =
        conn.prepare_cached("SELECT member, state FROM message_members WHERE message_id = ?1")?;
    let states: BTreeMap<String, MessageState> = stmt
        .query_map(params![m.message_id], |r| {
            Ok((r.get::<_, String>(0)?, parse_state(&r.get::<_, String>(1)?)))
        })?
        .collect::<Result<_, _>>()?;
    m.states = Some(states);
    Ok(())
}

fn parse_kind(s: &str) -> MessageKind {
    match s {
        "file" => MessageKind::File,
        "call" => MessageKind::Call,
        "system" => MessageKind::System,
        _ => MessageKind::Text,
    }
}

pub fn kind_str(k: MessageKind) -> &'static str {
    match k {
        MessageKind::Text => "text",
        MessageKind::File => "file",
        MessageKind::Call => "call",
        MessageKind::System => "system",
    }
}

pub fn parse_state(s: &str) -> MessageState {
    match s {
        "failed" => MessageState::Failed,
        "sent" => MessageState::Sent,
        "delivered" => MessageState::Delivered,
        "read" => MessageState::Read,
        _ => MessageState::Queued,
    }
}

pub fn state_str(s: MessageState) -> &'static str {
    match s {
        MessageState::Failed => "failed",
        MessageState::Queued => "queued",
        MessageState::Sent => "sent",
        MessageState::Delivered => "delivered",
        MessageState::Read => "read",
    }
}

/// One message by ID.
pub fn get(conn: &Connection, message_id: &str) -> Result<Option<Message>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM messages WHERE message_id = ?1");
    let mut m = conn.prepare_cached(&sql)?.query_row(params![message_id], from_row).optional()?;
    if let Some(m) = m.as_mut() {
        fill_states(conn, m)?;
    }
    Ok(m)
}

/// The message an earlier `messages.send` with this `client_msg_id` created.
pub fn by_client_id(conn: &Connection, client_msg_id: &str) -> Result<Option<Message>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM messages WHERE client_msg_id = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row(params![client_msg_id], from_row).optional()?)
}

/// A new message to insert.
#[derive(Debug)]
pub struct NewMessage<'a> {
    pub message_id: &'a str,
    pub conversation: &'a str,
    pub sender: &'a str,
    pub direction: Direction,
    pub kind: MessageKind,
    pub text: Option<&'a str>,
    pub reply_to: Option<&'a str>,
    pub client_msg_id: Option<&'a str>,
    pub created_at: i64,
    pub received_at: Option<i64>,
    pub state: MessageState,
    pub read: bool,
}

/// Inserts a message; `false` if one with the same `message_id` exists (exactly-once).
pub fn insert(conn: &Connection, m: &NewMessage<'_>) -> Result<bool, StoreError> {
    let n = conn.prepare_cached(
        "INSERT INTO messages (message_id, conversation, sender, direction, kind, body, reply_to,
                               client_msg_id, created_at, received_at, state, read)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (message_id) DO NOTHING",
    )?
    .execute(params![
        m.message_id,
        m.conversation,
        m.sender,
        if m.direction == Direction::In { "in" } else { "out" },
        kind_str(m.kind),
        m.text,
        m.reply_to,
        m.client_msg_id,
        m.created_at,
        m.received_at,
        state_str(m.state),
        m.read,
    ])?;
    Ok(n == 1)
}

/// Moves an outgoing message forward to `state` (never backwards: a late `sent` after
/// `delivered` changes nothing). Returns the conversation when it changed.
pub fn advance_state(
    conn: &Connection,
    message_id: &str,
    state: MessageState,
) -> Result<Option<String>, StoreError> {
    let current: Option<(String, String)> = conn
        .prepare_cached(
            "SELECT state, conversation FROM messages WHERE message_id = ?1 AND direction = 'out'",
        )?
        .query_row(params![message_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((current, conversation)) = current else { return Ok(None) };
    let current = parse_state(&current);
    if current == MessageState::Failed || current >= state {
        return Ok(None);
    }
    conn.prepare_cached("UPDATE messages SET state = ?2 WHERE message_id = ?1")?
        .execute(params![message_id, state_str(state)])?;
    Ok(Some(conversation))
}

/// A receipt from `member` moves our message `message_id` forward, if `member` is one of
/// its recipients; a receipt from anyone else changes nothing. For a group message the
/// recipients are its `message_members` and the receipt moves the member's own state
/// (the message's state becomes the least advanced of all members); otherwise the one
/// recipient is the conversation's peer, and it moves as [`advance_state`]. Returns the
/// conversation and the message's (overall) state when something changed.
pub fn advance_from(
    conn: &Connection,
    message_id: &str,
    member: &str,
    state: MessageState,
) -> Result<Option<(String, MessageState)>, StoreError> {
    let grouped: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM message_members WHERE message_id = ?1)")?
        .query_row(params![message_id], |r| r.get(0))?;
    let current: Option<String> = conn
        .prepare_cached("SELECT state FROM message_members WHERE message_id = ?1 AND member = ?2")?
        .query_row(params![message_id, member], |r| r.get(0))
        .optional()?;
    let Some(current) = current else {
        if grouped {
            return Ok(None);
        }
        let direct: bool = conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE message_id = ?1 AND conversation = ?2)",
            )?
            .query_row(params![message_id, format!("user:{member}")], |r| r.get(0))?;
        if !direct {
            return Ok(None);
        }
        return Ok(advance_state(conn, message_id, state)?.map(|c| (c, state)));
    };
    let current = parse_state(&current);
    if current == MessageState::Failed || current >= state {
        return Ok(None);
    }
    conn.prepare_cached(
        "UPDATE message_members SET state = ?3 WHERE message_id = ?1 AND member = ?2",
    )?
    .execute(params![message_id, member, state_str(state)])?;
    settle_group_state(conn, message_id)
}

/// Sets a group message's state to the least advanced of its members' (failed first).
pub fn settle_group_state(
    conn: &Connection,
    message_id: &str,
) -> Result<Option<(String, MessageState)>, StoreError> {
    let states: Vec<String> = conn
        .prepare_cached("SELECT state FROM message_members WHERE message_id = ?1")?
        .query_map(params![message_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let Some(least) = states.iter().map(|s| parse_state(s)).min() else { return Ok(None) };
    let conversation: Option<String> = conn
        .prepare_cached(
            "UPDATE messages SET state = ?2 WHERE message_id = ?1 RETURNING conversation",
        )?
        .query_row(params![message_id, state_str(least)], |r| r.get(0))
        .optional()?;
    Ok(conversation.map(|c| (c, least)))
}

/// The local order of a message within a conversation (`None`: not in it).
fn local_position(
    conn: &Connection,
    conversation: &str,
    message_id: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM messages WHERE message_id = ?1 AND conversation = ?2")?
        .query_row(params![message_id, conversation], |r| r.get(0))
        .optional()?)
}

/// A page of a conversation, oldest first, ending before `before` (exclusive).
pub fn list(
    conn: &Connection,
    conversation: &str,
    before: Option<&str>,
    limit: u32,
) -> Result<Option<(Vec<Message>, bool)>, StoreError> {
    let upper: i64 = match before {
        None => i64::MAX,
        Some(id) => match local_position(conn, conversation, id)? {
            Some(row) => row,
            None => return Ok(None),
        },
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM messages WHERE conversation = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows: Vec<Message> = stmt
        .query_map(params![conversation, upper, i64::from(limit) + 1], from_row)?
        .collect::<Result<_, _>>()?;
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    rows.reverse();
    for m in &mut rows {
        fill_states(conn, m)?;
    }
    Ok(Some((rows, has_more)))
}

/// Marks incoming messages of a conversation read, up to and including `up_to` (all
/// when absent). Returns the IDs and senders marked.
pub fn mark_read(
    conn: &Connection,
    conversation: &str,
    up_to: Option<&str>,
) -> Result<Option<Vec<(String, String)>>, StoreError> {
    let upper: i64 = match up_to {
        None => i64::MAX,
        Some(id) => match local_position(conn, conversation, id)? {
            Some(row) => row,
            None => return Ok(None),
        },
    };
    let mut stmt = conn.prepare_cached(
        "UPDATE messages SET read = 1
         WHERE conversation = ?1 AND id <= ?2 AND direction = 'in' AND read = 0
         RETURNING message_id, sender",
    )?;
    let marked = stmt
        .query_map(params![conversation, upper], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(Some(marked))
}

/// Marks incoming message `id` of `conversation` read; `false` if it was already read (or
/// is no such message).
pub fn mark_read_id(conn: &Connection, conversation: &str, id: &str) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE messages SET read = 1
             WHERE message_id = ?1 AND conversation = ?2 AND direction = 'in' AND read = 0",
        )?
        .execute(params![id, conversation])?;
    Ok(n == 1)
}

/// Every conversation with its unread count and last message, most recent first.
pub fn conversations(conn: &Connection) -> Result<Vec<(String, u64, Option<Message>)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT conversation, max(id), sum(direction = 'in' AND read = 0)
         FROM messages GROUP BY conversation ORDER BY max(id) DESC",
    )?;
    let rows: Vec<(String, i64, i64)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
    let sql = format!("SELECT {COLUMNS} FROM messages WHERE id = ?1");
    let mut last = conn.prepare_cached(&sql)?;
    let mut out = Vec::with_capacity(rows.len());
    for (conversation, last_id, unread) in rows {
        let message = last.query_row(params![last_id], from_row).optional()?;
        out.push((conversation, u64::try_from(unread).unwrap_or(0), message));
    }
    Ok(out)
}

/// Inserts a system message into a conversation, with its event.
pub fn system_message(
    conn: &Connection,
    message_id: &str,
    conversation: &str,
    text: &str,
    now: i64,
) -> Result<u64, StoreError> {
    let new = NewMessage {
        message_id,
        conversation,
        sender: "",
        direction: Direction::In,
        kind: MessageKind::System,
        text: Some(text),
        reply_to: None,
        client_msg_id: None,
        created_at: now,
        received_at: Some(now),
        state: MessageState::Delivered,
        read: true,
    };
    insert(conn, &new)?;
    let message = get(conn, message_id)?.ok_or_else(|| StoreError::Io {
        context: "system message".into(),
        source: std::io::Error::other("vanished"),
    })?;
    events::append(conn, &EventBody::MessageReceived { message }, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(c: &Connection, id: &str, conversation: &str) {
        let new = NewMessage {
            message_id: id,
            conversation,
            sender: "alice",
            direction: Direction::Out,
            kind: MessageKind::Text,
            text: Some("hi"),
            reply_to: None,
            client_msg_id: None,
            created_at: 1,
            received_at: None,
            state: MessageState::Sent,
            read: true,
        };
        assert!(insert(c, &new).unwrap());
    }

    fn state(c: &Connection, id: &str) -> MessageState {
        get(c, id).unwrap().unwrap().state
    }

    #[test]
    fn only_a_recipient_of_a_message_moves_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        store
            .with(|c| {
                outgoing(c, "d1", "user:bob");
                // Mallory is not the conversation's peer: nothing changes.
                assert_eq!(advance_from(c, "d1", "mallory", MessageState::Read)?, None);
                assert_eq!(state(c, "d1"), MessageState::Sent);
                assert_eq!(
                    advance_from(c, "d1", "bob", MessageState::Delivered)?,
                    Some(("user:bob".into(), MessageState::Delivered))
                );

                outgoing(c, "g1", "group:g");
                for m in ["bob", "carol"] {
                    c.execute(
                        "INSERT INTO message_members (message_id, member, state) VALUES ('g1', ?1, 'sent')",
                        [m],
                    )?;
                }
                // Not a member of the message: neither its state nor any member's moves.
                assert_eq!(advance_from(c, "g1", "mallory", MessageState::Read)?, None);
                assert_eq!(advance_from(c, "g1", "g", MessageState::Read)?, None);
                assert_eq!(state(c, "g1"), MessageState::Sent);
                let read: i64 = c.query_row(
                    "SELECT count(*) FROM message_members WHERE state = 'read'",
                    [],
                    |r| r.get(0),
                )?;
                assert_eq!(read, 0);
                // A member moves its own state; the message waits for the other.
                assert_eq!(
                    advance_from(c, "g1", "bob", MessageState::Read)?,
                    Some(("group:g".into(), MessageState::Sent))
                );
                assert_eq!(
                    advance_from(c, "g1", "carol", MessageState::Read)?,
                    Some(("group:g".into(), MessageState::Read))
                );
                Ok(())
            })
            .unwrap();
    }
}
