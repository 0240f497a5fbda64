//! Call media forwarding: routes that two devices asked for, and the datagram loop of a
//! connection that forwards its call media along them.
//!
//! A route is `(user, call id) → peer`. A datagram from `user` for a call goes to `peer`
//! only when `peer` asked for the same call naming `user`: nobody can aim datagrams at a
//! device that did not accept the call. Datagrams are forwarded unchanged (they are
//! sealed end to end), never queued: quinn drops the oldest when a connection's datagram
//! buffer is full, which is what late media deserves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use letstalk_wire::{ErrorKind, MediaDatagram, Response};
use tracing::debug;

use crate::State;
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

    /// The peer to forward `user`'s datagram for `call` to, if both sides asked.
    pub(crate) fn peer(&self, user: &str, call: [u8; 16]) -> Option<String> {
        let map = self.lock();
        let peer = map.get(&(user.to_owned(), call))?;
        (map.get(&(peer.clone(), call)).map(String::as_str) == Some(user)).then(|| peer.clone())
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
        let Some(peer) = st.calls.peer(&user, parsed.call_id) else {
            dropped += 1;
            continue;
        };
        let Some(conn) = st.hub.connection(&peer) else {
            dropped += 1;
            continue;
        };
        // Never waits: a full datagram buffer drops the oldest frame.
        if conn.send_datagram(datagram).is_err() {
            dropped += 1;
        }
    }
    if dropped > 0 {
        debug!(dropped, "media datagrams dropped on this connection");
    }
}
