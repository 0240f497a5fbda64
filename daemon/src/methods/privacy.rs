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
/// message, withdrawing the unsent ones from the outbox in the same transaction so they
/// never go out, together with the events that carried their text and group messages
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
    let (deleted, seq) = daemon
        .store
        .call(|c| {
            let tx = c.transaction()?;
            tx.execute_batch(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS cleared (id TEXT PRIMARY KEY) STRICT;
                 DELETE FROM temp.cleared;
                 INSERT INTO temp.cleared {CLEARED};
                 DELETE FROM outbox WHERE message_id IN (SELECT id FROM temp.cleared);
                 DELETE FROM message_members WHERE message_id IN (SELECT id FROM temp.cleared);
                 DELETE FROM events WHERE kind IN ('message.received', 'message.state')
                    AND coalesce(json_extract(body, '$.message.message_id'),
                                 json_extract(body, '$.message_id'))
                        IN (SELECT id FROM temp.cleared);
                 DELETE FROM group_pending;"
            ))?;
            let deleted = tx.execute(
                "DELETE FROM messages WHERE message_id IN (SELECT id FROM temp.cleared)",
                [],
            )?;
            tx.execute("DELETE FROM temp.cleared", [])?;
            let deleted = deleted as u64;
            let seq = events::append(&tx, &EventBody::HistoryCleared { deleted }, now_ms())?;
            tx.commit()?;
            tx_checkpoint(c)?;
            Ok((deleted, seq))
        })
        .await
        .map_err(internal)?;
    for id in &files {
        // Again: the worker may have picked a row up between the stop and the commit.
        daemon.transfers.stop(id).await;
        if let Some(id) = crate::files::LocalId::parse(id) {
            crate::files::remove_local(&daemon.config.data_dir, &id);
        }
    }
    daemon.bus.published(seq);
    Ok(ClearHistoryResult { deleted })
}

fn tx_checkpoint(c: &rusqlite::Connection) -> Result<(), crate::store::StoreError> {
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// "Restore defaults": deletes the account on the relay when it can be reached, then
/// destroys the database key and with it every key and secret on the device, then the
/// data (database files, attachments). The daemon carries on as freshly installed, on
/// a new empty database; subscribers hear `account.logged_out` and `settings.changed`.
pub(super) async fn restore_defaults(
    daemon: &Arc<Daemon>,
    p: ConfirmParams,
) -> Result<RestoreDefaultsResult, RpcError> {
    confirm(&p, "restoring the defaults")?;
    let mut relay_account_deleted = false;
    if let (Some(relay), Some(_)) = (&daemon.relay, daemon.user()) {
        match crate::relay::expect_ok(relay.as_ref(), Request::DeleteAccount).await {
            Ok(()) => relay_account_deleted = true,
            Err(e) => tracing::info!(error = %e, "the relay account could not be deleted"),
        }
    }
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
    let seq = daemon
        .store
        .call(|c| {
            let tx = c.transaction()?;
            let now = now_ms();
            events::append(&tx, &EventBody::AccountLoggedOut {}, now)?;
            let settings = Settings::default().to_ipc();
            let seq = events::append(&tx, &EventBody::SettingsChanged { settings }, now)?;
            tx.commit()?;
            Ok(seq)
        })
        .await
        .map_err(internal)?;
    daemon.bus.published(seq);
    tracing::info!(relay_account_deleted, "restored defaults: account, keys and data deleted");
    Ok(RestoreDefaultsResult { relay_account_deleted })
}
