//! The encrypted local store: one SQLCipher database in the data directory, opened with
//! a random 256-bit key, in WAL mode, with numbered migrations.
//!
//! The key lives in a 0600 file beside the database (`db.key`). Deleting the key is what
//! makes the data unrecoverable ("restore defaults" shreds the key first, then the
//! files): SQLCipher pages on disk are useless without it, which works on flash storage
//! where overwriting in place is not reliable.
//!
//! SQLite calls block, so async code reaches the database through [`Store::call`], which
//! runs the closure on tokio's blocking pool. One connection, behind a mutex: the
//! daemon's writes are small and serialising them keeps transactions simple.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

/// Migrations, applied in order; `PRAGMA user_version` records how many ran. Never edit
/// one that has shipped: add the next.
const MIGRATIONS: &[&str] = &[
    include_str!("store/0001_init.sql"),
    include_str!("store/0002_messaging.sql"),
    include_str!("store/0003_files.sql"),
    include_str!("store/0004_calls.sql"),
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
    /// Opens (creating if needed) the database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        let key = load_or_create_key(data_dir, path.exists())?;
        let conn = Connection::open(&path)?;
        // The key is passed as a raw hex blob so SQLCipher does no passphrase derivation.
        conn.execute_batch(&format!("PRAGMA key = \"x'{key}'\";"))?;
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
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(start) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
            tx.commit()?;
        }
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
        match self.conn.try_lock() {
            Ok(mut conn) => Some(f(&mut conn)),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(f(&mut p.into_inner())),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Checkpoints the WAL into the main file, for a clean stop.
    pub fn close(&self) -> Result<(), StoreError> {
        self.with(|c| Ok(c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Reads the key file, or creates one with a fresh random key for a new database.
fn load_or_create_key(data_dir: &Path, db_exists: bool) -> Result<String, StoreError> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = text.trim().to_owned();
            if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(StoreError::BadKey(path));
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if db_exists {
                return Err(StoreError::MissingKey(data_dir.join(DB_FILE)));
            }
            let key: [u8; 32] = rand::random();
            let hex = hex::encode(key);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io(format!("creating {}", path.display())))?;
            file.write_all(hex.as_bytes()).map_err(io("writing the database key"))?;
            file.sync_all().map_err(io("syncing the database key"))?;
            Ok(hex)
        }
        Err(e) => Err(io(format!("reading {}", path.display()))(e)),
    }
}

/// A write that may share its transaction (and its disk sync) with others; see
/// [`GroupCommit`].
type Job = Box<dyn FnOnce(&Connection) -> Option<Box<dyn FnOnce() + Send>> + Send>;

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
    pub fn start(store: Arc<Store>) -> (Self, impl Future<Output = ()>) {
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
                let done = store.call(move |c| run_group(c, batch)).await;
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
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<R, StoreError>>();
        let job: Job = Box::new(move |conn| match f(conn) {
            Ok(r) => Some(Box::new(move || {
                let _ = tx.send(Ok(r));
            })),
            Err(e) => {
                let _ = tx.send(Err(e));
                None
            }
        });
        self.jobs.send(job).map_err(|_| StoreError::Join)?;
        rx.await.map_err(|_| StoreError::Join)?
    }
}

/// One group transaction: each job in a savepoint (a failing job is rolled back alone),
/// one commit, then the results.
fn run_group(
    conn: &mut Connection,
    batch: Vec<Job>,
) -> Result<Vec<Box<dyn FnOnce() + Send>>, StoreError> {
    let mut tx = conn.transaction()?;
    let mut deliveries = Vec::with_capacity(batch.len());
    for job in batch {
        let sp = tx.savepoint()?;
        match job(&sp) {
            Some(deliver) => {
                sp.commit()?;
                deliveries.push(deliver);
            }
            // Dropping the savepoint rolls this job back.
            None => drop(sp),
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
            let key = load_or_create_key(dir.path(), false).unwrap();
            {
                let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
                conn.execute_batch(&format!("PRAGMA key = \"x'{key}'\";")).unwrap();
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
