//! The encrypted local store: one SQLCipher database in the data directory, opened with
//! a random 256-bit key, in WAL mode, with numbered migrations.
//!
//! The key lives in the OS keyring when one is usable, else in a 0600 file beside the
//! database (`db.key`); [`key`] decides and keeps the decision. Destroying the key
//! ([`key::destroy_key`]) is what makes the data unrecoverable ("restore defaults"
//! destroys the key first, then the files): SQLCipher pages on disk are useless without
//! it, which works on flash storage where overwriting in place is not reliable.
//!
//! SQLite calls block, so async code reaches the database through [`Store::call`], which
//! runs the closure on tokio's blocking pool. One connection, behind a mutex: the
//! daemon's writes are small and serialising them keeps transactions simple.

pub mod key;
mod keyring;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use zeroize::Zeroizing;

pub use key::{DbKey, Destroyed, KeyLocation, destroy_key};
pub use keyring::KeyringError;

/// Prepared statements kept per connection (`prepare_cached`).
const STATEMENT_CACHE: usize = 128;

/// Migrations, applied in order; `PRAGMA user_version` records how many ran. Never edit
/// one that has shipped: add the next.
const MIGRATIONS: &[&str] = &[
    include_str!("store/0001_init.sql"),
    include_str!("store/0002_messaging.sql"),
    include_str!("store/0003_groups.sql"),
    include_str!("store/0004_diagnostics.sql"),
    include_str!("store/0005_files.sql"),
    include_str!("store/0006_calls.sql"),
    include_str!("store/0007_group_trust.sql"),
    include_str!("store/0008_sessions.sql"),
    include_str!("store/0009_privacy.sql"),
    include_str!("store/0010_device_sessions.sql"),
    include_str!("store/0011_group_devices.sql"),
    include_str!("store/0012_sent_files.sql"),
    include_str!("store/0013_receipt_delay.sql"),
    include_str!("store/0014_outbox_indexes.sql"),
];

pub const DB_FILE: &str = "letstalk.db";
pub const KEY_FILE: &str = "db.key";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("database key {0}: malformed (expected 64 hex digits)")]
    BadKey(PathBuf),
    #[error("database {0} exists but its key file is missing: the data cannot be read")]
    MissingKey(PathBuf),
    /// Not a `source`: the message already says it all, and start errors are one line.
    #[error("its database key is in the OS keyring but {reason}")]
    Keyring { data_dir: PathBuf, reason: KeyringError },
    #[error("{0}: malformed (the keyring location of the database key)")]
    BadLocation(PathBuf),
    #[error(
        "both db.key and db.key.location exist in {0}: remove the one that is not this database's key"
    )]
    KeyConflict(PathBuf),
    #[error("the database key of {0} is in the OS keyring, which this tool does not read")]
    KeyInKeyring(PathBuf),
    #[error("database {0} cannot be opened with its key (wrong key or corrupt file)")]
    WrongKey(PathBuf),
    #[error("database schema version {found} is newer than this daemon ({known})")]
    TooNew { found: i64, known: usize },
    #[error("the blocking task running a database call failed")]
    Join,
}

/// The database handle, shared by every task.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir` with its key from the key
    /// file, never the keyring: for tests and tools. The daemon uses
    /// [`key::load_or_create`] and [`Store::open_with_key`].
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_key(data_dir, &key::load_or_create_file(data_dir)?)
    }

    /// Opens (creating if needed) the database in `data_dir` with `key`.
    pub fn open_with_key(data_dir: &Path, key: &DbKey) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        let conn = Connection::open(&path)?;
        // The key is passed as a raw hex blob so SQLCipher does no passphrase derivation.
        let pragma = Zeroizing::new(format!("PRAGMA key = \"x'{}'\";", key.to_hex().as_str()));
        conn.execute_batch(&pragma)?;
        if conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)).is_err()
        {
            return Err(StoreError::WrongKey(path));
        }
        // synchronous=FULL: an accepted message must survive power loss, not just a crash.
        // secure_delete: freed pages are zeroed, so deleted rows do not linger in the file.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA secure_delete = ON;
             PRAGMA busy_timeout = 5000;",
        )?;
        // A message's path runs more distinct statements than rusqlite's default cache
        // of 16 holds: each one evicted was parsed and planned again on its next use (a
        // twentieth of the daemon's CPU under load). Statements are cached as used.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mut store = Self { conn: Mutex::new(conn), path };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let conn = self.conn.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = MIGRATIONS.len();
        let start = usize::try_from(version).unwrap_or(usize::MAX);
        if start > known {
            return Err(StoreError::TooNew { found: version, known });
        }
        if start == known {
            return Ok(());
        }
        // All pending migrations in one transaction: one sync instead of one each (a
        // first start on a phone's flash paid a dozen), and a database is never left
        // between two of them.
        let tx = conn.transaction()?;
        for sql in MIGRATIONS.iter().skip(start) {
            tx.execute_batch(sql)?;
        }
        tx.execute_batch(&format!("PRAGMA user_version = {known}"))?;
        tx.commit()?;
        Ok(())
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<F, R>(self: &Arc<Self>, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.with(f)).await.map_err(|_| StoreError::Join)?
    }

    /// Runs a quick read here when the connection is free, else on the blocking pool like
    /// [`Store::call`]. For the hot paths of a message (the sender finding ciphertext
    /// ready, a subscriber reading new events): a hand-off to the blocking pool and back
    /// costs two thread wake-ups, more than the read itself. Never for a write that syncs.
    pub async fn read<F, R>(self: &Arc<Self>, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        match self.run_if_free(f) {
            Ok(r) => r,
            Err(f) => self.call(f).await,
        }
    }

    /// Runs `f` here if the connection is free; gives it back otherwise. (The guard must
    /// not live across an await in [`Store::read`].)
    fn run_if_free<F, R>(&self, f: F) -> Result<Result<R, StoreError>, F>
    where
        F: FnOnce(&mut Connection) -> Result<R, StoreError>,
    {
        match self.conn.try_lock() {
            Ok(mut conn) => Ok(f(&mut conn)),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(f(&mut p.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => Err(f),
        }
    }

    /// Runs `f` with the connection on this thread (start-up and shutdown only).
    pub fn with<F, R>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<R, StoreError>,
    {
        // A poisoned mutex means a closure panicked; SQLite rolled its transaction back
        // when the Transaction was dropped, so the connection is still consistent.
        let mut conn = self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut conn)
    }

    /// Runs a quick read on this thread if the connection is free right now (`None` when
    /// it is busy): cheap queries on hot IPC paths skip the hand-off to the blocking pool,
    /// and never wait behind a transaction.
    pub fn try_with<F, R>(&self, f: F) -> Option<Result<R, StoreError>>
    where
        F: FnOnce(&mut Connection) -> Result<R, StoreError>,
    {
        self.run_if_free(f).ok()
    }

    /// Checkpoints the WAL into the main file, for a clean stop.
    pub fn close(&self) -> Result<(), StoreError> {
        self.with(|c| Ok(c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// "Restore defaults": destroys the database key wherever it lives (the data in the
    /// files is unreadable from that moment, also on flash where overwriting in place is
    /// not reliable), closes the database, deletes the database files and the
    /// attachments, and opens a fresh database with a new key in their place, placed as
    /// `keyring` says for a new data directory. Event seqs carry on from the old ones so
    /// a subscriber's cursor never points at a reused seq.
    ///
    /// The key goes first, while the database is still open: a key that cannot be
    /// destroyed (a keyring that went away) leaves everything as it was, and the caller
    /// gets the error. Blocking, and it may talk to the keyring: call it on a blocking
    /// thread (`spawn_blocking`), never on an async task.
    pub fn reset(&self, keyring: crate::config::Keyring) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let last_seq: i64 =
            conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?;
        let data_dir = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let destroyed = key::block_on(destroy_key(&data_dir))?;
        tracing::debug!(?destroyed, "destroyed the database key");
        let old = std::mem::replace(&mut *conn, Connection::open_in_memory()?);
        old.close().map_err(|(_, e)| StoreError::Sqlite(e))?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut name = self.path.clone().into_os_string();
            name.push(suffix);
            remove_if_exists(Path::new(&name))?;
        }
        let attachments = data_dir.join(ATTACHMENTS_DIR);
        match std::fs::remove_dir_all(&attachments) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("removing {}", attachments.display()))(e)),
        }
        sync_dir(&data_dir)?;
        let (key, _) = key::block_on(key::load_or_create(&data_dir, keyring))?;
        let fresh = Self::open_with_key(&data_dir, &key)?;
        drop(key);
        let fresh = fresh.conn.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        fresh
            .execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?1)", [last_seq])?;
        *conn = fresh;
        Ok(())
    }
}

/// Where files sent and received are kept (encrypted) inside the data directory.
pub const ATTACHMENTS_DIR: &str = "attachments";

fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("removing {}", path.display()))(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", dir.display())))
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// A write that may share its transaction (and its disk sync) with others, and the keys
/// it names for [`Finish`]; see [`GroupCommit`].
struct Job {
    write: Write,
    then: Vec<String>,
}

/// A job's write: on success, what hands its result to the caller after the commit.
type Write = Box<dyn FnOnce(&Connection) -> Option<Deliver> + Send>;
type Deliver = Box<dyn FnOnce() + Send>;

/// What a group transaction does after its writes and before its commit, once for each
/// distinct key its successful writes named ([`GroupCommit::run_then`]), each in a
/// savepoint of its own (a failure is logged and rolled back alone): the daemon encrypts
/// what the sends queued for each recipient there, one ratchet load and save per
/// recipient and group, not per message.
pub type Finish = Box<dyn Fn(&Connection, &str) -> Result<(), StoreError> + Send + Sync>;

/// Group commit: writes submitted while a transaction is being synced are applied
/// together in the next one, each in its own savepoint, with one disk sync for all of
/// them. A caller gets its result only after that commit, so "returned" still means
/// "durable". This is how `messages.send` keeps `synchronous = FULL` and still accepts
/// a burst of messages at the disk's transaction rate rather than its per-message rate.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
}

/// Writes per group transaction, at most.
const GROUP_MAX: usize = 256;

impl GroupCommit {
    /// Starts the committer for `store`; it runs until every handle is dropped.
    pub fn start(store: Arc<Store>, finish: Finish) -> (Self, impl Future<Output = ()>) {
        let finish = Arc::new(finish);
        let (jobs, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let task = async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < GROUP_MAX {
                    match rx.try_recv() {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
                let finish = finish.clone();
                let done = store.call(move |c| run_group(c, batch, &finish)).await;
                match done {
                    Ok(deliveries) => deliveries.into_iter().for_each(|d| d()),
                    // The callers' senders are dropped with the batch: they see an error.
                    Err(e) => tracing::error!(error = %e, "group commit failed"),
                }
            }
        };
        (Self { jobs }, task)
    }

    /// Runs `f` in the next group transaction; returns after it is committed.
    pub async fn run<F, R>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        self.run_then(Vec::new(), f).await
    }

    /// [`GroupCommit::run`], and if `f` succeeds, the group's [`Finish`] runs for each of
    /// `keys` in the same transaction before the commit.
    pub async fn run_then<F, R>(&self, keys: Vec<String>, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<R, StoreError>>();
        let write: Write = Box::new(move |conn: &Connection| match f(conn) {
            Ok(r) => Some(Box::new(move || {
                let _ = tx.send(Ok(r));
            }) as Deliver),
            Err(e) => {
                let _ = tx.send(Err(e));
                None
            }
        });
        self.jobs.send(Job { write, then: keys }).map_err(|_| StoreError::Join)?;
        rx.await.map_err(|_| StoreError::Join)?
    }
}

/// One group transaction: each job in a savepoint (a failing job is rolled back alone),
/// one commit, then the results.
fn run_group(
    conn: &mut Connection,
    batch: Vec<Job>,
    finish: &Finish,
) -> Result<Vec<Deliver>, StoreError> {
    let mut tx = conn.transaction()?;
    let mut deliveries = Vec::with_capacity(batch.len());
    let mut keys = std::collections::BTreeSet::new();
    for job in batch {
        let sp = tx.savepoint()?;
        match (job.write)(&sp) {
            Some(deliver) => {
                sp.commit()?;
                deliveries.push(deliver);
                keys.extend(job.then);
            }
            // Dropping the savepoint rolls this job back.
            None => drop(sp),
        }
    }
    // The writes stand whatever the finishing step does: it only does earlier what
    // would be done later (the sender seals what is left in plaintext).
    for key in keys {
        let sp = tx.savepoint()?;
        match finish(&sp, &key) {
            Ok(()) => sp.commit()?,
            Err(e) => tracing::warn!(error = %e, "a group commit's finishing step failed"),
        }
    }
    tx.commit()?;
    Ok(deliveries)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every earlier schema version, with data in it, migrates to the current one and
    /// keeps that data.
    #[test]
    fn migrates_from_every_earlier_version() {
        for from in 0..MIGRATIONS.len() {
            let dir = tempfile::tempdir().unwrap();
            let key = key::load_or_create_file(dir.path()).unwrap();
            {
                let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
                conn.execute_batch(&format!("PRAGMA key = \"x'{}'\";", key.to_hex().as_str()))
                    .unwrap();
                for (i, sql) in MIGRATIONS.iter().enumerate().take(from) {
                    conn.execute_batch(sql).unwrap();
                    conn.execute_batch(&format!("PRAGMA user_version = {}", i + 1)).unwrap();
                }
                if from >= 1 {
                    conn.execute("INSERT INTO settings (key, value) VALUES ('typing', 0)", [])
                        .unwrap();
                    conn.execute(
                        "INSERT INTO events (kind, at, body) VALUES ('settings.changed', 1, '{}')",
                        [],
                    )
                    .unwrap();
                }
                // Group keys and a waiting group message from before per-device keys.
                if (7..11).contains(&from) {
                    conn.execute_batch(
                        "INSERT INTO group_receivers (group_id, sender, generation, state)
                             VALUES ('g', 'bob', 0, x'01');
                         INSERT INTO group_keys_held (group_id, sender, generation, distribution, at)
                             VALUES ('g', 'carol', 0, x'02', 1);
                         INSERT INTO group_pending (group_id, sender, body, at)
                             VALUES ('g', 'bob', x'03', 1);",
                    )
                    .unwrap();
                }
                // A session from before devices: one per peer.
                if (2..10).contains(&from) {
                    conn.execute(
                        "INSERT INTO sessions (peer, state, updated_at) VALUES ('bob', x'01', 3)",
                        [],
                    )
                    .unwrap();
                }
            }
            let store = Store::open(dir.path()).unwrap();
            let (version, settings, events): (i64, i64, i64) = store
                .with(|c| {
                    Ok((
                        c.query_row("PRAGMA user_version", [], |r| r.get(0))?,
                        c.query_row("SELECT count(*) FROM settings", [], |r| r.get(0))?,
                        c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?,
                    ))
                })
                .unwrap();
            assert_eq!(version as usize, MIGRATIONS.len(), "from version {from}");
            // It became the peer's device 1, the only device an account had.
            let sessions: Vec<(String, u32)> = store
                .with(|c| {
                    Ok(c.prepare("SELECT peer, device FROM sessions")?
                        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<_, _>>()?)
                })
                .unwrap();
            let expected: Vec<(String, u32)> =
                if (2..10).contains(&from) { vec![("bob".into(), 1)] } else { vec![] };
            assert_eq!(sessions, expected, "from version {from}");
            // They became the sender's device 1, the only device an account had.
            let group_devices: Vec<u32> = store
                .with(|c| {
                    Ok(c.prepare(
                        "SELECT device FROM group_receivers UNION ALL
                         SELECT device FROM group_keys_held UNION ALL
                         SELECT device FROM group_pending",
                    )?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?)
                })
                .unwrap();
            let expected: Vec<u32> = if (7..11).contains(&from) { vec![1; 3] } else { vec![] };
            assert_eq!(group_devices, expected, "from version {from}");
            let expected = i64::from(from >= 1);
            assert_eq!((settings, events), (expected, expected), "from version {from}");
        }
    }

    #[test]
    fn creates_reopens_and_refuses_a_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .with(|c| Ok(c.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')", [])?))
            .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let v: String = store
            .with(|c| Ok(c.query_row("SELECT value FROM meta WHERE key='k'", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(v, "v");
        drop(store);
        // The file on disk is not plain SQLite.
        let raw = std::fs::read(dir.path().join(DB_FILE)).unwrap();
        assert!(!raw.starts_with(b"SQLite format 3"));
        std::fs::write(dir.path().join(KEY_FILE), "00".repeat(32)).unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::WrongKey(_))));
        std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::MissingKey(_))));
    }
}
