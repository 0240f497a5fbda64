//! `messages.*` and `conversations.list`.

use std::sync::Arc;

use letstalk_ipc::types::{
    ConversationSummary, ConversationsList, Direction, Empty, ListParams, ListResult,
    MarkReadParams, MarkedResult, MessageIdParams, MessageKind, MessageResult, MessageState,
    MuteParams, SendParams, TypingParams, TypingResult,
};
use letstalk_ipc::{ErrorKind, RpcError};

use super::{internal, logged_in};
use crate::clock::PATH;
use crate::content::{Content, ReceiptKind};
use crate::messages::{self, NewMessage};
use crate::{Daemon, now_ms, validate};

/// The largest text accepted, in bytes of UTF-8.
pub(super) const MAX_TEXT: usize = 64 * 1024;

/// Whom a conversation is with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Peer {
    User(String),
    Group(String),
}

impl Peer {
    fn conversation(&self) -> String {
        match self {
            Self::User(u) => format!("user:{u}"),
            Self::Group(g) => format!("group:{g}"),
        }
    }
}

/// A conversation name, checked: `user:<user_id>` or `group:<group_id>`.
fn conversation_peer(field: &str, conversation: &str) -> Result<Peer, RpcError> {
    match conversation.split_once(':') {
        Some(("user", id)) => validate::user_id(field, id).map(Peer::User),
        Some(("group", id)) if crate::groups::valid_id(id) => Ok(Peer::Group(id.to_owned())),
        _ => Err(RpcError::invalid_params(
            field,
            format!("{field} must be \"user:<user_id>\" or \"group:<group_id>\""),
        )),
    }
}

pub(super) async fn send(daemon: &Arc<Daemon>, p: SendParams) -> Result<MessageResult, RpcError> {
    let me = logged_in(daemon).await?;
    let peer = conversation_peer("to", &p.to)?;
    if p.text.len() > MAX_TEXT {
        return Err(RpcError::new(
            ErrorKind::TooLarge,
            format!("text is longer than {MAX_TEXT} bytes"),
        ));
    }
    if p.text.is_empty() {
        return Err(RpcError::invalid_params("text", "text is empty"));
    }
    if p.client_msg_id.as_ref().is_some_and(|c| c.is_empty() || c.len() > 128) {
        return Err(RpcError::invalid_params(
            "client_msg_id",
            "client_msg_id must be 1 to 128 bytes",
        ));
    }
    let conversation = peer.conversation();
    // A message to a user is encrypted in the transaction that accepts it (after the
    // checks below, by the group commit's `Finish`, once per recipient and group): one
    // disk sync makes the message, its ciphertext and the ratchet durable, and the sender
    // has nothing left to commit before handing it to the relay. Our own account's
    // "sent" copy too, when there are other devices to seal it for (else nothing is
    // queued for it and sealing finds nothing).
    let seal = match &peer {
        Peer::User(user) if *user != me => vec![user.clone(), me.clone()],
        Peer::User(user) => vec![user.clone()],
        Peer::Group(_) => vec![me.clone()],
    };
    let outcome = daemon
        .writes
        .run_then(seal, move |tx| {
            if let Some(client_id) = &p.client_msg_id
                && let Some(existing) = messages::by_client_id(tx, client_id)?
            {
                return Ok(Ok((existing, false)));
            }
            if let Some(reply_to) = &p.reply_to
                && messages::get(tx, reply_to)?.is_none()
            {
                return Ok(Err(RpcError::new(ErrorKind::NotFound, "reply_to: no such message")));
            }
            let group = match &peer {
                Peer::User(user) => {
                    if crate::contacts::is_blocked(tx, user)? {
                        return Ok(Err(RpcError::new(
                            ErrorKind::Blocked,
                            format!("you block {user}: unblock them to write"),
                        )));
                    }
                    if let Err(e) = crate::trust::check_sendable(tx, [user.as_str()])? {
                        return Ok(Err(e));
                    }
                    None
                }
                Peer::Group(gid) => match crate::groups::load(tx, gid)? {
                    Some((g, true)) => {
                        let others = g.members.iter().map(String::as_str).filter(|m| *m != me);
                        if let Err(e) = crate::trust::check_sendable(tx, others)? {
                            return Ok(Err(e));
                        }
                        Some(g)
                    }
                    _ => return Ok(Err(RpcError::new(ErrorKind::NotFound, "no such group"))),
                },
            };
            let now = now_ms();
            let id = uuid::Uuid::now_v7().to_string();
            let new = NewMessage {
                message_id: &id,
                conversation: &conversation,
                sender: &me,
                direction: Direction::Out,
                kind: MessageKind::Text,
                text: Some(&p.text),
                reply_to: p.reply_to.as_deref(),
                client_msg_id: p.client_msg_id.as_deref(),
                created_at: now,
                received_at: None,
                state: MessageState::Queued,
                read: true,
            };
            messages::insert(tx, &new)?;
            let content = Content::Text {
                id: id.clone(),
                at: now,
                text: p.text.clone(),
                reply_to: p.reply_to.clone(),
            };
            // What our account's other devices are sent to show it as ours.
            let sent_copy = Content::Sent {
                to: conversation.clone(),
                id: id.clone(),
                at: now,
                text: p.text.clone(),
                reply_to: p.reply_to.clone(),
            };
            let queued = match (&peer, &group) {
                (_, Some(g)) => {
                    let queued = crate::groups::enqueue_text(
                        tx,
                        &me,
                        g,
                        &id,
                        &content,
                        &mut rand_core::OsRng,
                        now,
                    )?;
                    // Our account's other devices show it as ours, from a pairwise copy:
                    // they never need our sender key.
                    if crate::outbox::own_devices_may_exist(tx, &me)? {
                        crate::outbox::enqueue(tx, &me, None, &sent_copy, now)?;
                        true
                    } else {
                        queued
                    }
                }
                (Peer::User(user), None) => {
                    let relay = crate::outbox::enqueue(tx, user, Some(&id), &content, now)?;
                    tracing::debug!(target: PATH, msg = %id, %relay, "accepted");
                    // Our account's other devices show it too; not queued when the relay
                    // told us there are none (no round trip per message for one device).
                    if *user != me && crate::outbox::own_devices_may_exist(tx, &me)? {
                        crate::outbox::enqueue(tx, &me, None, &sent_copy, now)?;
                    }
                    true
                }
                (Peer::Group(_), None) => false,
            };
            let message = messages::get(tx, &id)?.ok_or_else(|| crate::store::StoreError::Io {
                context: "new message".into(),
                source: std::io::Error::other("vanished"),
            })?;
            Ok(Ok((message, queued)))
        })
        .await
        .map_err(internal)??;
    let (message, queued) = outcome;
    tracing::debug!(target: PATH, msg = %message.message_id, "committed");
    if queued {
        daemon.wake_sender();
    }
    Ok(MessageResult { message })
}

pub(super) async fn list(daemon: &Arc<Daemon>, p: ListParams) -> Result<ListResult, RpcError> {
    logged_in(daemon).await?;
    conversation_peer("conversation", &p.conversation)?;
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(RpcError::invalid_params("limit", "limit must be 1 to 500"));
    }
    let page = daemon
        .store
        .call(move |c| messages::list(c, &p.conversation, p.before.as_deref(), limit))
        .await
        .map_err(internal)?;
    let (messages, has_more) =
        page.ok_or_else(|| RpcError::new(ErrorKind::NotFound, "before: no such message"))?;
    Ok(ListResult { messages, has_more })
}

pub(super) async fn get(
    daemon: &Arc<Daemon>,
    p: MessageIdParams,
) -> Result<MessageResult, RpcError> {
    logged_in(daemon).await?;
    let message =
        daemon.store.call(move |c| messages::get(c, &p.message_id)).await.map_err(internal)?;
    let message = message.ok_or_else(|| RpcError::new(ErrorKind::NotFound, "no such message"))?;
    Ok(MessageResult { message })
}

pub(super) async fn mark_read(
    daemon: &Arc<Daemon>,
    p: MarkReadParams,
) -> Result<MarkedResult, RpcError> {
    let me = logged_in(daemon).await?;
    conversation_peer("conversation", &p.conversation)?;
    let outcome = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let Some(marked) = messages::mark_read(&tx, &p.conversation, p.up_to.as_deref())?
            else {
                return Ok(None);
            };
            let settings = super::Settings::load(&tx)?;
            let now = now_ms();
            let mut queued = false;
            // Read here, read on our account's other devices: they mark the same messages
            // and send no receipt of their own (this device sends it, once).
            if !marked.is_empty() && crate::outbox::own_devices_may_exist(&tx, &me)? {
                let ids: Vec<String> = marked.iter().map(|(id, _)| id.clone()).collect();
                for chunk in ids.chunks(crate::outbox::MAX_RECEIPT_IDS) {
                    let sync = Content::ReadSync {
                        conversation: p.conversation.clone(),
                        ids: chunk.to_vec(),
                    };
                    crate::outbox::enqueue(&tx, &me, None, &sync, now)?;
                }
                queued = true;
            }
            if settings.read_receipts && !marked.is_empty() {
                let mut by_sender: std::collections::BTreeMap<String, Vec<String>> =
                    Default::default();
                for (id, sender) in &marked {
                    by_sender.entry(sender.clone()).or_default().push(id.clone());
                }
                for (sender, ids) in by_sender {
                    crate::outbox::enqueue(
                        &tx,
                        &sender,
                        None,
                        &Content::Receipt { state: ReceiptKind::Read, ids },
                        now,
                    )?;
                    queued = true;
                }
            }
            tx.commit()?;
            Ok(Some((marked.len() as u64, queued)))
        })
        .await
        .map_err(internal)?;
    let (marked, queued) =
        outcome.ok_or_else(|| RpcError::new(ErrorKind::NotFound, "up_to: no such message"))?;
    if queued {
        daemon.wake_sender();
    }
    Ok(MarkedResult { marked })
}

/// Deletes a message on this device, for good: one not yet handed to the relay is
/// withdrawn (the outbox gate is held, as "clear chat history" does, so it is never
/// half-way out) and never sent; its text, its events, its file's encrypted and opened
/// copies go, and the relay's copy of the file is released when it still holds one for
/// us. A message already sent is deleted here only.
pub(super) async fn delete(daemon: &Arc<Daemon>, p: MessageIdParams) -> Result<Empty, RpcError> {
    let me = logged_in(daemon).await?;
    let _gate = daemon.outbox_gate.lock().await;
    // A transfer of its file stops first, so nothing writes its bytes again.
    daemon.transfers.stop(&p.message_id).await;
    let id = p.message_id.clone();
    let erased = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let erased = crate::erase::erase(&tx, &me, &[id])?;
            tx.commit()?;
            crate::erase::checkpoint(c)?;
            Ok(erased)
        })
        .await
        .map_err(internal)?;
    if erased.deleted == 0 {
        return Err(RpcError::new(ErrorKind::NotFound, "no such message"));
    }
    // Again: the worker may have picked the row up between the stop and the commit.
    daemon.transfers.stop(&p.message_id).await;
    crate::erase::remove_files(daemon, &erased);
    if erased.owes_relay {
        crate::erase::wake(daemon);
    }
    Ok(Empty {})
}

/// `messages.typing`: with `settings.typing` on, tells the other members of the
/// conversation (at most once every few seconds) that this user is typing.
pub(super) async fn typing(
    daemon: &Arc<Daemon>,
    p: TypingParams,
) -> Result<TypingResult, RpcError> {
    let me = logged_in(daemon).await?;
    let peer = conversation_peer("conversation", &p.conversation)?;
    let enabled = daemon.store.call(|c| super::Settings::load(c)).await.map_err(internal)?.typing;
    if !enabled || !crate::typing::due(daemon, &peer.conversation()) {
        return Ok(TypingResult { sent: false });
    }
    let outcome = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let (recipients, gid) = match &peer {
                Peer::User(user) => {
                    if crate::contacts::is_blocked(&tx, user)? {
                        return Ok(Err(RpcError::new(
                            ErrorKind::Blocked,
                            format!("you block {user}: unblock them to write"),
                        )));
                    }
                    (vec![user.clone()], None)
                }
                Peer::Group(gid) => match crate::groups::load(&tx, gid)? {
                    Some((g, true)) => {
                        (g.members.into_iter().filter(|m| *m != me).collect(), Some(gid.clone()))
                    }
                    _ => return Ok(Err(RpcError::new(ErrorKind::NotFound, "no such group"))),
                },
            };
            crate::typing::enqueue(&tx, &recipients, gid.as_deref(), now_ms())?;
            tx.commit()?;
            Ok(Ok(!recipients.is_empty()))
        })
        .await
        .map_err(internal)??;
    if outcome {
        daemon.wake_sender();
    }
    Ok(TypingResult { sent: outcome })
}

/// `conversations.mute`: a muted conversation raises no `notification` events.
pub(super) async fn mute(daemon: &Arc<Daemon>, p: MuteParams) -> Result<Empty, RpcError> {
    logged_in(daemon).await?;
    let conversation = conversation_peer("conversation", &p.conversation)?.conversation();
    daemon
        .store
        .call(move |c| crate::notify::set_muted(c, &conversation, p.muted))
        .await
        .map_err(internal)?;
    Ok(Empty {})
}

pub(super) async fn conversations(
    daemon: &Arc<Daemon>,
    _: Empty,
) -> Result<ConversationsList, RpcError> {
    logged_in(daemon).await?;
    let rows = daemon
        .store
        .call(|c| {
            let rows = messages::conversations(c)?;
            let mut out = Vec::with_capacity(rows.len());
            for (conversation, unread, last) in rows {
                if let Some(gid) = conversation.strip_prefix("group:") {
                    let title = crate::groups::name(c, gid)?.unwrap_or_else(|| gid.to_owned());
                    let muted = crate::notify::is_muted(c, &conversation)?;
                    out.push(ConversationSummary {
                        conversation,
                        title,
                        unread,
                        last_message: last,
                        muted,
                    });
                    continue;
                }
                let peer = conversation.strip_prefix("user:").unwrap_or(&conversation).to_owned();
                let title: Option<(String, Option<String>)> = {
                    use rusqlite::OptionalExtension;
                    c.query_row(
                        "SELECT nickname, alias FROM contacts WHERE user_id = ?1",
                        [&peer],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?
                };
                let title = match title {
                    Some((_, Some(alias))) => alias,
                    Some((nick, None)) if !nick.is_empty() => nick,
                    _ => peer,
                };
                let muted = crate::notify::is_muted(c, &conversation)?;
                out.push(ConversationSummary {
                    conversation,
                    title,
                    unread,
                    last_message: last,
                    muted,
                });
            }
            Ok(out)
        })
        .await
        .map_err(internal)?;
    Ok(ConversationsList { conversations: rows })
}
