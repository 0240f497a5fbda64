//! What a linked device receives from the account's device that made the code: the
//! account (with its identity key), contacts with their identity keys and verification
//! states, groups, mutes and the settings that belong to the account, not the device.
//! Exported inside one read, imported inside the transaction that saves the account.
//!
//! It travels sealed under the link code's key (`letstalk_crypto::link`), so only a device
//! that knew the code reads it. It is still input from the network: tables and columns
//! are taken only from the lists below and checked against this database's schema,
//! values only as SQL parameters, and every size is bounded by the link message's limit.

use std::collections::BTreeMap;

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, params_from_iter};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use letstalk_crypto::PublicIdentity;

use crate::account::Account;
use crate::store::StoreError;

/// The account tables a new device takes over as they are. Messages are not among them:
/// history stays on the device that has it.
const LINKED_TABLES: &[&str] = &["contacts", "identities", "groups", "group_members", "muted"];

/// Columns that stay behind: a device's own group sender key is its own (two devices
/// sending under one chain would reuse message keys), so the new device makes its own on
/// its first group message.
const NOT_LINKED: &[(&str, &str)] = &[("groups", "sender_key"), ("groups", "key_stale")];

fn linked_column(table: &str, column: &str) -> bool {
    !NOT_LINKED.contains(&(table, column))
}

/// Settings of the account (the same on every device); the rest (keep-alives, automatic
/// downloads, consent to diagnostics) belong to each device.
const ACCOUNT_SETTINGS: &[&str] = &["block_all", "read_receipts", "typing", "share_presence"];

/// The payload's format version.
const VERSION: u32 = 1;

/// The account's state as it travels to a new device.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub user_id: String,
    pub email: String,
    pub nickname: String,
    pub created_at: i64,
    /// Hex; with `avatar_mime`.
    pub avatar: Option<String>,
    pub avatar_mime: Option<String>,
    /// The identity key pair, hex.
    pub identity: String,
    /// The relay's number for the new device.
    pub device_id: u32,
    pub tables: BTreeMap<String, Table>,
    pub settings: BTreeMap<String, i64>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("user_id", &self.user_id).finish_non_exhaustive()
    }
}

/// A table's rows: column names and, per row, one JSON value per column (`null`, an
/// integer, a real, a string for text, `{"blob": hex}` for a blob).
#[derive(Serialize, Deserialize)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// The column names and how many rows: never the values (keys, names, verification
/// states), so that a `{:?}` in a log shows nothing of the account.
impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("columns", &self.columns)
            .field("rows", &self.rows.len())
            .finish()
    }
}

fn bad(what: &str) -> StoreError {
    StoreError::Io {
        context: "linked account".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned()),
    }
}

/// The account's state for device `device_id`.
pub fn export(
    conn: &Connection,
    account: &Account,
    device_id: u32,
) -> Result<Snapshot, StoreError> {
    let mut tables = BTreeMap::new();
    for &name in LINKED_TABLES {
        let columns: Vec<String> =
            local_columns(conn, name)?.into_iter().filter(|c| linked_column(name, c)).collect();
        let mut stmt = conn.prepare(&format!("SELECT {} FROM {name}", columns.join(", ")))?;
        let n = columns.len();
        let rows = stmt
            .query_map([], |r| (0..n).map(|i| r.get_ref(i).map(to_json)).collect())?
            .collect::<Result<Vec<Vec<Value>>, _>>()?;
        tables.insert(name.to_owned(), Table { columns, rows });
    }
    let mut settings = BTreeMap::new();
    let mut stmt = conn.prepare("SELECT key, value FROM settings")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (key, value) = row?;
        if ACCOUNT_SETTINGS.contains(&key.as_str()) {
            settings.insert(key, value);
        }
    }
    Ok(Snapshot {
        version: VERSION,
        user_id: account.user_id.clone(),
        email: account.email.clone(),
        nickname: account.nickname.clone(),
        created_at: account.created_at,
        avatar: account.avatar.as_ref().map(|(data, _)| hex::encode(data)),
        avatar_mime: account.avatar.as_ref().map(|(_, mime)| mime.clone()),
        identity: hex::encode(account.identity.to_bytes().as_ref()),
        device_id,
        tables,
        settings,
    })
}

fn to_json(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => Value::from(f),
        ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => serde_json::json!({ "blob": hex::encode(b) }),
    }
}

fn from_json(v: &Value) -> Result<SqlValue, StoreError> {
    Ok(match v {
        Value::Null => SqlValue::Null,
        Value::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().ok_or_else(|| bad("number"))?),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        Value::Object(o) => match o.get("blob").and_then(Value::as_str) {
            Some(h) if o.len() == 1 => SqlValue::Blob(hex::decode(h).map_err(|_| bad("blob"))?),
            _ => return Err(bad("value")),
        },
        Value::Bool(_) | Value::Array(_) => return Err(bad("value")),
    })
}

/// The columns `table` has in this database.
fn local_columns(conn: &Connection, table: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let cols = stmt.query_map([], |r| r.get::<_, String>(1))?.collect::<Result<_, _>>()?;
    Ok(cols)
}

/// Writes the snapshot's tables and settings (inside the caller's transaction, after the
/// account tables were emptied). A table or column this database does not know, a row of
/// the wrong width or a value of no SQL type refuses the whole snapshot.
pub fn import(tx: &Connection, snapshot: &Snapshot) -> Result<(), StoreError> {
    if snapshot.version != VERSION {
        return Err(bad("version"));
    }
    if snapshot.tables.keys().any(|name| !LINKED_TABLES.contains(&name.as_str())) {
        return Err(bad("table"));
    }
    // In the order of `LINKED_TABLES` (a group before its members: the foreign key),
    // never in the snapshot's (alphabetical) order.
    for &name in LINKED_TABLES {
        let Some(table) = snapshot.tables.get(name) else { continue };
        let known = local_columns(tx, name)?;
        if table.columns.is_empty()
            || table.columns.iter().any(|c| !known.contains(c) || !linked_column(name, c))
            || (1..table.columns.len()).any(|i| table.columns[..i].contains(&table.columns[i]))
        {
            return Err(bad("columns"));
        }
        // Column names are this database's own (checked above), never the sender's text.
        let cols: Vec<&str> = table
            .columns
            .iter()
            .filter_map(|c| known.iter().find(|k| *k == c).map(String::as_str))
            .collect();
        let marks = vec!["?"; cols.len()].join(", ");
        let sql = format!("INSERT INTO {name} ({}) VALUES ({marks})", cols.join(", "));
        let mut stmt = tx.prepare(&sql)?;
        // A peer's identity key is checked where it enters the device, here as anywhere:
        // the store's identities are read back without checking again.
        let key_at = (name == "identities").then(|| cols.iter().position(|c| *c == "identity"));
        for row in &table.rows {
            if row.len() != cols.len() {
                return Err(bad("row"));
            }
            let values = row.iter().map(from_json).collect::<Result<Vec<_>, _>>()?;
            if let Some(at) = key_at {
                let checked = match at.and_then(|i| values.get(i)) {
                    Some(SqlValue::Blob(key)) => PublicIdentity::from_bytes(key).is_ok(),
                    _ => false,
                };
                if !checked {
                    return Err(bad("identity key"));
                }
            }
            stmt.execute(params_from_iter(values))?;
        }
    }
    for (key, value) in &snapshot.settings {
        if !ACCOUNT_SETTINGS.contains(&key.as_str()) {
            return Err(bad("setting"));
        }
        tx.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            rusqlite::params![key, value],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use rand_core::OsRng;

    use super::*;

    fn count(c: &Connection, table: &str) -> i64 {
        c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn the_state_travels_and_a_hostile_snapshot_changes_nothing() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (from, to) = (
            crate::store::Store::open(a.path()).unwrap(),
            crate::store::Store::open(b.path()).unwrap(),
        );
        let account =
            Account::generate("alice".into(), "a@x.org".into(), "A".into(), None, 1, &mut OsRng);
        let snapshot = from
            .with(|c| {
                c.execute(
                    "INSERT INTO contacts (user_id, alias, verified, added_at) VALUES ('bob', 'B', 1, 5)",
                    [],
                )?;
                c.execute(
                    "INSERT INTO groups (group_id, name, created_at, version, sender_key)
                     VALUES ('g1', 'G', 1, 1, x'0102')",
                    [],
                )?;
                // A member row: its group must be written first (the foreign key), though
                // the snapshot names `group_members` before `groups`.
                c.execute(
                    "INSERT INTO group_members (group_id, user_id, admin) VALUES ('g1', 'bob', 1)",
                    [],
                )?;
                let bob = letstalk_crypto::IdentityKeyPair::generate(&mut OsRng).public();
                c.execute(
                    "INSERT INTO identities (peer, identity) VALUES ('bob', ?1)",
                    [bob.to_bytes().to_vec()],
                )?;
                c.execute("INSERT INTO settings (key, value) VALUES ('read_receipts', 0)", [])?;
                c.execute("INSERT INTO settings (key, value) VALUES ('keepalive_wifi_s', 77)", [])?;
                export(c, &account, 2)
            })
            .unwrap();
        // What travels is JSON: it must survive the trip.
        let snapshot: Snapshot =
            serde_json::from_slice(&serde_json::to_vec(&snapshot).unwrap()).unwrap();
        assert!(!snapshot.tables["groups"].columns.iter().any(|c| c == "sender_key"));
        assert!(!snapshot.settings.contains_key("keepalive_wifi_s"));

        let hostile = |f: &dyn Fn(&mut Snapshot)| {
            let mut s: Snapshot =
                serde_json::from_slice(&serde_json::to_vec(&snapshot).unwrap()).unwrap();
            f(&mut s);
            s
        };
        let attacks = [
            hostile(&|s| {
                let t = s.tables.remove("contacts").unwrap();
                s.tables.insert("sessions".into(), t);
            }),
            hostile(&|s| s.tables.get_mut("groups").unwrap().columns.push("sender_key".into())),
            hostile(&|s| s.tables.get_mut("contacts").unwrap().columns[0] = "user_id) --".into()),
            hostile(&|s| {
                s.tables.get_mut("contacts").unwrap().rows[0].pop();
            }),
            hostile(&|s| s.tables.get_mut("contacts").unwrap().rows[0][0] = serde_json::json!([1])),
            hostile(&|s| {
                s.settings.insert("keepalive_wifi_s".into(), 5);
            }),
            hostile(&|s| s.version = 99),
            // A peer's identity key whose signature does not hold, or that is no key at
            // all: the store reads identities back without checking them again.
            hostile(&|s| {
                let t = s.tables.get_mut("identities").unwrap();
                let at = t.columns.iter().position(|c| c == "identity").unwrap();
                let hex = t.rows[0][at]["blob"].as_str().unwrap().to_owned();
                let mut key = hex::decode(hex).unwrap();
                key[40] ^= 1;
                t.rows[0][at] = serde_json::json!({ "blob": hex::encode(key) });
            }),
            hostile(&|s| {
                let t = s.tables.get_mut("identities").unwrap();
                let at = t.columns.iter().position(|c| c == "identity").unwrap();
                t.rows[0][at] = serde_json::json!("not a key");
            }),
        ];
        for attack in &attacks {
            let result = to.with(|c| {
                let tx = c.unchecked_transaction()?;
                import(&tx, attack)?;
                tx.commit()?;
                Ok(())
            });
            assert!(result.is_err());
            to.with(|c| {
                assert_eq!(count(c, "contacts"), 0);
                assert_eq!(count(c, "groups"), 0);
                assert_eq!(count(c, "identities"), 0);
                Ok(())
            })
            .unwrap();
        }

        to.with(|c| {
            let tx = c.unchecked_transaction()?;
            import(&tx, &snapshot)?;
            tx.commit()?;
            let alias: String =
                c.query_row("SELECT alias FROM contacts WHERE user_id = 'bob'", [], |r| r.get(0))?;
            assert_eq!(alias, "B");
            let key: Option<Vec<u8>> =
                c.query_row("SELECT sender_key FROM groups WHERE group_id = 'g1'", [], |r| {
                    r.get(0)
                })?;
            assert_eq!(key, None, "a device's sender key stays its own");
            assert_eq!(count(c, "group_members"), 1);
            assert!(crate::identities::known(c, "bob")?.is_some());
            assert!(!crate::settings::Settings::load(c)?.read_receipts);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn debug_shows_no_value() {
        let t = Table {
            columns: vec!["user_id".into(), "verified_identity".into()],
            rows: vec![vec![Value::String("carol".into()), serde_json::json!({"blob": "c0ffee"})]],
        };
        let shown = format!("{t:?}");
        assert!(shown.contains("verified_identity") && shown.contains("rows: 1"), "{shown}");
        assert!(!shown.contains("carol") && !shown.contains("c0ffee"), "{shown}");
    }
}
