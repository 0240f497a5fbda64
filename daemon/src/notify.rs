//! Which incoming messages alert the user: the `notification` event, raised beside
//! `message.received` for a message from someone else in a conversation that is not
//! muted (`conversations.mute`). A frontend shows notifications from these events only,
//! so a muted conversation stays quiet while its messages still arrive and count as
//! unread.

use letstalk_ipc::types::{Direction, EventBody, Message, MessageKind};
use rusqlite::{Connection, OptionalExtension, params};

use crate::events;
use crate::store::StoreError;

/// Appends `message.received` for `message` and, when it should alert the user, a
/// `notification`; returns the last seq written.
pub fn received(conn: &Connection, message: Message, now: i64) -> Result<u64, StoreError> {
    let alert = message.direction == Direction::In
        && message.kind != MessageKind::System
        && !is_muted(conn, &message.conversation)?;
    let note = alert.then(|| EventBody::Notification {
        conversation: message.conversation.clone(),
        message_id: message.message_id.clone(),
        from: message.from.clone(),
    });
    let mut seq = events::append(conn, &EventBody::MessageReceived { message }, now)?;
    if let Some(note) = note {
        seq = events::append(conn, &note, now)?;
    }
    Ok(seq)
}

/// Whether `conversation` is muted.
pub fn is_muted(conn: &Connection, conversation: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM muted WHERE conversation = ?1")?
        .query_row(params![conversation], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Mutes or unmutes `conversation`.
pub fn set_muted(conn: &Connection, conversation: &str, muted: bool) -> Result<(), StoreError> {
    if muted {
        conn.prepare_cached("INSERT INTO muted (conversation) VALUES (?1) ON CONFLICT DO NOTHING")?
            .execute(params![conversation])?;
    } else {
        conn.prepare_cached("DELETE FROM muted WHERE conversation = ?1")?
            .execute(params![conversation])?;
    }
    Ok(())
}
