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
                   blob_size, path, transfer, release";

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
            crate::outbox::enqueue(
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

/// What `files.send` needs to know about the encrypted copy it made.
#[derive(Debug)]
pub struct Encrypted {
    pub key: zeroize::Zeroizing<[u8; 16]>,
    pub sha256: String,
    pub size: u64,
    pub blob_size: u64,
}
