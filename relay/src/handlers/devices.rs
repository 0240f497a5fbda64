//! Device requests: the account's devices (`ListDevices`, `AddDevice`, `RemoveDevice`,
//! `RenameDevice`, each change pushed as `DevicesChanged` to the account's other devices) and the link
//! rendezvous a new device joins through (`LinkOpen` by the account, `LinkPut` and
//! `LinkGet` by either side, the joining one without an account).

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use letstalk_wire::{DeviceInfo, ErrorKind, LINK_SLOT_TTL_MS, Request, Response};
use tracing::{debug, info};

use crate::clock::now_ms;
use crate::ctx::ConnCtx;
use crate::fail::{Fail, Reply, fail, misrouted, rate_limited, storage_fail, user_arg};
use crate::ratelimit::ip_key;
use crate::session::{
    devices_changed, end_session, log_out, release_blobs, require_auth, require_device,
};
use crate::state::State;
use crate::storage::{NewLinkSlot, Storage, StorageError};

/// A device or link request.
pub(super) async fn handle<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<ConnCtx>,
    req: Request,
) -> Reply {
    match req {
        Request::ListDevices { user_id } => {
            let me = require_auth(st, ctx)?;
            let user = user_arg(&user_id)?;
            if user != me {
                // Another account's list says whether it exists: read like a profile.
                st.directory.check(&me).map_err(rate_limited)?;
            }
            let devices = st.storage.devices(&user).await.map_err(storage_fail)?;
            let mut devices = devices.ok_or_else(|| fail(ErrorKind::NotFound, "no such user"))?;
            if user != me {
                // A sender needs the ids only; names and times are the account's own.
                devices = devices
                    .into_iter()
                    .map(|d| DeviceInfo {
                        device_id: d.device_id,
                        name: Vec::new(),
                        linked_at: 0,
                        last_seen_at: 0,
                    })
                    .collect();
            }
            Ok(Response::Devices { devices })
        }
        Request::AddDevice { device_key, name } => {
            let (user, device) = require_device(st, ctx)?;
            if VerifyingKey::from_bytes(&device_key).is_err() {
                return Err(fail(ErrorKind::Invalid, "not an Ed25519 public key"));
            }
            let added = st.storage.add_device(&user, device_key, name, now_ms()).await;
            let added = added.map_err(|e| match e {
                StorageError::Conflict => {
                    fail(ErrorKind::Conflict, "the key already is a device of an account")
                }
                StorageError::QuotaExceeded => fail(
                    ErrorKind::QuotaExceeded,
                    format!("an account has at most {} devices", letstalk_wire::MAX_DEVICES),
                ),
                e => storage_fail(e),
            })?;
            info!("device added");
            debug!(user_id = user, device_id = added, "device added");
            devices_changed(st, &user, Some(device)).await;
            Ok(Response::DeviceAdded { device_id: added })
        }
        Request::RemoveDevice { device_id } => {
            let (user, me) = require_device(st, ctx)?;
            if !st.storage.remove_device(&user, device_id).await.map_err(storage_fail)? {
                return Err(fail(ErrorKind::NotFound, "no such device"));
            }
            info!("device removed");
            debug!(user_id = user, device_id, "device removed");
            release_blobs(st, &user, device_id).await;
            if device_id == me {
                // This connection's own device: like `Logout`, the answer is its notice
                // (a `LoggedOut` push would race the answer on a closing connection).
                end_session(st, ctx).await;
            } else {
                log_out(st, &user, device_id).await;
            }
            devices_changed(st, &user, Some(device_id)).await;
            Ok(Response::Ok)
        }
        Request::RenameDevice { device_id, name } => {
            // Only ever a device of the connection's own account: the storage is asked
            // for (this account, device_id), so another account's device is no such one.
            let (user, me) = require_device(st, ctx)?;
            if !st.storage.rename_device(&user, device_id, name).await.map_err(storage_fail)? {
                return Err(fail(ErrorKind::NotFound, "no such device"));
            }
            debug!(user_id = user, device_id, "device renamed");
            devices_changed(st, &user, Some(me)).await;
            Ok(Response::Ok)
        }
        Request::LinkOpen { slot, hello } => {
            let user = require_auth(st, ctx)?;
            let now = now_ms();
            let open = NewLinkSlot {
                slot,
                user_id: user,
                hello,
                now,
                expires_at: now.saturating_add(LINK_SLOT_TTL_MS),
            };
            st.storage.link_open(open).await.map_err(|e| match e {
                StorageError::Conflict => fail(ErrorKind::Conflict, "slot taken"),
                e => storage_fail(e),
            })?;
            Ok(Response::Ok)
        }
        Request::LinkPut { slot, data } => {
            let from = link_limit(st, ctx)?;
            st.storage.link_put(slot, from, data, now_ms()).await.map_err(|e| match e {
                StorageError::NotFound => fail(ErrorKind::NotFound, "no such link"),
                StorageError::Conflict => fail(ErrorKind::Conflict, "already written"),
                e => storage_fail(e),
            })?;
            Ok(Response::Ok)
        }
        Request::LinkGet { slot } => {
            link_limit(st, ctx)?;
            let got = st.storage.link_get(slot, now_ms()).await.map_err(storage_fail)?;
            got.map(Response::LinkSlot).ok_or_else(|| fail(ErrorKind::NotFound, "no such link"))
        }
        other => Err(misrouted(&other)),
    }
}

/// Takes a rendezvous token: per account on an authenticated connection, else per source
/// address (as registrations are). A slot is named after a short link code, so without
/// this anyone could scan codes for an open slot and answer it before the real device;
/// with it, the ten minutes a slot lives allow a few hundred guesses per address.
/// Returns the account the connection acts for, if any.
fn link_limit<S>(st: &State<S>, ctx: &ConnCtx) -> Result<Option<String>, Fail> {
    match require_auth(st, ctx).ok() {
        Some(user) => {
            st.link_account.check(&user).map_err(rate_limited)?;
            Ok(Some(user))
        }
        None => {
            st.link_ip.check(&ip_key(ctx.remote.ip())).map_err(rate_limited)?;
            Ok(None)
        }
    }
}
