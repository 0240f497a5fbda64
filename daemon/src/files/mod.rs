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
//! A download that `files.download` starts writes the plaintext where it was asked to in
//! the same pass: the checker writes each decrypted chunk to a private temporary file
//! beside that path ([`PlainFile`]), which is renamed onto it once the hash matched and
//! removed on any failure. A file already here (or a download already under way) is
//! decrypted from its stored copy instead.
//!
//! **Invariant:** plaintext is written only to the sender's own file and to the paths a
//! client names (or the directory of opened files beside the socket); what the daemon
//! keeps in its data directory is ciphertext.
//!
//! **Invariant:** every local path of a transfer is made from a [`LocalId`] (the path
//! helpers take nothing else) and a [`safe_name`]: a file message or cancel whose id is
//! not a canonical UUID is dropped on arrival, so no peer-chosen string names a file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use letstalk_crypto::stream::{CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE};
use letstalk_crypto::{StreamDecryptor, StreamEncryptor};
use letstalk_ipc::types::{
    EventBody, FileTransfer, MessageState, Network, NetworkType, TransferDirection,
};
use letstalk_wire::{ErrorKind as WireKind, LEN_PREFIX, MAX_FRAME_LEN, Request, Response};
use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::content::{Content, Secret};
pub use crate::localid::{LocalId, safe_name};
use crate::messages;
use crate::relay::{RelayApi, RelayError};
use crate::store::StoreError;
use crate::{Daemon, events, now_ms};
/// Bytes read or written per step.
const IO_CHUNK: usize = 1024 * 1024;
/// `file.progress` events are written at most this often (they are rows in the log).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// The worker looks again this often (retries after the relay was away).
const RETRY_EVERY: Duration = Duration::from_secs(3);

mod crypt;
pub mod rows;
mod transfer;
pub mod transfers;

pub use crypt::*;
pub use rows::*;
use transfer::*;
pub use transfers::*;

/// Who may fetch an outgoing file's blob: the peer, or every other member of the group;
/// and our own account while it may have other devices (they show what we sent, from a
/// [`Content::SentFile`]). Empty when nobody else is in the group.
fn blob_recipients(conn: &Connection, me: &str, peer: &str) -> Result<Vec<String>, StoreError> {
    let mut to = match peer.strip_prefix("group:") {
        Some(gid) => crate::groups::load(conn, gid)?
            .map(|(g, _)| g.members.into_iter().filter(|m| m != me).collect())
            .unwrap_or_default(),
        None => vec![peer.to_owned()],
    };
    if !to.is_empty() && peer != me && crate::outbox::own_devices_may_exist(conn, me)? {
        to.push(me.to_owned());
    }
    Ok(to)
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

/// Whether a received file downloads on its own on `network` (the spec: Wi-Fi yes by
/// default, cellular or metered no). Ethernet counts as Wi-Fi; an unknown link counts
/// as Wi-Fi unless it says it is metered; no network means no download.
pub fn auto_download(settings: &crate::settings::Settings, network: &Network) -> bool {
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
                start(daemon, relay, &row, None);
                owed = true;
            }
            FileTransfer::Available => {
                let allowed = match auto {
                    Some(a) => a,
                    None => {
                        let settings =
                            daemon.store.call(|c| crate::settings::Settings::load(c)).await?;
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
                        None,
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

/// Tells the relay we are done with a blob: for a file this device uploaded, a cancel
/// (the owner deletes it); for any other, this device no longer needs it. `false` when
/// it is postponed (the relay did not answer).
async fn release(daemon: &Arc<Daemon>, relay: &Arc<dyn RelayApi>, row: &FileRow) -> bool {
    let me = daemon.user().unwrap_or_default();
    let req = if row.uploads_here() {
        Request::BlobCancel { blob_id: row.blob_id }
    } else {
        Request::BlobRelease { owner: row.owner(&me).to_owned(), blob_id: row.blob_id }
    };
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

/// Where a download writes the plaintext while it checks the file (see [`download_now`]),
/// and how it tells that it did: `written` gets `()` once the plaintext is at `path`,
/// and is dropped unsent otherwise.
pub(super) struct WriteTo {
    pub path: PathBuf,
    pub written: tokio::sync::oneshot::Sender<()>,
}

/// Starts the transfer of `row` unless one runs (then `plain` is dropped); returns its
/// outcome watch.
fn start(
    daemon: &Arc<Daemon>,
    relay: &Arc<dyn RelayApi>,
    row: &FileRow,
    plain: Option<WriteTo>,
) -> watch::Receiver<Option<Outcome>> {
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
            if row.uploads_here() {
                upload(&d, &r, &row).await
            } else {
                download(&d, &r, &row, plain).await
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
            if r.uploads_here() {
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

/// Makes sure `row` downloads (starting it, or joining the running one), and waits for
/// the attempt to end. With `dest`, a download started here writes the plaintext there
/// as it decrypts the blob to check it (through a temporary file beside it, renamed once
/// the file is checked; removed on any failure): `Ok(true)` when it did. `Ok(false)`
/// when the plaintext is still to be written from the stored copy (a download already
/// running, or `dest` could not be written on the way).
pub async fn download_now(
    daemon: &Arc<Daemon>,
    relay: &Arc<dyn RelayApi>,
    row: &FileRow,
    dest: Option<&Path>,
) -> Result<bool, TransferError> {
    if row.transfer != FileTransfer::Downloading {
        record_transfer(daemon, row, FileTransfer::Downloading).await?;
    }
    let (written, mut was_written) = tokio::sync::oneshot::channel();
    let plain = dest.map(|d| WriteTo { path: d.to_owned(), written });
    let mut rx = start(
        daemon,
        relay,
        &FileRow { transfer: FileTransfer::Downloading, ..row.clone() },
        plain,
    );
    let outcome = rx.wait_for(Option::is_some).await.map_err(|_| TransferError::Cancelled)?;
    outcome.clone().unwrap_or(Err(TransferError::Cancelled))?;
    Ok(was_written.try_recv().is_ok())
}

/// Cancels a transfer on this side and tells the other (see the module doc). A file
/// this device sent is cancelled for everyone (its blob deleted); any other only here.
pub async fn cancel(daemon: &Arc<Daemon>, row: &FileRow) -> Result<(), StoreError> {
    daemon.transfers.stop(&row.message_id).await;
    let r = row.clone();
    let me = daemon.user().unwrap_or_default();
    let seq = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            if r.uploads_here() {
                if r.transfer == FileTransfer::Uploading {
                    // The message never left: it fails.
                    tx.prepare_cached(
                        "UPDATE messages SET state = 'failed', error = 'cancelled' WHERE message_id = ?1",
                    )?
                    .execute(params![r.message_id])?;
                } else {
                    // The peer may have it or be fetching it: tell it. (Group members
                    // find the blob gone: their download fails.) Our other devices show
                    // it as sent: they stop fetching it too.
                    let cancel = Content::FileCancel { id: r.message_id.clone() };
                    if !r.peer.starts_with("group:") {
                        crate::outbox::enqueue(&tx, &r.peer, None, &cancel, now)?;
                    }
                    if r.peer != me && crate::outbox::own_devices_may_exist(&tx, &me)? {
                        crate::outbox::enqueue(&tx, &me, None, &cancel, now)?;
                    }
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
        let s = crate::settings::Settings::default();
        let net = |kind, metered| Network { kind, interface: None, cellular: None, metered };
        assert!(auto_download(&s, &net(NetworkType::Wifi, None)));
        assert!(auto_download(&s, &net(NetworkType::Ethernet, None)));
        assert!(!auto_download(&s, &net(NetworkType::Cellular, Some(true))));
        assert!(!auto_download(&s, &net(NetworkType::Wifi, Some(true))));
        assert!(!auto_download(&s, &net(NetworkType::None, None)));
        let off = crate::settings::Settings { auto_download_wifi: false, ..s };
        assert!(!auto_download(&off, &net(NetworkType::Wifi, None)));
        let cell = crate::settings::Settings { auto_download_cellular: true, ..s };
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
