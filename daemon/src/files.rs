//! Shared files: encryption on the device, blob transfers on streams of their own, and
//! the rows that remember where each transfer stands.
//!
//! Sending: `files.send` encrypts the file once with a fresh 16-byte key in the age
//! STREAM format into `<data dir>/attachments/<message_id>.age` (the device's copy is
//! encrypted at rest; the key is in the SQLCipher database), hashing the plaintext on the
//! way. The upload streams that file to the relay from wherever the relay's copy ends,
//! so it resumes after any interruption. Once the relay holds all of it, the end-to-end
//! message carrying name, size, MIME type, SHA-256, key and blob id joins the outbox,
//! where it follows the usual states (queued → sent → delivered → read).
//!
//! Receiving: the message creates an `available` row. The worker downloads it on its own
//! when the settings allow it on the current network; `files.download` downloads it in
//! any case. The blob is appended to `<message_id>.age.part` (resuming from its length),
//! checked by decrypting it and comparing the SHA-256, renamed to `<message_id>.age`,
//! and released on the relay (which deletes it once every recipient released it).
//! `files.download` then writes the plaintext where it was asked to.
//!
//! **Invariant:** plaintext is written only to the sender's own file and to the paths a
//! client names (or the directory of opened files beside the socket); what the daemon
//! keeps in its data directory is ciphertext.
//!
//! **Invariant:** every local path of a transfer is made from a [`LocalId`] (the path
//! helpers take nothing else) and a [`safe_name`]: a file message or cancel whose id is
//! not a canonical UUID is dropped on arrival, so no peer-chosen string names a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use letstalk_crypto::stream::{CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE, PAYLOAD_NONCE_LEN};
use letstalk_crypto::{StreamDecryptor, StreamEncryptor};
use letstalk_ipc::types::{
    Direction, EventBody, FileTransfer, Message, MessageKind, MessageState, Network, NetworkType,
    TransferDirection,
};
use letstalk_wire::{ErrorKind as WireKind, LEN_PREFIX, MAX_FRAME_LEN, Request, Response};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::content::{Content, Secret};
use crate::delivery::{self, Effects};
pub use crate::localid::{LocalId, safe_name};
use crate::messages::{self, NewMessage};
use crate::relay::{RelayApi, RelayError};
use crate::store::StoreError;
use crate::{Daemon, events, now_ms};

/// The largest file: 2 GiB.
pub const MAX_FILE: u64 = 2 * 1024 * 1024 * 1024;
/// The directory of encrypted attachments inside the data directory.
pub const ATTACHMENTS: &str = crate::store::ATTACHMENTS_DIR;
/// Bytes read or written per step.
const IO_CHUNK: usize = 1024 * 1024;
/// `file.progress` events are written at most this often (they are rows in the log).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// The worker looks again this often (retries after the relay was away).
const RETRY_EVERY: Duration = Duration::from_secs(3);

/// Why a transfer did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("the relay cannot be reached")]
    Unavailable,
    #[error("the relay no longer has this file")]
    Gone,
    #[error("the file does not match its SHA-256: discarded")]
    Corrupt,
    #[error("cancelled")]
    Cancelled,
    /// The relay refused the upload for good: the recipient blocks us.
    #[error("the recipient blocks you")]
    Blocked,
    /// The row's id is not one a local path may be made from (see `localid.rs`).
    #[error("the file's id is not valid")]
    InvalidId,
    #[error("{0}")]
    Io(String),
}

impl TransferError {
    fn io(context: &str, e: impl std::fmt::Display) -> Self {
        Self::Io(format!("{context}: {e}"))
    }
}

impl From<StoreError> for TransferError {
    fn from(e: StoreError) -> Self {
        Self::Io(e.to_string())
    }
}

/// One transfer running now.
#[derive(Debug)]
struct Active {
    cancel: CancellationToken,
    outcome: watch::Receiver<Option<Result<(), TransferError>>>,
}

/// The transfers of this daemon: which run, and the worker's wake-up.
#[derive(Debug, Default)]
pub struct Transfers {
    wake: Notify,
    active: Mutex<BTreeMap<String, Active>>,
    root: CancellationToken,
}

impl Transfers {
    /// Transfers stop when `root` is cancelled (daemon shutdown).
    pub fn new(root: CancellationToken) -> Self {
        Self { wake: Notify::new(), active: Mutex::default(), root }
    }

    /// Tells the worker to look at the rows again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Active>> {
        self.active.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_active(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Stops every running transfer and waits (briefly) for each to end.
    pub async fn stop_all(&self) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            self.stop(&id).await;
        }
    }

    /// Stops a running transfer and waits (briefly) for it to end.
    pub async fn stop(&self, id: &str) {
        let active = self.lock().remove(id);
        if let Some(a) = active {
            a.cancel.cancel();
            let mut rx = a.outcome;
            let _ =
                tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some)).await;
        }
    }
}

/// A file row.
#[derive(Debug, Clone)]
pub struct FileRow {
    pub message_id: String,
    pub direction: Direction,
    pub peer: String,
    pub name: String,
    pub size: u64,
    pub mime: String,
    pub sha256: String,
    pub file_key: zeroize::Zeroizing<[u8; 16]>,
    pub blob_id: [u8; 16],
    pub blob_size: u64,
    pub path: Option<String>,
    pub transfer: FileTransfer,
    pub release: bool,
}

impl FileRow {
    /// The id its local files are named by; `None` for a row whose id is not a canonical
    /// UUID (none is stored since ids are checked on arrival), which then has no files.
    pub fn local_id(&self) -> Option<LocalId> {
        LocalId::parse(&self.message_id)
    }
}

pub fn transfer_str(t: FileTransfer) -> &'static str {
    match t {
        FileTransfer::Uploading => "uploading",
        FileTransfer::Uploaded => "uploaded",
        FileTransfer::Available => "available",
        FileTransfer::Downloading => "downloading",
        FileTransfer::Done => "done",
        FileTransfer::Cancelled => "cancelled",
        FileTransfer::Failed => "failed",
    }
}

fn parse_transfer(s: &str) -> FileTransfer {
    match s {
        "uploading" => FileTransfer::Uploading,
        "uploaded" => FileTransfer::Uploaded,
        "available" => FileTransfer::Available,
        "downloading" => FileTransfer::Downloading,
        "done" => FileTransfer::Done,
        "cancelled" => FileTransfer::Cancelled,
        _ => FileTransfer::Failed,
    }
}

const ROW: &str = "message_id, direction, peer, name, size, mime, sha256, file_key, blob_id, \
                   blob_size, path, transfer, release";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRow> {
    let key: Vec<u8> = r.get(7)?;
    let blob: Vec<u8> = r.get(8)?;
    let bad =
        |i| rusqlite::Error::InvalidColumnType(i, "bytes".into(), rusqlite::types::Type::Blob);
    let direction: String = r.get(1)?;
    let transfer: String = r.get(11)?;
    Ok(FileRow {
        message_id: r.get(0)?,
        direction: if direction == "in" { Direction::In } else { Direction::Out },
        peer: r.get(2)?,
        name: r.get(3)?,
        size: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
        mime: r.get(5)?,
        sha256: r.get(6)?,
        file_key: zeroize::Zeroizing::new(key.as_slice().try_into().map_err(|_| bad(7))?),
        blob_id: blob.as_slice().try_into().map_err(|_| bad(8))?,
        blob_size: u64::try_from(r.get::<_, i64>(9)?).unwrap_or(0),
        path: r.get(10)?,
        transfer: parse_transfer(&transfer),
        release: r.get(12)?,
    })
}

/// One file row.
pub fn get(conn: &Connection, message_id: &str) -> Result<Option<FileRow>, StoreError> {
    let sql = format!("SELECT {ROW} FROM files WHERE message_id = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row(params![message_id], from_row).optional()?)
}

fn set_transfer(
    conn: &Connection,
    row: &FileRow,
    transfer: FileTransfer,
    now: i64,
) -> Result<u64, StoreError> {
    conn.prepare_cached("UPDATE files SET transfer = ?2 WHERE message_id = ?1")?
        .execute(params![row.message_id, transfer_str(transfer)])?;
    let conversation = messages_conversation(conn, &row.message_id)?;
    events::append(
        conn,
        &EventBody::FileState { message_id: row.message_id.clone(), conversation, transfer },
        now,
    )
}

/// The conversation of a file row's `peer`: an outgoing file's peer is `group:<id>` for
/// a group, a user id otherwise.
fn conversation_of_peer(peer: &str) -> String {
    if peer.starts_with("group:") { peer.to_owned() } else { format!("user:{peer}") }
}

/// The conversation a message belongs to (empty if it is gone).
fn messages_conversation(conn: &Connection, message_id: &str) -> Result<String, StoreError> {
    Ok(conn
        .prepare_cached("SELECT conversation FROM messages WHERE message_id = ?1")?
        .query_row(params![message_id], |r| r.get(0))
        .optional()?
        .unwrap_or_default())
}

/// Who may fetch an outgoing file's blob: the peer, or every other member of the group.
fn blob_recipients(conn: &Connection, me: &str, peer: &str) -> Result<Vec<String>, StoreError> {
    match peer.strip_prefix("group:") {
        Some(gid) => Ok(crate::groups::load(conn, gid)?
            .map(|(g, _)| g.members.into_iter().filter(|m| m != me).collect())
            .unwrap_or_default()),
        None => Ok(vec![peer.to_owned()]),
    }
}

/// [`set_transfer`] in a transaction of its own, and the event published.
async fn record_transfer(
    daemon: &Daemon,
    row: &FileRow,
    transfer: FileTransfer,
) -> Result<(), StoreError> {
    let r = row.clone();
    let seq = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let seq = set_transfer(&tx, &r, transfer, now_ms())?;
            tx.commit()?;
            Ok(seq)
        })
        .await?;
    daemon.bus.published(seq);
    Ok(())
}

/// The encrypted copy of a file. Paths are made only from a [`LocalId`] (see
/// `localid.rs`): a message id from a peer is checked before it can name a file.
pub fn encrypted_path(data_dir: &Path, id: &LocalId) -> PathBuf {
    id.child(&data_dir.join(ATTACHMENTS), ".age")
}

fn partial_path(data_dir: &Path, id: &LocalId) -> PathBuf {
    id.child(&data_dir.join(ATTACHMENTS), ".age.part")
}

/// Where `files.download` without `dest` writes a file's plaintext:
/// `<runtime dir>/files/<id>/<safe name>`.
pub fn opened_path(runtime_dir: &Path, id: &LocalId, name: &str) -> PathBuf {
    id.child(&runtime_dir.join(OPENED), "").join(safe_name(name))
}

/// The directory of opened files in the runtime directory.
pub const OPENED: &str = "files";

/// Bytes of the age payload of a `size`-byte file.
pub fn payload_len(size: u64) -> u64 {
    let chunk = CHUNK_SIZE as u64;
    // The last chunk may be full; an empty file is one empty final chunk.
    let chunks = size.div_ceil(chunk).max(1);
    PAYLOAD_NONCE_LEN as u64 + size + chunks * (ENCRYPTED_CHUNK_SIZE - CHUNK_SIZE) as u64
}

/// The plaintext bytes that `blob_bytes` of a payload carry (for progress).
fn plain_progress(blob_bytes: u64, size: u64) -> u64 {
    let body = blob_bytes.saturating_sub(PAYLOAD_NONCE_LEN as u64);
    let tags =
        body.div_ceil(ENCRYPTED_CHUNK_SIZE as u64) * (ENCRYPTED_CHUNK_SIZE - CHUNK_SIZE) as u64;
    body.saturating_sub(tags).min(size)
}

/// A MIME type from the file name's extension (the receiver only displays it).
pub fn guess_mime(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "txt" | "md" | "log" => "text/plain",
        "html" | "htm" => "text/html",
        "csv" => "text/csv",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "mp3" => "audio/mpeg",
        "ogg" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        _ => "application/octet-stream",
    }
}

/// Whether a received file downloads on its own on `network` (the spec: Wi-Fi yes by
/// default, cellular or metered no). Ethernet counts as Wi-Fi; an unknown link counts
/// as Wi-Fi unless it says it is metered; no network means no download.
pub fn auto_download(settings: &crate::methods::Settings, network: &Network) -> bool {
    if network.metered == Some(true) {
        return false;
    }
    match network.kind {
        NetworkType::Wifi | NetworkType::Ethernet | NetworkType::Unknown => {
            settings.auto_download_wifi
        }
        NetworkType::Cellular => settings.auto_download_cellular,
        NetworkType::None => false,
    }
}

/// The daemon's runtime directory: the IPC socket's directory (0700, normally a tmpfs
/// under `$XDG_RUNTIME_DIR`); under socket activation `$XDG_RUNTIME_DIR/letstalk`, and
/// only without either, the data directory. Opened files (`files/`) and call media
/// sockets (`calls/`) live here, so plaintext never lands in the data directory unasked.
pub fn runtime_dir(daemon: &Daemon) -> PathBuf {
    if let crate::config::SocketSource::Path(p) = &daemon.config.socket
        && let Some(parent) = p.parent()
    {
        return parent.to_path_buf();
    }
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(run).join("letstalk");
    }
    daemon.config.data_dir.clone()
}

// ---------------------------------------------------------------------------------------
// Sending

/// What `files.send` needs to know about the encrypted copy it made.
#[derive(Debug)]
pub struct Encrypted {
    pub key: zeroize::Zeroizing<[u8; 16]>,
    pub sha256: String,
    pub size: u64,
    pub blob_size: u64,
}

/// Encrypts `source` into `dest` (via a temporary file, synced, then renamed), with a
/// fresh key, hashing the plaintext. Blocking: run it on the blocking pool.
pub fn encrypt_file(source: &Path, dest: &Path) -> Result<Encrypted, std::io::Error> {
    use std::io::{Read, Write};
    let mut key = zeroize::Zeroizing::new([0u8; 16]);
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, key.as_mut_slice());
    let (mut enc, nonce) =
        StreamEncryptor::new(&key, &mut rand_core::OsRng).map_err(std::io::Error::other)?;
    let tmp = dest.with_extension("age.tmp");
    let mut input = std::fs::File::open(source)?;
    let mut out = std::io::BufWriter::with_capacity(IO_CHUNK, std::fs::File::create(&tmp)?);
    out.write_all(&nonce)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut sealed = Vec::with_capacity(IO_CHUNK + 2 * ENCRYPTED_CHUNK_SIZE);
    let mut size = 0u64;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let data = buf.get(..n).unwrap_or_default();
        size += n as u64;
        if size > MAX_FILE {
            drop(out);
            let _ = std::fs::remove_file(&tmp);
            return Err(std::io::Error::new(std::io::ErrorKind::FileTooLarge, "over 2 GiB"));
        }
        hash.update(data);
        sealed.clear();
        enc.push(data, &mut sealed).map_err(std::io::Error::other)?;
        out.write_all(&sealed)?;
    }
    sealed.clear();
    enc.finish(&mut sealed).map_err(std::io::Error::other)?;
    out.write_all(&sealed)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let blob_size = file.metadata()?.len();
    std::fs::rename(&tmp, dest)?;
    Ok(Encrypted { key, sha256: hex::encode(hash.finalize()), size, blob_size })
}

/// A new outgoing file (inside the caller's transaction): the message, queued, and the
/// row that the upload works from.
#[allow(clippy::too_many_arguments, reason = "one row's columns")]
pub fn insert_outgoing(
    tx: &Connection,
    message_id: &str,
    me: &str,
    peer: &str,
    name: &str,
    source: &str,
    caption: Option<&str>,
    enc: &Encrypted,
    now: i64,
) -> Result<Option<Message>, StoreError> {
    let conversation = conversation_of_peer(peer);
    let new = NewMessage {
        message_id,
        conversation: &conversation,
        sender: me,
        direction: Direction::Out,
        kind: MessageKind::File,
        text: caption,
        reply_to: None,
        client_msg_id: None,
        created_at: now,
        received_at: None,
        state: MessageState::Queued,
        read: true,
    };
    messages::insert(tx, &new)?;
    let blob_id: [u8; 16] = rand::random();
    tx.prepare_cached(
        "INSERT INTO files (message_id, direction, peer, name, size, mime, sha256, file_key,
                            blob_id, blob_size, path, transfer, caption, created_at)
         VALUES (?1, 'out', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'uploading', ?11, ?12)",
    )?
    .execute(params![
        message_id,
        peer,
        name,
        enc.size as i64,
        guess_mime(name),
        enc.sha256,
        enc.key.as_slice(),
        blob_id.as_slice(),
        enc.blob_size as i64,
        source,
        caption,
        now
    ])?;
    messages::get(tx, message_id)
}

// ---------------------------------------------------------------------------------------
// Receiving

/// Applies a file or file-cancel content from `sender` in `conversation` (theirs, or a
/// group's), inside the receive transaction. `Ok(Err(why))`: dropped, nothing changed.
pub fn receive(
    tx: &Connection,
    sender: &str,
    conversation: &str,
    content: &Content,
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    let mut applied = Effects::default();
    match content {
        Content::File { id, at, name, size, mime, sha256, key, blob, blob_size, caption } => {
            // The id names this file's local copies: only a canonical UUID may.
            if LocalId::parse(id).is_none() {
                return Ok(Err("file message with an invalid id".into()));
            }
            let (Ok(key), Ok(blob)) = (hex::decode(&key.0), hex::decode(blob)) else {
                return Ok(Err("file message with a malformed key or blob id".into()));
            };
            let (Ok(key), Ok(blob)) = (<[u8; 16]>::try_from(key), <[u8; 16]>::try_from(blob))
            else {
                return Ok(Err("file message with a malformed key or blob id".into()));
            };
            let key = zeroize::Zeroizing::new(key);
            if *size > MAX_FILE
                || *blob_size != payload_len(*size)
                || sha256.len() != 64
                || !sha256.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Ok(Err("file message with impossible sizes or hash".into()));
            }
            let new = NewMessage {
                message_id: id,
                conversation,
                sender,
                direction: Direction::In,
                kind: MessageKind::File,
                text: caption.as_deref(),
                reply_to: None,
                client_msg_id: None,
                created_at: *at,
                received_at: Some(now),
                state: MessageState::Delivered,
                read: false,
            };
            if messages::insert(tx, &new)? {
                tx.prepare_cached(
                    "INSERT INTO files (message_id, direction, peer, name, size, mime, sha256,
                                        file_key, blob_id, blob_size, transfer, caption, created_at)
                     VALUES (?1, 'in', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'available', ?10, ?11)",
                )?
                .execute(params![
                    id,
                    sender,
                    safe_name(name),
                    *size as i64,
                    mime.chars().take(128).collect::<String>(),
                    sha256.to_ascii_lowercase(),
                    key.as_slice(),
                    blob.as_slice(),
                    *blob_size as i64,
                    caption,
                    now
                ])?;
                if let Some(message) = messages::get(tx, id)? {
                    applied.last_event = Some(crate::notify::received(tx, message, now)?);
                }
            }
            delivery::enqueue(
                tx,
                sender,
                None,
                &Content::Receipt {
                    state: crate::content::ReceiptKind::Delivered,
                    ids: vec![id.clone()],
                },
                now,
            )?;
            applied.queued = true;
        }
        Content::FileCancel { id } => {
            if LocalId::parse(id).is_none() {
                return Ok(Err("file cancel with an invalid id".into()));
            }
            if let Some(row) = get(tx, id)?
                && row.direction == Direction::In
                && row.peer == sender
                && !matches!(row.transfer, FileTransfer::Done | FileTransfer::Cancelled)
            {
                // The sender deleted the blob: nothing to release.
                tx.prepare_cached("UPDATE files SET release = 0 WHERE message_id = ?1")?
                    .execute(params![id])?;
                applied.last_event = Some(set_transfer(tx, &row, FileTransfer::Cancelled, now)?);
            }
        }
        _ => {}
    }
    Ok(Ok(applied))
}

// ---------------------------------------------------------------------------------------
// The worker and the transfers

/// Reads one answer frame from a blob stream.
async fn read_response(
    recv: &mut (impl tokio::io::AsyncRead + Unpin + ?Sized),
) -> Result<Response, TransferError> {
    let mut prefix = [0u8; LEN_PREFIX];
    recv.read_exact(&mut prefix).await.map_err(|_| TransferError::Unavailable)?;
    let len = letstalk_wire::frame_len(prefix, MAX_FRAME_LEN)
        .map_err(|e| TransferError::io("relay answer", e))?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|_| TransferError::Unavailable)?;
    Response::decode(&body).map_err(|e| TransferError::io("relay answer", e))
}

fn refused(kind: WireKind, message: String) -> TransferError {
    match kind {
        WireKind::NotFound => TransferError::Gone,
        WireKind::Blocked => TransferError::Blocked,
        WireKind::Internal | WireKind::UnknownDevice | WireKind::Unauthenticated => {
            TransferError::Unavailable
        }
        _ => TransferError::Io(format!("relay: {message}")),
    }
}

fn relay_err(e: RelayError) -> TransferError {
    match e {
        RelayError::Refused { kind, message, .. } => refused(kind, message),
        _ => TransferError::Unavailable,
    }
}

/// Writes a `file.progress` event (and the bytes reached) at most every
/// [`PROGRESS_EVERY`], and always for the last step.
struct Progress<'a> {
    daemon: &'a Arc<Daemon>,
    message_id: String,
    direction: TransferDirection,
    size: u64,
    last: Option<Instant>,
}

impl Progress<'_> {
    async fn report(&mut self, blob_bytes: u64, force: bool) {
        if !force && self.last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let body = EventBody::FileProgress {
            message_id: self.message_id.clone(),
            direction: self.direction,
            bytes: plain_progress(blob_bytes, self.size),
            total: self.size,
        };
        let id = self.message_id.clone();
        let seq = self
            .daemon
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                tx.prepare_cached("UPDATE files SET bytes = ?2 WHERE message_id = ?1")?
                    .execute(params![id, blob_bytes as i64])?;
                let seq = events::append(&tx, &body, now_ms())?;
                tx.commit()?;
                Ok(seq)
            })
            .await;
        if let Ok(seq) = seq {
            self.daemon.bus.published(seq);
        }
    }
}

/// Keeps transfers going until `cancel`: uploads waiting, downloads started (also
/// those interrupted by a crash), automatic downloads, and releases owed to the relay.
pub async fn run(daemon: Arc<Daemon>, relay: Arc<dyn RelayApi>, cancel: CancellationToken) {
    let dir = daemon.config.data_dir.join(ATTACHMENTS);
    if let Err(e) = create_private_dir(&dir) {
        tracing::warn!(error = %e, "attachments directory");
    }
    loop {
        // Looks again after RETRY_EVERY only while something is owed (a transfer that may
        // need restarting, a release the relay has not taken); otherwise it waits for a
        // wake (a file sent or received, a download asked for, the network changed), so
        // an idle daemon has no timer here.
        let owed = match daemon.user() {
            None => false,
            Some(_) => tick(&daemon, &relay).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "file transfers");
                true
            }),
        };
        let retry = async {
            if owed {
                tokio::time::sleep(RETRY_EVERY).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = daemon.transfers.wake.notified() => {}
            () = retry => {}
        }
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// One look at the transfers; `true` while something is owed that a later look may
/// finish (a transfer under way or to restart, a release not yet taken by the relay).
async fn tick(daemon: &Arc<Daemon>, relay: &Arc<dyn RelayApi>) -> Result<bool, StoreError> {
    let rows: Vec<FileRow> = daemon
        .store
        .call(|c| {
            let sql = format!(
                "SELECT {ROW} FROM files WHERE transfer IN ('uploading', 'available', 'downloading')
                 OR release = 1 OR transfer = 'cancelled'"
            );
            let rows =
                c.prepare_cached(&sql)?.query_map([], from_row)?.collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await?;
    let mut auto: Option<bool> = None;
    let mut owed = false;
    for row in rows {
        match row.transfer {
            FileTransfer::Uploading | FileTransfer::Downloading => {
                start(daemon, relay, &row);
                owed = true;
            }
            FileTransfer::Available => {
                let allowed = match auto {
                    Some(a) => a,
                    None => {
                        let settings =
                            daemon.store.call(|c| crate::methods::Settings::load(c)).await?;
                        let a = auto_download(&settings, &daemon.network());
                        auto = Some(a);
                        a
                    }
                };
                if allowed {
                    owed = true;
                    record_transfer(daemon, &row, FileTransfer::Downloading).await?;
                    start(
                        daemon,
                        relay,
                        &FileRow { transfer: FileTransfer::Downloading, ..row.clone() },
                    );
                }
            }
            FileTransfer::Cancelled => {
                // A cancel from the peer: stop a download in flight and drop what arrived.
                if daemon.transfers.is_active(&row.message_id) {
                    daemon.transfers.stop(&row.message_id).await;
                }
                if let Some(id) = row.local_id() {
                    remove_local(&daemon.config.data_dir, &id);
                }
            }
            _ => {}
        }
        if row.release {
            owed |= !release(daemon, relay, &row).await;
        }
    }
    Ok(owed)
}

/// Deletes the local ciphertext of a cancelled transfer (an outgoing one keeps nothing;
/// an incoming one keeps nothing either).
pub fn remove_local(data_dir: &Path, id: &LocalId) {
    for p in [partial_path(data_dir, id), encrypted_path(data_dir, id)] {
        match std::fs::remove_file(&p) {
            Ok(()) => tracing::debug!(path = %p.display(), "removed a cancelled transfer's bytes"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "removing a cancelled transfer's bytes"),
        }
    }
}

/// Tells the relay we are done with a blob (the owner: delete it); `false` when it is
/// postponed (the relay did not answer).
async fn release(daemon: &Arc<Daemon>, relay: &Arc<dyn RelayApi>, row: &FileRow) -> bool {
    let owner = match row.direction {
        Direction::In => row.peer.clone(),
        Direction::Out => daemon.user().unwrap_or_default(),
    };
    let req = Request::BlobRelease { owner, blob_id: row.blob_id };
    match crate::relay::expect_ok(relay.as_ref(), req).await {
        Ok(()) | Err(RelayError::Refused { kind: WireKind::NotFound, .. }) => {
            let id = row.message_id.clone();
            let _ = daemon
                .store
                .call(move |c| {
                    c.prepare_cached("UPDATE files SET release = 0 WHERE message_id = ?1")?
                        .execute(params![id])?;
                    Ok(())
                })
                .await;
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "blob release postponed");
            false
        }
    }
}

/// Starts the transfer of `row` unless one runs; returns its outcome watch.
fn start(
    daemon: &Arc<Daemon>,
    relay: &Arc<dyn RelayApi>,
    row: &FileRow,
) -> watch::Receiver<Option<Result<(), TransferError>>> {
    let mut active = daemon.transfers.lock();
    if let Some(a) = active.get(&row.message_id) {
        return a.outcome.clone();
    }
    let (tx, rx) = watch::channel(None);
    let cancel = daemon.transfers.root.child_token();
    active.insert(row.message_id.clone(), Active { cancel: cancel.clone(), outcome: rx.clone() });
    drop(active);
    let (d, r, row, mine) = (daemon.clone(), relay.clone(), row.clone(), rx.clone());
    tokio::spawn(async move {
        let work = async {
            match row.direction {
                Direction::Out => upload(&d, &r, &row).await,
                Direction::In => download(&d, &r, &row).await,
            }
        };
        let outcome = tokio::select! {
            () = cancel.cancelled() => Err(TransferError::Cancelled),
            o = work => o,
        };
        match &outcome {
            Ok(()) => {}
            Err(TransferError::Cancelled | TransferError::Unavailable) => {}
            Err(e) => {
                tracing::warn!(error = %e, "file transfer failed");
                if matches!(
                    e,
                    TransferError::Gone
                        | TransferError::Corrupt
                        | TransferError::Blocked
                        | TransferError::InvalidId
                ) {
                    fail(&d, &row, e).await;
                }
            }
        }
        {
            let mut active = d.transfers.lock();
            if active.get(&row.message_id).is_some_and(|a| a.outcome.same_channel(&mine)) {
                active.remove(&row.message_id);
            }
        }
        let _ = tx.send(Some(outcome));
        d.transfers.wake();
    });
    rx
}

/// The transfer failed for good; an upload's message fails with it (it never left).
async fn fail(daemon: &Arc<Daemon>, row: &FileRow, why: &TransferError) {
    let r = row.clone();
    let kind = match why {
        TransferError::Blocked => Some(letstalk_ipc::ErrorKind::Blocked),
        _ => None,
    };
    let error = messages::error_text(kind, &why.to_string());
    let seq = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            if r.direction == Direction::Out {
                tx.prepare_cached(
                    "UPDATE messages SET state = 'failed', error = ?2
                     WHERE message_id = ?1 AND state = 'queued'",
                )?
                .execute(params![r.message_id, error])?;
                let body = EventBody::MessageState {
                    message_id: r.message_id.clone(),
                    conversation: messages_conversation(&tx, &r.message_id)?,
                    state: MessageState::Failed,
                };
                events::append(&tx, &body, now)?;
            }
            let seq = set_transfer(&tx, &r, FileTransfer::Failed, now)?;
            tx.commit()?;
            Ok(seq)
        })
        .await;
    if let Ok(seq) = seq {
        daemon.bus.published(seq);
    }
}

async fn upload(
    daemon: &Arc<Daemon>,
    relay: &Arc<dyn RelayApi>,
    row: &FileRow,
) -> Result<(), TransferError> {
    let me = daemon.user().ok_or(TransferError::Unavailable)?;
    let id = row.local_id().ok_or(TransferError::InvalidId)?;
    let path = encrypted_path(&daemon.config.data_dir, &id);
    let stat = relay.request(Request::BlobStat { owner: me.clone(), blob_id: row.blob_id }).await;
    let offset = match stat.map_err(relay_err)? {
        Response::Blob { size, stored } if size == row.blob_size => stored,
        Response::Blob { .. } => return Err(TransferError::Io("blob size mismatch".into())),
        Response::Error { kind: WireKind::NotFound, .. } => 0,
        Response::Error { kind, message, .. } => return Err(refused(kind, message)),
        _ => return Err(TransferError::Io("unexpected relay answer".into())),
    };
    let mut progress = Progress {
        daemon,
        message_id: row.message_id.clone(),
        direction: TransferDirection::Up,
        size: row.size,
        last: None,
    };
    if offset < row.blob_size {
        let (m, p) = (me.clone(), row.peer.clone());
        let recipients = daemon.store.call(move |c| blob_recipients(c, &m, &p)).await?;
        if recipients.is_empty() {
            // Alone in the group: nobody to fetch it.
            return Err(TransferError::Gone);
        }
        let header =
            Request::BlobPut { blob_id: row.blob_id, size: row.blob_size, offset, recipients };
        let mut stream = relay.open_stream(header).await.map_err(relay_err)?;
        let mut file =
            tokio::fs::File::open(&path).await.map_err(|e| TransferError::io("attachment", e))?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| TransferError::io("attachment", e))?;
        let mut buf = vec![0u8; IO_CHUNK];
        let mut at = offset;
        progress.report(at, true).await;
        while at < row.blob_size {
            let n = file.read(&mut buf).await.map_err(|e| TransferError::io("attachment", e))?;
            if n == 0 {
                return Err(TransferError::Io("attachment shorter than its size".into()));
            }
            let data = buf.get(..n).unwrap_or_default();
            stream.send.write_all(data).await.map_err(|_| TransferError::Unavailable)?;
            at += n as u64;
            progress.report(at, false).await;
        }
        stream.send.shutdown().await.map_err(|_| TransferError::Unavailable)?;
        match read_response(&mut stream.recv).await? {
            Response::Blob { size, stored } if size == stored => {}
            Response::Error { kind, message, .. } => return Err(refused(kind, message)),
            _ => return Err(TransferError::Io("unexpected relay answer".into())),
        }
    }
    progress.report(row.blob_size, true).await;
    // The relay holds it all: the message with the key goes out, like any message.
    let r = row.clone();
    let seq = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let Some(current) = get(&tx, &r.message_id)? else { return Ok(None) };
            if current.transfer != FileTransfer::Uploading {
                return Ok(None);
            }
            let message = messages::get(&tx, &r.message_id)?;
            let (at, caption) = message.map(|m| (m.created_at, m.text)).unwrap_or((now_ms(), None));
            let content = Content::File {
                id: r.message_id.clone(),
                at,
                name: r.name.clone(),
                size: r.size,
                mime: r.mime.clone(),
                sha256: r.sha256.clone(),
                key: Secret(hex::encode(r.file_key.as_slice())),
                blob: hex::encode(r.blob_id),
                blob_size: r.blob_size,
                caption,
            };
            match r.peer.strip_prefix("group:") {
                Some(gid) => {
                    let Some((g, true)) = crate::groups::load(&tx, gid)? else { return Ok(None) };
                    let mut rng = rand_core::OsRng;
                    crate::groups::enqueue_text(
                        &tx,
                        &me,
                        &g,
                        &r.message_id,
                        &content,
                        &mut rng,
                        now_ms(),
                    )?;
                }
                None => delivery::enqueue(&tx, &r.peer, Some(&r.message_id), &content, now_ms())?,
            }
            let seq = set_transfer(&tx, &r, FileTransfer::Uploaded, now_ms())?;
            tx.commit()?;
            Ok(Some(seq))
        })
        .await?;
    if let Some(seq) = seq {
        daemon.bus.published(seq);
        daemon.wake_sender();
    }
    tracing::info!(size = row.size, resumed_at = offset, "file uploaded");
    Ok(())
}

async fn download(
    daemon: &Arc<Daemon>,
    relay: &Arc<dyn RelayApi>,
    row: &FileRow,
) -> Result<(), TransferError> {
    let data_dir = &daemon.config.data_dir;
    let id = row.local_id().ok_or(TransferError::InvalidId)?;
    let part = partial_path(data_dir, &id);
    let done = encrypted_path(data_dir, &id);
    create_private_dir(&data_dir.join(ATTACHMENTS))
        .map_err(|e| TransferError::io("attachments", e))?;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .await
        .map_err(|e| TransferError::io("attachment", e))?;
    let mut offset = file.metadata().await.map_err(|e| TransferError::io("attachment", e))?.len();
    if offset > row.blob_size {
        file.set_len(0).await.map_err(|e| TransferError::io("attachment", e))?;
        offset = 0;
    }
    let mut progress = Progress {
        daemon,
        message_id: row.message_id.clone(),
        direction: TransferDirection::Down,
        size: row.size,
        last: None,
    };
    // The check (decrypt and hash) runs beside the transfer on a blocking thread: it
    // reads what an earlier attempt kept, then every chunk as it arrives.
    let (check_tx, check_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let (p, key) = (part.clone(), row.file_key.clone());
    let checker = tokio::task::spawn_blocking(move || check_stream(&p, offset, &key, check_rx));
    if offset < row.blob_size {
        let header = Request::BlobGet { owner: row.peer.clone(), blob_id: row.blob_id, offset };
        let mut stream = relay.open_stream(header).await.map_err(relay_err)?;
        let _ = stream.send.shutdown().await;
        match read_response(&mut stream.recv).await? {
            Response::Blob { size, .. } if size == row.blob_size => {}
            Response::Blob { .. } => return Err(TransferError::Corrupt),
            Response::Error { kind, message, .. } => return Err(refused(kind, message)),
            _ => return Err(TransferError::Io("unexpected relay answer".into())),
        }
        tracing::info!(resume_at = offset, size = row.blob_size, "file download started");
        let mut buf = vec![0u8; IO_CHUNK];
        let mut at = offset;
        progress.report(at, true).await;
        while at < row.blob_size {
            // Gather a large buffer per file write (QUIC hands over about a packet at
            // a time); on an error, what was written is kept and the next attempt
            // resumes after it.
            let mut n = 0;
            let mut ended = false;
            while n < buf.len() && !ended {
                let Some(slice) = buf.get_mut(n..) else { break };
                match stream.recv.read(slice).await {
                    Ok(0) => ended = true,
                    Ok(k) => n += k,
                    Err(_) if n > 0 => ended = true,
                    Err(_) => {
                        let _ = file.flush().await;
                        return Err(TransferError::Unavailable);
                    }
                }
            }
            if n == 0 {
                let _ = file.flush().await;
                return Err(TransferError::Unavailable);
            }
            let data = buf.get(..n).unwrap_or_default();
            if at + n as u64 > row.blob_size {
                return Err(TransferError::Corrupt);
            }
            file.write_all(data).await.map_err(|e| TransferError::io("attachment", e))?;
            // A checker that stopped has found the bytes bad: its answer says so below.
            let _ = check_tx.send(data.to_vec()).await;
            at += n as u64;
            progress.report(at, false).await;
        }
    }
    drop(check_tx);
    file.flush().await.map_err(|e| TransferError::io("attachment", e))?;
    file.sync_all().await.map_err(|e| TransferError::io("attachment", e))?;
    drop(file);
    // Kept only if it decrypts and matches the SHA-256 from the end-to-end message.
    let hash = checker.await.map_err(|e| TransferError::io("checking", e))?;
    if !matches!(hash, Ok(h) if h == row.sha256) {
        let _ = std::fs::remove_file(&part);
        return Err(TransferError::Corrupt);
    }
    std::fs::rename(&part, &done).map_err(|e| TransferError::io("attachment", e))?;
    progress.report(row.blob_size, true).await;
    let r = row.clone();
    let seq = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            tx.prepare_cached("UPDATE files SET release = 1 WHERE message_id = ?1")?
                .execute(params![r.message_id])?;
            let seq = set_transfer(&tx, &r, FileTransfer::Done, now_ms())?;
            tx.commit()?;
            Ok(seq)
        })
        .await?;
    daemon.bus.published(seq);
    release(daemon, relay, &FileRow { release: true, ..row.clone() }).await;
    tracing::info!(size = row.size, "file downloaded and checked");
    Ok(())
}

/// Decrypts the payload at `src`, writing the plaintext to `dest` if given, and returns
/// the plaintext's SHA-256 (hex). Blocking.
pub fn decrypt_to(
    src: &Path,
    key: &[u8; 16],
    dest: Option<&mut dyn std::io::Write>,
) -> Result<String, std::io::Error> {
    use std::io::Read;
    let mut input = std::fs::File::open(src)?;
    let mut dec = StreamDecryptor::new(key);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(IO_CHUNK + CHUNK_SIZE));
    let mut dest = dest;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        plain.clear();
        dec.push(buf.get(..n).unwrap_or_default(), &mut plain).map_err(std::io::Error::other)?;
        hash.update(plain.as_slice());
        if let Some(d) = dest.as_mut() {
            d.write_all(&plain)?;
        }
    }
    plain.clear();
    dec.finish(&mut plain).map_err(std::io::Error::other)?;
    hash.update(plain.as_slice());
    if let Some(d) = dest.as_mut() {
        d.write_all(&plain)?;
    }
    Ok(hex::encode(hash.finalize()))
}

/// Decrypts and hashes a download as it arrives: the first `held` bytes from `part` (an
/// earlier attempt's), then the chunks from `chunks` until it closes. Returns the
/// plaintext's SHA-256 (hex); an error when the bytes do not decrypt.
fn check_stream(
    part: &Path,
    held: u64,
    key: &[u8; 16],
    mut chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<String, std::io::Error> {
    use std::io::Read;
    let mut dec = StreamDecryptor::new(key);
    let mut hash = Sha256::new();
    let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(IO_CHUNK + CHUNK_SIZE));
    let mut push = |data: &[u8], dec: &mut StreamDecryptor| -> Result<(), std::io::Error> {
        plain.clear();
        dec.push(data, &mut plain).map_err(std::io::Error::other)?;
        hash.update(plain.as_slice());
        Ok(())
    };
    let mut kept = std::fs::File::open(part)?.take(held);
    let mut buf = vec![0u8; IO_CHUNK];
    loop {
        let n = kept.read(&mut buf)?;
        if n == 0 {
            break;
        }
        push(buf.get(..n).unwrap_or_default(), &mut dec)?;
    }
    while let Some(chunk) = chunks.blocking_recv() {
        push(&chunk, &mut dec)?;
    }
    let mut last = zeroize::Zeroizing::new(Vec::new());
    dec.finish(&mut last).map_err(std::io::Error::other)?;
    hash.update(last.as_slice());
    Ok(hex::encode(hash.finalize()))
}

// ---------------------------------------------------------------------------------------
// What the methods call

/// The outcome of [`download_now`].
pub type Outcome = Result<(), TransferError>;

/// Makes sure `row` downloads (starting it, or joining the running one), and waits for
/// the attempt to end.
pub async fn download_now(
    daemon: &Arc<Daemon>,
    relay: &Arc<dyn RelayApi>,
    row: &FileRow,
) -> Outcome {
    if row.transfer != FileTransfer::Downloading {
        record_transfer(daemon, row, FileTransfer::Downloading).await?;
    }
    let mut rx =
        start(daemon, relay, &FileRow { transfer: FileTransfer::Downloading, ..row.clone() });
    let outcome = rx.wait_for(Option::is_some).await.map_err(|_| TransferError::Cancelled)?;
    outcome.clone().unwrap_or(Err(TransferError::Cancelled))
}

/// Cancels a transfer on this side and tells the other (see the module doc).
pub async fn cancel(daemon: &Arc<Daemon>, row: &FileRow) -> Result<(), StoreError> {
    daemon.transfers.stop(&row.message_id).await;
    let r = row.clone();
    let seq = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            if r.direction == Direction::Out {
                if r.transfer == FileTransfer::Uploading {
                    // The message never left: it fails.
                    tx.prepare_cached(
                        "UPDATE messages SET state = 'failed', error = 'cancelled' WHERE message_id = ?1",
                    )?
                    .execute(params![r.message_id])?;
                } else if !r.peer.starts_with("group:") {
                    // The peer may have it or be fetching it: tell it. (Group members
                    // find the blob gone: their download fails.)
                    delivery::enqueue(
                        &tx,
                        &r.peer,
                        None,
                        &Content::FileCancel { id: r.message_id.clone() },
                        now,
                    )?;
                }
            }
            tx.prepare_cached("UPDATE files SET release = 1 WHERE message_id = ?1")?
                .execute(params![r.message_id])?;
            let seq = set_transfer(&tx, &r, FileTransfer::Cancelled, now)?;
            tx.commit()?;
            Ok(seq)
        })
        .await?;
    daemon.bus.published(seq);
    if let Some(id) = row.local_id() {
        remove_local(&daemon.config.data_dir, &id);
    }
    daemon.wake_sender();
    daemon.transfers.wake();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_sizes_match_the_stream_format() {
        let mut rng = rand_core::OsRng;
        for size in [0usize, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE] {
            let data = vec![7u8; size];
            let payload =
                letstalk_crypto::stream::encrypt_payload(&[1; 16], &data, &mut rng).unwrap();
            assert_eq!(payload.len() as u64, payload_len(size as u64), "size {size}");
            assert_eq!(plain_progress(payload.len() as u64, size as u64), size as u64);
        }
        assert!(payload_len(MAX_FILE) <= letstalk_wire::MAX_BLOB_LEN);
    }

    #[test]
    fn auto_download_follows_settings_and_network() {
        let s = crate::methods::Settings::default();
        let net = |kind, metered| Network { kind, interface: None, cellular: None, metered };
        assert!(auto_download(&s, &net(NetworkType::Wifi, None)));
        assert!(auto_download(&s, &net(NetworkType::Ethernet, None)));
        assert!(!auto_download(&s, &net(NetworkType::Cellular, Some(true))));
        assert!(!auto_download(&s, &net(NetworkType::Wifi, Some(true))));
        assert!(!auto_download(&s, &net(NetworkType::None, None)));
        let off = crate::methods::Settings { auto_download_wifi: false, ..s };
        assert!(!auto_download(&off, &net(NetworkType::Wifi, None)));
        let cell = crate::methods::Settings { auto_download_cellular: true, ..s };
        assert!(auto_download(&cell, &net(NetworkType::Cellular, None)));
    }

    #[test]
    fn encrypt_then_decrypt_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("in.bin");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let dest = dir.path().join("x.age");
        let enc = encrypt_file(&src, &dest).unwrap();
        assert_eq!(enc.size, data.len() as u64);
        assert_eq!(enc.blob_size, payload_len(enc.size));
        assert_eq!(enc.sha256, hex::encode(Sha256::digest(&data)));
        let bytes = std::fs::read(&dest).unwrap();
        assert!(!bytes.windows(64).any(|w| data.windows(64).next() == Some(w)));
        let mut out = Vec::new();
        let sha = decrypt_to(&dest, &enc.key, Some(&mut out)).unwrap();
        assert_eq!((sha, out), (enc.sha256.clone(), data));
        // A flipped byte is caught.
        let mut bad = bytes;
        bad[100] ^= 1;
        std::fs::write(&dest, &bad).unwrap();
        assert!(decrypt_to(&dest, &enc.key, None).is_err());
    }
}
