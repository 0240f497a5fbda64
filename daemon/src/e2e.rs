//! The only code that reads or writes the pairwise sessions, one record per (peer
//! account, device of it): load, save, archive, start from a bundle, seal queued rows
//! for every device, and open a received envelope (the current session, the archived
//! ones in turn, or a new one from a prekey message).

use rusqlite::{Connection, OptionalExtension, params};

use letstalk_crypto::{Envelope, Session, SessionRecord};
use letstalk_ipc::types::{EventBody, MessageState};
use letstalk_wire::Copy;

use crate::account::{self, Account};
use crate::events::{self, Effects};
use crate::outbox;
use crate::store::StoreError;

pub(crate) fn crypto_err(context: &str, e: letstalk_crypto::Error) -> StoreError {
    StoreError::Io { context: context.to_owned(), source: std::io::Error::other(e.to_string()) }
}

/// The sessions (current and previous ones) with `peer`'s device `device`, if any.
pub fn load_record(
    conn: &Connection,
    peer: &str,
    device: u32,
) -> Result<Option<SessionRecord>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT state FROM sessions WHERE peer = ?1 AND device = ?2")?
        .query_row(params![peer, device], |r| r.get(0))
        .optional()?;
    let Some(bytes) = bytes.map(zeroize::Zeroizing::new) else { return Ok(None) };
    SessionRecord::from_bytes(&bytes).map(Some).map_err(|e| crypto_err("session state", e))
}

/// A current session with one of `peer`'s devices (the lowest numbered), if any: every
/// device of an account holds its identity key, so any of them tells it.
pub fn load_session(conn: &Connection, peer: &str) -> Result<Option<Session>, StoreError> {
    for device in session_devices(conn, peer)? {
        if let Some(s) = load_record(conn, peer, device)?.and_then(|r| r.current().cloned()) {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// `peer`'s devices we hold a record with, in device order (a record may hold only
/// archived sessions; [`current_devices`] is those with a current one).
pub fn session_devices(conn: &Connection, peer: &str) -> Result<Vec<u32>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT device FROM sessions WHERE peer = ?1 ORDER BY device")?
        .query_map(params![peer], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// `peer`'s devices with a current session: the ones a message to `peer` is sealed for.
pub fn current_devices(conn: &Connection, peer: &str) -> Result<Vec<u32>, StoreError> {
    let mut out = Vec::new();
    for device in session_devices(conn, peer)? {
        if load_record(conn, peer, device)?.is_some_and(|r| r.current().is_some()) {
            out.push(device);
        }
    }
    Ok(out)
}

pub fn save_record(
    conn: &Connection,
    peer: &str,
    device: u32,
    record: &SessionRecord,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO sessions (peer, device, state, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (peer, device) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
    )?
    .execute(params![peer, device, record.to_bytes().as_slice(), now])?;
    Ok(())
}

/// Forgets the sessions with `peer`'s `devices` (devices the account no longer has), and
/// drops the copies queued for them.
pub fn forget_devices(conn: &Connection, peer: &str, devices: &[u32]) -> Result<(), StoreError> {
    for device in devices {
        conn.prepare_cached("DELETE FROM sessions WHERE peer = ?1 AND device = ?2")?
            .execute(params![peer, device])?;
    }
    outbox::drop_copies(conn, peer, devices)
}

/// A prekey bundle of one device of an account, as the relay gave it.
#[derive(Debug, Clone)]
pub struct DeviceBundle {
    pub device: u32,
    /// The device's Ed25519 key on the relay (how our own device is recognised among
    /// our account's bundles).
    pub device_key: [u8; 32],
    pub bundle: letstalk_crypto::PreKeyBundle,
}

/// Starts a new session with `peer`'s device from its bundle (X3DH), replacing the
/// current one (kept as a previous one for late messages). The caller has checked the
/// bundle's identity key (`trust::observe`).
pub fn start_session(
    tx: &Connection,
    me: &Account,
    peer: &str,
    b: &DeviceBundle,
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
    now: i64,
) -> Result<(), StoreError> {
    let mut record = load_record(tx, peer, b.device)?.unwrap_or_default();
    record.promote_new(
        Session::initiate(&me.identity, &b.bundle, rng)
            .map_err(|e| crypto_err("starting a session", e))?,
    );
    save_record(tx, peer, b.device, &record, now)
}

/// Queued rows to one recipient that one transaction seals at most (the sender seals
/// the rest).
pub const SEAL_MAX: usize = 64;

/// Encrypts `recipient`'s queued plaintext rows (at most `max`, oldest first) for every
/// device of it we hold a current session with, inside the caller's transaction, and
/// saves the advanced sessions there: one copy per device. The transaction that queues a
/// message can seal it too: its commit makes the ciphertexts and the ratchets durable
/// together, and the sender finds it ready to go, with no second transaction between the
/// queue and the relay.
///
/// Nothing is sealed without a current session (the sender starts them from prekey
/// bundles) or when encryption fails (the sender tries again and reports it); the caller
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
    let mut records = Vec::new();
    for device in session_devices(tx, recipient)? {
        if let Some(r) = load_record(tx, recipient, device)?.filter(|r| r.current().is_some()) {
            records.push((device, r));
        }
    }
    if records.is_empty() {
        return Ok(0);
    }
    // Every ciphertext first, in memory: a failure leaves the rows and the stored sessions
    // as they were.
    let mut copies: Vec<Vec<Copy>> = vec![Vec::with_capacity(records.len()); rows.len()];
    for (device, record) in &mut records {
        let Some(session) = record.current_mut() else { return Ok(0) };
        for (row, out) in rows.iter().zip(&mut copies) {
            match session.encrypt(&row.plaintext, rng) {
                Ok(body) => out.push(Copy { device_id: *device, body }),
                Err(e) => {
                    tracing::debug!(error = %e, "sealing queued rows deferred to the sender");
                    return Ok(0);
                }
            }
        }
    }
    for (row, copies) in rows.iter().zip(&copies) {
        outbox::sealed(tx, recipient, row, copies, now)?;
    }
    for (device, record) in &records {
        save_record(tx, recipient, *device, record, now)?;
    }
    Ok(rows.len())
}

/// Seals `recipient`'s already sealed rows for `devices` that have no copy for them yet
/// (devices the relay said are missing), oldest first, each a new encryption of the kept
/// plaintext under that device's current session; the copies made before are left as
/// they are (never encrypted again). Returns the devices it had no session for.
pub fn seal_for_devices(
    tx: &Connection,
    recipient: &str,
    devices: &[u32],
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
    now: i64,
) -> Result<Vec<u32>, StoreError> {
    let mut without = Vec::new();
    for &device in devices {
        let Some(mut record) = load_record(tx, recipient, device)? else {
            without.push(device);
            continue;
        };
        let Some(session) = record.current_mut() else {
            without.push(device);
            continue;
        };
        for mut row in outbox::lacking(tx, recipient, device)? {
            let body =
                session.encrypt(&row.plaintext, rng).map_err(|e| crypto_err("encrypting", e))?;
            row.copies.push(Copy { device_id: device, body });
            row.copies.sort_by_key(|c| c.device_id);
            outbox::set_copies(tx, row.seq, &row.copies)?;
        }
        save_record(tx, recipient, device, &record, now)?;
    }
    Ok(without)
}

/// Archives the current session with `peer`'s `device`: the next message to it starts a
/// fresh session from a new bundle, and late messages under the old one still open.
pub fn archive_session(
    conn: &Connection,
    peer: &str,
    device: u32,
    now: i64,
) -> Result<(), StoreError> {
    if let Some(mut record) = load_record(conn, peer, device)?
        && record.current().is_some()
    {
        record.archive_current();
        save_record(conn, peer, device, &record, now)?;
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

/// Opens a pairwise envelope from `sender`'s device `device`: with that device's current
/// or an archived session, or
/// (a peer's new session) with X3DH from the prekeys it names. It decrypts on a copy of
/// the sessions, and a failing prekey message never replaces the sessions we have; the
/// caller stores the returned record. A one-time prekey used is deleted.
pub fn open(
    tx: &Connection,
    me: &Account,
    sender: &str,
    device: u32,
    bytes: &[u8],
) -> Result<Opened, StoreError> {
    let mut record = load_record(tx, sender, device)?.unwrap_or_default();
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

/// A retry receipt from `peer`'s device `device` for our relay ids: each message still
/// kept is queued again (same message id, new relay id) after the current session with
/// that device is archived, so it goes out to that device under a fresh session (and to
/// the account's other devices under theirs: they show a message id once); one re-sent
/// [`outbox::MAX_RESENDS`] times fails instead.
pub fn resend(
    tx: &Connection,
    peer: &str,
    device: u32,
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
            archive_session(tx, peer, device, now)?;
            archived = true;
        }
        outbox::requeue(tx, peer, message_id.as_deref(), &plaintext, attempt + 1, now)?;
        effects.queued = true;
    }
    Ok(effects)
}
