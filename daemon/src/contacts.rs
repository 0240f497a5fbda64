//! Contacts as the daemon keeps them, and their IPC shape (with the safety number,
//! computed from our identity and the contact's identity as the session knows it).

use rusqlite::{Connection, OptionalExtension, params};

use letstalk_crypto::SafetyNumber;
use letstalk_ipc::types::{Contact, EventBody, Presence};

use crate::account::Account;
use crate::store::StoreError;

/// One contact, or `None`.
pub fn get(conn: &Connection, user_id: &str) -> Result<Option<Contact>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT user_id, nickname, alias, blocked, presence, last_seen_at FROM contacts WHERE user_id = ?1",
        )?
        .query_row(params![user_id], |r| {
            let presence: String = r.get(4)?;
            Ok(Contact {
                user_id: r.get(0)?,
                nickname: r.get(1)?,
                alias: r.get(2)?,
                blocked: r.get(3)?,
                presence: match presence.as_str() {
                    "online" => Presence::Online,
                    "hidden" => Presence::Hidden,
                    _ => Presence::Offline,
                },
                last_seen_at: r.get(5)?,
                safety_number: None,
                verified: false,
                identity_changed_at: None,
            })
        })
        .optional()?;
    let Some(mut contact) = row else { return Ok(None) };
    contact.safety_number = safety_number(conn, user_id)?;
    contact.verified = crate::identities::is_verified(conn, user_id)?;
    contact.identity_changed_at = crate::identities::changed_at(conn, user_id)?;
    Ok(Some(contact))
}

/// Every contact, by user ID.
pub fn list(conn: &Connection) -> Result<Vec<Contact>, StoreError> {
    let ids: Vec<String> = conn
        .prepare_cached("SELECT user_id FROM contacts ORDER BY user_id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.extend(get(conn, &id)?);
    }
    Ok(out)
}

/// The safety number with `user_id`, once a session tells us their identity key.
pub fn safety_number(conn: &Connection, user_id: &str) -> Result<Option<String>, StoreError> {
    let Some(me) = Account::load(conn)? else { return Ok(None) };
    let Some(identity) = crate::identities::known(conn, user_id)? else { return Ok(None) };
    let n = SafetyNumber::new(
        &me.identity.public(),
        me.user_id.as_bytes(),
        &identity,
        user_id.as_bytes(),
    );
    Ok(Some(n.to_string()))
}

pub fn presence_str(p: Presence) -> &'static str {
    match p {
        Presence::Online => "online",
        Presence::Offline => "offline",
        Presence::Hidden => "hidden",
    }
}

/// Reads the contact back after a change and records its `contact.changed` event, in the
/// caller's transaction: (the contact, the event's seq); `None` if there is no such row.
pub fn changed(
    tx: &Connection,
    user_id: &str,
    now: i64,
) -> Result<Option<(Contact, u64)>, StoreError> {
    let Some(contact) = get(tx, user_id)? else { return Ok(None) };
    let seq =
        crate::events::append(tx, &EventBody::ContactChanged { contact: contact.clone() }, now)?;
    Ok(Some((contact, seq)))
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
