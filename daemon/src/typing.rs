//! Typing notifications (`settings.typing`): `messages.typing` tells a conversation's
//! other members that this user is typing, and a contact's notification becomes a
//! `conversation.typing` event. With the setting off, none are sent and none are shown.
//!
//! They travel end to end like receipts (pairwise, also to each member of a group), at
//! most one per conversation every [`EVERY`], and one that arrives more than [`STALE_MS`]
//! from its sending time (it waited in an outbox while the relay was away) is dropped.

use std::time::{Duration, Instant};

use letstalk_ipc::types::EventBody;
use rusqlite::Connection;

use crate::content::Content;
use crate::events::Effects;
use crate::store::StoreError;
use crate::{Daemon, events};

/// At most one typing notification per conversation this often.
pub const EVERY: Duration = Duration::from_secs(5);

/// A typing notification this far from its sending time is old news.
const STALE_MS: i64 = 30_000;

/// Whether a notification for `conversation` may go now (and if so, remembers it).
pub fn due(daemon: &Daemon, conversation: &str) -> bool {
    let mut last = daemon.typing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    if last.get(conversation).is_some_and(|t| now.duration_since(*t) < EVERY) {
        return false;
    }
    last.insert(conversation.to_owned(), now);
    true
}

/// Queues a typing notification from `me` to each of `recipients` (inside the caller's
/// transaction); `gid` names the group.
pub fn enqueue(
    tx: &Connection,
    recipients: &[String],
    gid: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    let content = Content::Typing { gid: gid.map(str::to_owned), at: now };
    for r in recipients {
        crate::outbox::enqueue(tx, r, None, &content, now)?;
    }
    Ok(())
}

/// A typing notification from `sender` (already decrypted, the sender not blocked):
/// a `conversation.typing` event, unless typing notifications are off here, "block
/// everyone" is on, it is stale, or (in a group) the sender or we are not members.
pub fn receive(
    tx: &Connection,
    sender: &str,
    gid: Option<&str>,
    at: i64,
    now: i64,
) -> Result<Effects, StoreError> {
    if !crate::settings::Settings::load(tx)?.typing
        || crate::settings::blocks_everyone(tx)?
        || (now - at).abs() > STALE_MS
    {
        return Ok(Effects::default());
    }
    let conversation = match gid {
        None => format!("user:{sender}"),
        Some(gid) => match crate::groups::load(tx, gid)? {
            Some((g, true)) if g.members.contains(sender) => format!("group:{gid}"),
            _ => return Ok(Effects::default()),
        },
    };
    let body = EventBody::Typing { conversation, user_id: sender.to_owned() };
    Ok(Effects { last_event: Some(events::append(tx, &body, now)?), queued: false })
}
