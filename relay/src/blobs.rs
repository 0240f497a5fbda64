//! File blobs: end-to-end encrypted file payloads that a device uploads once for its
//! recipients, on their own QUIC streams (never through the mailbox).
//!
//! Bytes live in files under `<data dir>/blobs/`, one per blob; what is known about
//! them (owner, size, completeness, who may fetch) lives in `blobs.db`, a small SQLite
//! database of its own, so the blob store is apart from the mailbox storage and a cluster
//! back end can swap it for an object store. A blob is deleted when every recipient has
//! released it (`BlobRelease` after fetching, or giving up), when its owner cancels it, or
//! at expiry (48 hours by default), complete or not.
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

use letstalk_wire::{ErrorKind, LEN_PREFIX, MAX_BLOB_LEN, MAX_LIST, Request, Response};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::handlers::{Fail, fail, normalize_user_id, require_auth};
use crate::storage::Storage;
use crate::{State, now_ms};

/// How long a cancelled blob's id is remembered, and how many at most.
const CANCEL_MEMORY: Duration = Duration::from_secs(600);
const MAX_CANCELLED: usize = 10_000;

/// Bytes read or written per step while streaming a blob.
const IO_CHUNK: usize = 1024 * 1024;

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

fn backend(e: impl std::fmt::Display) -> Fail {
    warn!(error = %e, "blob store failure");
    fail(ErrorKind::Internal, "blob store failure")
}

impl Blobs {
    /// Opens (creating) the blob store in `data_dir`.
    pub(crate) fn open(data_dir: &Path, quota: u64) -> Result<Self, crate::RelayError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = data_dir.join("blobs");
        let io = |e: std::io::Error| crate::RelayError::Io(format!("{}: {e}", dir.display()));
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io)?;
        let db = |e: rusqlite::Error| crate::RelayError::Io(format!("blobs.db: {e}"));
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
        })
    }

    /// Complete blobs go to (and are read from) `store`, shared by every cluster node.
    pub(crate) fn shared_through(
        mut self,
        store: async_nats::jetstream::object_store::ObjectStore,
    ) -> Self {
        self.shared = Some(store);
        self
    }

    fn cancelled(&self) -> std::sync::MutexGuard<'_, Cancelled> {
        self.cancelled.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers that the owner cancelled this blob.
    fn mark_cancelled(&self, owner: &str, id: [u8; 16]) {
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

    fn is_cancelled(&self, owner: &str, id: [u8; 16]) -> bool {
        self.cancelled().contains_key(&(owner.to_owned(), id))
    }

    /// The blob's name in the shared store (and its file name here).
    fn name(owner: &str, id: &[u8; 16]) -> String {
        format!("{}-{owner}", hex(id))
    }

    /// The shared store's record of a complete blob.
    async fn shared_meta(&self, owner: &str, id: &[u8; 16]) -> Result<Option<Meta>, Fail> {
        use async_nats::jetstream::object_store::InfoErrorKind;
        let Some(store) = &self.shared else { return Ok(None) };
        match store.info(Self::name(owner, id)).await {
            Ok(info) if !info.deleted => Ok(Some(Meta {
                size: info.size as u64,
                complete: true,
                recipients: recipients_of(&info.metadata),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    /// Moves a complete local blob into the shared store (a cluster node), then deletes
    /// the local copy. Without a shared store, nothing to do.
    async fn publish(&self, owner: &str, id: [u8; 16], meta: &Meta) -> Result<(), Fail> {
        use async_nats::jetstream::object_store::ObjectMetadata;
        let Some(store) = &self.shared else { return Ok(()) };
        let path = self.path(owner, &id);
        let mut file = tokio::fs::File::open(&path).await.map_err(backend)?;
        let metadata = HashMap::from([(RECIPIENTS.to_owned(), meta.recipients.join(","))]);
        let object =
            ObjectMetadata { name: Self::name(owner, &id), metadata, ..Default::default() };
        store.put(object, &mut file).await.map_err(backend)?;
        self.delete_local(owner, id).await
    }

    /// The file holding a blob's bytes. The owner is a validated user id (`a-z 0-9 . _ -`,
    /// starting with a letter), so it is a safe file-name part.
    fn path(&self, owner: &str, id: &[u8; 16]) -> PathBuf {
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
    async fn stored(&self, owner: &str, id: &[u8; 16]) -> u64 {
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
    async fn release_recipient(
        &self,
        owner: &str,
        id: [u8; 16],
        user: &str,
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
                tx.prepare_cached(
                    "DELETE FROM blob_recipients WHERE owner = ?1 AND blob_id = ?2 AND recipient = ?3",
                )?
                .execute(params![o, id.as_slice(), u])?;
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
        let Some(meta) = self.shared_meta(owner, &id).await? else { return Ok(0) };
        let left: Vec<String> = meta.recipients.into_iter().filter(|r| r != user).collect();
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
    async fn open_at(
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
                c.prepare_cached("SELECT owner, blob_id FROM blob_recipients WHERE recipient = ?1")?
                    .query_map(params![u], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .await?;
        for (other, id) in held {
            if let Ok(id) = <[u8; 16]>::try_from(id.as_slice())
                && self.release_recipient(&other, id, owner).await? == 0
            {
                self.delete(&other, id).await?;
            }
        }
        // The WAL keeps older copies of the rows' pages until checkpointed.
        self.db(|c| c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))).await?;
        Ok(())
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

/// Whether `req` carries bytes on its stream (served by [`serve_stream`]).
pub(crate) fn is_stream_request(req: &Request) -> bool {
    matches!(req, Request::BlobPut { .. } | Request::BlobGet { .. })
}

/// May `user` read `owner`'s blob?
fn may_read(user: &str, owner: &str, meta: &Meta) -> bool {
    user == owner || meta.recipients.iter().any(|r| r == user)
}

fn owner_arg(raw: &str) -> Result<String, Fail> {
    normalize_user_id(raw).ok_or_else(|| fail(ErrorKind::Invalid, "invalid owner"))
}

/// `BlobStat`.
pub(crate) async fn stat<S: Storage>(
    st: &Arc<State<S>>,
    user: &str,
    owner: &str,
    id: [u8; 16],
) -> Result<Response, Fail> {
    let owner = owner_arg(owner)?;
    let meta = st.blobs.meta(&owner, id).await?;
    let Some(meta) = meta.filter(|m| may_read(user, &owner, m)) else {
        return Err(fail(ErrorKind::NotFound, "no such blob"));
    };
    let stored = if meta.complete { meta.size } else { st.blobs.stored(&owner, &id).await };
    Ok(Response::Blob { size: meta.size, stored: stored.min(meta.size) })
}

/// `BlobRelease`: a recipient is done with the blob (deleted when nobody is left to fetch
/// it), or the owner cancels it (deleted at once). Releasing what is gone is fine.
pub(crate) async fn release<S: Storage>(
    st: &Arc<State<S>>,
    user: &str,
    owner: &str,
    id: [u8; 16],
) -> Result<Response, Fail> {
    let owner = owner_arg(owner)?;
    if user == owner {
        // Also when nothing is here yet: an upload may be on its way.
        st.blobs.mark_cancelled(&owner, id);
    }
    let Some(meta) = st.blobs.meta(&owner, id).await? else { return Ok(Response::Ok) };
    if user == owner {
        st.blobs.delete(&owner, id).await?;
        info!(size = meta.size, "blob cancelled by its owner");
        return Ok(Response::Ok);
    }
    if !meta.recipients.iter().any(|r| r == user) {
        return Err(fail(ErrorKind::NotFound, "no such blob"));
    }
    let left = st.blobs.release_recipient(&owner, id, user).await?;
    if left == 0 {
        st.blobs.delete(&owner, id).await?;
        info!(size = meta.size, "blob fetched by every recipient: deleted");
    }
    Ok(Response::Ok)
}

/// Serves a `BlobPut` or `BlobGet` stream to its end: the answer frame and, for a get,
/// the bytes.
pub(crate) async fn serve_stream<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<crate::conn::ConnCtx>,
    req: Request,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let result = match require_auth(st, ctx) {
        Err(f) => Err(f),
        Ok(user) => match req {
            Request::BlobPut { blob_id, size, offset, recipients } => {
                let r = put(st, &user, blob_id, size, offset, recipients, &mut recv).await;
                if st.blobs.is_cancelled(&user, blob_id) {
                    // Cancelled while it streamed in: whatever arrived goes.
                    let _ = st.blobs.delete(&user, blob_id).await;
                    Err(fail(ErrorKind::NotFound, "the blob was cancelled"))
                } else {
                    r
                }
            }
            Request::BlobGet { owner, blob_id, offset } => {
                match get(st, &user, &owner, blob_id, offset, &mut send).await {
                    // The answer and the bytes are written: done.
                    Ok(None) => {
                        let _ = send.finish();
                        return;
                    }
                    Ok(Some(r)) => Ok(r),
                    Err(f) => Err(f),
                }
            }
            _ => Err(fail(ErrorKind::Invalid, "not a blob stream request")),
        },
    };
    let response = result.unwrap_or_else(Response::from);
    // Whatever the client still sends is not read: stop it.
    let _ = recv.stop(0u32.into());
    if let Ok(frame) = response.encode()
        && send.write_all(&frame).await.is_ok()
    {
        let _ = send.finish();
    }
}

/// Removes the upload mark when the upload ends, however it ends.
struct Uploading<'a> {
    set: &'a Mutex<HashSet<(String, [u8; 16])>>,
    key: (String, [u8; 16]),
}

impl Drop for Uploading<'_> {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.key);
    }
}

async fn put<S: Storage>(
    st: &Arc<State<S>>,
    owner: &str,
    id: [u8; 16],
    size: u64,
    offset: u64,
    recipients: Vec<String>,
    recv: &mut quinn::RecvStream,
) -> Result<Response, Fail> {
    if size > MAX_BLOB_LEN {
        return Err(fail(ErrorKind::TooLarge, "blob over the size limit"));
    }
    if recipients.is_empty() || recipients.len() > MAX_LIST {
        return Err(fail(ErrorKind::Invalid, "a blob needs 1 to 1000 recipients"));
    }
    let mut recips = Vec::with_capacity(recipients.len());
    for r in &recipients {
        recips.push(
            normalize_user_id(r).ok_or_else(|| fail(ErrorKind::Invalid, "invalid recipient"))?,
        );
    }
    // Recipients who block the owner never get to fetch it; when that is everyone, the
    // upload is refused as their messages would be.
    let mut allowed = Vec::with_capacity(recips.len());
    for r in recips {
        if !st.storage.blocks(&r).await.map_err(crate::handlers::storage_fail)?.refuses(owner) {
            allowed.push(r);
        }
    }
    if allowed.is_empty() {
        return Err(fail(ErrorKind::Blocked, "the recipient blocks you"));
    }
    let recips = allowed;
    let blobs = &st.blobs;
    let key = (owner.to_owned(), id);
    if !blobs
        .uploading
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key.clone())
    {
        return Err(fail(ErrorKind::Conflict, "this blob is being uploaded on another stream"));
    }
    let _mark = Uploading { set: &blobs.uploading, key };
    if blobs.is_cancelled(owner, id) {
        return Err(fail(ErrorKind::NotFound, "the blob was cancelled"));
    }

    // Already complete in the shared store (a retransmit after the answer was lost).
    if let Some(shared) = blobs.shared_meta(owner, &id).await? {
        if shared.size != size {
            return Err(fail(ErrorKind::Conflict, "a blob with this id and another size exists"));
        }
        return Ok(Response::Blob { size, stored: size });
    }
    let meta = Meta { size, complete: true, recipients: recips.clone() };
    // Create the row (or check it matches), within the owner's quota.
    let (o, now, quota) = (owner.to_owned(), now_ms(), blobs.quota);
    let existing = blobs
        .db(move |c| {
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
            for r in &recips {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO blob_recipients (owner, blob_id, recipient) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![o, id.as_slice(), r])?;
            }
            tx.commit()?;
            Ok(Ok(None))
        })
        .await?
        .map_err(|()| fail(ErrorKind::QuotaExceeded, "too many file bytes held on the relay"))?;
    match existing {
        Some((s, _)) if u64::try_from(s).ok() != Some(size) => {
            return Err(fail(ErrorKind::Conflict, "a blob with this id and another size exists"));
        }
        Some((_, true)) => {
            // Complete here but not yet shared (the move failed last time): move it now.
            blobs.publish(owner, id, &meta).await?;
            return Ok(Response::Blob { size, stored: size });
        }
        _ => {}
    }

    let path = blobs.path(owner, &id);
    let io = |e: std::io::Error| backend(format!("{}: {e}", path.display()));
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .await
        .map_err(io)?;
    let held = file.metadata().await.map_err(io)?.len();
    if offset > held {
        return Err(fail(
            ErrorKind::Invalid,
            format!("offset {offset} is past the {held} bytes held: resume from there"),
        ));
    }
    file.set_len(offset).await.map_err(io)?;
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
    let mut at = offset;
    // QUIC hands data over about a packet at a time: gather a large buffer before each
    // file write, or the blocking-pool round trip per write caps the rate.
    let mut buf = vec![0u8; IO_CHUNK];
    loop {
        let (filled, ended) = match read_full(recv, &mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // The uploader went away: keep what arrived, it resumes from there.
                let _ = file.flush().await;
                debug!(error = %e, at, "blob upload interrupted");
                return Err(fail(ErrorKind::Internal, "upload interrupted"));
            }
        };
        let end = at.saturating_add(filled as u64);
        if end > size {
            let _ = file.flush().await;
            let _ = file.set_len(at).await;
            return Err(fail(ErrorKind::Invalid, "more bytes than the blob's size"));
        }
        file.write_all(buf.get(..filled).unwrap_or_default()).await.map_err(io)?;
        at = end;
        if ended {
            break;
        }
    }
    file.flush().await.map_err(io)?;
    if at < size {
        return Err(fail(ErrorKind::Invalid, format!("stream ended at {at} of {size} bytes")));
    }
    // Durable before it is acknowledged, like a message.
    file.sync_all().await.map_err(io)?;
    let o = owner.to_owned();
    blobs
        .db(move |c| {
            c.prepare_cached("UPDATE blobs SET complete = 1 WHERE owner = ?1 AND blob_id = ?2")?
                .execute(params![o, id.as_slice()])
        })
        .await?;
    blobs.publish(owner, id, &meta).await?;
    info!(size, resumed_at = offset, "blob stored");
    Ok(Response::Blob { size, stored: size })
}

/// Reads until `buf` is full or the stream ends: (bytes read, ended). On an error, what
/// this call read is not written; the uploader resumes from what was.
async fn read_full(
    recv: &mut quinn::RecvStream,
    buf: &mut [u8],
) -> Result<(usize, bool), quinn::ReadError> {
    let mut filled = 0;
    while filled < buf.len() {
        let Some(slice) = buf.get_mut(filled..) else { break };
        match recv.read(slice).await? {
            Some(n) => filled += n,
            None => return Ok((filled, true)),
        }
    }
    Ok((filled, false))
}

/// Writes the `Blob` answer and the bytes from `offset`; `Ok(None)` when done, or an
/// answer to send instead (an error).
async fn get<S: Storage>(
    st: &Arc<State<S>>,
    user: &str,
    owner: &str,
    id: [u8; 16],
    offset: u64,
    send: &mut quinn::SendStream,
) -> Result<Option<Response>, Fail> {
    let owner = owner_arg(owner)?;
    let meta = st.blobs.meta(&owner, id).await?;
    let Some(meta) = meta.filter(|m| may_read(user, &owner, m)) else {
        return Err(fail(ErrorKind::NotFound, "no such blob"));
    };
    if !meta.complete {
        return Err(fail(ErrorKind::NotFound, "the blob is not complete yet"));
    }
    if offset > meta.size {
        return Err(fail(ErrorKind::Invalid, "offset past the end of the blob"));
    }
    let mut file = st.blobs.open_at(&owner, id, offset).await?;
    let Ok(head) = (Response::Blob { size: meta.size, stored: meta.size }).encode() else {
        return Err(fail(ErrorKind::Internal, "encoding"));
    };
    debug_assert!(head.len() > LEN_PREFIX);
    if send.write_all(&head).await.is_err() {
        return Ok(None);
    }
    let mut buf = vec![0u8; IO_CHUNK];
    let mut left = meta.size - offset;
    while left > 0 {
        let want = usize::try_from(left.min(IO_CHUNK as u64)).unwrap_or(IO_CHUNK);
        let Some(slice) = buf.get_mut(..want) else { break };
        let n = file.read(slice).await.map_err(backend)?;
        if n == 0 {
            warn!("blob file shorter than its size");
            let _ = send.reset(1u32.into());
            return Ok(None);
        }
        if send.write_all(buf.get(..n).unwrap_or_default()).await.is_err() {
            debug!("blob download interrupted");
            return Ok(None);
        }
        left -= n as u64;
    }
    Ok(None)
}
