//! What the relay pushes, applied to the store: messages (decrypted and stored exactly
//! once, then acknowledged), presence and profile changes of contacts, the account
//! moving to another device, and the connection's state.

use std::future::Future;
use std::sync::Arc;

use rusqlite::params;

use letstalk_ipc::types::{EventBody, Presence};
use letstalk_wire::Request;

use crate::account::Account;
use crate::clock::PATH;
use receive::Received;

pub mod receive;
use crate::relay::{Pushed, RelayApi};
use crate::{Daemon, contacts, events, now_ms};

/// Acknowledges deliveries in batches: one `Ack` request carries every delivery ID that
/// piled up while the previous one was in flight.
#[derive(Debug, Clone)]
pub struct Acks(tokio::sync::mpsc::UnboundedSender<u64>);

impl Acks {
    pub fn start(
        relay: Arc<dyn RelayApi>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> (Self, impl Future<Output = ()>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let task = async move {
            loop {
                let first = tokio::select! {
                    () = cancel.cancelled() => return,
                    id = rx.recv() => match id { Some(id) => id, None => return },
                };
                let mut ids = vec![first];
                while ids.len() < letstalk_wire::MAX_LIST {
                    match rx.try_recv() {
                        Ok(id) => ids.push(id),
                        Err(_) => break,
                    }
                }
                if let Err(e) = relay.request(Request::Ack { delivery_ids: ids }).await {
                    // Not acknowledged: the relay pushes them again and `received` skips them.
                    tracing::debug!(error = %e, "ack failed");
                }
            }
        };
        (Self(tx), task)
    }
}

/// One pushed message.
#[derive(Debug)]
pub struct Incoming {
    pub delivery_id: u64,
    pub from: String,
    /// Which of the sending account's devices sent it (its sessions are per device).
    pub from_device: u32,
    pub msg_id: String,
    pub body: Vec<u8>,
}

/// Applies pushed messages in one transaction (one disk sync), then acknowledges them.
pub async fn apply_messages(daemon: &Arc<Daemon>, acks: &Acks, batch: Vec<Incoming>) {
    let ids: Vec<u64> = batch.iter().map(|m| m.delivery_id).collect();
    let relay_ids: Vec<String> = if tracing::enabled!(target: PATH, tracing::Level::DEBUG) {
        batch.iter().map(|m| m.msg_id.clone()).collect()
    } else {
        Vec::new()
    };
    let own_device = daemon.relay.as_ref().and_then(|r| r.device_id());
    let outcome = daemon
        .store
        .call(move |c| {
            let Some(me) = Account::load(c)? else { return Ok(None) };
            let items: Vec<receive::Delivery<'_>> = batch
                .iter()
                .map(|m| (m.from.as_str(), m.from_device, m.msg_id.as_str(), m.body.as_slice()))
                .collect();
            let me = receive::Me { account: &me, device: own_device };
            receive::receive_many(c, me, &items, now_ms()).map(Some)
        })
        .await;
    match outcome {
        Ok(Some(results)) => {
            for relay in &relay_ids {
                tracing::debug!(target: PATH, %relay, "received");
            }
            let mut privacy_changed = false;
            for received in &results {
                match received {
                    Received::Applied { last_event, queued } => {
                        if let Some(seq) = last_event {
                            daemon.bus.published(*seq);
                        }
                        if *queued {
                            daemon.wake_sender();
                        }
                    }
                    Received::AppliedPrivacy { last_event } => {
                        if let Some(seq) = last_event {
                            daemon.bus.published(*seq);
                        }
                        privacy_changed = true;
                    }
                    Received::Duplicate => {}
                    Received::Dropped(why) => {
                        tracing::warn!(reason = %why, "dropped an undecryptable message");
                    }
                    Received::Retry(why) => {
                        tracing::info!(reason = %why, "could not decrypt a message; asking its sender to send it again");
                        daemon.wake_sender();
                    }
                }
            }
            if privacy_changed {
                // Another of our devices changed the lists the relay enforces: this
                // device's (now the same) go to the relay, so that it never sends stale
                // ones later.
                let daemon = Arc::clone(daemon);
                tokio::spawn(async move { crate::methods::sync_privacy(&daemon).await });
            }
            // A file may have arrived: its download may start on its own.
            daemon.transfers.wake();
            // Call signalling may have arrived: media set up or torn down.
            daemon.calls.wake();
            // Committed: acknowledge (batched, without waiting). A crash before this
            // means a redelivery, which `received` recognises.
            for id in ids {
                let _ = acks.0.send(id);
            }
        }
        Ok(None) => tracing::debug!("messages for a logged-out device left on the relay"),
        Err(e) => tracing::warn!(error = %e, "storing received messages"),
    }
}

/// Applies one push. Messages are acknowledged to the relay only after their
/// transaction committed, so a crash in between means a redelivery, never a loss.
pub async fn apply(daemon: &Arc<Daemon>, relay: &Arc<dyn RelayApi>, acks: &Acks, push: Pushed) {
    match push {
        Pushed::Message { delivery_id, from, from_device, msg_id, body } => {
            let m = Incoming { delivery_id, from, from_device, msg_id, body };
            apply_messages(daemon, acks, vec![m]).await;
        }
        Pushed::Presence(info) => {
            let presence = if info.hidden {
                Presence::Hidden
            } else if info.online {
                Presence::Online
            } else {
                Presence::Offline
            };
            let last_seen = i64::try_from(info.last_seen_at).ok().filter(|t| *t > 0);
            let user = info.user_id;
            let seq = daemon
                .store
                .call(move |c| {
                    let tx = c.transaction()?;
                    let changed = tx.execute(
                        "UPDATE contacts SET presence = ?2, last_seen_at = coalesce(?3, last_seen_at)
                         WHERE user_id = ?1 AND presence != ?2",
                        params![user, contacts::presence_str(presence), last_seen],
                    )?;
                    let seq = if changed == 1 {
                        Some(events::append(&tx, &EventBody::ContactPresence { user_id: user, presence }, now_ms())?)
                    } else {
                        None
                    };
                    tx.commit()?;
                    Ok(seq)
                })
                .await;
            publish(daemon, seq);
        }
        Pushed::ProfileChanged(profile) => {
            let seq = daemon
                .store
                .call(move |c| {
                    let tx = c.transaction()?;
                    let changed = tx.execute(
                        "UPDATE contacts SET nickname = ?2, avatar_sha256 = ?3 WHERE user_id = ?1",
                        params![
                            profile.user_id,
                            profile.nickname,
                            profile.avatar.as_ref().map(|a| hex::encode(a.sha256))
                        ],
                    )?;
                    let mut seq = None;
                    if changed == 1
                        && let Some(contact) = contacts::get(&tx, &profile.user_id)?
                    {
                        seq = Some(events::append(
                            &tx,
                            &EventBody::ContactChanged { contact },
                            now_ms(),
                        )?);
                    }
                    tx.commit()?;
                    Ok(seq)
                })
                .await;
            publish(daemon, seq);
        }
        Pushed::LoggedOut => {
            tracing::info!("the account moved to another device; logged out");
            relay.set_credentials(None);
            if let Err(e) = crate::methods::mark_logged_out(daemon, true).await {
                tracing::warn!(error = %e.message, "recording the logout");
            }
        }
        // What we knew of our own devices is stale: the next message this device sends
        // gets a "sent" copy again, and the relay's answer tells the new list.
        Pushed::DevicesChanged => {
            if let Some(me) = daemon.user() {
                let forgotten =
                    daemon.store.call(move |c| crate::outbox::forget_known_devices(c, &me)).await;
                if let Err(e) = forgotten {
                    tracing::warn!(error = %e, "forgetting our devices");
                }
            }
        }
        Pushed::State(state) => {
            let address = Some(relay.address());
            let seq = daemon
                .store
                .call(move |c| {
                    let tx = c.transaction()?;
                    let now = now_ms();
                    let event = serde_json::to_value(state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    crate::diagnostics::record_connection(&tx, &event, address.as_deref(), now)?;
                    let seq =
                        events::append(&tx, &EventBody::ConnectionState { state, address }, now)?;
                    tx.commit()?;
                    Ok(seq)
                })
                .await;
            publish(daemon, seq.map(Some));
            if state == letstalk_ipc::types::RelayState::Connected {
                daemon.wake_sender();
                daemon.prekey_wake.notify_one();
                crate::methods::sync_privacy(daemon).await;
                rewatch(daemon, relay).await;
                // A name the relay did not take yet (it was out of reach at the login).
                let named = Arc::clone(daemon);
                tokio::spawn(async move { crate::methods::name_own_device(&named).await });
            }
        }
    }
}

fn publish(daemon: &Daemon, seq: Result<Option<u64>, crate::store::StoreError>) {
    match seq {
        Ok(Some(seq)) => daemon.bus.published(seq),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "applying a push"),
    }
}

/// Re-sends the watch list after a (re)connection, so presence and profile pushes follow
/// the contacts even across relay restarts.
async fn rewatch(daemon: &Arc<Daemon>, relay: &Arc<dyn RelayApi>) {
    if daemon.user().is_none() {
        return;
    }
    let users = daemon
        .store
        .call(|c| {
            let ids: Vec<String> = c
                .prepare("SELECT user_id FROM contacts")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(ids)
        })
        .await
        .unwrap_or_default();
    if users.is_empty() {
        return;
    }
    match relay.request(Request::Watch { add: users, remove: vec![] }).await {
        Ok(letstalk_wire::Response::Presence { users }) => {
            for info in users {
                Box::pin(apply(
                    daemon,
                    relay,
                    &Acks(tokio::sync::mpsc::unbounded_channel().0),
                    Pushed::Presence(info),
                ))
                .await;
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "re-watching contacts"),
    }
}
