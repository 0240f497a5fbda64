//! The only code that reads or writes the pairwise sessions: load, save, archive, and
//! open a received envelope (the current session, the archived ones in turn, or a new one
//! from a prekey message).

use rusqlite::{Connection, OptionalExtension, params};

use letstalk_crypto::{Envelope, Session, SessionRecord};
use letstalk_ipc::types::{EventBody, MessageState};

use crate::account::{self, Account};
use crate::events::{self, Effects};
use crate::outbox;
use crate::store::StoreError;

pub(crate) fn crypto_err(context: &str, e: letstalk_crypto::Error) -> StoreError {
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

/// Queued rows to one recipient that one transaction seals at most (the sender seals
/// the rest).
pub const SEAL_MAX: usize = 64;

/// Encrypts `recipient`'s queued plaintext rows (at most `max`, oldest first) under the
/// current session, inside the caller's transaction, and saves the advanced session
/// there. The transaction that queues a message can seal it too: its commit makes the
/// ciphertext and the ratchet durable together, and the sender finds it ready to go, with
/// no second transaction between the queue and the relay.
///
/// Nothing is sealed without a current session (the sender starts one from a prekey
/// bundle) or when encryption fails (the sender tries again and reports it); the caller
/// checks that the recipient's identity is trusted. Returns how many rows it sealed.
pub fn seal_queued(
    tx: &Connection,
    recipient: &str,
    max: usize,
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
    now: i64,
) -> Result<usize, StoreError> {
    let rows = outbox::unsealed(tx, recipient, max)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let Some(mut record) = load_record(tx, recipient)? else { return Ok(0) };
    let Some(session) = record.current_mut() else { return Ok(0) };
    // Every ciphertext first, in memory: a failure leaves the rows and the stored session
    // as they were.
    let mut envelopes = Vec::with_capacity(rows.len());
    for row in &rows {
        match session.encrypt(&row.plaintext, rng) {
            Ok(e) => envelopes.push(e),
            Err(e) => {
                tracing::debug!(error = %e, "sealing queued rows deferred to the sender");
                return Ok(0);
            }
        }
    }
    for (row, envelope) in rows.iter().zip(&envelopes) {
        outbox::sealed(tx, recipient, row, envelope, now)?;
    }
    save_record(tx, recipient, &record, now)?;
    Ok(rows.len())
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

/// What opening a pairwise envelope came to.
pub enum Opened {
    /// Opened: the sessions to store (the one that opened it is current) and the plaintext.
    Plain(Box<SessionRecord>, Vec<u8>),
    /// Already opened once (a replay): nothing to ask again.
    Duplicate,
    /// No session opens it; why, without content.
    Undecryptable(String),
}

impl std::fmt::Debug for Opened {
    // Never the plaintext or the sessions.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(..) => f.write_str("Plain(..)"),
            Self::Duplicate => f.write_str("Duplicate"),
            Self::Undecryptable(why) => f.debug_tuple("Undecryptable").field(why).finish(),
        }
    }
}

/// Opens a pairwise envelope from `sender`: with the current or an archived session, or
/// (a peer's new session) with X3DH from the prekeys it names. It decrypts on a copy of
/// the sessions, and a failing prekey message never replaces the sessions we have; the
/// caller stores the returned record. A one-time prekey used is deleted.
pub fn open(
    tx: &Connection,
    me: &Account,
    sender: &str,
    bytes: &[u8],
) -> Result<Opened, StoreError> {
    let mut record = load_record(tx, sender)?.unwrap_or_default();
    let mut attempt = record.clone();
    match attempt.decrypt(bytes) {
        Ok(plaintext) => return Ok(Opened::Plain(Box::new(attempt), plaintext)),
        // A peer's new session: run X3DH with the prekeys it names.
        Err(letstalk_crypto::Error::PreKeyMismatch) => {}
        Err(letstalk_crypto::Error::Duplicate) => return Ok(Opened::Duplicate),
        Err(e) => return Ok(Opened::Undecryptable(e.to_string())),
    }
    let Ok(Envelope::PreKey(pm)) = Envelope::decode(bytes) else {
        return Ok(Opened::Undecryptable("prekey message".into()));
    };
    let Some(signed) = account::load_prekey(tx, pm.signed_prekey_id)? else {
        return Ok(Opened::Undecryptable("unknown signed prekey".into()));
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
            Ok(Opened::Plain(Box::new(record), plaintext))
        }
        Err(e) => Ok(Opened::Undecryptable(format!("prekey message: {e}"))),
    }
}

/// A retry receipt from `peer` for our relay ids: each message still kept is queued
/// again (same message id, new relay id) after the current session is archived, so it
/// goes out under a fresh session; one re-sent [`outbox::MAX_RESENDS`] times fails
/// instead.
pub fn resend(
    tx: &Connection,
    peer: &str,
    relay_ids: &[String],
    now: i64,
) -> Result<Effects, StoreError> {
    let mut effects = Effects::default();
    let mut archived = false;
    for id in relay_ids.iter().take(letstalk_wire::MAX_LIST) {
        let Some(outbox::Kept { message_id, plaintext, attempt }) =
            outbox::take_kept(tx, id, peer)?
        else {
            continue;
        };
        if attempt >= outbox::MAX_RESENDS {
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
        outbox::requeue(tx, peer, message_id.as_deref(), &plaintext, attempt + 1, now)?;
        effects.queued = true;
    }
    Ok(effects)
}
