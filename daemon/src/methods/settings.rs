//! `settings.get` and `settings.set`, and the settings as the daemon keeps them: one row
//! per key in the `settings` table, defaults for absent keys.

use std::sync::Arc;

use letstalk_ipc::RpcError;
use letstalk_ipc::types::{self as ipc, Empty, EventBody, SettingsPatch};

pub use crate::settings::Settings;

use super::internal;
use crate::{Daemon, events, now_ms};

pub(super) async fn get(daemon: &Arc<Daemon>, _: Empty) -> Result<ipc::Settings, RpcError> {
    let s = daemon.store.call(|c| Settings::load(c)).await.map_err(internal)?;
    Ok(s.to_ipc())
}

pub(super) async fn set(
    daemon: &Arc<Daemon>,
    patch: SettingsPatch,
) -> Result<ipc::Settings, RpcError> {
    // An account's settings travel to its other devices (`sync`).
    let me = daemon.user();
    let outcome = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let old = Settings::load(&tx)?;
            let new = match old.apply(&patch) {
                Ok(new) => new,
                Err(e) => return Ok(Err(e)),
            };
            let mut seq = None;
            if new != old {
                new.store(&tx)?;
                if let Some(me) = &me
                    && (new.block_all, new.read_receipts, new.typing, new.share_presence)
                        != (old.block_all, old.read_receipts, old.typing, old.share_presence)
                {
                    crate::sync::queue_settings(&tx, me, &new, now_ms())?;
                }
                let body = EventBody::SettingsChanged { settings: new.to_ipc() };
                seq = Some(events::append(&tx, &body, now_ms())?);
            }
            tx.commit()?;
            let relay_lists_changed =
                new.block_all != old.block_all || new.share_presence != old.share_presence;
            Ok(Ok((new, seq, relay_lists_changed)))
        })
        .await
        .map_err(internal)??;
    let (new, seq, relay_lists_changed) = outcome;
    if let Some(seq) = seq {
        daemon.bus.published(seq);
    }
    if relay_lists_changed {
        super::sync_privacy(daemon).await;
    }
    daemon.wake_sender();
    daemon.apply_keepalive().await;
    // Automatic downloads may be allowed now.
    daemon.transfers.wake();
    Ok(new.to_ipc())
}
