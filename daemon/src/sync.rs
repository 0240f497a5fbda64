//! Keeping an account's devices in step after linking: a contact changed on one device
//! (added, renamed, blocked, verified, removed) or an account setting changed there
//! travels to the account's other devices as [`Content::ContactSync`] or
//! [`Content::SettingsSync`], end-to-end encrypted like any message, and is applied
//! there as the user's own decision. Device settings (keep-alives, automatic downloads,
//! consent to diagnostics) stay on their device.
//!
//! What a sync may do is bounded by what the receiving device already knows: it can
//! verify only the identity key this device itself learned for the contact (a sync never
//! plants a key), and it never touches our own account's entry.

use rusqlite::{Connection, OptionalExtension, params};

use crate::content::Content;
use crate::events::{self, Effects};
use crate::settings::Settings;
use crate::store::StoreError;
use crate::{contacts, outbox, trust, validate};

/// Queues the contact `user` as this device now holds it (or its removal) for our
/// account's other devices, inside the caller's transaction; nothing when the relay told
/// us there are none.
pub fn queue_contact(tx: &Connection, me: &str, user: &str, now: i64) -> Result<(), StoreError> {
    if !outbox::own_devices_may_exist(tx, me)? {
        return Ok(());
    }
    let held = tx
        .prepare_cached(
            "SELECT nickname, alias, blocked, verified, verified_identity FROM contacts
             WHERE user_id = ?1",
        )?
        .query_row(params![user], |r| {
            let verified: bool = r.get(3)?;
            let identity: Option<Vec<u8>> = r.get(4)?;
            Ok(Content::ContactSync {
                user_id: user.to_owned(),
                nickname: r.get(0)?,
                alias: r.get(1)?,
                blocked: r.get(2)?,
                removed: false,
                verified: identity.filter(|_| verified).map(hex::encode),
            })
        })
        .optional()?;
    let content = held.unwrap_or_else(|| Content::ContactSync {
        user_id: user.to_owned(),
        nickname: String::new(),
        alias: None,
        blocked: false,
        removed: true,
        verified: None,
    });
    outbox::enqueue(tx, me, None, &content, now).map(drop)
}

/// Queues the account settings (those the same on every device) for our account's
/// other devices, inside the caller's transaction.
pub fn queue_settings(tx: &Connection, me: &str, s: &Settings, now: i64) -> Result<(), StoreError> {
    if !outbox::own_devices_may_exist(tx, me)? {
        return Ok(());
    }
    let content = Content::SettingsSync {
        block_all: s.block_all,
        read_receipts: s.read_receipts,
        typing: s.typing,
        share_presence: s.share_presence,
    };
    outbox::enqueue(tx, me, None, &content, now).map(drop)
}

/// What applying a sync did.
#[derive(Debug, Default)]
pub struct Applied {
    pub effects: Effects,
    /// The block list, the contact list or a privacy setting changed: the relay must
    /// hear this device's lists again (they are the account's, and this device would
    /// otherwise send stale ones on its next connection).
    pub privacy_changed: bool,
}

/// Applies a sync from another device of our own account (`me`), inside the receive
/// transaction. `Err` says why it was refused (malformed, or about our own account).
pub fn apply(
    tx: &Connection,
    me: &str,
    content: &Content,
    now: i64,
) -> Result<Result<Applied, String>, StoreError> {
    match content {
        Content::ContactSync { user_id, nickname, alias, blocked, removed, verified } => {
            apply_contact(
                tx,
                me,
                user_id,
                nickname,
                alias.as_deref(),
                *blocked,
                *removed,
                verified.as_deref(),
                now,
            )
        }
        Content::SettingsSync { block_all, read_receipts, typing, share_presence } => {
            let old = Settings::load(tx)?;
            let new = Settings {
                block_all: *block_all,
                read_receipts: *read_receipts,
                typing: *typing,
                share_presence: *share_presence,
                ..old
            };
            let mut applied = Applied::default();
            if new != old {
                new.store(tx)?;
                let body =
                    letstalk_ipc::types::EventBody::SettingsChanged { settings: new.to_ipc() };
                applied.effects.last_event = Some(events::append(tx, &body, now)?);
                applied.privacy_changed =
                    new.block_all != old.block_all || new.share_presence != old.share_presence;
            }
            Ok(Ok(applied))
        }
        _ => Ok(Err("not a sync".into())),
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_contact(
    tx: &Connection,
    me: &str,
    user_id: &str,
    nickname: &str,
    alias: Option<&str>,
    blocked: bool,
    removed: bool,
    verified: Option<&str>,
    now: i64,
) -> Result<Result<Applied, String>, StoreError> {
    let Ok(user) = validate::user_id("user_id", user_id) else {
        return Ok(Err("a contact sync with a malformed user id".into()));
    };
    if user == me {
        return Ok(Err("a contact sync about our own account".into()));
    }
    let valid_name = |n: &str| n.is_empty() || validate::nickname("nickname", n).is_ok();
    if !valid_name(nickname) || !alias.is_none_or(valid_name) {
        return Ok(Err("a contact sync with a malformed name".into()));
    }
    let mut applied = Applied { privacy_changed: true, ..Applied::default() };
    if removed {
        tx.prepare_cached("DELETE FROM contacts WHERE user_id = ?1")?.execute(params![user])?;
        return Ok(Ok(applied));
    }
    tx.prepare_cached(
        "INSERT INTO contacts (user_id, nickname, alias, blocked, added_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (user_id) DO UPDATE SET alias = excluded.alias, blocked = excluded.blocked,
            nickname = CASE WHEN excluded.nickname != '' THEN excluded.nickname
                            ELSE contacts.nickname END",
    )?
    .execute(params![user, nickname, alias, blocked, now])?;
    // Verified there: verified here only for the very key this device knows for them.
    let known = trust::known(tx, &user)?.map(|k| hex::encode(k.to_bytes()));
    match verified {
        Some(key) if known.as_deref() == Some(key) => {
            if let Ok(e) = trust::accept(tx, me, &user, true, now)? {
                applied.effects.merge(e);
            }
        }
        Some(_) => {}
        None => {
            tx.prepare_cached(
                "UPDATE contacts SET verified = 0, verified_identity = NULL WHERE user_id = ?1",
            )?
            .execute(params![user])?;
        }
    }
    if let Some((_, seq)) = contacts::changed(tx, &user, now)? {
        applied.effects.last_event = applied.effects.last_event.max(Some(seq));
    }
    Ok(Ok(applied))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, crate::store::Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn contact_sync(user: &str, blocked: bool, verified: Option<&str>) -> Content {
        Content::ContactSync {
            user_id: user.into(),
            nickname: "Bob".into(),
            alias: Some("bobby".into()),
            blocked,
            removed: false,
            verified: verified.map(str::to_owned),
        }
    }

    fn count_contacts(c: &Connection) -> i64 {
        c.query_row("SELECT count(*) FROM contacts", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_contact_sync_adds_blocks_and_removes_and_never_plants_a_key() {
        let (_d, store) = store();
        store
            .with(|c| {
                let a = apply(c, "alice", &contact_sync("bob", true, None), 1)?.unwrap();
                assert!(a.privacy_changed);
                let bob = contacts::get(c, "bob")?.unwrap();
                assert_eq!((bob.alias.as_deref(), bob.blocked), (Some("bobby"), true));
                // A verification for a key this device never learned: not taken, and no
                // key is planted for bob.
                let claimed = hex::encode([7u8; 128]);
                apply(c, "alice", &contact_sync("bob", false, Some(&claimed)), 2)?.unwrap();
                assert!(!trust::is_verified(c, "bob")?);
                assert!(trust::known(c, "bob")?.is_none());
                assert!(!contacts::get(c, "bob")?.unwrap().blocked);
                let removed = Content::ContactSync {
                    user_id: "bob".into(),
                    nickname: String::new(),
                    alias: None,
                    blocked: false,
                    removed: true,
                    verified: None,
                };
                apply(c, "alice", &removed, 3)?.unwrap();
                assert_eq!(count_contacts(c), 0);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_bad_contact_sync_changes_nothing() {
        let (_d, store) = store();
        store
            .with(|c| {
                for bad in [
                    contact_sync("alice", true, None),
                    contact_sync("../../etc", true, None),
                    contact_sync("", false, None),
                    Content::ContactSync {
                        user_id: "bob".into(),
                        nickname: "x".repeat(10_000),
                        alias: None,
                        blocked: false,
                        removed: false,
                        verified: None,
                    },
                ] {
                    assert!(apply(c, "alice", &bad, 1)?.is_err(), "{bad:?}");
                }
                assert_eq!(count_contacts(c), 0);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn a_settings_sync_changes_the_account_settings_and_never_the_device_ones() {
        let (_d, store) = store();
        store
            .with(|c| {
                let mine = Settings {
                    keepalive_wifi_s: 60,
                    auto_download_cellular: true,
                    ..Settings::default()
                };
                mine.store(c)?;
                let sync = Content::SettingsSync {
                    block_all: true,
                    read_receipts: false,
                    typing: false,
                    share_presence: false,
                };
                let a = apply(c, "alice", &sync, 1)?.unwrap();
                assert!(a.privacy_changed && a.effects.last_event.is_some());
                let now = Settings::load(c)?;
                assert_eq!(
                    now,
                    Settings {
                        block_all: true,
                        read_receipts: false,
                        typing: false,
                        share_presence: false,
                        ..mine
                    }
                );
                // The same again: nothing changes, no event.
                let again = apply(c, "alice", &sync, 2)?.unwrap();
                assert!(!again.privacy_changed && again.effects.last_event.is_none());
                Ok(())
            })
            .unwrap();
    }
}
