//! The embedded back end: one SQLite database (`relay.db`) in the data directory, WAL,
//! STRICT tables, numbered migrations, `secure_delete` so deleted ciphertext does not
//! linger in free pages.
//!
//! One connection behind a std `Mutex`, used only on tokio's blocking pool and by the
//! message writer's thread: SQLite serialises writers anyway, each call is a short
//! statement or transaction, and the lock is never held across an `.await`. Message
//! writes (enqueue, fan-out, acknowledgement) are group-committed by that one writer
//! (`writer.rs`): concurrent senders share a transaction and its sync.

mod counters;
mod rows;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};

use letstalk_wire::{
    Avatar, AvatarUpdate, Bundle, DeviceInfo, LinkSlot, MAX_DEVICES, PreKey, PresenceInfo, Profile,
};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use self::counters::Scope;
use self::rows::{
    count_one_time, delete_device, device_ids, exists, i, key32, read_blocks, read_contacts,
    read_profile,
};
use self::writer::{Job, Writer};
use super::{
    Blocks, BundlesOf, Contacts, Credentials, DEDUPE_WINDOW, Enqueued, Envelope, KeyUpload,
    LoggedIn, NewAccount, NewLinkSlot, ProfileUpdate, Queued, Quota, Report, Storage, StorageError,
    report_kind_name, shows_presence,
};

/// Numbered migrations; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("0001_init.sql"),
    include_str!("0002_blocks.sql"),
    include_str!("0003_reports.sql"),
    include_str!("0004_consent.sql"),
    include_str!("0005_devices.sql"),
    include_str!("0006_mailbox_usage.sql"),
    include_str!("0007_mailbox_totals.sql"),
];

/// SQLite storage. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    conn: Arc<Mutex<Connection>>,
    writer: Writer,
}

impl SqliteStorage {
    /// Opens (creating and migrating) `relay.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_with(dir, std::time::Duration::ZERO)
    }

    /// Opens `relay.db` in `dir` migrated only up to version `version` and returns it
    /// as a plain connection (tests of the migrations: an old relay's database).
    #[doc(hidden)]
    pub fn open_at_version(dir: &Path, version: usize) -> Result<Connection, StorageError> {
        let mut conn = Connection::open(dir.join("relay.db"))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate_to(&mut conn, version)?;
        Ok(conn)
    }

    /// [`SqliteStorage::open`], each message-write batch held `commit_delay` before its
    /// commit (tests: a slow disk).
    pub fn open_with(dir: &Path, commit_delay: std::time::Duration) -> Result<Self, StorageError> {
        let mut conn = Connection::open(dir.join("relay.db"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        migrate(&mut conn)?;
        let conn = Arc::new(Mutex::new(conn));
        let writer = Writer::start(conn.clone(), commit_delay)?;
        Ok(Self { conn, writer })
    }

    /// Message-write transactions committed so far (group commit: fewer than the writes
    /// when senders are concurrent). For tests and metrics.
    pub fn write_transactions(&self) -> u64 {
        self.writer.commits()
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().map_err(|_| StorageError::Backend("lock poisoned".into()))?;
            f(&mut c)
        })
        .await
        .map_err(|e| StorageError::Backend(format!("storage task: {e}")))?
    }

    /// Rows in the mailbox (all recipients): for tests and metrics.
    pub async fn mailbox_len(&self) -> Result<u64, StorageError> {
        self.with(|c| {
            Ok(c.query_row("SELECT COUNT(*) FROM mailbox", [], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }
}

/// Runs the migrations not yet run, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    migrate_to(conn, MIGRATIONS.len())
}

/// Runs the migrations not yet run up to version `version`.
fn migrate_to(conn: &mut Connection, version: usize) -> Result<(), StorageError> {
    let done: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let todo = MIGRATIONS.iter().enumerate().take(version);
    for (i, sql) in todo.skip(usize::try_from(done).unwrap_or(0)) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

impl Storage for SqliteStorage {
    async fn create_account(&self, a: NewAccount) -> Result<(), StorageError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "INSERT INTO accounts (user_id, password_hash, email, nickname, identity, created_at, updated_at, next_device)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 2) ON CONFLICT (user_id) DO NOTHING",
                params![a.user_id, a.password_hash, a.email, a.nickname, a.identity, i(a.now)],
            )?;
            if n == 0 {
                return Err(StorageError::Conflict);
            }
            tx.execute(
                "INSERT INTO devices (user_id, device_id, device_key, linked_at) VALUES (?1, 1, ?2, ?3)",
                params![a.user_id, a.device_key.to_vec(), i(a.now)],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn credentials(&self, user_id: &str) -> Result<Option<Credentials>, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            Ok(c.prepare_cached("SELECT password_hash FROM accounts WHERE user_id = ?1")?
                .query_row([&user_id], |r| Ok(Credentials { password_hash: r.get(0)? }))
                .optional()?)
        })
        .await
    }

    async fn device_by_key(
        &self,
        user_id: &str,
        device_key: [u8; 32],
    ) -> Result<Option<u32>, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            Ok(c.prepare_cached(
                "SELECT device_id FROM devices WHERE user_id = ?1 AND device_key = ?2
                 ORDER BY device_id LIMIT 1",
            )?
            .query_row(params![user_id, device_key.to_vec()], |r| r.get(0))
            .optional()?)
        })
        .await
    }

    async fn login_device(
        &self,
        user_id: &str,
        device_key: [u8; 32],
        now: u64,
    ) -> Result<LoggedIn, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let next: Option<u32> = tx
                .query_row("SELECT next_device FROM accounts WHERE user_id = ?1", [&user_id], |r| r.get(0))
                .optional()?;
            let Some(next) = next else { return Err(StorageError::NotFound) };
            let kept: Option<u32> = tx
                .query_row(
                    "SELECT device_id FROM devices WHERE user_id = ?1 AND device_key = ?2
                     ORDER BY device_id LIMIT 1",
                    params![user_id, device_key.to_vec()],
                    |r| r.get(0),
                )
                .optional()?;
            let removed: Vec<u32> =
                device_ids(&tx, &user_id)?.into_iter().filter(|d| Some(*d) != kept).collect();
            for d in &removed {
                delete_device(&tx, &user_id, *d)?;
            }
            let device_id = match kept {
                Some(d) => d,
                None => {
                    tx.execute(
                        "INSERT INTO devices (user_id, device_id, device_key, linked_at) VALUES (?1, ?2, ?3, ?4)",
                        params![user_id, next, device_key.to_vec(), i(now)],
                    )?;
                    tx.execute(
                        "UPDATE accounts SET next_device = ?2 WHERE user_id = ?1",
                        params![user_id, next.saturating_add(1)],
                    )?;
                    next
                }
            };
            tx.commit()?;
            Ok(LoggedIn { device_id, removed })
        })
        .await
    }

    async fn add_device(
        &self,
        user_id: &str,
        device_key: [u8; 32],
        name: Vec<u8>,
        now: u64,
    ) -> Result<u32, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            // One write transaction: two adds cannot both take the last place or the id.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let next: Option<u32> = tx
                .query_row("SELECT next_device FROM accounts WHERE user_id = ?1", [&user_id], |r| r.get(0))
                .optional()?;
            let Some(next) = next else { return Err(StorageError::NotFound) };
            let taken = tx
                .prepare_cached("SELECT 1 FROM devices WHERE device_key = ?1")?
                .exists([device_key.to_vec()])?;
            if taken {
                return Err(StorageError::Conflict);
            }
            if device_ids(&tx, &user_id)?.len() >= MAX_DEVICES {
                return Err(StorageError::QuotaExceeded);
            }
            tx.execute(
                "INSERT INTO devices (user_id, device_id, device_key, name, linked_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![user_id, next, device_key.to_vec(), name, i(now)],
            )?;
            tx.execute(
                "UPDATE accounts SET next_device = ?2 WHERE user_id = ?1",
                params![user_id, next.saturating_add(1)],
            )?;
            tx.commit()?;
            Ok(next)
        })
        .await
    }

    async fn remove_device(&self, user_id: &str, device_id: u32) -> Result<bool, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            let removed = delete_device(&tx, &user_id, device_id)?;
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn rename_device(
        &self,
        user_id: &str,
        device_id: u32,
        name: Vec<u8>,
    ) -> Result<bool, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            // The key names the account: another account's device id matches no row.
            let changed = c
                .prepare_cached(
                    "UPDATE devices SET name = ?3 WHERE user_id = ?1 AND device_id = ?2",
                )?
                .execute(params![user_id, device_id, name])?;
            Ok(changed > 0)
        })
        .await
    }

    async fn devices(&self, user_id: &str) -> Result<Option<Vec<DeviceInfo>>, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            if !exists(c, &user_id)? {
                return Ok(None);
            }
            let list = c
                .prepare_cached(
                    "SELECT device_id, name, linked_at, last_seen_at FROM devices
                     WHERE user_id = ?1 ORDER BY device_id",
                )?
                .query_map([&user_id], |r| {
                    Ok(DeviceInfo {
                        device_id: r.get(0)?,
                        name: r.get(1)?,
                        linked_at: r.get::<_, i64>(2)? as u64,
                        last_seen_at: r.get::<_, i64>(3)? as u64,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(Some(list))
        })
        .await
    }

    async fn set_password_hash(&self, user_id: &str, hash: String) -> Result<(), StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            let n = c.execute(
                "UPDATE accounts SET password_hash = ?2 WHERE user_id = ?1",
                params![user_id, hash],
            )?;
            if n == 0 { Err(StorageError::NotFound) } else { Ok(()) }
        })
        .await
    }

    async fn delete_account(&self, user_id: &str) -> Result<(), StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            // The mail queued for it first, off the counters (the cascade would not count
            // it, and a trigger refuses to let it), then what it sent that is still queued
            // (it names the account).
            counters::delete_mail(&tx, Scope::Recipient(&user_id))?;
            counters::delete_mail(&tx, Scope::Sender(&user_id))?;
            // Cascades to avatar, devices and their prekeys, watches, blocks, contacts and
            // link rendezvous. Its reports go too; dedupe records hold only hashes and
            // expire within the hour.
            tx.execute("DELETE FROM accounts WHERE user_id = ?1", [&user_id])?;
            tx.execute("DELETE FROM reports WHERE user_id = ?1", [&user_id])?;
            tx.commit()?;
            // `secure_delete` zeroed the rows in the database pages; the WAL still holds
            // older copies of those pages until it is checkpointed and truncated.
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn profile(&self, user_id: &str) -> Result<Option<Profile>, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| read_profile(c, &user_id)).await
    }

    async fn update_profile(
        &self,
        user_id: &str,
        u: ProfileUpdate,
    ) -> Result<Profile, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE accounts SET nickname = COALESCE(?2, nickname), email = COALESCE(?3, email), updated_at = ?4
                 WHERE user_id = ?1",
                params![user_id, u.nickname, u.email, i(u.now)],
            )?;
            if n == 0 {
                return Err(StorageError::NotFound);
            }
            match u.avatar {
                AvatarUpdate::Keep => {}
                AvatarUpdate::Remove => {
                    tx.execute("DELETE FROM avatars WHERE user_id = ?1", [&user_id])?;
                }
                AvatarUpdate::Set(a) => {
                    let sha = Sha256::digest(&a.data).to_vec();
                    tx.execute(
                        "INSERT INTO avatars (user_id, mime, sha256, data) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (user_id) DO UPDATE SET mime = ?2, sha256 = ?3, data = ?4",
                        params![user_id, a.mime, sha, a.data],
                    )?;
                }
            }
            let profile = read_profile(&tx, &user_id)?.ok_or(StorageError::NotFound)?;
            tx.commit()?;
            Ok(profile)
        })
        .await
    }

    async fn avatar(&self, user_id: &str) -> Result<Option<Avatar>, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            Ok(c.prepare_cached("SELECT mime, data FROM avatars WHERE user_id = ?1")?
                .query_row([&user_id], |r| Ok(Avatar { mime: r.get(0)?, data: r.get(1)? }))
                .optional()?)
        })
        .await
    }

    async fn upload_keys(
        &self,
        user_id: &str,
        device_id: u32,
        k: KeyUpload,
    ) -> Result<u32, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            let known = tx
                .prepare_cached("SELECT 1 FROM devices WHERE user_id = ?1 AND device_id = ?2")?
                .exists(params![user_id, device_id])?;
            if !known {
                return Err(StorageError::NotFound);
            }
            // The identity key is the account's, whichever of its devices uploads it.
            if let Some(identity) = k.identity {
                tx.execute("UPDATE accounts SET identity = ?2 WHERE user_id = ?1", params![user_id, identity])?;
            }
            if let Some(p) = k.signed_prekey {
                tx.execute(
                    "UPDATE devices SET signed_prekey_id = ?3, signed_prekey = ?4
                     WHERE user_id = ?1 AND device_id = ?2",
                    params![user_id, device_id, p.id, p.key],
                )?;
            }
            if let Some(p) = k.last_resort {
                tx.execute(
                    "UPDATE devices SET last_resort_id = ?3, last_resort = ?4
                     WHERE user_id = ?1 AND device_id = ?2",
                    params![user_id, device_id, p.id, p.key],
                )?;
            }
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO device_prekeys (user_id, device_id, key_id, key) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (user_id, device_id, key_id) DO UPDATE SET key = ?4",
                )?;
                for p in k.one_time {
                    ins.execute(params![user_id, device_id, p.id, p.key])?;
                }
            }
            let n = count_one_time(&tx, &user_id, device_id)?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn one_time_count(&self, user_id: &str, device_id: u32) -> Result<u32, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| count_one_time(c, &user_id, device_id)).await
    }

    async fn take_bundles(
        &self,
        user_id: &str,
        of: BundlesOf,
    ) -> Result<Option<Vec<Bundle>>, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            // One write transaction: the SELECT and DELETE of a one-time prekey cannot
            // interleave with another taker's, so each key goes out once.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let identity: Option<Vec<u8>> = tx
                .query_row("SELECT identity FROM accounts WHERE user_id = ?1", [&user_id], |r| r.get(0))
                .optional()?;
            let Some(identity) = identity else { return Ok(None) };
            type Row = (u32, Vec<u8>, Option<u32>, Option<Vec<u8>>, Option<u32>, Option<Vec<u8>>);
            let mut rows: Vec<Row> = tx
                .prepare_cached(
                    "SELECT device_id, device_key, signed_prekey_id, signed_prekey, last_resort_id, last_resort
                     FROM devices WHERE user_id = ?1 ORDER BY device_id",
                )?
                .query_map([&user_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?
                .collect::<Result<_, _>>()?;
            match &of {
                BundlesOf::All => {}
                BundlesOf::Devices(ids) => rows.retain(|r| ids.contains(&r.0)),
                BundlesOf::Lowest => rows.truncate(1),
            }
            let mut bundles = Vec::with_capacity(rows.len());
            for (device_id, device_key, spk_id, spk, lr_id, lr) in rows {
                let Some(device_key) = key32(Some(device_key)) else { continue };
                let one_time: Option<(u32, Vec<u8>)> = tx
                    .prepare_cached(
                        "DELETE FROM device_prekeys WHERE rowid =
                           (SELECT rowid FROM device_prekeys WHERE user_id = ?1 AND device_id = ?2
                            ORDER BY key_id LIMIT 1)
                         RETURNING key_id, key",
                    )?
                    .query_row(params![user_id, device_id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let signed_prekey = spk_id.zip(spk).map(|(id, key)| PreKey { id, key });
                let (one_time_prekey, last_resort) = match one_time {
                    Some((id, key)) => (Some(PreKey { id, key }), false),
                    None => {
                        let lr = lr_id.zip(lr).map(|(id, key)| PreKey { id, key });
                        let used = lr.is_some();
                        (lr, used)
                    }
                };
                bundles.push(Bundle {
                    user_id: user_id.clone(),
                    device_id,
                    device_key,
                    identity: identity.clone(),
                    signed_prekey,
                    one_time_prekey,
                    last_resort,
                });
            }
            tx.commit()?;
            Ok(Some(bundles))
        })
        .await
    }

    async fn watch(
        &self,
        watcher: &str,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<Vec<PresenceInfo>, StorageError> {
        let watcher = watcher.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            let mut out = Vec::new();
            {
                let mut del =
                    tx.prepare_cached("DELETE FROM watches WHERE watcher = ?1 AND watched = ?2")?;
                for w in &remove {
                    del.execute(params![watcher, w])?;
                }
                let mut seen =
                    tx.prepare_cached("SELECT last_seen_at FROM accounts WHERE user_id = ?1")?;
                let mut ins = tx.prepare_cached(
                    "INSERT INTO watches (watcher, watched) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                )?;
                for w in add {
                    let row: Option<i64> = seen.query_row([&w], |r| r.get(0)).optional()?;
                    if let Some(last) = row {
                        let shown = shows_presence(
                            &read_blocks(&tx, &w)?,
                            &read_contacts(&tx, &w)?,
                            &watcher,
                        );
                        let hidden = !shown;
                        ins.execute(params![watcher, w])?;
                        out.push(PresenceInfo {
                            user_id: w,
                            online: false,
                            last_seen_at: if hidden { 0 } else { last as u64 },
                            hidden,
                        });
                    }
                }
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn watchers(&self, user_id: &str) -> Result<Vec<String>, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            let mut st = c.prepare_cached("SELECT watcher FROM watches WHERE watched = ?1")?;
            let rows = st.query_map([&user_id], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    async fn set_blocks(&self, user_id: &str, blocks: Blocks) -> Result<Blocks, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            let old = read_blocks(&tx, &user_id)?;
            let n = tx.execute(
                "UPDATE accounts SET block_all = ?2 WHERE user_id = ?1",
                params![user_id, blocks.all],
            )?;
            if n == 0 {
                return Err(StorageError::NotFound);
            }
            tx.execute("DELETE FROM blocks WHERE blocker = ?1", [&user_id])?;
            {
                let mut ins =
                    tx.prepare_cached("INSERT INTO blocks (blocker, blocked) VALUES (?1, ?2)")?;
                for u in &blocks.users {
                    ins.execute(params![user_id, u])?;
                }
            }
            tx.commit()?;
            Ok(old)
        })
        .await
    }

    async fn blocks(&self, user_id: &str) -> Result<Blocks, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| read_blocks(c, &user_id)).await
    }

    async fn set_contacts(
        &self,
        user_id: &str,
        contacts: Contacts,
    ) -> Result<Contacts, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            let old = read_contacts(&tx, &user_id)?;
            let n = tx.execute(
                "UPDATE accounts SET share_presence = ?2 WHERE user_id = ?1",
                params![user_id, contacts.share_presence],
            )?;
            if n == 0 {
                return Err(StorageError::NotFound);
            }
            tx.execute("DELETE FROM contacts WHERE owner = ?1", [&user_id])?;
            {
                let mut ins =
                    tx.prepare_cached("INSERT INTO contacts (owner, contact) VALUES (?1, ?2)")?;
                for u in &contacts.users {
                    ins.execute(params![user_id, u])?;
                }
            }
            tx.commit()?;
            Ok(old)
        })
        .await
    }

    async fn contacts(&self, user_id: &str) -> Result<Contacts, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| read_contacts(c, &user_id)).await
    }

    async fn existing(
        &self,
        users: Vec<String>,
    ) -> Result<std::collections::BTreeSet<String>, StorageError> {
        self.with(move |c| {
            let mut out = std::collections::BTreeSet::new();
            for u in users {
                if exists(c, &u)? {
                    out.insert(u);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn reports_held(&self, user_id: &str) -> Result<u64, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            let n: i64 = c
                .prepare_cached("SELECT COUNT(*) FROM reports WHERE user_id = ?1")?
                .query_row([&user_id], |r| r.get(0))?;
            Ok(n as u64)
        })
        .await
    }

    async fn set_last_seen(
        &self,
        user_id: &str,
        device_id: u32,
        at: u64,
    ) -> Result<(), StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE accounts SET last_seen_at = MAX(last_seen_at, ?2) WHERE user_id = ?1",
                params![user_id, i(at)],
            )?;
            tx.execute(
                "UPDATE devices SET last_seen_at = ?3 WHERE user_id = ?1 AND device_id = ?2",
                params![user_id, device_id, i(at)],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn enqueue(&self, e: Envelope, quota: Quota) -> Result<Enqueued, StorageError> {
        let mut done = self.enqueue_many(vec![e], quota).await?;
        done.pop().ok_or(StorageError::NotFound)
    }

    async fn enqueue_staged(
        &self,
        e: Envelope,
        quota: Quota,
        staged: oneshot::Sender<Vec<(u32, u64)>>,
    ) -> Result<Enqueued, StorageError> {
        let job = |reply| Job::Many { envelopes: vec![e], quota, staged: Some(staged), reply };
        let mut done = self.writer.submit(job).await?;
        done.pop().ok_or(StorageError::NotFound)
    }

    async fn enqueue_many(
        &self,
        envelopes: Vec<Envelope>,
        quota: Quota,
    ) -> Result<Vec<Enqueued>, StorageError> {
        self.writer.submit(|reply| Job::Many { envelopes, quota, staged: None, reply }).await
    }

    async fn enqueue_fanout(
        &self,
        envelopes: Vec<Envelope>,
        quota: Quota,
    ) -> Result<Vec<Result<Enqueued, StorageError>>, StorageError> {
        self.writer.submit(|reply| Job::Fanout { envelopes, quota, reply }).await
    }

    async fn pending(
        &self,
        recipient: &str,
        device: u32,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Queued>, StorageError> {
        let recipient = recipient.to_owned();
        self.with(move |c| {
            let mut st = c.prepare_cached(
                "SELECT delivery_id, sender, sender_device, msg_id, server_ts, body FROM mailbox
                 WHERE recipient = ?1 AND device_id = ?2 AND delivery_id > ?3
                 ORDER BY delivery_id LIMIT ?4",
            )?;
            let rows = st.query_map(params![recipient, device, i(after), limit], |r| {
                Ok(Queued {
                    delivery_id: r.get::<_, i64>(0)? as u64,
                    sender: r.get(1)?,
                    sender_device: r.get(2)?,
                    msg_id: r.get(3)?,
                    server_ts: r.get::<_, i64>(4)? as u64,
                    body: r.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn ack(&self, recipient: &str, device: u32, ids: Vec<u64>) -> Result<u64, StorageError> {
        let recipient = recipient.to_owned();
        self.writer.submit(|reply| Job::Ack { recipient, device, ids, reply }).await
    }

    async fn link_open(&self, l: NewLinkSlot) -> Result<(), StorageError> {
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let holder: Option<(String, i64)> = tx
                .query_row(
                    "SELECT user_id, expires_at FROM link_slots WHERE slot = ?1",
                    [&l.slot[..]],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((holder, expires_at)) = holder
                && holder != l.user_id
                && expires_at as u64 > l.now
            {
                return Err(StorageError::Conflict);
            }
            // The account's older rendezvous goes: one open at a time.
            tx.execute(
                "DELETE FROM link_slots WHERE user_id = ?1 OR slot = ?2",
                params![l.user_id, &l.slot[..]],
            )?;
            tx.execute(
                "INSERT INTO link_slots (slot, user_id, hello, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![&l.slot[..], l.user_id, l.hello, i(l.expires_at)],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn link_put(
        &self,
        slot: [u8; 16],
        from: Option<String>,
        data: Vec<u8>,
        now: u64,
    ) -> Result<(), StorageError> {
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let row: Option<(String, bool, bool)> = tx
                .query_row(
                    "SELECT user_id, joined IS NOT NULL, reply IS NOT NULL FROM link_slots
                     WHERE slot = ?1 AND expires_at > ?2",
                    params![&slot[..], i(now)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((owner, joined, replied)) = row else { return Err(StorageError::NotFound) };
            let sql = if from.as_deref() == Some(owner.as_str()) {
                if replied {
                    return Err(StorageError::Conflict);
                }
                "UPDATE link_slots SET reply = ?2 WHERE slot = ?1"
            } else {
                if joined {
                    return Err(StorageError::Conflict);
                }
                "UPDATE link_slots SET joined = ?2 WHERE slot = ?1"
            };
            tx.execute(sql, params![&slot[..], data])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn link_get(&self, slot: [u8; 16], now: u64) -> Result<Option<LinkSlot>, StorageError> {
        self.with(move |c| {
            Ok(c.prepare_cached(
                "SELECT hello, joined, reply FROM link_slots WHERE slot = ?1 AND expires_at > ?2",
            )?
            .query_row(params![&slot[..], i(now)], |r| {
                Ok(LinkSlot { hello: r.get(0)?, joined: r.get(1)?, reply: r.get(2)? })
            })
            .optional()?)
        })
        .await
    }

    async fn store_report(&self, r: Report) -> Result<(), StorageError> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO reports (id, user_id, kind, body, received_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO NOTHING",
                params![r.id, r.user_id, report_kind_name(r.kind), r.body, i(r.now)],
            )?;
            Ok(())
        })
        .await
    }

    async fn expire_reports(&self, before: u64) -> Result<u64, StorageError> {
        self.with(move |c| {
            Ok(c.execute("DELETE FROM reports WHERE received_at < ?1", [i(before)])? as u64)
        })
        .await
    }

    async fn expire(&self, before: u64) -> Result<u64, StorageError> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = counters::delete_mail(&tx, Scope::Before(before))?;
            // Dedupe records live only for the retransmit window (checked on read too).
            let window = u64::try_from(DEDUPE_WINDOW.as_millis()).unwrap_or(u64::MAX);
            let dedupe_before = crate::clock::now_ms().saturating_sub(window);
            tx.execute("DELETE FROM sent_ids WHERE server_ts < ?1", [i(dedupe_before)])?;
            // Link rendezvous live ten minutes; a read after that sees none already.
            tx.execute(
                "DELETE FROM link_slots WHERE expires_at <= ?1",
                [i(crate::clock::now_ms())],
            )?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
