//! Deleting for good, as the privacy policy words it: what `messages.delete`, "clear
//! chat history" and "restore defaults" must do beyond deleting rows.
//!
//! - [`erase`] deletes messages inside the caller's transaction (holding the outbox
//!   gate): a message not yet handed to the relay is withdrawn from the outbox, the
//!   persisted events that carry it (`message.received`, `message.state`, `file.*`,
//!   `notification`) go with it, and the relay's copy of a file is queued for release
//!   (`blob_releases`) when one is owed.
//! - [`shred_opened`] and [`leave_nothing`] overwrite and unlink the plaintext the
//!   daemon wrote outside its database: opened files and contacts' photos in the runtime
//!   directory, call sockets, the device-ID seed of older versions.
//! - [`run`] is the task that pays what is owed to the relay: blob releases, and the
//!   deletion of an account that "restore defaults" could not reach (`relay_deletions`:
//!   the user id and device key, the least that authenticates that one deletion, shredded
//!   once the relay has deleted the account).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use letstalk_ipc::types::{FileTransfer, RelayState};
use letstalk_wire::{ErrorKind as WireKind, Request};
use rusqlite::{Connection, params};
use tokio_util::sync::CancellationToken;

use crate::Daemon;
use crate::relay::{Credentials, RelayApi, RelayError};
use crate::store::StoreError;

/// The kinds of persisted events that name a message (in `$.message.message_id` or
/// `$.message_id`); they go when the message goes.
const MESSAGE_EVENTS: &str =
    "'message.received', 'message.state', 'file.progress', 'file.state', 'notification'";

/// What [`erase`] deleted and what is left to do outside the transaction.
#[derive(Debug, Default)]
pub struct Erased {
    /// Messages deleted.
    pub deleted: u64,
    /// File messages among them: their encrypted bytes in the data directory go too.
    pub files: Vec<String>,
    /// Where their plaintext was written last (only copies in the runtime directory's
    /// `files/` are the daemon's to shred; see [`shred_opened`]).
    pub opened: Vec<PathBuf>,
    /// Whether a blob release was queued for the relay.
    pub owes_relay: bool,
}

/// Deletes the messages `ids` on this device, inside `tx`: outbox rows (withdrawn: the
/// sender never reads them again, the caller holds the outbox gate), the plaintext kept
/// for a retry receipt or a member's new device (`resend`), per-member states,
/// the events that carry them, their file rows and the messages themselves. A file
/// whose blob the relay still keeps for us (received and not yet released, or ours and
/// never announced) gets a `blob_releases` row. `me` is the owner of our own blobs.
pub fn erase(tx: &Connection, me: &str, ids: &[String]) -> Result<Erased, StoreError> {
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS erase_ids (id TEXT PRIMARY KEY) STRICT;
         DELETE FROM temp.erase_ids;",
    )?;
    {
        let mut add = tx.prepare_cached("INSERT OR IGNORE INTO temp.erase_ids (id) VALUES (?1)")?;
        for id in ids {
            add.execute([id])?;
        }
    }
    let withdrawn: Vec<String> = tx
        .prepare_cached(
            "SELECT DISTINCT message_id FROM outbox WHERE message_id IN (SELECT id FROM temp.erase_ids)",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut erased = Erased::default();
    let file_ids: Vec<String> = tx
        .prepare_cached(
            "SELECT message_id FROM files WHERE message_id IN (SELECT id FROM temp.erase_ids)",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in file_ids {
        let Some(f) = crate::files::get(tx, &id)? else { continue };
        // A file this device uploaded is cancelled if it never reached anyone; any
        // other this device no longer waits for.
        let owed = if f.uploads_here() {
            f.release || f.transfer == FileTransfer::Uploading || withdrawn.contains(&id)
        } else {
            f.release || !matches!(f.transfer, FileTransfer::Done | FileTransfer::Cancelled)
        };
        if owed {
            tx.prepare_cached(
                "INSERT INTO blob_releases (owner, blob_id, cancel) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![f.owner(me), f.blob_id.as_slice(), f.uploads_here()])?;
            erased.owes_relay = true;
        }
        if let Some(path) = &f.path {
            erased.opened.push(PathBuf::from(path));
        }
        erased.files.push(id);
    }
    // The "sent" copies for our account's other devices not handed over yet go too
    // (they carry the text or the file's key; their rows name no message, the content
    // does).
    tx.prepare_cached(
        "DELETE FROM outbox WHERE recipient = ?1 AND message_id IS NULL AND plaintext IS NOT NULL
            AND json_extract(CAST(substr(plaintext, 2) AS TEXT), '$.t') IN ('sent', 'sent_file')
            AND coalesce(json_extract(CAST(substr(plaintext, 2) AS TEXT), '$.id'),
                         json_extract(CAST(substr(plaintext, 2) AS TEXT), '$.file.id'))
                IN (SELECT id FROM temp.erase_ids)",
    )?
    .execute(params![me])?;
    tx.execute_batch(&format!(
        "DELETE FROM outbox WHERE message_id IN (SELECT id FROM temp.erase_ids);
         DELETE FROM resend WHERE message_id IN (SELECT id FROM temp.erase_ids);
         DELETE FROM message_members WHERE message_id IN (SELECT id FROM temp.erase_ids);
         DELETE FROM events WHERE kind IN ({MESSAGE_EVENTS})
            AND coalesce(json_extract(body, '$.message.message_id'),
                         json_extract(body, '$.message_id'))
                IN (SELECT id FROM temp.erase_ids);"
    ))?;
    // The file rows go with their messages (ON DELETE CASCADE).
    erased.deleted = tx
        .execute("DELETE FROM messages WHERE message_id IN (SELECT id FROM temp.erase_ids)", [])?
        as u64;
    tx.execute("DELETE FROM temp.erase_ids", [])?;
    Ok(erased)
}

/// Moves what was deleted out of the WAL too: checkpointed into the database file
/// (where `secure_delete` zeroed it) and the WAL truncated.
pub fn checkpoint(conn: &Connection) -> Result<(), StoreError> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// Deletes the encrypted bytes of erased files and shreds their opened copies.
pub fn remove_files(daemon: &Daemon, erased: &Erased) {
    // Paths only from ids we generated: a row whose id is not one is never a path.
    for id in erased.files.iter().filter_map(|id| crate::files::LocalId::parse(id)) {
        crate::files::remove_local(&daemon.config.data_dir, &id);
    }
    shred_opened(&crate::files::runtime_dir(daemon), &erased.opened);
}

/// Shreds the opened copies among `paths`: those the daemon wrote into `files/` of its
/// runtime directory (with the directory made for each file). A copy a client asked
/// for elsewhere (`dest`), or the file a message was sent from, is the user's and stays.
pub fn shred_opened(runtime_dir: &Path, paths: &[PathBuf]) {
    let files = runtime_dir.join("files");
    for p in paths {
        if !p.starts_with(&files) || p.components().any(|c| c.as_os_str() == "..") {
            continue;
        }
        let target = match p.parent() {
            Some(dir) if dir.parent() == Some(files.as_path()) => dir,
            _ => p.as_path(),
        };
        if let Err(e) = shred_tree(target) {
            tracing::warn!(error = %e, "shredding an opened file");
        }
    }
}

/// "Restore defaults" beyond the database: shreds every file of the old account the
/// daemon keeps outside it: opened files, contacts' photos, call sockets (runtime
/// directory), and photos and the device-ID seed that older versions kept in the data
/// directory.
pub fn leave_nothing(data_dir: &Path, runtime_dir: &Path) {
    let doomed = [
        runtime_dir.join("files"),
        runtime_dir.join("avatars"),
        runtime_dir.join("calls"),
        data_dir.join("avatars"),
        data_dir.join("files"),
        data_dir.join("device-seed"),
    ];
    for p in doomed {
        if let Err(e) = shred_tree(&p) {
            tracing::warn!(error = %e, path = %p.display(), "shredding after restore defaults");
        }
    }
}

/// Overwrites every regular file under `path` with zeros (synced) before unlinking it,
/// then removes the directories; symbolic links are unlinked, never followed. A path
/// that does not exist is fine.
pub fn shred_tree(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            shred_tree(&entry?.path())?;
        }
        return std::fs::remove_dir(path);
    }
    if meta.is_file() {
        overwrite(path, meta.len())?;
    }
    std::fs::remove_file(path)
}

fn overwrite(path: &Path, len: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    let zeros = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(zeros.len() as u64)).unwrap_or(zeros.len());
        f.write_all(zeros.get(..n).unwrap_or_default())?;
        left -= n as u64;
    }
    f.sync_all()
}

/// Records that the relay account `user_id` (bound to `device_key`) must still be
/// deleted (inside the caller's transaction, on the fresh database).
pub fn owe_deletion(
    conn: &Connection,
    user_id: &str,
    device_key: &[u8; 32],
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO relay_deletions (user_id, device_key, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (user_id) DO UPDATE SET device_key = excluded.device_key",
    )?
    .execute(params![user_id, device_key.as_slice(), now])?;
    Ok(())
}

/// The longest wait between attempts while something is owed to the relay.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Pays what is owed to the relay (see the module doc) until `cancel`: at start, when
/// woken (`Daemon::erasure`), and while something is left, again after a backoff or as
/// soon as the relay link comes back.
pub async fn run(daemon: Arc<Daemon>, relay: Arc<dyn RelayApi>, cancel: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if drain(&daemon, relay.as_ref()).await {
            backoff = Duration::from_secs(1);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = daemon.erasure.notified() => {}
            }
            continue;
        }
        let deadline = Instant::now() + backoff;
        backoff = (backoff * 2).min(RETRY_MAX);
        let was = relay.status().0;
        // Polls the link's state only while something is owed: an idle daemon sleeps.
        while Instant::now() < deadline {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = daemon.erasure.notified() => break,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if was != RelayState::Connected && relay.status().0 == RelayState::Connected {
                break;
            }
        }
    }
}

/// One pass; `true` when nothing is left that could be done now.
async fn drain(daemon: &Arc<Daemon>, relay: &dyn RelayApi) -> bool {
    let mut done = true;
    let owed = daemon
        .store
        .call(|c| {
            let rows = c
                .prepare("SELECT user_id, device_key FROM relay_deletions")?
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await;
    let owed = match owed {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "reading the relay deletions owed");
            return false;
        }
    };
    for (user_id, key) in owed {
        let key = zeroize::Zeroizing::new(key);
        let Ok(seed) = <[u8; 32]>::try_from(key.as_slice()) else {
            forget_deletion(daemon, &user_id).await;
            continue;
        };
        let credentials =
            Credentials { user_id: user_id.clone(), device_seed: zeroize::Zeroizing::new(seed) };
        match relay.delete_account_as(credentials).await {
            Ok(()) => {
                tracing::info!("the relay account of a restored device is deleted");
                forget_deletion(daemon, &user_id).await;
            }
            // The account is gone, or bound to another device now: nothing this device
            // can (or may) delete any more.
            Err(RelayError::Refused {
                kind: WireKind::UnknownDevice | WireKind::NotFound | WireKind::AuthFailed,
                ..
            }) => {
                tracing::info!("the relay account of a restored device was already gone");
                forget_deletion(daemon, &user_id).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "relay account deletion postponed");
                done = false;
            }
        }
    }
    if daemon.user().is_none() {
        // Releases need the account's own connection; they wait for the next login.
        return done;
    }
    let releases = daemon
        .store
        .call(|c| {
            let rows = c
                .prepare("SELECT owner, blob_id, cancel FROM blob_releases")?
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, bool>(2)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
        .unwrap_or_default();
    for (owner, blob, cancel) in releases {
        let Ok(blob_id) = <[u8; 16]>::try_from(blob.as_slice()) else { continue };
        // A cancel is the owner's: only this account's own blob (a release owed by an
        // account this device no longer holds is answered `not_found` and forgotten).
        let req = if cancel && daemon.user().as_deref() == Some(owner.as_str()) {
            Request::BlobCancel { blob_id }
        } else {
            Request::BlobRelease { owner: owner.clone(), blob_id }
        };
        match crate::relay::expect_ok(relay, req).await {
            Ok(()) | Err(RelayError::Refused { kind: WireKind::NotFound, .. }) => {
                let gone = daemon
                    .store
                    .call(move |c| {
                        c.execute(
                            "DELETE FROM blob_releases WHERE owner = ?1 AND blob_id = ?2",
                            params![owner, blob],
                        )?;
                        Ok(())
                    })
                    .await;
                if let Err(e) = gone {
                    tracing::warn!(error = %e, "recording a blob release");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "blob release postponed");
                done = false;
            }
        }
    }
    done
}

/// Shreds a deletion record: the row is deleted (its page zeroed, `secure_delete`) and
/// the WAL that still held it is checkpointed and truncated.
async fn forget_deletion(daemon: &Daemon, user_id: &str) {
    let user = user_id.to_owned();
    let outcome = daemon
        .store
        .call(move |c| {
            c.execute("DELETE FROM relay_deletions WHERE user_id = ?1", [&user])?;
            checkpoint(c)
        })
        .await;
    if let Err(e) = outcome {
        tracing::warn!(error = %e, "shredding a relay deletion record");
    }
}

/// Owed work was added: wake [`run`].
pub fn wake(daemon: &Daemon) {
    daemon.erasure.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shredding_overwrites_removes_and_never_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside.txt");
        std::fs::write(&outside, b"keep me").unwrap();
        let tree = dir.path().join("files");
        std::fs::create_dir_all(tree.join("m1")).unwrap();
        std::fs::write(tree.join("m1").join("a.txt"), b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("m1").join("link")).unwrap();
        shred_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
        shred_tree(&tree).unwrap();
    }

    #[test]
    fn only_opened_copies_in_the_runtime_files_directory_are_shredded() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let opened = run.join("files").join("m1").join("photo.jpg");
        std::fs::create_dir_all(opened.parent().unwrap()).unwrap();
        std::fs::write(&opened, b"plain").unwrap();
        let users = dir.path().join("Documents").join("photo.jpg");
        std::fs::create_dir_all(users.parent().unwrap()).unwrap();
        std::fs::write(&users, b"plain").unwrap();
        shred_opened(&run, &[opened.clone(), users.clone()]);
        assert!(!opened.parent().unwrap().exists());
        assert!(run.join("files").exists());
        assert!(users.exists());
    }
}
