//! The embedded back end: one SQLite database (`relay.db`) in the data directory, WAL,
//! STRICT tables, numbered migrations, `secure_delete` so deleted ciphertext does not
//! linger in free pages.
//!
//! One connection behind a std `Mutex`, used only on tokio's blocking pool and by the
//! message writer's thread: SQLite serialises writers anyway, each call is a short
//! statement or transaction, and the lock is never held across an `.await`. Message
//! writes (enqueue, fan-out, acknowledgement) are group-committed by that one writer
//! (`writer.rs`): concurrent senders share a transaction and its sync.

mod rows;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};

use letstalk_wire::{Avatar, AvatarUpdate, Bundle, PreKey, PresenceInfo, Profile};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use self::rows::{count_one_time, exists, i, key32, read_blocks, read_contacts, read_profile};
use self::writer::{Job, Writer};
use super::{
    Blocks, Contacts, Credentials, DEDUPE_WINDOW, Enqueued, Envelope, KeyUpload, NewAccount,
    ProfileUpdate, Queued, Quota, Report, Storage, StorageError, report_kind_name, shows_presence,
};

/// Numbered migrations; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("0001_init.sql"),
    include_str!("0002_blocks.sql"),
    include_str!("0003_reports.sql"),
    include_str!("0004_consent.sql"),
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
    let done: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(done).unwrap_or(0)) {
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
            let n = c.execute(
                "INSERT INTO accounts (user_id, password_hash, email, nickname, device_key, identity, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) ON CONFLICT (user_id) DO NOTHING",
                params![a.user_id, a.password_hash, a.email, a.nickname, a.device_key.to_vec(), a.identity, i(a.now)],
            )?;
            if n == 0 { Err(StorageError::Conflict) } else { Ok(()) }
        })
        .await
    }

    async fn credentials(&self, user_id: &str) -> Result<Option<Credentials>, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            Ok(c.prepare_cached(
                "SELECT password_hash, device_key FROM accounts WHERE user_id = ?1",
            )?
            .query_row([&user_id], |r| {
                Ok(Credentials { password_hash: r.get(0)?, device_key: key32(r.get(1)?) })
            })
            .optional()?)
        })
        .await
    }

    async fn bind_device(
        &self,
        user_id: &str,
        device_key: Option<[u8; 32]>,
    ) -> Result<(), StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            let old: Option<Option<Vec<u8>>> = tx
                .query_row("SELECT device_key FROM accounts WHERE user_id = ?1", [&user_id], |r| r.get(0))
                .optional()?;
            let Some(old) = old else { return Err(StorageError::NotFound) };
            if key32(old) != device_key {
                tx.execute(
                    "UPDATE accounts SET device_key = ?2, identity = x'', signed_prekey_id = NULL,
                     signed_prekey = NULL, last_resort_id = NULL, last_resort = NULL WHERE user_id = ?1",
                    params![user_id, device_key.map(|k| k.to_vec())],
                )?;
                tx.execute("DELETE FROM one_time_prekeys WHERE user_id = ?1", [&user_id])?;
            }
            tx.commit()?;
            Ok(())
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
            // Cascades to avatar, prekeys, watches, blocks, contacts and the mailbox.
            tx.execute("DELETE FROM accounts WHERE user_id = ?1", [&user_id])?;
            // What it sent that is still queued goes with it (it names the account), and
            // so do its reports. Dedupe records hold only hashes and expire within the hour.
            tx.execute("DELETE FROM mailbox WHERE sender = ?1", [&user_id])?;
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

    async fn upload_keys(&self, user_id: &str, k: KeyUpload) -> Result<u32, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            if !exists(&tx, &user_id)? {
                return Err(StorageError::NotFound);
            }
            if let Some(identity) = k.identity {
                tx.execute("UPDATE accounts SET identity = ?2 WHERE user_id = ?1", params![user_id, identity])?;
            }
            if let Some(p) = k.signed_prekey {
                tx.execute(
                    "UPDATE accounts SET signed_prekey_id = ?2, signed_prekey = ?3 WHERE user_id = ?1",
                    params![user_id, p.id, p.key],
                )?;
            }
            if let Some(p) = k.last_resort {
                tx.execute(
                    "UPDATE accounts SET last_resort_id = ?2, last_resort = ?3 WHERE user_id = ?1",
                    params![user_id, p.id, p.key],
                )?;
            }
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO one_time_prekeys (user_id, key_id, key) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id, key_id) DO UPDATE SET key = ?3",
                )?;
                for p in k.one_time {
                    ins.execute(params![user_id, p.id, p.key])?;
                }
            }
            let n = count_one_time(&tx, &user_id)?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn one_time_count(&self, user_id: &str) -> Result<u32, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| count_one_time(c, &user_id)).await
    }

    async fn take_bundle(&self, user_id: &str) -> Result<Option<Bundle>, StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            // One write transaction: the SELECT and DELETE of a one-time prekey cannot
            // interleave with another taker's, so each key goes out once.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            type Row = (Option<Vec<u8>>, Vec<u8>, Option<u32>, Option<Vec<u8>>, Option<u32>, Option<Vec<u8>>);
            let row: Option<Row> = tx
                .query_row(
                    "SELECT device_key, identity, signed_prekey_id, signed_prekey, last_resort_id, last_resort
                     FROM accounts WHERE user_id = ?1",
                    [&user_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )
                .optional()?;
            let Some((device_key, identity, spk_id, spk, lr_id, lr)) = row else { return Ok(None) };
            let Some(device_key) = key32(device_key) else { return Ok(None) };
            let one_time: Option<(u32, Vec<u8>)> = tx
                .query_row(
                    "DELETE FROM one_time_prekeys WHERE rowid =
                       (SELECT rowid FROM one_time_prekeys WHERE user_id = ?1 ORDER BY key_id LIMIT 1)
                     RETURNING key_id, key",
                    [&user_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            tx.commit()?;
            let signed_prekey = spk_id.zip(spk).map(|(id, key)| PreKey { id, key });
            let (one_time_prekey, last_resort) = match one_time {
                Some((id, key)) => (Some(PreKey { id, key }), false),
                None => {
                    let lr = lr_id.zip(lr).map(|(id, key)| PreKey { id, key });
                    let used = lr.is_some();
                    (lr, used)
                }
            };
            Ok(Some(Bundle { user_id, device_id: 1, device_key, identity, signed_prekey, one_time_prekey, last_resort }))
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

    async fn set_last_seen(&self, user_id: &str, at: u64) -> Result<(), StorageError> {
        let user_id = user_id.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE accounts SET last_seen_at = ?2 WHERE user_id = ?1",
                params![user_id, i(at)],
            )?;
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
        staged: oneshot::Sender<u64>,
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
        after: u64,
        limit: u32,
    ) -> Result<Vec<Queued>, StorageError> {
        let recipient = recipient.to_owned();
        self.with(move |c| {
            let mut st = c.prepare_cached(
                "SELECT delivery_id, sender, msg_id, server_ts, body FROM mailbox
                 WHERE recipient = ?1 AND delivery_id > ?2 ORDER BY delivery_id LIMIT ?3",
            )?;
            let rows = st.query_map(params![recipient, i(after), limit], |r| {
                Ok(Queued {
                    delivery_id: r.get::<_, i64>(0)? as u64,
                    sender: r.get(1)?,
                    msg_id: r.get(2)?,
                    server_ts: r.get::<_, i64>(3)? as u64,
                    body: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn ack(&self, recipient: &str, ids: Vec<u64>) -> Result<u64, StorageError> {
        let recipient = recipient.to_owned();
        self.writer.submit(|reply| Job::Ack { recipient, ids, reply }).await
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
            let n = tx.execute("DELETE FROM mailbox WHERE server_ts < ?1", [i(before)])?;
            // Dedupe records live only for the retransmit window (checked on read too).
            let window = u64::try_from(DEDUPE_WINDOW.as_millis()).unwrap_or(u64::MAX);
            let dedupe_before = crate::clock::now_ms().saturating_sub(window);
            tx.execute("DELETE FROM sent_ids WHERE server_ts < ?1", [i(dedupe_before)])?;
            tx.commit()?;
            Ok(n as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
