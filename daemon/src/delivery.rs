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

use letstalk_crypto::{Envelope, PreKeyBundle, Session};
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
    /// In outbox order.
    Ready(Vec<Outgoing>),
}

fn crypto_err(context: &str, e: letstalk_crypto::Error) -> StoreError {
    StoreError::Io { context: context.to_owned(), source: std::io::Error::other(e.to_string()) }
}

pub fn load_session(conn: &Connection, peer: &str) -> Result<Option<Session>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT state FROM sessions WHERE peer = ?1")?
        .query_row(params![peer], |r| r.get(0))
        .optional()?;
    let Some(bytes) = bytes.map(zeroize::Zeroizing::new) else { return Ok(None) };
    Session::from_bytes(&bytes).map(Some).map_err(|e| crypto_err("session state", e))
}

pub fn save_session(
    conn: &Connection,
    peer: &str,
    session: &Session,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO sessions (peer, state, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (peer) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
    )?
    .execute(params![peer, session.to_bytes().as_slice(), now])?;
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

/// The oldest outbox rows for `recipient` (at most `max`), each encrypted once and ready
/// to transmit. Encrypting a batch in one transaction costs one disk sync for all of
/// them, and the ciphertexts are committed before any of them leaves the device.
pub fn prepare_next(
    conn: &mut Connection,
    me: &Account,
    recipient: &str,
    bundle: Option<&PreKeyBundle>,
    max: usize,
    rng: &mut (impl RngCore + CryptoRng),
    now: i64,
) -> Result<Prepared, StoreError> {
    type Row = (i64, String, Option<Vec<u8>>, Option<Vec<u8>>, Option<String>);
    let tx = conn.transaction()?;
    let rows: Vec<Row> = tx
        .prepare_cached(
            "SELECT seq, relay_id, plaintext, envelope, fanout FROM outbox WHERE recipient = ?1 ORDER BY seq LIMIT ?2",
        )?
        .query_map(params![recipient, max as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    if rows.is_empty() {
        return Ok(Prepared::Empty);
    }
    let mut session: Option<Session> = None;
    let mut ready = Vec::with_capacity(rows.len());
    for (seq, relay_id, plaintext, envelope, fanout) in rows {
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
        if session.is_none() {
            session = match (load_session(&tx, recipient)?, bundle) {
                (Some(s), _) => Some(s),
                (None, Some(bundle)) => Some(
                    Session::initiate(&me.identity, bundle, rng)
                        .map_err(|e| crypto_err("starting a session", e))?,
                ),
                (None, None) if ready.is_empty() => return Ok(Prepared::NeedBundle),
                (None, None) => break,
            };
        }
        let Some(s) = session.as_mut() else { break };
        let plaintext = zeroize::Zeroizing::new(plaintext.unwrap_or_default());
        let envelope = s.encrypt(&plaintext, rng).map_err(|e| crypto_err("encrypting", e))?;
        tx.prepare_cached("UPDATE outbox SET envelope = ?2, plaintext = NULL WHERE seq = ?1")?
            .execute(params![seq, envelope])?;
        ready.push(Outgoing {
            seq,
            recipient: recipient.to_owned(),
            relay_id,
            envelope,
            fanout: None,
        });
    }
    if let Some(s) = &session {
        save_session(&tx, recipient, s, now)?;
    }
    tx.commit()?;
    Ok(Prepared::Ready(ready))
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

    let existing = load_session(tx, sender)?;
    let previous_identity = existing.as_ref().map(|s| *s.remote_identity());
    // Decrypt on a copy; the stored session changes only if this succeeds.
    let attempt = existing.clone().map(|mut s| s.decrypt(bytes).map(|p| (s, p)));
    let (session, plaintext) = match attempt {
        Some(Ok(ok)) => ok,
        other => match Envelope::decode(bytes) {
            Ok(Envelope::PreKey(pm)) => {
                let Some(signed) = account::load_prekey(tx, pm.signed_prekey_id)? else {
                    return Ok(Received::Dropped("unknown signed prekey".into()));
                };
                let one_time = match pm.one_time_prekey_id {
                    Some(id) => account::load_prekey(tx, id)?,
                    None => None,
                };
                match Session::accept_prekey_message(&me.identity, &pm, &signed, one_time.as_ref())
                {
                    Ok(ok) => {
                        if let Some(k) = &one_time {
                            account::delete_one_time_prekey(tx, k.id())?;
                        }
                        ok
                    }
                    Err(e) => {
                        return Ok(Received::Dropped(format!("prekey message: {e}")));
                    }
                }
            }
            _ => {
                let why = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "no session".into(),
                };
                return Ok(Received::Dropped(why));
            }
        },
    };
    let plaintext = zeroize::Zeroizing::new(plaintext);
    save_session(tx, sender, &session, now)?;
    let conversation = format!("user:{sender}");
    let mut last_event = None;
    let queued = false;

    if let Some(old) = previous_identity
        && old != *session.remote_identity()
    {
        let id = uuid::Uuid::now_v7().to_string();
        let text = format!(
            "The safety number with {sender} changed: their device or identity key is new."
        );
        last_event = Some(system_message(tx, &id, &conversation, &text, now)?);
    }

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
                if let Some((conversation, state)) = messages::advance_from(tx, id, sender, state)?
                {
                    let body =
                        EventBody::MessageState { message_id: id.clone(), conversation, state };
                    e.last_event = Some(events::append(tx, &body, now)?);
                }
            }
            Ok(e)
        }
        Some(update @ Content::Group { .. }) => {
            crate::groups::on_update(tx, me_id, sender, &update, now)?
        }
        // "Block everyone" refuses files as it refuses texts (calls: `calls::receive`).
        Some(Content::File { .. }) if blocks_everyone(tx)? => Ok(Effects::default()),
        Some(c @ (Content::File { .. } | Content::FileCancel { .. })) => {
            Ok(crate::files::receive(tx, sender, &conversation, &c, now)?)
        }
        Some(
            c @ (Content::CallOffer { .. } | Content::CallAnswer { .. } | Content::CallEnd { .. }),
        ) => Ok(crate::calls::receive(tx, sender, &c, now)?),
        Some(Content::Typing { gid, at }) => {
            Ok(crate::typing::receive(tx, sender, gid.as_deref(), at, now)?)
        }
        Some(Content::GroupLeave { gid }) => {
            Ok(crate::groups::on_leave(tx, me_id, sender, &gid, now)?)
        }
        Some(Content::SenderKey { gid, key }) => {
            crate::groups::on_sender_key(tx, me_id, sender, &gid, &key, now)?
        }
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
        let Prepared::Ready(mut first) = next(&alice, "bob", Some(&bundle(&bob, 0))) else {
            panic!()
        };
        let first = first.remove(0);
        // Retransmission after a crash sends the very same ciphertext.
        let Prepared::Ready(mut again) = next(&alice, "bob", None) else { panic!() };
        let again = again.remove(0);
        assert_eq!(
            (first.seq, &first.envelope, &first.relay_id),
            (again.seq, &again.envelope, &again.relay_id)
        );
        assert!(!first.envelope.windows(9).any(|w| w == b"hello bob"));

        assert_eq!(
            deliver(&bob, "alice", &first),
            Received::Applied { last_event: Some(1), queued: true }
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
        let Prepared::Ready(mut receipt) = next(&bob, "alice", None) else { panic!() };
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
        let Prepared::Ready(mut m1) = next(&alice, "bob", Some(&bundle(&bob, 0))) else { panic!() };
        let m1 = m1.remove(0);
        assert!(matches!(deliver(&bob, "alice", &m1), Received::Applied { .. }));
        let mut forged = m1.clone();
        forged.relay_id = "other".into();
        if let Some(b) = forged.envelope.last_mut() {
            *b ^= 1;
        }
        assert!(matches!(deliver(&bob, "alice", &forged), Received::Dropped(_)));
        alice.store.with(|c| sent(c, &[m1.seq], 8)).unwrap();
        send_text(&alice, "bob", "m2", "two");
        let Prepared::Ready(mut m2) = next(&alice, "bob", None) else { panic!() };
        let m2 = m2.remove(0);
        assert!(matches!(deliver(&bob, "alice", &m2), Received::Applied { .. }));
        assert_eq!(
            bob.store.with(|c| messages::get(c, "m2")).unwrap().unwrap().text.as_deref(),
            Some("two")
        );
    }
}
