//! `files.*`: send (encrypt on the device, then stream to the relay in the background),
//! download (resuming, checked against the SHA-256, written where asked) and cancel.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use letstalk_ipc::types::{
    Empty, FileTransfer, FilesDownloadParams, FilesDownloadResult, FilesSendParams,
    MessageIdParams, MessageResult,
};
use letstalk_ipc::{ErrorKind, RpcError};

use super::{internal, logged_in};
use crate::files::{self, TransferError};
use crate::{Daemon, now_ms, validate};

fn absolute(field: &str, path: &str) -> Result<PathBuf, RpcError> {
    let p = PathBuf::from(path);
    if !p.is_absolute() {
        return Err(RpcError::invalid_params(field, format!("{field} must be an absolute path")));
    }
    Ok(p)
}

fn relay(daemon: &Daemon) -> Result<Arc<dyn crate::relay::RelayApi>, RpcError> {
    daemon.relay.clone().ok_or_else(|| {
        RpcError::new(ErrorKind::RelayUnavailable, "no relay is configured on this daemon")
    })
}

pub(super) async fn send(
    daemon: &Arc<Daemon>,
    p: FilesSendParams,
) -> Result<MessageResult, RpcError> {
    let me = logged_in(daemon).await?;
    let peer = match p.to.split_once(':') {
        Some(("user", id)) => {
            let id = validate::user_id("to", id)?;
            let who = id.clone();
            let (blocked, trusted) = daemon
                .store
                .call(move |c| {
                    Ok((
                        crate::contacts::is_blocked(c, &who)?,
                        crate::trust::check_sendable(c, [who.as_str()])?,
                    ))
                })
                .await
                .map_err(internal)?;
            if blocked {
                return Err(RpcError::new(ErrorKind::Blocked, "you block this user"));
            }
            trusted?;
            id
        }
        Some(("group", gid)) => {
            let g = gid.to_owned();
            let me2 = me.clone();
            let member = daemon
                .store
                .call(move |c| match crate::groups::load(c, &g)? {
                    Some((g, true)) => {
                        let others =
                            g.members.iter().map(String::as_str).filter(|m| *m != me2.as_str());
                        Ok(Some(crate::trust::check_sendable(c, others)?))
                    }
                    _ => Ok(None),
                })
                .await
                .map_err(internal)?;
            match member {
                None => return Err(RpcError::new(ErrorKind::NotFound, "no such group")),
                Some(trusted) => trusted?,
            }
            format!("group:{gid}")
        }
        _ => {
            return Err(RpcError::invalid_params(
                "to",
                "to must be \"user:<user_id>\" or \"group:<group_id>\"",
            ));
        }
    };
    if let Some(c) = &p.caption
        && c.len() > super::messages::MAX_TEXT
    {
        return Err(RpcError::new(ErrorKind::TooLarge, "caption is longer than 64 KiB"));
    }
    let source = absolute("path", &p.path)?;
    let meta = std::fs::metadata(&source).map_err(|e| {
        RpcError::invalid_params("path", format!("cannot read {}: {e}", source.display()))
    })?;
    if !meta.is_file() {
        return Err(RpcError::invalid_params("path", "path is not a regular file"));
    }
    if meta.len() > files::MAX_FILE {
        return Err(RpcError::new(ErrorKind::TooLarge, "files are limited to 2 GiB"));
    }
    let name = source
        .file_name()
        .map(|n| files::safe_name(&n.to_string_lossy()))
        .unwrap_or_else(|| "file".to_owned());
    let local = files::LocalId::new();
    let message_id = local.to_string();
    let dir = daemon.config.data_dir.join(files::ATTACHMENTS);
    let dest = files::encrypted_path(&daemon.config.data_dir, &local);
    let src = source.clone();
    let enc = tokio::task::spawn_blocking(move || {
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        }
        files::encrypt_file(&src, &dest)
    })
    .await
    .map_err(|e| RpcError::internal(format!("encrypting: {e}")))?
    .map_err(|e| match e.kind() {
        std::io::ErrorKind::FileTooLarge => {
            RpcError::new(ErrorKind::TooLarge, "files are limited to 2 GiB")
        }
        _ => RpcError::invalid_params("path", format!("cannot read {}: {e}", source.display())),
    })?;
    let source_str = source.to_string_lossy().into_owned();
    let id = message_id.clone();
    let message = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let m = files::insert_outgoing(
                &tx,
                &id,
                &me,
                &peer,
                &name,
                &source_str,
                p.caption.as_deref(),
                &enc,
                now_ms(),
            )?;
            tx.commit()?;
            Ok(m)
        })
        .await
        .map_err(internal)?
        .ok_or_else(|| RpcError::internal("the new message vanished"))?;
    daemon.transfers.wake();
    Ok(MessageResult { message })
}

pub(super) async fn download(
    daemon: &Arc<Daemon>,
    p: FilesDownloadParams,
) -> Result<FilesDownloadResult, RpcError> {
    logged_in(daemon).await?;
    let dest = p.dest.as_deref().map(|d| absolute("dest", d)).transpose()?;
    let id = p.message_id.clone();
    let row = daemon
        .store
        .call(move |c| files::get(c, &id))
        .await
        .map_err(internal)?
        .ok_or_else(|| RpcError::new(ErrorKind::NotFound, "no such file message"))?;
    if row.transfer == FileTransfer::Cancelled {
        return Err(RpcError::new(ErrorKind::InvalidState, "the transfer was cancelled"));
    }
    // Only a row whose id is a canonical UUID has local files (see `localid.rs`).
    let local = row.local_id().ok_or_else(|| {
        RpcError::new(ErrorKind::InvalidState, "this file message has an invalid id")
    })?;
    let have = files::encrypted_path(&daemon.config.data_dir, &local);
    // The plaintext goes to `dest`, or to the directory of opened files.
    let target = match dest {
        Some(d) => d,
        None => files::opened_path(&files::runtime_dir(daemon), &local, &row.name),
    };
    // A file sent from here has its copy; any other (a sent copy from another device of
    // ours too) is fetched first, and written to `target` as it is checked (one
    // decryption) unless a download was already under way.
    let ready = row.uploads_here() || row.transfer == FileTransfer::Done;
    let mut written = false;
    if !ready || !have.exists() {
        if row.uploads_here() {
            return Err(RpcError::new(ErrorKind::NotFound, "the encrypted copy is gone"));
        }
        let relay = relay(daemon)?;
        written = files::download_now(daemon, &relay, &row, Some(&target))
            .await
            .map_err(download_error)?;
    }
    // Otherwise it is written out from the stored copy.
    if !written {
        let (src, key, want, t) = (have, row.file_key.clone(), row.sha256.clone(), target.clone());
        let exported = tokio::task::spawn_blocking(move || export(&src, &key, &want, &t))
            .await
            .map_err(|e| RpcError::internal(format!("decrypting: {e}")))?;
        match exported {
            Ok(true) => {}
            Ok(false) => {
                return Err(RpcError::internal("the stored file does not match its SHA-256"));
            }
            Err(e) => {
                return Err(RpcError::invalid_params(
                    "dest",
                    format!("cannot write {}: {e}", target.display()),
                ));
            }
        }
    }
    let (id, path) = (row.message_id.clone(), target.to_string_lossy().into_owned());
    let p2 = path.clone();
    daemon
        .store
        .call(move |c| {
            c.prepare_cached("UPDATE files SET path = ?2 WHERE message_id = ?1")?
                .execute(rusqlite::params![id, p2])?;
            Ok(())
        })
        .await
        .map_err(internal)?;
    Ok(FilesDownloadResult { path, size: row.size, sha256: row.sha256 })
}

fn download_error(e: TransferError) -> RpcError {
    match e {
        TransferError::Unavailable => {
            RpcError::new(ErrorKind::RelayUnavailable, "the relay cannot be reached now")
        }
        TransferError::Gone => {
            RpcError::new(ErrorKind::NotFound, "the relay no longer has this file")
        }
        TransferError::Cancelled => {
            RpcError::new(ErrorKind::InvalidState, "the transfer was cancelled")
        }
        other => RpcError::internal(other.to_string()),
    }
}

/// Decrypts `src` into `dest` through a private temporary file beside it
/// ([`files::PlainFile`]); `Ok(false)` (and nothing written) when the hash does not
/// match.
fn export(src: &Path, key: &[u8; 16], want: &str, dest: &Path) -> std::io::Result<bool> {
    let mut out = files::PlainFile::create(dest)?;
    if files::decrypt_to(src, key, Some(&mut out))? != want {
        return Ok(false);
    }
    out.sync()?;
    out.persist()?;
    Ok(true)
}

pub(super) async fn cancel(daemon: &Arc<Daemon>, p: MessageIdParams) -> Result<Empty, RpcError> {
    logged_in(daemon).await?;
    let id = p.message_id.clone();
    let row = daemon
        .store
        .call(move |c| files::get(c, &id))
        .await
        .map_err(internal)?
        .ok_or_else(|| RpcError::new(ErrorKind::NotFound, "no such file message"))?;
    match row.transfer {
        FileTransfer::Cancelled => return Ok(Empty {}),
        FileTransfer::Done | FileTransfer::Failed => {
            return Err(RpcError::new(ErrorKind::InvalidState, "the transfer has ended"));
        }
        _ => {}
    }
    files::cancel(daemon, &row).await.map_err(internal)?;
    Ok(Empty {})
}
