//! Call route requests: `CallRoute` (this device will exchange media for a call with a
//! peer account's device that routed it too) and `CallUnroute`. The routes are in `calls.rs`, the forwarding in
//! `media.rs`.

use std::sync::Arc;

use letstalk_wire::{ErrorKind, Request, Response};

use crate::ctx::ConnCtx;
use crate::fail::{Reply, fail, misrouted};
use crate::session::require_device;
use crate::state::State;
use crate::userid::normalize_user_id;

/// A call route request.
pub(super) fn handle<S>(st: &Arc<State<S>>, ctx: &Arc<ConnCtx>, req: Request) -> Reply {
    match req {
        // Hook for blocking (on main): a blocked caller's route must be refused here too.
        Request::CallRoute { call_id, peer } => {
            let (user, device) = require_device(st, ctx)?;
            let peer =
                normalize_user_id(&peer).ok_or_else(|| fail(ErrorKind::Invalid, "invalid peer"))?;
            if peer == user {
                return Err(fail(ErrorKind::Invalid, "a call needs another user"));
            }
            st.calls
                .insert((&user, device), call_id, peer)
                .map_err(|_| fail(ErrorKind::QuotaExceeded, "too many calls at once"))?;
            Ok(Response::Ok)
        }
        Request::CallUnroute { call_id } => {
            let (user, device) = require_device(st, ctx)?;
            st.calls.remove((&user, device), call_id);
            Ok(Response::Ok)
        }
        other => Err(misrouted(&other)),
    }
}
