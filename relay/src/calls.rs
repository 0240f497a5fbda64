//! Call media forwarding: routes that two devices asked for, and the datagram loop of a
//! connection that forwards its call media along them.
//!
//! A route is `(user, call id) → peer`. A datagram from `user` for a call goes to `peer`
//! only when `peer` asked for the same call naming `user`: nobody can aim datagrams at a
//! device that did not accept the call. In a cluster, a peer connected to another node
//! gets the datagram over the bus, and that node checks the peer's route. Datagrams are forwarded unchanged (they are
//! sealed end to end), never queued: quinn drops the oldest when a connection's datagram
//! buffer is full, which is what late media deserves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use letstalk_wire::{ErrorKind, MediaDatagram, Response};
use tracing::debug;

use crate::State;
use crate::cluster::Signal;
use crate::conn::ConnCtx;
use crate::handlers::{Fail, fail, normalize_user_id};
use crate::storage::Storage;

/// Most routes one account may hold at once (a second call is `busy` anyway).
const MAX_ROUTES_PER_USER: usize = 4;

/// The routes of this relay node.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    map: Mutex<HashMap<(String, [u8; 16]), String>>,
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, [u8; 16]), String>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The peer `user` asked to reach for `call`.
    fn target(&self, user: &str, call: [u8; 16]) -> Option<String> {
        self.lock().get(&(user.to_owned(), call)).cloned()
    }

    /// Whether `user` (connected here) routed `call` naming `from`.
    fn accepts(&self, user: &str, call: [u8; 16], from: &str) -> bool {
        self.lock().get(&(user.to_owned(), call)).is_some_and(|p| p == from)
    }

    /// Every route of `user` goes (its connection ended).
    pub(crate) fn drop_user(&self, user: &str) {
        self.lock().retain(|(u, _), _| u != user);
    }
}

/// `CallRoute`.
pub(crate) fn route<S: Storage>(
    st: &State<S>,
    user: &str,
    call_id: [u8; 16],
    peer: &str,
) -> Result<Response, Fail> {
    let peer = normalize_user_id(peer).ok_or_else(|| fail(ErrorKind::Invalid, "invalid peer"))?;
    if peer == user {
        return Err(fail(ErrorKind::Invalid, "a call needs another user"));
    }
    let mut map = st.calls.lock();
    let held = map.keys().filter(|(u, c)| u == user && *c != call_id).count();
    if held >= MAX_ROUTES_PER_USER {
        return Err(fail(ErrorKind::QuotaExceeded, "too many calls at once"));
    }
    map.insert((user.to_owned(), call_id), peer);
    Ok(Response::Ok)
}

/// `CallUnroute`.
pub(crate) fn unroute<S: Storage>(st: &State<S>, user: &str, call_id: [u8; 16]) -> Response {
    st.calls.lock().remove(&(user.to_owned(), call_id));
    Response::Ok
}

/// Reads this connection's datagrams and forwards each along its route, until the
/// connection ends. Anything malformed, unrouted or from an unauthenticated connection is
/// dropped without a word (datagrams have no answer).
pub(crate) async fn forward<S: Storage>(st: Arc<State<S>>, ctx: Arc<ConnCtx>) {
    let mut dropped = 0u64;
    loop {
        let datagram = tokio::select! {
            () = ctx.cancel.cancelled() => break,
            d = ctx.conn.read_datagram() => match d {
                Ok(d) => d,
                Err(_) => break,
            },
        };
        let Some(user) = ctx.user() else {
            dropped += 1;
            continue;
        };
        let Ok(parsed) = MediaDatagram::decode(&datagram) else {
            dropped += 1;
            continue;
        };
        let Some(peer) = st.calls.target(&user, parsed.call_id) else {
            dropped += 1;
            continue;
        };
        if st.hub.connection(&peer).is_none()
            && let Some(bus) = st.hub.bus()
        {
            // Connected elsewhere (or nowhere): that node checks the peer's route.
            let media = Signal::Media { from: user, datagram };
            bus.send(&peer, &media).await;
            continue;
        }
        if !send_local(&st, &peer, parsed.call_id, &user, datagram) {
            dropped += 1;
        }
    }
    if dropped > 0 {
        debug!(dropped, "media datagrams dropped on this connection");
    }
}

/// Hands a datagram from `from` to `user`'s connection here, if `user` routed the call
/// naming `from`. Never waits: a full datagram buffer drops the oldest frame.
fn send_local<S: Storage>(
    st: &State<S>,
    user: &str,
    call: [u8; 16],
    from: &str,
    datagram: bytes::Bytes,
) -> bool {
    if !st.calls.accepts(user, call, from) {
        return false;
    }
    st.hub.connection(user).is_some_and(|conn| conn.send_datagram(datagram).is_ok())
}

/// A datagram from `from` on another node, for `user` connected here.
pub(crate) fn deliver<S: Storage>(st: &State<S>, user: &str, from: &str, datagram: bytes::Bytes) {
    let Ok(parsed) = MediaDatagram::decode(&datagram) else { return };
    let _ = send_local(st, user, parsed.call_id, from, datagram);
}
