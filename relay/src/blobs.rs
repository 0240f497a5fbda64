//! The blob store: end-to-end encrypted file payloads that a device uploads once for its
//! recipients, on their own QUIC streams (never through the mailbox). The requests and
//! streams that use it are in `handlers/blobs.rs`.
//!
//! Bytes live in files under `<data dir>/blobs/`, one per blob; what is known about
//! them (owner, size, completeness, who may fetch) lives in `blobs.db`, a small SQLite
//! database of its own, so the blob store is apart from the mailbox storage and a cluster
//! back end can swap it for an object store. A blob is deleted when every device it
//! waits for has released it (`BlobRelease` after fetching, or giving up), when its owner
//! cancels it (`BlobCancel`), or at expiry (48 hours by default), complete or not.
//!
//! Uploads and downloads resume: `BlobPut` and `BlobGet` carry an offset, and `BlobStat`
//! tells how much is held. The relay never sees a key: a blob is ciphertext in the age
//! STREAM format, opaque here.
//!
//! On a cluster node the store is shared ([`Blobs::shared_through`]): an upload streams
//! into a local file on the node that receives it (so it resumes there); once complete
//! it moves into the JetStream object store every node reads (size and recipients in
//! the object's metadata, expiry by the store's `max_age`), and the local copy goes. A
//! download on any node reads the object, from any offset. An upload interrupted by the
//! loss of its node starts again from zero on another (what was held is lost with
//! the node). The per-account byte quota counts the uploads of one node.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use letstalk_wire::ErrorKind;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::warn;

use crate::error::RelayError;
use crate::fail::{Fail, fail};

/// How long a cancelled blob's id is remembered, and how many at most.
const CANCEL_MEMORY: Duration = Duration::from_secs(600);
const MAX_CANCELLED: usize = 10_000;

/// Blobs their owner cancelled: (owner, blob id) → when.
type Cancelled = HashMap<(String, [u8; 16]), Instant>;

/// Blobs with an upload streaming in: (owner, blob id).
type InFlight = Arc<Mutex<HashSet<(String, [u8; 16])>>>;

/// The blob store. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub(crate) struct Blobs {
    dir: PathBuf,
    db: Arc<Mutex<Connection>>,
    /// Blobs with an upload streaming in right now: a second upload of the same blob is
    /// refused rather than interleaved.
    uploading: InFlight,
    /// Blobs their owner cancelled, kept a while: an upload still streaming in (or whose
    /// request was not even read yet) when the cancel came is dropped, not kept.
    cancelled: Arc<Mutex<Cancelled>>,
    /// Most bytes one account may hold in blobs at once.
    quota: u64,
    /// A cluster node's shared store of complete blobs.
    shared: Option<async_nats::jetstream::object_store::ObjectStore>,
    /// Beside it, the recipients' devices each shared blob still waits for.
    waiting: Option<crate::storage::nats::NatsStorage>,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("dir", &self.dir)
            .field("quota", &self.quota)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

/// What is known about one blob.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub(crate) size: u64,
    pub(crate) complete: bool,
    pub(crate) recipients: Vec<String>,
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A failure of the blob store (its database, files or shared store), logged here and
/// answered `internal`.
pub(crate) fn backend(e: impl std::fmt::Display) -> Fail {
    warn!(error = %e, "blob store failure");
    fail(ErrorKind::Internal, "blob store failure")
}

impl Blobs {
    /// Opens (creating) the blob store in `data_dir`.
    pub(crate) fn open(data_dir: &Path, quota: u64) -> Result<Self, RelayError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = data_dir.join("blobs");
        let io = |e: std::io::Error| RelayError::Io(format!("{}: {e}", dir.display()));
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io)?;
        let db = |e: rusqlite::Error| RelayError::Io(format!("blobs.db: {e}"));
        let conn = Connection::open(data_dir.join("blobs.db")).map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA secure_delete = ON;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS blobs (
                 owner      TEXT NOT NULL,
                 blob_id    BLOB NOT NULL,
                 size       INTEGER NOT NULL,
                 complete   INTEGER NOT NULL DEFAULT 0,
                 created_at INTEGER NOT NULL,
                 PRIMARY KEY (owner, blob_id)
             ) STRICT;
             CREATE INDEX IF NOT EXISTS blobs_created ON blobs (created_at);
             CREATE TABLE IF NOT EXISTS blob_recipients (
                 owner     TEXT NOT NULL,
                 blob_id   BLOB NOT NULL,
                 recipient TEXT NOT NULL,
                 PRIMARY KEY (owner, blob_id, recipient),
                 FOREIGN KEY (owner, blob_id) REFERENCES blobs (owner, blob_id) ON DELETE CASCADE
             ) STRICT;",
        )
        .map_err(db)?;
        Ok(Self {
            dir,
            db: Arc::new(Mutex::new(conn)),
            uploading: Arc::default(),
            cancelled: Arc::default(),
            quota,
            shared: None,
            waiting: None,
        })
    }

    /// Complete blobs go to (and are read from) the object store of `storage`, shared by
    /// every cluster node, and the devices each one waits for to its records.
    pub(crate) fn shared_through(mut self, storage: &crate::storage::nats::NatsStorage) -> Self {
        self.shared = Some(storage.blob_store());
        self.waiting = Some(storage.clone());
        self
    }

    fn cancelled(&self) -> std::sync::MutexGuard<'_, Cancelled> {
        self.cancelled.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers that the owner cancelled this blob.
    pub(crate) fn mark_cancelled(&self, owner: &str, id: [u8; 16]) {
        let mut c = self.cancelled();
        c.retain(|_, at| at.elapsed() < CANCEL_MEMORY);
        if c.len() >= MAX_CANCELLED {
            // The oldest go first; a cancel forgotten early costs a blob kept to expiry.
            if let Some(oldest) = c.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone()) {
                c.remove(&oldest);
            }
        }
        c.insert((owner.to_owned(), id), Instant::now());
    }

    pub(crate) fn is_cancelled(&self, owner: &str, id: [u8; 16]) -> bool {
        self.cancelled().contains_key(&(owner.to_owned(), id))
    }

    /// The blob's name in the shared store (and its file name here).
    fn name(owner: &str, id: &[u8; 16]) -> String {
        format!("{}-{owner}", hex(id))
    }

    /// The shared store's record of a complete blob.
    pub(crate) async fn shared_meta(
        &self,
        owner: &str,
        id: &[u8; 16],
    ) -> Result<Option<Meta>, Fail> {
        use async_nats::jetstream::object_store::InfoErrorKind;
        let Some(store) = &self.shared else { return Ok(None) };
        let name = Self::name(owner, id);
        match store.info(&name).await {
            Ok(info) if !info.deleted => {
                let waiting = match &self.waiting {
                    Some(w) => w.blob_waiting(&name).await.map_err(backend)?,
                    None => None,
                };
                Ok(Some(Meta {
                    size: info.size as u64,
                    complete: true,
                    recipients: waiting.unwrap_or_else(|| recipients_of(&info.metadata)),
                }))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    /// Moves a complete local blob into the shared store (a cluster node), then deletes
    /// the local copy. Without a shared store, nothing to do.
    pub(crate) async fn publish(&self, owner: &str, id: [u8; 16], meta: &Meta) -> Result<(), Fail> {
        use async_nats::jetstream::object_store::ObjectMetadata;
        let Some(store) = &self.shared else { return Ok(()) };
        let path = self.path(owner, &id);
        let mut file = tokio::fs::File::open(&path).await.map_err(backend)?;
        let metadata = HashMap::from([(RECIPIENTS.to_owned(), meta.recipients.join(","))]);
        let object =
            ObjectMetadata { name: Self::name(owner, &id), metadata, ..Default::default() };
        store.put(object, &mut file).await.map_err(backend)?;
        if let Some(w) = &self.waiting {
            w.blob_waiting_set(&Self::name(owner, &id), &meta.recipients).await.map_err(backend)?;
        }
        self.delete_local(owner, id).await
    }

    /// The file holding a blob's bytes. The owner is a validated user id (`a-z 0-9 . _ -`,
    /// starting with a letter), so it is a safe file-name part.
    pub(crate) fn path(&self, owner: &str, id: &[u8; 16]) -> PathBuf {
        self.dir.join(Self::name(owner, id))
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Fail> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut c)
        })
        .await
        .map_err(backend)?
        .map_err(backend)
    }

    /// Marks an upload of (owner, id) as streaming in, until the mark is dropped; `None`
    /// when one already is (a second upload of the same blob is refused, not
    /// interleaved).
    pub(crate) fn begin_upload(&self, owner: &str, id: [u8; 16]) -> Option<Uploading> {
        let key = (owner.to_owned(), id);
        let fresh = self
            .uploading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone());
        fresh.then(|| Uploading { set: self.uploading.clone(), key })
    }

    /// Creates the blob's row with its recipients, within the owner's quota, unless it
    /// exists: `Ok(None)` when created, `Ok(Some((size, complete)))` for the row that
    /// was there, `quota_exceeded` when the owner holds too many bytes.
    pub(crate) async fn reserve(
        &self,
        owner: &str,
        id: [u8; 16],
        size: u64,
        recipients: Vec<String>,
        now: u64,
    ) -> Result<Option<(i64, bool)>, Fail> {
        let (o, quota) = (owner.to_owned(), self.quota);
        self.db(move |c| {
            let tx = c.transaction()?;
            let row: Option<(i64, bool)> = tx
                .prepare_cached("SELECT size, complete FROM blobs WHERE owner = ?1 AND blob_id = ?2")?
                .query_row(params![o, id.as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if row.is_some() {
                return Ok(Ok(row));
            }
            let held: i64 = tx
                .prepare_cached("SELECT coalesce(sum(size), 0) FROM blobs WHERE owner = ?1")?
                .query_row(params![o], |r| r.get(0))?;
            if u64::try_from(held).unwrap_or(0).saturating_add(size) > quota {
                return Ok(Err(()));
            }
            tx.prepare_cached(
                "INSERT INTO blobs (owner, blob_id, size, created_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![o, id.as_slice(), size as i64, now as i64])?;
            for r in &recipients {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO blob_recipients (owner, blob_id, recipient) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![o, id.as_slice(), r])?;
            }
            tx.commit()?;
            Ok(Ok(None))
        })
        .await?
        .map_err(|()| fail(ErrorKind::QuotaExceeded, "too many file bytes held on the relay"))
    }

    /// Records that every byte of the blob is here (and synced).
    pub(crate) async fn mark_complete(&self, owner: &str, id: [u8; 16]) -> Result<(), Fail> {
        let o = owner.to_owned();
        self.db(move |c| {
            c.prepare_cached("UPDATE blobs SET complete = 1 WHERE owner = ?1 AND blob_id = ?2")?
                .execute(params![o, id.as_slice()])
        })
        .await?;
        Ok(())
    }

    /// The blob's metadata, if it exists.
    pub(crate) async fn meta(&self, owner: &str, id: [u8; 16]) -> Result<Option<Meta>, Fail> {
        let (owner, o) = (owner.to_owned(), owner.to_owned());
        let local = self
            .db(move |c| {
                let row: Option<(i64, bool)> = c
                    .prepare_cached(
                        "SELECT size, complete FROM blobs WHERE owner = ?1 AND blob_id = ?2",
                    )?
                    .query_row(params![owner, id.as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                let Some((size, complete)) = row else { return Ok(None) };
                let recipients = c
                    .prepare_cached(
                        "SELECT recipient FROM blob_recipients WHERE owner = ?1 AND blob_id = ?2",
                    )?
                    .query_map(params![owner, id.as_slice()], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                Ok(Some(Meta { size: u64::try_from(size).unwrap_or(0), complete, recipients }))
            })
            .await?;
        match local {
            Some(m) => Ok(Some(m)),
            None => self.shared_meta(&o, &id).await,
        }
    }

    /// Bytes held for a blob (its file's length).
    pub(crate) async fn stored(&self, owner: &str, id: &[u8; 16]) -> u64 {
        tokio::fs::metadata(self.path(owner, id)).await.map(|m| m.len()).unwrap_or(0)
    }

    /// Deletes a blob, here and in the shared store.
    pub(crate) async fn delete(&self, owner: &str, id: [u8; 16]) -> Result<(), Fail> {
        if let Some(store) = &self.shared {
            use async_nats::jetstream::object_store::DeleteErrorKind;
            match store.delete(Self::name(owner, &id)).await {
                Ok(()) => {}
                Err(e) if e.kind() == DeleteErrorKind::NotFound => {}
                Err(e) => return Err(backend(e)),
            }
            if let Some(w) = &self.waiting {
                w.blob_waiting_forget(&Self::name(owner, &id)).await.map_err(backend)?;
            }
        }
        self.delete_local(owner, id).await
    }

    /// Deletes this node's copy, file first (a row without a file is harmless: it reads
    /// as empty).
    async fn delete_local(&self, owner: &str, id: [u8; 16]) -> Result<(), Fail> {
        match tokio::fs::remove_file(self.path(owner, &id)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(backend(e)),
        }
        let owner = owner.to_owned();
        self.db(move |c| {
            c.prepare_cached("DELETE FROM blobs WHERE owner = ?1 AND blob_id = ?2")?
                .execute(params![owner, id.as_slice()])
        })
        .await?;
        Ok(())
    }

    /// Takes `user` off the blob's recipients; returns how many are left.
    pub(crate) async fn release_recipient(
        &self,
        owner: &str,
        id: [u8; 16],
        user: &str,
        device: Option<u32>,
    ) -> Result<usize, Fail> {
        let (o, u) = (owner.to_owned(), user.to_owned());
        let local: Option<i64> = self
            .db(move |c| {
                let tx = c.transaction()?;
                let exists = tx
                    .prepare_cached("SELECT 1 FROM blobs WHERE owner = ?1 AND blob_id = ?2")?
                    .exists(params![o, id.as_slice()])?;
                if !exists {
                    return Ok(None);
                }
                let entries: Vec<String> = tx
                    .prepare_cached(
                        "SELECT recipient FROM blob_recipients WHERE owner = ?1 AND blob_id = ?2",
                    )?
                    .query_map(params![o, id.as_slice()], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                for e in entries.iter().filter(|e| released_by(e, &u, device)) {
                    tx.prepare_cached(
                        "DELETE FROM blob_recipients
                         WHERE owner = ?1 AND blob_id = ?2 AND recipient = ?3",
                    )?
                    .execute(params![o, id.as_slice(), e])?;
                }
                let left = tx
                    .prepare_cached(
                        "SELECT count(*) FROM blob_recipients WHERE owner = ?1 AND blob_id = ?2",
                    )?
                    .query_row(params![o, id.as_slice()], |r| r.get(0))?;
                tx.commit()?;
                Ok(Some(left))
            })
            .await?;
        if let Some(left) = local {
            return Ok(usize::try_from(left).unwrap_or(0));
        }
        let Some(store) = &self.shared else { return Ok(0) };
        let name = Self::name(owner, &id);
        // Compare-and-set on the blob's record: two devices releasing on two nodes at
        // once both count.
        if let Some(w) = &self.waiting
            && let Some(left) = w
                .blob_waiting_release(&name, |e| released_by(e, user, device))
                .await
                .map_err(backend)?
        {
            return Ok(left);
        }
        let Some(meta) = self.shared_meta(owner, &id).await? else { return Ok(0) };
        let left: Vec<String> =
            meta.recipients.into_iter().filter(|r| !released_by(r, user, device)).collect();
        if !left.is_empty() {
            use async_nats::jetstream::object_store::UpdateMetadata;
            let metadata = HashMap::from([(RECIPIENTS.to_owned(), left.join(","))]);
            store
                .update_metadata(
                    &name,
                    UpdateMetadata { name: name.clone(), metadata, ..Default::default() },
                )
                .await
                .map_err(backend)?;
        }
        Ok(left.len())
    }

    /// A reader of the complete blob's bytes from `offset`: this node's file, or the
    /// shared store's object.
    pub(crate) async fn open_at(
        &self,
        owner: &str,
        id: [u8; 16],
        offset: u64,
    ) -> Result<Box<dyn tokio::io::AsyncRead + Unpin + Send>, Fail> {
        let path = self.path(owner, &id);
        match tokio::fs::File::open(&path).await {
            Ok(mut file) => {
                file.seek(std::io::SeekFrom::Start(offset)).await.map_err(backend)?;
                return Ok(Box::new(file));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.shared.is_some() => {}
            Err(e) => return Err(backend(format!("{}: {e}", path.display()))),
        }
        let Some(store) = &self.shared else {
            return Err(fail(ErrorKind::NotFound, "no such blob"));
        };
        let mut object = store.get(Self::name(owner, &id)).await.map_err(backend)?;
        // Objects are read from the start: skip to the offset.
        let skipped =
            tokio::io::copy(&mut (&mut object).take(offset), &mut tokio::io::sink()).await;
        if skipped.map_err(backend)? != offset {
            return Err(fail(ErrorKind::Invalid, "offset past the end of the blob"));
        }
        Ok(Box::new(object))
    }

    /// Deletes every blob created before `before` (ms); returns how many.
    pub(crate) async fn expire(&self, before: u64) -> Result<u64, Fail> {
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        let old: Vec<(String, Vec<u8>)> = self
            .db(move |c| {
                c.prepare_cached("SELECT owner, blob_id FROM blobs WHERE created_at < ?1")?
                    .query_map(params![before], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .await?;
        let mut n = 0;
        for (owner, id) in old {
            if let Ok(id) = <[u8; 16]>::try_from(id.as_slice()) {
                self.delete(&owner, id).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// A device of `user` was removed: the blobs held on this node that wait for it are
    /// released as if it had fetched them (deleted when nobody else waits). A blob
    /// already moved to a cluster's shared store has no rows here: it waits for the
    /// removed device until it expires.
    pub(crate) async fn release_device(&self, user: &str, device: u32) -> Result<(), Fail> {
        let e = entry(user, device);
        let held: Vec<(String, Vec<u8>)> = self
            .db(move |c| {
                c.prepare_cached("SELECT owner, blob_id FROM blob_recipients WHERE recipient = ?1")?
                    .query_map(params![e], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .await?;
        self.release_held(held, user, Some(device)).await
    }

    /// Releases `held` (owner, blob id) for `user`'s `device` (or all of its devices) as
    /// if it had fetched them, deleting those nobody else waits for.
    async fn release_held(
        &self,
        held: Vec<(String, Vec<u8>)>,
        user: &str,
        device: Option<u32>,
    ) -> Result<(), Fail> {
        for (owner, id) in held {
            if let Ok(id) = <[u8; 16]>::try_from(id.as_slice())
                && self.release_recipient(&owner, id, user, device).await? == 0
            {
                self.delete(&owner, id).await?;
            }
        }
        Ok(())
    }

    /// Deletes every blob of an account (the account is being deleted).
    pub(crate) async fn delete_owner(&self, owner: &str) -> Result<(), Fail> {
        if let Some(store) = &self.shared {
            use futures::StreamExt;
            let mut list = store.list().await.map_err(backend)?;
            while let Some(info) = list.next().await {
                let info = info.map_err(backend)?;
                // `<blob id hex>-<owner>`: the hex has no `-`, so the rest is the owner,
                // compared whole (`bob` must not match `alice-bob`).
                if info.name.split_once('-').is_some_and(|(_, o)| o == owner) {
                    let _ = store.delete(&info.name).await;
                    if let Some(w) = &self.waiting {
                        let _ = w.blob_waiting_forget(&info.name).await;
                    }
                }
            }
        }
        let o = owner.to_owned();
        let ids: Vec<Vec<u8>> = self
            .db(move |c| {
                c.prepare_cached("SELECT blob_id FROM blobs WHERE owner = ?1")?
                    .query_map(params![o], |r| r.get(0))?
                    .collect()
            })
            .await?;
        for id in ids {
            if let Ok(id) = <[u8; 16]>::try_from(id.as_slice()) {
                self.delete(owner, id).await?;
            }
        }
        // Blobs of others held on this node for the deleted account: released as if it
        // had fetched them (deleted when nobody else waits), so no row names it.
        let u = owner.to_owned();
        let held: Vec<(String, Vec<u8>)> = self
            .db(move |c| {
                c.prepare_cached(
                    "SELECT DISTINCT owner, blob_id FROM blob_recipients
                     WHERE recipient = ?1 OR substr(recipient, 1, length(?1) + 1) = ?1 || '#'",
                )?
                .query_map(params![u], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
            })
            .await?;
        self.release_held(held, owner, None).await?;
        // The WAL keeps older copies of the rows' pages until checkpointed.
        self.db(|c| c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))).await?;
        Ok(())
    }
}

/// A recipient entry: one device of a recipient account (`bob#2`), so that a blob stays
/// until every device the account had when it was stored has fetched it (issue 19: one
/// blob, keys to every device). An entry without `#` (a blob stored before devices, or
/// for an account the store knew no device of) stands for the whole account.
pub(crate) fn entry(user: &str, device: u32) -> String {
    format!("{user}#{device}")
}

/// The account an entry belongs to.
pub(crate) fn account_of(entry: &str) -> &str {
    entry.split_once('#').map_or(entry, |(u, _)| u)
}

/// Whether `user`'s release (from `device`, or for the whole account) takes `entry`
/// off the list.
fn released_by(entry: &str, user: &str, device: Option<u32>) -> bool {
    match entry.split_once('#') {
        None => entry == user,
        Some((u, d)) => u == user && device.is_none_or(|dev| d == dev.to_string()),
    }
}

/// The metadata key of a shared blob's recipients (comma-separated user ids).
const RECIPIENTS: &str = "recipients";

fn recipients_of(metadata: &HashMap<String, String>) -> Vec<String> {
    metadata
        .get(RECIPIENTS)
        .map(|r| r.split(',').filter(|u| !u.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// An upload streaming in ([`Blobs::begin_upload`]); the mark goes when the upload ends,
/// however it ends.
#[derive(Debug)]
pub(crate) struct Uploading {
    set: InFlight,
    key: (String, [u8; 16]),
}

impl Drop for Uploading {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.key);
    }
}
