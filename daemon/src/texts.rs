//! Texts and receipts received: a text shown once (by its message ID) and acknowledged,
//! a receipt advancing the state of the messages it names; from our own account's other
//! devices, what they sent (shown as outgoing) and what they read.

use rusqlite::Connection;

use letstalk_ipc::types::{Direction, EventBody, MessageKind, MessageState};

use crate::content::{Content, ReceiptKind};
use crate::events::{self, Effects};
use crate::messages::{self, NewMessage};
use crate::outbox;
use crate::store::StoreError;

/// delivery receipt to its sender.
pub fn apply_text(
    tx: &Connection,
    sender: &str,
    conversation: &str,
    text: Content,
    now: i64,
) -> Result<Effects, StoreError> {
    let Content::Text { id, at, text, reply_to } = text else { return Ok(Effects::default()) };
    let new = NewMessage {
        message_id: &id,
        conversation,
        sender,
        direction: Direction::In,
        kind: MessageKind::Text,
        text: Some(&text),
        reply_to: reply_to.as_deref(),
        client_msg_id: None,
        created_at: at,
        received_at: Some(now),
        state: MessageState::Delivered,
        read: false,
    };
    let mut effects = Effects::default();
    if messages::insert(tx, &new)?
        && let Some(message) = messages::get(tx, &id)?
    {
        effects.last_event = Some(crate::notify::received(tx, message, now)?);
    }
    // Acknowledge to the sender even for a duplicate: its first receipt may be lost.
    outbox::enqueue_receipt(tx, sender, ReceiptKind::Delivered, vec![id], now)?;
    effects.queued = true;
    Ok(effects)
}

/// A delivery or read receipt from `sender` for our messages `ids`.
pub fn apply_receipt(
    tx: &Connection,
    sender: &str,
    state: ReceiptKind,
    ids: &[String],
    now: i64,
) -> Result<Effects, StoreError> {
    let state = match state {
        ReceiptKind::Delivered => MessageState::Delivered,
        ReceiptKind::Read => MessageState::Read,
    };
    let mut e = Effects::default();
    for id in ids.iter().take(outbox::MAX_RECEIPT_IDS) {
        // Delivered: the peer opened it, no retry will ask for it again.
        outbox::forget_kept(tx, id, sender)?;
        if let Some((conversation, state)) = messages::advance_from(tx, id, sender, state)? {
            let body = EventBody::MessageState { message_id: id.clone(), conversation, state };
            e.last_event = Some(events::append(tx, &body, now)?);
        }
    }
    Ok(e)
}

/// What another device of our account (`me`) sent to a user (a note to self included):
/// shown once (by its message id) as an outgoing message, already `sent`, announced with
/// `message.received`. A copy for anything but a one-to-one conversation is refused (a
/// group's goes through `groups::apply_sent`, which checks that we are in the group).
pub fn apply_sent(
    tx: &Connection,
    me: &str,
    sent: Content,
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    let Content::Sent { to, .. } = &sent else {
        return Ok(Ok(Effects::default()));
    };
    match crate::validate::conversation_user(to) {
        Some(_) => show_sent(tx, me, sent, now),
        None => Ok(Err("a sent copy for no conversation with a user".into())),
    }
}

/// Shows a sent copy whose conversation the caller has checked (see [`apply_sent`]).
pub fn show_sent(
    tx: &Connection,
    me: &str,
    sent: Content,
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    let Content::Sent { to, id, at, text, reply_to } = sent else {
        return Ok(Ok(Effects::default()));
    };
    let new = NewMessage {
        message_id: &id,
        conversation: &to,
        sender: me,
        direction: Direction::Out,
        kind: MessageKind::Text,
        text: Some(&text),
        reply_to: reply_to.as_deref(),
        client_msg_id: None,
        created_at: at,
        received_at: Some(now),
        state: MessageState::Sent,
        read: true,
    };
    let mut effects = Effects::default();
    if messages::insert(tx, &new)?
        && let Some(message) = messages::get(tx, &id)?
    {
        effects.last_event = Some(crate::notify::received(tx, message, now)?);
    }
    Ok(Ok(effects))
}

/// Another device of our account read messages `ids` of `conversation`: read here too,
/// each announced with `message.state` (read). No receipt goes to their sender: the
/// device that read them sent it.
pub fn apply_read_sync(
    tx: &Connection,
    conversation: &str,
    ids: &[String],
    now: i64,
) -> Result<Effects, StoreError> {
    let mut e = Effects::default();
    for id in ids.iter().take(outbox::MAX_RECEIPT_IDS) {
        if messages::mark_read_id(tx, conversation, id)? {
            let body = EventBody::MessageState {
                message_id: id.clone(),
                conversation: conversation.to_owned(),
                state: MessageState::Read,
            };
            e.last_event = Some(events::append(tx, &body, now)?);
        }
    }
    Ok(e)
}
