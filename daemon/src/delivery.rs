//! The database side of end-to-end delivery: the outbox going out and envelopes coming
//! in, each step one transaction.
//!
//! Sending: `messages.send` stores the message and an outbox row with its plaintext.
//! [`prepare_next`] encrypts the oldest row for a recipient once, storing the ciphertext
//! and the advanced ratchet together, so a crash can never lead to a message key being
//! used twice; every (re)transmission sends that stored ciphertext. [`sent`] removes the
//! row when the relay acknowledges it.
//!
//! Receiving: [`receive`] decrypts on a copy of the session and, in one transaction,
//! stores the new session, the message (unique by message ID), its event, the delivery
//! receipt to send back, and the relay delivery ID, so a redelivery after a crash is
//! recognised and only acknowledged.

use rusqlite::{Connection, OptionalExtension, params};

use letstalk_crypto::{Envelope, PreKeyBundle, Session, SessionRecord};
use letstalk_ipc::types::{Direction, EventBody, MessageKind, MessageState};
use rand_core::{CryptoRng, RngCore};

use crate::account::{self, Account};
use crate::content::{Content, ReceiptKind};
use crate::events;
use crate::messages::{self, NewMessage};
use crate::store::StoreError;

/// A transmission ready to go to the relay.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub seq: i64,
    pub recipient: String,
    /// The relay's idempotency key: the same on every retransmission.
    pub relay_id: String,
    pub envelope: Vec<u8>,
    /// A group message: every recipient of the one ciphertext.
    pub fanout: Option<Vec<String>>,
}

/// What [`prepare_next`] found.
#[derive(Debug)]
pub enum Prepared {
    /// Nothing queued for this recipient.
    Empty,
    /// There is no session yet: fetch the recipient's prekey bundle and call again.
    NeedBundle,
    /// In outbox order, and the event written on the way (a new identity key seen in the
    /// bundle), if any.
    Ready(Vec<Outgoing>, Option<u64>),
    /// The recipient's new identity key waits for the user's acceptance: nothing goes
    /// out to it; `event` is what recording the change wrote.
    Held { event: Option<u64> },
}

fn crypto_err(context: &str, e: letstalk_crypto::Error) -> StoreError {
    StoreError::Io { context: context.to_owned(), source: std::io::Error::other(e.to_string()) }
}

/// The peer's sessions (current and previous ones), if any.
pub fn load_record(conn: &Connection, peer: &str) -> Result<Option<SessionRecord>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT state FROM sessions WHERE peer = ?1")?
        .query_row(params![peer], |r| r.get(0))
        .optional()?;
    let Some(bytes) = bytes.map(zeroize::Zeroizing::new) else { return Ok(None) };
    SessionRecord::from_bytes(&bytes).map(Some).map_err(|e| crypto_err("session state", e))
}

/// The current session with `peer`, if any.
pub fn load_session(conn: &Connection, peer: &str) -> Result<Option<Session>, StoreError> {
    Ok(load_record(conn, peer)?.and_then(|r| r.current().cloned()))
}

pub fn save_record(
    conn: &Connection,
    peer: &str,
    record: &SessionRecord,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO sessions (peer, state, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (peer) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
    )?
    .execute(params![peer, record.to_bytes().as_slice(), now])?;
    Ok(())
}

/// Archives the current session with `peer`: the next message to it starts a fresh
/// session from a new bundle, and late messages under the old one still open.
pub fn archive_session(conn: &Connection, peer: &str, now: i64) -> Result<(), StoreError> {
    if let Some(mut record) = load_record(conn, peer)?
        && record.current().is_some()
    {
        record.archive_current();
        save_record(conn, peer, &record, now)?;
    }
    Ok(())
}

/// Queues `content` for `recipient` (inside the caller's transaction).
pub fn enqueue(
    conn: &Connection,
    recipient: &str,
    message_id: Option<&str>,
    content: &Content,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO outbox (recipient, message_id, plaintext, relay_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![recipient, message_id, content.encode(), uuid::Uuid::now_v7().to_string(), now])?;
    Ok(())
}

/// Recipients with something in the outbox, oldest first.
pub fn pending_recipients(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT recipient FROM outbox GROUP BY recipient ORDER BY min(seq)")?;
    let rows = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(rows)
}

/// How long the plaintext of a sent message is kept for a retry receipt (unless its
/// delivery receipt comes first).
pub const RESEND_WINDOW_MS: i64 = 14 * 24 * 3600 * 1000;
/// Re-sends of one message after retry receipts before it is marked failed.
pub const MAX_RESENDS: i64 = 3;

/// The oldest outbox rows for `recipient` (at most `max`), each encrypted once and ready
/// to transmit. Encrypting a batch in one transaction costs one disk sync for all of
/// them, and the ciphertexts are committed before any of them leaves the device.
///
/// A recipient whose new identity key the user has not accepted gets nothing
/// ([`Prepared::Held`]); a bundle with a new key is recorded (and shown) first.
pub fn prepare_next(
    conn: &mut Connection,
    me: &Account,
    recipient: &str,
    bundle: Option<&PreKeyBundle>,
    max: usize,
    rng: &mut (impl RngCore + CryptoRng),
    now: i64,
) -> Result<Prepared, StoreError> {
    type Row = (i64, String, Option<Vec<u8>>, Option<Vec<u8>>, Option<String>, Option<String>, i64);
    let tx = conn.transaction()?;
    let rows: Vec<Row> = tx
        .prepare_cached(
            "SELECT seq, relay_id, plaintext, envelope, fanout, message_id, attempt FROM outbox
             WHERE recipient = ?1 ORDER BY seq LIMIT ?2",
        )?
        .query_map(params![recipient, max as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })?
        .collect::<Result<_, _>>()?;
    if rows.is_empty() {
        return Ok(Prepared::Empty);
    }
    let pairwise = !recipient.starts_with("group:");
    if pairwise && crate::trust::is_untrusted(&tx, recipient)? {
        return Ok(Prepared::Held { event: None });
    }
    let mut record: Option<SessionRecord> = None;
    let mut event = None;
    let mut ready = Vec::with_capacity(rows.len());
    for (seq, relay_id, plaintext, envelope, fanout, message_id, attempt) in rows {
        if let Some(envelope) = envelope {
            let fanout = fanout.and_then(|f| serde_json::from_str(&f).ok());
            ready.push(Outgoing {
                seq,
                recipient: recipient.to_owned(),
                relay_id,
                envelope,
                fanout,
            });
            continue;
        }
        if record.is_none() {
            let mut r = load_record(&tx, recipient)?.unwrap_or_default();
            if r.current().is_none() {
                match bundle {
                    Some(bundle) => {
                        let seen = crate::trust::observe(&tx, recipient, &bundle.identity, now)?;
                        if seen.untrusted {
                            tx.commit()?;
                            return Ok(Prepared::Held { event: seen.event });
                        }
                        event = seen.event;
                        r.promote_new(
                            Session::initiate(&me.identity, bundle, rng)
                                .map_err(|e| crypto_err("starting a session", e))?,
                        );
                    }
                    None if ready.is_empty() => return Ok(Prepared::NeedBundle),
                    None => break,
                }
            }
            record = Some(r);
        }
        let Some(s) = record.as_mut().and_then(SessionRecord::current_mut) else { break };
        let plaintext = zeroize::Zeroizing::new(plaintext.unwrap_or_default());
        let envelope = s.encrypt(&plaintext, rng).map_err(|e| crypto_err("encrypting", e))?;
        tx.prepare_cached("UPDATE outbox SET envelope = ?2, plaintext = NULL WHERE seq = ?1")?
            .execute(params![seq, envelope])?;
        // Kept for a retry receipt: the peer may fail to open it (a session it lost).
        if pairwise && Content::decode(&plaintext).is_some_and(|c| c.resendable()) {
            tx.prepare_cached(
                "INSERT INTO resend (relay_id, recipient, message_id, plaintext, attempt, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (relay_id) DO NOTHING",
            )?
            .execute(params![relay_id, recipient, message_id, plaintext.as_slice(), attempt, now])?;
        }
        ready.push(Outgoing {
            seq,
            recipient: recipient.to_owned(),
            relay_id,
            envelope,
            fanout: None,
        });
    }
    if let Some(r) = &record {
        save_record(&tx, recipient, r, now)?;
    }
    tx.commit()?;
    Ok(Prepared::Ready(ready, event))
}

/// A retry receipt from `peer` for our relay ids: each message still kept is queued
/// again (same message id, new relay id) after the current session is archived, so it
/// goes out under a fresh session; one re-sent [`MAX_RESENDS`] times fails instead.
pub fn resend(
    tx: &Connection,
    peer: &str,
    relay_ids: &[String],
    now: i64,
) -> Result<Effects, StoreError> {
    let mut effects = Effects::default();
    let mut archived = false;
    for id in relay_ids.iter().take(letstalk_wire::MAX_LIST) {
        let row: Option<(Option<String>, Vec<u8>, i64)> = tx
            .prepare_cached(
                "DELETE FROM resend WHERE relay_id = ?1 AND recipient = ?2
                 RETURNING message_id, plaintext, attempt",
            )?
            .query_row(params![id, peer], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let Some((message_id, plaintext, attempt)) = row else { continue };
        let plaintext = zeroize::Zeroizing::new(plaintext);
        if attempt >= MAX_RESENDS {
            if let Some(mid) = message_id {
                let error = "the recipient's device could not decrypt it";
                tx.prepare_cached(
                    "UPDATE messages SET state = 'failed', error = ?2 WHERE message_id = ?1",
                )?
                .execute(params![mid, error])?;
                let body = EventBody::MessageState {
                    message_id: mid,
                    conversation: format!("user:{peer}"),
                    state: MessageState::Failed,
                };
                effects.last_event = Some(events::append(tx, &body, now)?);
            }
            continue;
        }
        if !archived {
            archive_session(tx, peer, now)?;
            archived = true;
        }
        tx.prepare_cached(
            "INSERT INTO outbox (recipient, message_id, plaintext, relay_id, created_at, attempt)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            peer,
            message_id,
            plaintext.as_slice(),
            uuid::Uuid::now_v7().to_string(),
            now,
            attempt + 1
        ])?;
        effects.queued = true;
    }
    Ok(effects)
}

/// Forgets kept plaintext older than the retry window.
pub fn prune_resend(conn: &Connection, now: i64) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached("DELETE FROM resend WHERE created_at < ?1")?
        .execute(params![now - RESEND_WINDOW_MS])?)
}

/// The relay accepted these outbox rows: drop them and mark their messages `sent`, in
/// one transaction. Returns the last event seq written, if any.
pub fn sent(conn: &mut Connection, seqs: &[i64], now: i64) -> Result<Option<u64>, StoreError> {
    let tx = conn.transaction()?;
    let mut event = None;
    for seq in seqs {
        let message_id: Option<Option<String>> = tx
            .prepare_cached("DELETE FROM outbox WHERE seq = ?1 RETURNING message_id")?
            .query_row(params![seq], |r| r.get(0))
            .optional()?;
        if let Some(Some(id)) = message_id
            && let Some(conversation) = messages::advance_state(&tx, &id, MessageState::Sent)?
        {
            let body =
                EventBody::MessageState { message_id: id, conversation, state: MessageState::Sent };
            event = Some(events::append(&tx, &body, now)?);
        }
    }
    tx.commit()?;
    Ok(event)
}

/// The relay refused outbox row `seq` for good (e.g. no such user): the message fails.
pub fn failed(
    conn: &mut Connection,
    seq: i64,
    error: &str,
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let tx = conn.transaction()?;
    let row: Option<(Option<String>, String)> = tx
        .prepare_cached("DELETE FROM outbox WHERE seq = ?1 RETURNING message_id, recipient")?
        .query_row(params![seq], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let mut event = None;
    if let Some((Some(id), recipient)) = row {
        tx.prepare_cached(
            "UPDATE messages SET state = 'failed', error = ?2 WHERE message_id = ?1",
        )?
        .execute(params![id, error])?;
        tx.prepare_cached(
            "UPDATE message_members SET state = 'failed', error = ?2 WHERE message_id = ?1",
        )?
        .execute(params![id, error])?;
        let conversation =
            if recipient.starts_with("group:") { recipient } else { format!("user:{recipient}") };
        let body =
            EventBody::MessageState { message_id: id, conversation, state: MessageState::Failed };
        event = Some(events::append(&tx, &body, now)?);
    }
    tx.commit()?;
    Ok(event)
}

/// The relay took group message row `seq` for every recipient but `refused` (each with
/// its stored error): each member's state moves to `sent` or `failed`, the message's to
/// the least advanced. Returns the event seq written, if any.
pub fn group_sent(
    conn: &mut Connection,
    seq: i64,
    refused: &[(String, String)],
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let tx = conn.transaction()?;
    let message_id: Option<Option<String>> = tx
        .prepare_cached("DELETE FROM outbox WHERE seq = ?1 RETURNING message_id")?
        .query_row(params![seq], |r| r.get(0))
        .optional()?;
    let mut event = None;
    if let Some(Some(id)) = message_id {
        tx.prepare_cached(
            "UPDATE message_members SET state = 'sent' WHERE message_id = ?1 AND state = 'queued'",
        )?
        .execute(params![id])?;
        for (member, error) in refused {
            tx.prepare_cached(
                "UPDATE message_members SET state = 'failed', error = ?3
                 WHERE message_id = ?1 AND member = ?2",
            )?
            .execute(params![id, member, error])?;
        }
        if let Some((conversation, state)) = messages::settle_group_state(&tx, &id)? {
            let body = EventBody::MessageState { message_id: id, conversation, state };
            event = Some(events::append(&tx, &body, now)?);
        }
    }
    tx.commit()?;
    Ok(event)
}

/// What applying a delivery changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// The last event seq written.
    pub last_event: Option<u64>,
    /// Whether the outbox got a new row.
    pub queued: bool,
}

impl Effects {
    pub fn merge(&mut self, other: Effects) {
        self.last_event = self.last_event.max(other.last_event);
        self.queued |= other.queued;
    }
}

/// Whether this device blocks `user`: their deliveries are read (keeping the session in
/// step) and then discarded.
pub fn is_blocked(conn: &Connection, user: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT blocked FROM contacts WHERE user_id = ?1")?
        .query_row(params![user], |r| r.get(0))
        .optional()?
        .unwrap_or(false))
}

/// Whether "block everyone" is on.
pub fn blocks_everyone(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT value FROM settings WHERE key = 'block_all'")?
        .query_row([], |r| r.get::<_, i64>(0))
        .optional()?
        .is_some_and(|v| v != 0))
}

/// Shows a received text in `conversation` (once, by its message ID) and queues the
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
    enqueue(
        tx,
        sender,
        None,
        &Content::Receipt { state: ReceiptKind::Delivered, ids: vec![id] },
        now,
    )?;
    effects.queued = true;
    Ok(effects)
}

/// What [`receive`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Already applied earlier: acknowledge it and do nothing else.
    Duplicate,
    /// Applied; the last event seq written and whether the outbox got a new row.
    Applied { last_event: Option<u64>, queued: bool },
    /// Could not be decrypted or understood: acknowledged and dropped (keeping it would
    /// block the mailbox forever), logged without content.
    Dropped(String),
    /// Could not be decrypted: acknowledged, and a retry receipt asking the sender to
    /// send it again under a fresh session is queued.
    Retry(String),
}

/// Applies one envelope from `sender` that the relay delivered as `relay_id`.
pub fn receive(
    conn: &mut Connection,
    me: &Account,
    sender: &str,
    relay_id: &str,
    bytes: &[u8],
    now: i64,
) -> Result<Received, StoreError> {
    Ok(receive_many(conn, me, &[(sender, relay_id, bytes)], now)?.remove(0))
}

/// [`receive`] for several deliveries in one transaction (one disk sync for all), each
/// applied in its own savepoint, in order.
pub fn receive_many(
    conn: &mut Connection,
    me: &Account,
    items: &[(&str, &str, &[u8])],
    now: i64,
) -> Result<Vec<Received>, StoreError> {
    let mut tx = conn.transaction()?;
    let mut out = Vec::with_capacity(items.len());
    for (sender, relay_id, bytes) in items {
        let sp = tx.savepoint()?;
        out.push(receive_in(&sp, me, sender, relay_id, bytes, now)?);
        sp.commit()?;
    }
    tx.commit()?;
    Ok(out)
}

/// Applies one delivery inside the caller's transaction; everything it writes is meant
/// to be committed, also when the delivery is dropped (so it is not applied twice).
fn receive_in(
    tx: &Connection,
    me: &Account,
    sender: &str,
    relay_id: &str,
    bytes: &[u8],
    now: i64,
) -> Result<Received, StoreError> {
    let seen: Option<i64> = tx
        .prepare_cached("SELECT 1 FROM received WHERE sender = ?1 AND relay_id = ?2")?
        .query_row(params![sender, relay_id], |r| r.get(0))
        .optional()?;
    if seen.is_some() {
        return Ok(Received::Duplicate);
    }
    tx.prepare_cached("INSERT INTO received (sender, relay_id, at) VALUES (?1, ?2, ?3)")?
        .execute(params![sender, relay_id, now])?;

    if let Some((gid, message)) = crate::groups::parse_frame(bytes) {
        if is_blocked(tx, sender)? || blocks_everyone(tx)? {
            return Ok(Received::Dropped("refused: blocked".into()));
        }
        return Ok(match crate::groups::on_message(tx, sender, gid, message, now)? {
            Ok(e) => Received::Applied { last_event: e.last_event, queued: e.queued },
            Err(why) => Received::Dropped(why),
        });
    }

    // Decrypt on a copy of the sessions; the stored ones change only if this succeeds.
    let mut record = load_record(tx, sender)?.unwrap_or_default();
    let mut attempt = record.clone();
    match attempt.decrypt(bytes) {
        Ok(plaintext) => {
            record = attempt;
            return apply_plaintext(tx, me, sender, record, plaintext, now);
        }
        // A peer's new session: run X3DH with the prekeys it names. Failing, it never
        // replaces the sessions we have.
        Err(letstalk_crypto::Error::PreKeyMismatch) => {}
        // Already opened once (a replay): nothing to ask again.
        Err(letstalk_crypto::Error::Duplicate) => {
            return Ok(Received::Dropped("duplicate message".into()));
        }
        Err(e) => return undecryptable(tx, sender, relay_id, e.to_string(), now),
    }
    let Ok(Envelope::PreKey(pm)) = Envelope::decode(bytes) else {
        return undecryptable(tx, sender, relay_id, "prekey message".into(), now);
    };
    let Some(signed) = account::load_prekey(tx, pm.signed_prekey_id)? else {
        return undecryptable(tx, sender, relay_id, "unknown signed prekey".into(), now);
    };
    let one_time = match pm.one_time_prekey_id {
        Some(id) => account::load_prekey(tx, id)?,
        None => None,
    };
    match Session::accept_prekey_message(&me.identity, &pm, &signed, one_time.as_ref()) {
        Ok((session, plaintext)) => {
            if let Some(k) = &one_time {
                account::delete_one_time_prekey(tx, k.id())?;
            }
            record.promote_new(session);
            apply_plaintext(tx, me, sender, record, plaintext, now)
        }
        Err(e) => undecryptable(tx, sender, relay_id, format!("prekey message: {e}"), now),
    }
}

/// A pairwise envelope from `sender` that no session opens: unless the sender is
/// blocked, a retry receipt naming it goes back (under our current session with the
/// sender, or a new one), and the sender re-sends it under a fresh session.
fn undecryptable(
    tx: &Connection,
    sender: &str,
    relay_id: &str,
    why: String,
    now: i64,
) -> Result<Received, StoreError> {
    if is_blocked(tx, sender)? || blocks_everyone(tx)? {
        return Ok(Received::Dropped(why));
    }
    // The receipt goes out under a fresh session (a prekey message the sender can
    // always open), so two devices whose sessions both broke never trade retry
    // receipts neither can read; late messages under the old one still open.
    archive_session(tx, sender, now)?;
    enqueue(tx, sender, None, &Content::Retry { ids: vec![relay_id.to_owned()] }, now)?;
    Ok(Received::Retry(why))
}

/// Stores the sessions that opened a delivery and applies its plaintext.
fn apply_plaintext(
    tx: &Connection,
    me: &Account,
    sender: &str,
    record: SessionRecord,
    plaintext: Vec<u8>,
    now: i64,
) -> Result<Received, StoreError> {
    let plaintext = zeroize::Zeroizing::new(plaintext);
    save_record(tx, sender, &record, now)?;
    let conversation = format!("user:{sender}");
    let queued = false;
    let seen = match record.remote_identity() {
        Some(identity) => crate::trust::observe(tx, sender, identity, now)?,
        None => crate::trust::Observed::default(),
    };
    let last_event = seen.event;

    if is_blocked(tx, sender)? {
        // Read (the session stays in step) and discarded.
        return Ok(Received::Applied { last_event, queued });
    }
    let me_id = me.user_id.as_str();
    let mut effects = Effects { last_event, queued };
    let outcome = match Content::decode(&plaintext) {
        // "Block everyone" refuses messages; receipts, keys and group news still apply.
        Some(Content::Text { .. }) if blocks_everyone(tx)? => Ok(Effects::default()),
        Some(text @ Content::Text { .. }) => Ok(apply_text(tx, sender, &conversation, text, now)?),
        Some(Content::Receipt { state, ids }) => {
            let state = match state {
                ReceiptKind::Delivered => MessageState::Delivered,
                ReceiptKind::Read => MessageState::Read,
            };
            let mut e = Effects::default();
            for id in ids.iter().take(1000) {
                // Delivered: the peer opened it, no retry will ask for it again.
                tx.prepare_cached("DELETE FROM resend WHERE message_id = ?1 AND recipient = ?2")?
                    .execute(params![id, sender])?;
                if let Some((conversation, state)) = messages::advance_from(tx, id, sender, state)?
                {
                    let body =
                        EventBody::MessageState { message_id: id.clone(), conversation, state };
                    e.last_event = Some(events::append(tx, &body, now)?);
                }
            }
            Ok(e)
        }
        // The record's current session is the one that opened this message.
        Some(update @ Content::Group { .. }) => match record.remote_identity() {
            Some(key) => crate::groups::on_update(tx, me_id, sender, key, &update, now)?,
            None => Err("group update without a session".into()),
        },
        // "Block everyone" refuses files as it refuses texts (calls: `calls::receive`).
        Some(Content::File { .. }) if blocks_everyone(tx)? => Ok(Effects::default()),
        Some(c @ (Content::File { .. } | Content::FileCancel { .. })) => {
            crate::files::receive(tx, sender, &conversation, &c, now)?
        }
        Some(
            c @ (Content::CallOffer { .. } | Content::CallAnswer { .. } | Content::CallEnd { .. }),
        ) => Ok(crate::calls::receive(tx, sender, &c, now)?),
        Some(Content::Typing { gid, at }) => {
            Ok(crate::typing::receive(tx, sender, gid.as_deref(), at, now)?)
        }
        Some(Content::GroupLeave { gid, grant }) => {
            Ok(crate::groups::on_leave(tx, me_id, sender, &gid, grant.as_ref(), now)?)
        }
        // A new key never becomes a group's sender-key source before the user accepts
        // it: the sender key waits and is applied by `contacts.trust`.
        Some(Content::SenderKey { .. }) if seen.untrusted => {
            crate::trust::hold(tx, sender, &plaintext, now)?;
            Ok(Effects::default())
        }
        Some(Content::SenderKey { gid, key }) => {
            crate::groups::on_sender_key(tx, me_id, sender, &gid, &key, now)?
        }
        Some(Content::Retry { ids }) => Ok(resend(tx, sender, &ids, now)?),
        None => Err("unknown content".to_owned()),
    };
    match outcome {
        Ok(e) => {
            effects.merge(e);
            Ok(Received::Applied { last_event: effects.last_event, queued: effects.queued })
        }
        Err(why) => Ok(Received::Dropped(why)),
    }
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
    messages::insert(conn, &new)?;
    let message = messages::get(conn, message_id)?.ok_or_else(|| StoreError::Io {
        context: "system message".into(),
        source: std::io::Error::other("vanished"),
    })?;
    events::append(conn, &EventBody::MessageReceived { message }, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::generate_prekeys;
    use letstalk_crypto::PreKeyBundle;
    use rand_core::OsRng;

    struct Device {
        _dir: tempfile::TempDir,
        store: crate::store::Store,
        account: Account,
        prekeys: Vec<letstalk_crypto::PreKeySecret>,
    }

    fn device(name: &str) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let account = Account::generate(
            name.into(),
            format!("{name}@x.org"),
            name.into(),
            None,
            1,
            &mut OsRng,
        );
        let prekeys = generate_prekeys(&account.identity, &mut OsRng);
        store
            .with(|c| {
                account.save(c)?;
                for k in &prekeys {
                    account::save_prekey(c, k, 1)?;
                }
                Ok(())
            })
            .unwrap();
        Device { _dir: dir, store, account, prekeys }
    }

    fn bundle(d: &Device, one_time: usize) -> PreKeyBundle {
        PreKeyBundle {
            identity: d.account.identity.public(),
            signed_prekey: d.prekeys[0].signed_public().unwrap(),
            one_time_prekey: d.prekeys[2 + one_time].one_time_public(),
        }
    }

    fn send_text(from: &Device, to: &str, id: &str, text: &str) {
        from.store
            .with(|c| {
                let content =
                    Content::Text { id: id.into(), at: 5, text: text.into(), reply_to: None };
                let new = NewMessage {
                    message_id: id,
                    conversation: &format!("user:{to}"),
                    sender: &from.account.user_id,
                    direction: Direction::Out,
                    kind: MessageKind::Text,
                    text: Some(text),
                    reply_to: None,
                    client_msg_id: None,
                    created_at: 5,
                    received_at: None,
                    state: MessageState::Queued,
                    read: true,
                };
                messages::insert(c, &new)?;
                enqueue(c, to, Some(id), &content, 5)
            })
            .unwrap();
    }

    fn next(from: &Device, to: &str, bundle: Option<&PreKeyBundle>) -> Prepared {
        from.store.with(|c| prepare_next(c, &from.account, to, bundle, 1, &mut OsRng, 6)).unwrap()
    }

    fn deliver(to: &Device, from: &str, o: &Outgoing) -> Received {
        to.store.with(|c| receive(c, &to.account, from, &o.relay_id, &o.envelope, 7)).unwrap()
    }

    #[test]
    fn a_round_trip_with_receipts_exactly_once() {
        let alice = device("alice");
        let bob = device("bob");
        send_text(&alice, "bob", "m1", "hello bob");
        assert!(matches!(next(&alice, "bob", None), Prepared::NeedBundle));
        let Prepared::Ready(mut first, _) = next(&alice, "bob", Some(&bundle(&bob, 0))) else {
            panic!()
        };
        let first = first.remove(0);
        // Retransmission after a crash sends the very same ciphertext.
        let Prepared::Ready(mut again, _) = next(&alice, "bob", None) else { panic!() };
        let again = again.remove(0);
        assert_eq!(
            (first.seq, &first.envelope, &first.relay_id),
            (again.seq, &again.envelope, &again.relay_id)
        );
        assert!(!first.envelope.windows(9).any(|w| w == b"hello bob"));

        // Two events: `message.received` and its `notification`.
        assert_eq!(
            deliver(&bob, "alice", &first),
            Received::Applied { last_event: Some(2), queued: true }
        );
        // The relay redelivers (our ack was lost): shown once.
        assert_eq!(deliver(&bob, "alice", &first), Received::Duplicate);
        let got = bob.store.with(|c| messages::get(c, "m1")).unwrap().unwrap();
        assert_eq!(
            (got.text.as_deref(), got.direction, got.from.as_str()),
            (Some("hello bob"), Direction::In, "alice")
        );
        // The one-time prekey is gone once used.
        assert!(bob.store.with(|c| account::load_prekey(c, FIRST)).unwrap().is_none());

        // The relay accepted alice's message: sent. Then bob's delivery receipt: delivered.
        alice.store.with(|c| sent(c, &[first.seq], 8)).unwrap();
        assert_eq!(
            alice.store.with(|c| messages::get(c, "m1")).unwrap().unwrap().state,
            MessageState::Sent
        );
        let Prepared::Ready(mut receipt, _) = next(&bob, "alice", None) else { panic!() };
        let receipt = receipt.remove(0);
        assert!(matches!(deliver(&alice, "bob", &receipt), Received::Applied { .. }));
        assert_eq!(
            alice.store.with(|c| messages::get(c, "m1")).unwrap().unwrap().state,
            MessageState::Delivered
        );
        // A late `sent` never moves it back.
        alice.store.with(|c| messages::advance_state(c, "m1", MessageState::Sent)).unwrap();
        assert_eq!(
            alice.store.with(|c| messages::get(c, "m1")).unwrap().unwrap().state,
            MessageState::Delivered
        );
    }

    const FIRST: u32 = account::FIRST_ONE_TIME_ID;

    #[test]
    fn garbage_is_dropped_and_leaves_the_session_working() {
        let alice = device("alice");
        let bob = device("bob");
        send_text(&alice, "bob", "m1", "one");
        let Prepared::Ready(mut m1, _) = next(&alice, "bob", Some(&bundle(&bob, 0))) else {
            panic!()
        };
        let m1 = m1.remove(0);
        assert!(matches!(deliver(&bob, "alice", &m1), Received::Applied { .. }));
        let mut forged = m1.clone();
        forged.relay_id = "other".into();
        if let Some(b) = forged.envelope.last_mut() {
            *b ^= 1;
        }
        // A used message number (here tampered with): a replay, dropped without a retry.
        assert!(matches!(deliver(&bob, "alice", &forged), Received::Dropped(_)));
        alice.store.with(|c| sent(c, &[m1.seq], 8)).unwrap();
        send_text(&alice, "bob", "m2", "two");
        let Prepared::Ready(mut m2, _) = next(&alice, "bob", None) else { panic!() };
        let m2 = m2.remove(0);
        assert!(matches!(deliver(&bob, "alice", &m2), Received::Applied { .. }));
        assert_eq!(
            bob.store.with(|c| messages::get(c, "m2")).unwrap().unwrap().text.as_deref(),
            Some("two")
        );
    }

    /// Everything queued from `from` to `to`, prepared (with `bundle` if a session must
    /// start) and delivered in order.
    fn flush(from: &Device, to: &Device, bundle: Option<&PreKeyBundle>) -> Vec<Received> {
        let (to_id, from_id) = (to.account.user_id.clone(), from.account.user_id.clone());
        let prepared = from
            .store
            .with(|c| prepare_next(c, &from.account, &to_id, bundle, 64, &mut OsRng, 6))
            .unwrap();
        let Prepared::Ready(rows, _) = prepared else { panic!("{prepared:?}") };
        let seqs: Vec<i64> = rows.iter().map(|o| o.seq).collect();
        from.store.with(|c| sent(c, &seqs, 8)).unwrap();
        rows.iter().map(|o| deliver(to, &from_id, o)).collect()
    }

    fn text_of(d: &Device, id: &str) -> Option<String> {
        d.store.with(|c| messages::get(c, id)).unwrap().and_then(|m| m.text)
    }

    #[test]
    fn a_message_the_peer_cannot_open_is_resent_under_a_fresh_session() {
        let alice = device("alice");
        let bob = device("bob");
        send_text(&alice, "bob", "m1", "one");
        assert!(matches!(flush(&alice, &bob, Some(&bundle(&bob, 0)))[0], Received::Applied { .. }));
        // bob loses his sessions; alice's next message cannot be opened.
        bob.store.with(|c| Ok(c.execute("DELETE FROM sessions", [])?)).unwrap();
        send_text(&alice, "bob", "m2", "two");
        let got = flush(&alice, &bob, None);
        assert!(matches!(got[0], Received::Retry(_)), "{got:?}");
        assert_eq!(text_of(&bob, "m2"), None);
        // bob's retry receipt (with m1's delivery receipt) reaches alice under a new
        // session; alice queues m2 again, to go out under a fresh session of her own.
        let got = flush(&bob, &alice, Some(&bundle(&alice, 0)));
        assert!(got.iter().all(|r| matches!(r, Received::Applied { .. })), "{got:?}");
        assert!(matches!(
            alice.store.with(|c| prepare_next(c, &alice.account, "bob", None, 64, &mut OsRng, 9)),
            Ok(Prepared::NeedBundle)
        ));
        let got = flush(&alice, &bob, Some(&bundle(&bob, 1)));
        assert!(matches!(got[0], Received::Applied { .. }), "{got:?}");
        assert_eq!(text_of(&bob, "m2").as_deref(), Some("two"));
        // bob's delivery receipt for m2 ends the retry window for it.
        flush(&bob, &alice, None);
        let kept: i64 = alice
            .store
            .with(|c| {
                Ok(c.query_row("SELECT count(*) FROM resend WHERE message_id = 'm2'", [], |r| {
                    r.get(0)
                })?)
            })
            .unwrap();
        assert_eq!(kept, 0);
    }

    #[test]
    fn a_verified_contacts_new_key_holds_messages_until_accepted() {
        let alice = device("alice");
        let bob = device("bob");
        send_text(&alice, "bob", "m1", "one");
        flush(&alice, &bob, Some(&bundle(&bob, 0)));
        alice
            .store
            .with(|c| {
                c.execute(
                    "INSERT INTO contacts (user_id, verified, added_at) VALUES ('bob', 1, 0)",
                    [],
                )?;
                Ok(())
            })
            .unwrap();
        assert!(alice.store.with(|c| crate::trust::is_verified(c, "bob")).unwrap());

        // bob on a new device (a new identity key) writes first.
        let bob2 = device("bob");
        send_text(&bob2, "alice", "n1", "new phone");
        let got = flush(&bob2, &alice, Some(&bundle(&alice, 0)));
        assert!(matches!(got[0], Received::Applied { .. }), "{got:?}");
        assert_eq!(text_of(&alice, "n1").as_deref(), Some("new phone"));
        let (verified, untrusted, changed) = alice
            .store
            .with(|c| {
                Ok((
                    crate::trust::is_verified(c, "bob")?,
                    crate::trust::is_untrusted(c, "bob")?,
                    crate::trust::changed_at(c, "bob")?,
                ))
            })
            .unwrap();
        assert_eq!((verified, untrusted, changed), (false, true, Some(7)));
        // The delivery receipt for n1 (and anything else) waits.
        let held =
            alice.store.with(|c| prepare_next(c, &alice.account, "bob", None, 64, &mut OsRng, 9));
        assert!(matches!(held, Ok(Prepared::Held { .. })), "{held:?}");

        // Accepted (as unverified): it goes out, to the new key.
        alice
            .store
            .with(|c| crate::trust::accept(c, "alice", "bob", false, 10).map(|r| r.is_ok()))
            .unwrap();
        let got = flush(&alice, &bob2, None);
        assert!(matches!(got[0], Received::Applied { .. }), "{got:?}");
        assert_eq!(
            bob2.store.with(|c| messages::get(c, "n1")).unwrap().unwrap().state,
            MessageState::Delivered
        );
    }

    #[test]
    fn a_repeated_prekey_message_never_replaces_the_session() {
        let alice = device("alice");
        let bob = device("bob");
        send_text(&alice, "bob", "m1", "one");
        let Prepared::Ready(mut m1, _) = next(&alice, "bob", Some(&bundle(&bob, 0))) else {
            panic!()
        };
        let m1 = m1.remove(0);
        assert!(matches!(deliver(&bob, "alice", &m1), Received::Applied { .. }));
        let before = bob.store.with(|c| load_record(c, "alice")).unwrap().unwrap().to_bytes();
        // The same prekey message under another relay id (a replay): refused, no retry,
        // the session unchanged.
        let mut replay = m1.clone();
        replay.relay_id = "replayed".into();
        assert!(matches!(deliver(&bob, "alice", &replay), Received::Dropped(_)));
        let after = bob.store.with(|c| load_record(c, "alice")).unwrap().unwrap().to_bytes();
        assert_eq!(before.as_slice(), after.as_slice());
    }
}
