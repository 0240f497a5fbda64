//! The identity key known for each peer and what the user decided about it: reads of
//! `identities` (and of a contact's verified key), below every module that shows or
//! checks them. Changes are recorded by `trust`.

use rusqlite::{Connection, OptionalExtension, params};

use letstalk_crypto::PublicIdentity;

use crate::e2e;
use crate::store::StoreError;

/// The identity key this device knows for `peer`, if any.
pub fn known(conn: &Connection, peer: &str) -> Result<Option<PublicIdentity>, StoreError> {
    let stored: Option<Vec<u8>> = conn
        .prepare_cached("SELECT identity FROM identities WHERE peer = ?1")?
        .query_row(params![peer], |r| r.get(0))
        .optional()?;
    if let Some(bytes) = stored {
        // Recorded only after it was checked (`trust::observe`).
        return PublicIdentity::from_stored_bytes(&bytes).map(Some).map_err(|_| StoreError::Io {
            context: "identity key".into(),
            source: std::io::Error::other("malformed"),
        });
    }
    Ok(e2e::load_session(conn, peer)?.map(|s| *s.remote_identity()))
}

/// Whether messages to `peer` wait for the user to accept its new identity key.
pub fn is_untrusted(conn: &Connection, peer: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT untrusted FROM identities WHERE peer = ?1")?
        .query_row(params![peer], |r| r.get(0))
        .optional()?
        .unwrap_or(false))
}

/// When `peer`'s identity key last changed, if it ever did.
pub fn changed_at(conn: &Connection, peer: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT changed_at FROM identities WHERE peer = ?1")?
        .query_row(params![peer], |r| r.get(0))
        .optional()?
        .flatten())
}

/// `verified` for the IPC contact: the flag holds only for the key it was set for.
pub fn is_verified(conn: &Connection, peer: &str) -> Result<bool, StoreError> {
    let row: Option<(bool, Option<Vec<u8>>)> = conn
        .prepare_cached("SELECT verified, verified_identity FROM contacts WHERE user_id = ?1")?
        .query_row(params![peer], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((true, key)) = row else { return Ok(false) };
    Ok(match (key, known(conn, peer)?) {
        // Verified before keys were kept with the flag: it was this key (a change
        // clears the flag).
        (None, _) => true,
        (Some(k), Some(current)) => k == current.to_bytes(),
        (Some(_), None) => false,
    })
}
