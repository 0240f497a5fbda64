//! `privacy.clear_history` and `privacy.restore_defaults`, exactly as the privacy policy
//! words them. Both refuse without `confirm: true` (`confirm_required`).

use std::sync::Arc;

use letstalk_ipc::types::{ClearHistoryResult, ConfirmParams, EventBody, RestoreDefaultsResult};
use letstalk_ipc::{ErrorKind, RpcError};
use letstalk_wire::Request;

use super::{Settings, internal};
use crate::{Daemon, events, now_ms};

fn confirm(p: &ConfirmParams, what: &str) -> Result<(), RpcError> {
    if p.confirm {
        Ok(())
    } else {
        Err(RpcError::new(
            ErrorKind::ConfirmRequired,
            format!("{what} cannot be undone: call again with \"confirm\": true"),
        ))
    }
}

/// "Clear chat history": deletes every unsent (queued or failed) and every unread
/// message ([`crate::erase::erase`]: unsent ones withdrawn from the outbox in the same
/// transaction so they never go out, the events that carried them, their files'
/// encrypted and opened copies, and the relay's copies released), and group messages
/// still waiting to be read. Read history stays. The database zeroes freed pages
/// (`secure_delete`) and the WAL is checkpointed and truncated afterwards, so nothing
/// deleted can be read back from the device.
/// The messages "clear chat history" deletes: unsent (queued or failed) and unread.
const CLEARED: &str = "SELECT message_id FROM messages
    WHERE (direction = 'out' AND state IN ('queued', 'failed'))
       OR (direction = 'in' AND read = 0)";

pub(super) async fn clear_history(
    daemon: &Arc<Daemon>,
    p: ConfirmParams,
) -> Result<ClearHistoryResult, RpcError> {
    confirm(&p, "clearing the chat history")?;
    let me = daemon.user().unwrap_or_default();
    // Waits for a transmission in flight to finish: what the relay took is sent, the
    // rest is withdrawn before the sender can read it again.
    let _gate = daemon.outbox_gate.lock().await;
    // Their files go too: transfers stop first so nothing writes them again.
    let files: Vec<String> = daemon
        .store
        .call(|c| {
            let ids = c
                .prepare(&format!("SELECT message_id FROM files WHERE message_id IN ({CLEARED})"))?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(ids)
        })
        .await
        .map_err(internal)?;
    for id in &files {
        daemon.transfers.stop(id).await;
    }
    let (erased, seq) = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let ids: Vec<String> =
                tx.prepare(CLEARED)?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            let erased = crate::erase::erase(&tx, &me, &ids)?;
            tx.execute("DELETE FROM group_pending", [])?;
            let deleted = erased.deleted;
            let seq = events::append(&tx, &EventBody::HistoryCleared { deleted }, now_ms())?;
            tx.commit()?;
            crate::erase::checkpoint(c)?;
            Ok((erased, seq))
        })
        .await
        .map_err(internal)?;
    for id in &files {
        // Again: the worker may have picked a row up between the stop and the commit.
        daemon.transfers.stop(id).await;
    }
    crate::erase::remove_files(daemon, &erased);
    if erased.owes_relay {
        crate::erase::wake(daemon);
    }
    daemon.bus.published(seq);
    Ok(ClearHistoryResult { deleted: erased.deleted })
}

/// "Restore defaults": deletes the account on the relay when it can be reached, then
/// destroys the database key and with it every key and secret on the device, then the
/// data (database files, attachments), then shreds what the daemon kept outside the
/// database (opened files, contacts' photos, call sockets). The daemon carries on as
/// freshly installed, on a new empty database with a new device ID; subscribers hear
/// `account.logged_out` and `settings.changed`. When the relay could not be reached,
/// the new database keeps the old user id and device key only until `erase::run` has
/// deleted the account there.
pub(super) async fn restore_defaults(
    daemon: &Arc<Daemon>,
    p: ConfirmParams,
) -> Result<RestoreDefaultsResult, RpcError> {
    confirm(&p, "restoring the defaults")?;
    let mut relay_account_deleted = false;
    // What authenticates this device to the relay, kept in case the deletion must wait.
    let bound = daemon
        .store
        .call(|c| {
            Ok(crate::account::Account::load(c)?
                .filter(|a| a.logged_in)
                .map(|a| (a.user_id.clone(), a.device_key.clone())))
        })
        .await
        .map_err(internal)?;
    if let (Some(relay), Some(_)) = (&daemon.relay, daemon.user()) {
        match crate::relay::expect_ok(relay.as_ref(), Request::DeleteAccount).await {
            Ok(()) => relay_account_deleted = true,
            Err(e) => tracing::info!(error = %e, "the relay account could not be deleted now"),
        }
    }
    // Deleted later, as soon as the relay can be reached (`erase::run`).
    let owed = bound.filter(|_| !relay_account_deleted);
    if let Some(relay) = &daemon.relay {
        relay.set_credentials(None);
    }
    daemon.set_user(None);
    // Nothing may write into the data directory while it is deleted.
    daemon.transfers.stop_all().await;
    crate::calls::stop_all_media(daemon, daemon.relay.as_ref());
    let store = daemon.store.clone();
    let keyring = daemon.config.keyring;
    tokio::task::spawn_blocking(move || store.reset(keyring))
        .await
        .map_err(|_| RpcError::internal("the reset task failed"))?
        .map_err(internal)?;
    daemon.forget_caches();
    crate::erase::leave_nothing(&daemon.config.data_dir, &crate::files::runtime_dir(daemon));
    daemon.refresh_device_id().await.map_err(internal)?;
    let owes_relay = owed.is_some();
    let seq = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            if let Some((user_id, device_key)) = &owed {
                crate::erase::owe_deletion(&tx, user_id, device_key, now)?;
            }
            events::append(&tx, &EventBody::AccountLoggedOut {}, now)?;
            let settings = Settings::default().to_ipc();
            let seq = events::append(&tx, &EventBody::SettingsChanged { settings }, now)?;
            tx.commit()?;
            Ok(seq)
        })
        .await
        .map_err(internal)?;
    daemon.bus.published(seq);
    if owes_relay {
        crate::erase::wake(daemon);
    }
    tracing::info!(relay_account_deleted, "restored defaults: account, keys and data deleted");
    Ok(RestoreDefaultsResult { relay_account_deleted })
}
