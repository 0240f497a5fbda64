//! Identity keys of peers: trust on first use, every change recorded and shown, and a
//! verified contact's new key held back until the user accepts it (`contacts.trust`).
//!
//! The key known for a peer lives in `identities` (before migration 7, only in the
//! session, which [`known`](crate::identities::known) still reads). [`observe`] is called with every key a
//! session reveals: a bundle we start a session from, a prekey message, any message a
//! session opened. A different key clears `verified` (which belongs to the key that was
//! verified, kept in `contacts.verified_identity`), sets `identity_changed_at`, writes a
//! system message and `contact.changed`, and, if the contact was verified, marks it
//! `untrusted`: from then on the sender holds every pairwise message to it (texts,
//! files, calls, sender keys and group snapshots) and the IPC methods answer
//! `untrusted_identity`; a group sender key from it waits in `held`.

use rusqlite::{Connection, OptionalExtension, params};

use letstalk_crypto::PublicIdentity;
use letstalk_ipc::{ErrorKind, RpcError};

pub use crate::identities::{changed_at, is_untrusted, is_verified, known};

use crate::content::Content;
use crate::events::Effects;
use crate::messages;
use crate::store::StoreError;

/// What [`observe`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The last event written (system message, `contact.changed`).
    pub event: Option<u64>,
    /// Messages to the peer are held until the user accepts its key.
    pub untrusted: bool,
}

/// Records `identity` as `peer`'s key, in the caller's transaction.
pub fn observe(
    tx: &Connection,
    peer: &str,
    identity: &PublicIdentity,
    now: i64,
) -> Result<Observed, StoreError> {
    let previous = known(tx, peer)?;
    let bytes = identity.to_bytes().to_vec();
    match previous {
        Some(k) if k == *identity => {
            tx.prepare_cached(
                "INSERT INTO identities (peer, identity) VALUES (?1, ?2) ON CONFLICT (peer) DO NOTHING",
            )?
            .execute(params![peer, bytes])?;
            Ok(Observed { event: None, untrusted: is_untrusted(tx, peer)? })
        }
        None => {
            tx.prepare_cached("INSERT INTO identities (peer, identity) VALUES (?1, ?2)")?
                .execute(params![peer, bytes])?;
            Ok(Observed::default())
        }
        Some(_) => {
            let was_verified: bool = tx
                .prepare_cached("SELECT verified FROM contacts WHERE user_id = ?1")?
                .query_row(params![peer], |r| r.get(0))
                .optional()?
                .unwrap_or(false);
            let untrusted = was_verified || is_untrusted(tx, peer)?;
            tx.prepare_cached(
                "INSERT INTO identities (peer, identity, changed_at, untrusted) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (peer) DO UPDATE SET identity = excluded.identity,
                    changed_at = excluded.changed_at, untrusted = excluded.untrusted",
            )?
            .execute(params![peer, bytes, now, untrusted])?;
            tx.prepare_cached("UPDATE contacts SET verified = 0 WHERE user_id = ?1")?
                .execute(params![peer])?;
            let text = if untrusted {
                format!(
                    "Your safety number with {peer} changed: their identity key is new. You had \
                     verified them; messages to them wait until you accept the new key."
                )
            } else {
                format!("Your safety number with {peer} changed: their identity key is new.")
            };
            let id = uuid::Uuid::now_v7().to_string();
            let mut event =
                Some(messages::system_message(tx, &id, &format!("user:{peer}"), &text, now)?);
            if let Some((_, seq)) = crate::contacts::changed(tx, peer, now)? {
                event = Some(seq);
            }
            Ok(Observed { event, untrusted })
        }
    }
}

/// `untrusted_identity` if any of `peers` waits for the user to accept its new key.
pub fn check_sendable<'a>(
    conn: &Connection,
    peers: impl IntoIterator<Item = &'a str>,
) -> Result<Result<(), RpcError>, StoreError> {
    for peer in peers {
        if is_untrusted(conn, peer)? {
            return Ok(Err(untrusted(peer)));
        }
    }
    Ok(Ok(()))
}

pub fn untrusted(peer: &str) -> RpcError {
    RpcError::new(
        ErrorKind::UntrustedIdentity,
        format!(
            "{peer}'s identity key changed since you verified it: compare the new safety \
             number, then accept it with contacts.trust"
        ),
    )
}

/// Why accepting a key failed.
#[derive(Debug)]
pub enum AcceptError {
    /// No session has told us the peer's key yet.
    NoKey,
    /// The safety number given is not the current one.
    Mismatch,
}

/// Accepts `peer`'s current key (verified when `verified`), releases held content and
/// lets its messages go out, in the caller's transaction.
pub fn accept(
    tx: &Connection,
    me: &str,
    peer: &str,
    verified: bool,
    now: i64,
) -> Result<Result<Effects, AcceptError>, StoreError> {
    let Some(key) = known(tx, peer)? else { return Ok(Err(AcceptError::NoKey)) };
    let bytes = key.to_bytes().to_vec();
    tx.prepare_cached(
        "INSERT INTO identities (peer, identity, untrusted) VALUES (?1, ?2, 0)
         ON CONFLICT (peer) DO UPDATE SET untrusted = 0",
    )?
    .execute(params![peer, bytes])?;
    tx.prepare_cached(
        "UPDATE contacts SET verified = ?2, verified_identity = ?3 WHERE user_id = ?1",
    )?
    .execute(params![peer, verified, verified.then_some(bytes)])?;
    release_held(tx, me, peer, now).map(Ok)
}

/// Keeps content that must wait for the user's acceptance of the sender's key.
/// `device` is the sender's device it came from.
pub fn hold(
    tx: &Connection,
    sender: &str,
    device: u32,
    plaintext: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO held (sender, device, plaintext, at) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![sender, device, plaintext, now])?;
    Ok(())
}

fn release_held(tx: &Connection, me: &str, peer: &str, now: i64) -> Result<Effects, StoreError> {
    let rows: Vec<(u32, Vec<u8>)> = tx
        .prepare_cached("DELETE FROM held WHERE sender = ?1 RETURNING device, plaintext")?
        .query_map(params![peer], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut effects = Effects::default();
    for (device, plaintext) in rows {
        let plaintext = zeroize::Zeroizing::new(plaintext);
        if let Some(Content::SenderKey { gid, key }) = Content::decode(&plaintext) {
            match crate::groups::on_sender_key(tx, me, peer, device, &gid, &key, now)? {
                Ok(e) => effects.merge(e),
                Err(why) => tracing::info!(reason = %why, "held sender key refused"),
            }
        }
    }
    Ok(effects)
}

/// The safety number as typed (spaces or not) reduced to its 60 digits, or `None`.
pub fn normalize_safety_number(s: &str) -> Option<String> {
    let digits: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (digits.len() == 60 && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}
