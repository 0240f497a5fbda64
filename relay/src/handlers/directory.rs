//! Directory requests: other accounts' public profiles and avatars (`LookupUser`,
//! `FetchAvatar`, rate-limited per requesting account), this device's keys
//! (`UploadKeys`, `KeyCount`) and the prekey bundles of a peer's devices (`FetchBundles`,
//! and the legacy `FetchBundle`: its lowest-numbered device).

use std::sync::Arc;

use letstalk_wire::{ErrorKind, Request, Response};

use crate::ctx::ConnCtx;
use crate::fail::{Reply, fail, misrouted, rate_limited, storage_fail, user_arg};
use crate::session::{require_auth, require_device};
use crate::state::State;
use crate::storage::{BundlesOf, KeyUpload, Storage};

/// A directory request.
pub(super) async fn handle<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<ConnCtx>,
    req: Request,
) -> Reply {
    match req {
        Request::LookupUser { user_id } => {
            let me = require_auth(st, ctx)?;
            st.directory.check(&me).map_err(rate_limited)?;
            let user = user_arg(&user_id)?;
            let mut p = st.storage.profile(&user).await.map_err(storage_fail)?;
            if let Some(p) = p.as_mut() {
                p.email = None;
            }
            p.map(Response::Profile).ok_or_else(|| fail(ErrorKind::NotFound, "no such user"))
        }
        Request::FetchAvatar { user_id } => {
            let me = require_auth(st, ctx)?;
            st.directory.check(&me).map_err(rate_limited)?;
            let user = user_arg(&user_id)?;
            let a = st.storage.avatar(&user).await.map_err(storage_fail)?;
            a.map(Response::Avatar).ok_or_else(|| fail(ErrorKind::NotFound, "no avatar"))
        }
        Request::UploadKeys { identity, signed_prekey, one_time_prekeys, last_resort } => {
            let (user, device) = require_device(st, ctx)?;
            let keys =
                KeyUpload { identity, signed_prekey, one_time: one_time_prekeys, last_resort };
            let n = st.storage.upload_keys(&user, device, keys).await.map_err(storage_fail)?;
            Ok(Response::KeyCount { one_time_remaining: n })
        }
        Request::KeyCount => {
            let (user, device) = require_device(st, ctx)?;
            let n = st.storage.one_time_count(&user, device).await.map_err(storage_fail)?;
            Ok(Response::KeyCount { one_time_remaining: n })
        }
        Request::FetchBundle { user_id } => {
            // The legacy request of a sender that knows no devices: the first device.
            let me = require_auth(st, ctx)?;
            st.directory.check(&me).map_err(rate_limited)?;
            let user = user_arg(&user_id)?;
            let b =
                st.storage.take_bundles(&user, BundlesOf::Lowest).await.map_err(storage_fail)?;
            b.and_then(|b| b.into_iter().next())
                .map(Response::Bundle)
                .ok_or_else(|| fail(ErrorKind::NotFound, "no such user or no device"))
        }
        Request::FetchBundles { user_id, devices } => {
            // One directory read however many devices: a session with each of a user's
            // devices costs what one bundle did before.
            let me = require_auth(st, ctx)?;
            st.directory.check(&me).map_err(rate_limited)?;
            let user = user_arg(&user_id)?;
            let of = if devices.is_empty() { BundlesOf::All } else { BundlesOf::Devices(devices) };
            let b = st.storage.take_bundles(&user, of).await.map_err(storage_fail)?;
            b.map(|bundles| Response::Bundles { bundles })
                .ok_or_else(|| fail(ErrorKind::NotFound, "no such user"))
        }
        other => Err(misrouted(&other)),
    }
}
