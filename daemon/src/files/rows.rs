//! The `files` table (where each transfer stands), the local paths made from it, and
//! file messages applied as they arrive (pairwise or in a group): below `groups`, which
//! shows group files through it.

use std::path::{Path, PathBuf};

use letstalk_crypto::stream::{CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE, PAYLOAD_NONCE_LEN};
use letstalk_ipc::types::{Direction, EventBody, FileTransfer, Message, MessageKind, MessageState};
use rusqlite::{Connection, OptionalExtension, params};

use crate::content::Content;
use crate::events::{self, Effects};
pub use crate::localid::{LocalId, safe_name};
use crate::messages::{self, NewMessage};
use crate::store::StoreError;

/// The largest file: 2 GiB.
pub const MAX_FILE: u64 = 2 * 1024 * 1024 * 1024;
/// The directory of encrypted attachments inside the data directory.
pub const ATTACHMENTS: &str = crate::store::ATTACHMENTS_DIR;

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
    /// A file another device of our account sent (`direction` out): shown here as ours
    /// and fetched like an incoming file, never uploaded, cancelled or deleted from here.
    pub remote: bool,
}

impl FileRow {
    /// Whether this device uploads the file: it sent it itself. Such a row's blob is
    /// the one it may cancel; every other row's blob it fetches.
    pub fn uploads_here(&self) -> bool {
        self.direction == Direction::Out && !self.remote
    }

    /// The account whose blob this is: ours for an outgoing file (sent here or on
    /// another device of ours), the sender's otherwise.
    pub fn owner<'a>(&'a self, me: &'a str) -> &'a str {
        match self.direction {
            Direction::In => &self.peer,
            Direction::Out => me,
        }
    }

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

pub(super) fn parse_transfer(s: &str) -> FileTransfer {
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

pub(super) const ROW: &str = "message_id, direction, peer, name, size, mime, sha256, file_key, blob_id, \
                   blob_size, path, transfer, release, remote";

pub(super) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRow> {
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
        remote: r.get(13)?,
    })
}

/// One file row.
pub fn get(conn: &Connection, message_id: &str) -> Result<Option<FileRow>, StoreError> {
    let sql = format!("SELECT {ROW} FROM files WHERE message_id = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row(params![message_id], from_row).optional()?)
}

pub(super) fn set_transfer(
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
pub(super) fn conversation_of_peer(peer: &str) -> String {
    if peer.starts_with("group:") { peer.to_owned() } else { format!("user:{peer}") }
}

/// The conversation a message belongs to (empty if it is gone).
pub(super) fn messages_conversation(
    conn: &Connection,
    message_id: &str,
) -> Result<String, StoreError> {
    Ok(conn
        .prepare_cached("SELECT conversation FROM messages WHERE message_id = ?1")?
        .query_row(params![message_id], |r| r.get(0))
        .optional()?
        .unwrap_or_default())
}

/// The encrypted copy of a file. Paths are made only from a [`LocalId`] (see
/// `localid.rs`): a message id from a peer is checked before it can name a file.
pub fn encrypted_path(data_dir: &Path, id: &LocalId) -> PathBuf {
    id.child(&data_dir.join(ATTACHMENTS), ".age")
}

pub(super) fn partial_path(data_dir: &Path, id: &LocalId) -> PathBuf {
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
pub(super) fn plain_progress(blob_bytes: u64, size: u64) -> u64 {
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

/// A file message's fields, checked: what a peer (or our own other device) claims is
/// only stored once it names a file we can fetch, check and name safely.
struct Offered<'a> {
    id: &'a str,
    at: i64,
    name: String,
    size: u64,
    mime: String,
    sha256: String,
    key: zeroize::Zeroizing<[u8; 16]>,
    blob: [u8; 16],
    blob_size: u64,
    caption: Option<&'a str>,
}

/// Checks a `file` content; `Err(why)` for anything else or anything impossible.
fn offered(content: &Content) -> Result<Offered<'_>, String> {
    let Content::File { id, at, name, size, mime, sha256, key, blob, blob_size, caption } = content
    else {
        return Err("not a file message".into());
    };
    // The id names this file's local copies: only a canonical UUID may.
    if LocalId::parse(id).is_none() {
        return Err("file message with an invalid id".into());
    }
    let malformed = || "file message with a malformed key or blob id".to_owned();
    let key = hex::decode(&key.0).ok().and_then(|k| <[u8; 16]>::try_from(k).ok());
    let blob = hex::decode(blob).ok().and_then(|b| <[u8; 16]>::try_from(b).ok());
    let (Some(key), Some(blob)) = (key.map(zeroize::Zeroizing::new), blob) else {
        return Err(malformed());
    };
    if *size > MAX_FILE
        || *blob_size != payload_len(*size)
        || sha256.len() != 64
        || !sha256.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err("file message with impossible sizes or hash".into());
    }
    Ok(Offered {
        id,
        at: *at,
        name: safe_name(name),
        size: *size,
        mime: mime.chars().take(128).collect(),
        sha256: sha256.to_ascii_lowercase(),
        key,
        blob,
        blob_size: *blob_size,
        caption: caption.as_deref(),
    })
}

/// Stores a checked file message as `message` describes it, with its row (`peer` the
/// sender, or for a sent copy the conversation's user or `group:<gid>`); `false` when
/// the message id was already taken.
fn store_offered(
    tx: &Connection,
    f: &Offered<'_>,
    message: &NewMessage<'_>,
    peer: &str,
    now: i64,
) -> Result<bool, StoreError> {
    if !messages::insert(tx, message)? {
        return Ok(false);
    }
    let (direction, remote) = match message.direction {
        Direction::In => ("in", false),
        Direction::Out => ("out", true),
    };
    tx.prepare_cached(
        "INSERT INTO files (message_id, direction, peer, name, size, mime, sha256, file_key,
                            blob_id, blob_size, transfer, caption, created_at, remote)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'available', ?11, ?12, ?13)",
    )?
    .execute(params![
        f.id,
        direction,
        peer,
        f.name,
        f.size as i64,
        f.mime,
        f.sha256,
        f.key.as_slice(),
        f.blob.as_slice(),
        f.blob_size as i64,
        f.caption,
        now,
        remote
    ])?;
    Ok(true)
}

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
        Content::File { .. } => {
            let f = match offered(content) {
                Ok(f) => f,
                Err(why) => return Ok(Err(why)),
            };
            let new = NewMessage {
                message_id: f.id,
                conversation,
                sender,
                direction: Direction::In,
                kind: MessageKind::File,
                text: f.caption,
                reply_to: None,
                client_msg_id: None,
                created_at: f.at,
                received_at: Some(now),
                state: MessageState::Delivered,
                read: false,
            };
            if store_offered(tx, &f, &new, sender, now)?
                && let Some(message) = messages::get(tx, f.id)?
            {
                applied.last_event = Some(crate::notify::received(tx, message, now)?);
            }
            crate::outbox::enqueue(
                tx,
                sender,
                None,
                &Content::Receipt {
                    state: crate::content::ReceiptKind::Delivered,
                    ids: vec![f.id.to_owned()],
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
            {
                applied.last_event = cancelled_by_sender(tx, &row, now)?;
            }
        }
        _ => {}
    }
    Ok(Ok(applied))
}

/// The sender deleted the blob of a file still to fetch here: nothing to release, the
/// transfer is cancelled (the worker stops a download in flight and drops its bytes).
fn cancelled_by_sender(
    tx: &Connection,
    row: &FileRow,
    now: i64,
) -> Result<Option<u64>, StoreError> {
    if matches!(row.transfer, FileTransfer::Done | FileTransfer::Cancelled) {
        return Ok(None);
    }
    tx.prepare_cached("UPDATE files SET release = 0 WHERE message_id = ?1")?
        .execute(params![row.message_id])?;
    set_transfer(tx, row, FileTransfer::Cancelled, now).map(Some)
}

/// A file another device of our account (`me`) sent to a user (a
/// [`Content::SentFile`] to `user:<id>`): shown here as ours. A copy for anything but a
/// one-to-one conversation is refused (a group's goes through `groups::apply_sent`,
/// which checks that we are in the group).
pub fn apply_sent(
    tx: &Connection,
    me: &str,
    to: &str,
    file: &Content,
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    match crate::validate::conversation_user(to) {
        Some(_) => show_sent(tx, me, to, file, now),
        None => Ok(Err("a sent copy for no conversation with a user".into())),
    }
}

/// Shows a file another device of ours sent to conversation `to`, which the caller has
/// checked (see [`apply_sent`]): an outgoing message, already `sent`, announced with
/// `message.received`, and a row that fetches the blob like an incoming file (automatic
/// downloads apply) but never uploads, cancels or deletes it.
pub fn show_sent(
    tx: &Connection,
    me: &str,
    to: &str,
    file: &Content,
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    let f = match offered(file) {
        Ok(f) => f,
        Err(why) => return Ok(Err(why)),
    };
    let new = NewMessage {
        message_id: f.id,
        conversation: to,
        sender: me,
        direction: Direction::Out,
        kind: MessageKind::File,
        text: f.caption,
        reply_to: None,
        client_msg_id: None,
        created_at: f.at,
        received_at: Some(now),
        state: MessageState::Sent,
        read: true,
    };
    let peer = to.strip_prefix("user:").unwrap_or(to);
    let mut effects = Effects::default();
    if store_offered(tx, &f, &new, peer, now)?
        && let Some(message) = messages::get(tx, f.id)?
    {
        effects.last_event = Some(crate::notify::received(tx, message, now)?);
    }
    Ok(Ok(effects))
}

/// Another device of ours cancelled a file it sent: its copy here stops too.
pub fn cancel_sent(tx: &Connection, id: &str, now: i64) -> Result<Effects, StoreError> {
    let mut effects = Effects::default();
    if let Some(row) = get(tx, id)?
        && row.remote
    {
        effects.last_event = cancelled_by_sender(tx, &row, now)?;
    }
    Ok(effects)
}

/// What `files.send` needs to know about the encrypted copy it made.
#[derive(Debug)]
pub struct Encrypted {
    pub key: zeroize::Zeroizing<[u8; 16]>,
    pub sha256: String,
    pub size: u64,
    pub blob_size: u64,
}
