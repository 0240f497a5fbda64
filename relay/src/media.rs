//! Call media forwarding: the datagram loop of a connection, which forwards its call
//! media along the routes in `calls.rs`, and the hand-over of a datagram that came over
//! the cluster bus.
//!
//! In a cluster, a peer connected to another node gets the datagram over the bus, and
//! that node checks the peer's route. Datagrams are forwarded unchanged (they are sealed
//! end to end), never queued: quinn drops the oldest when a connection's datagram buffer
//! is full, which is what late media deserves.

use std::sync::Arc;

use letstalk_wire::MediaDatagram;
use tracing::debug;

use crate::cluster::bus::Signal;
use crate::ctx::ConnCtx;
use crate::state::State;

/// Reads this connection's datagrams and forwards each along its route, until the
/// connection ends. Anything malformed, unrouted or from an unauthenticated connection is
/// dropped without a word (datagrams have no answer).
pub(crate) async fn forward<S>(st: Arc<State<S>>, ctx: Arc<ConnCtx>) {
    let mut dropped = 0u64;
    loop {
        let datagram = tokio::select! {
            () = ctx.cancel.cancelled() => break,
            d = ctx.conn.read_datagram() => match d {
                Ok(d) => d,
                Err(_) => break,
            },
        };
        let Some((user, device)) = ctx.device() else {
            dropped += 1;
            continue;
        };
        let Ok(parsed) = MediaDatagram::decode(&datagram) else {
            dropped += 1;
            continue;
        };
        let Some(peer) = st.calls.target((&user, device), parsed.call_id) else {
            dropped += 1;
            continue;
        };
        if let Some(bus) = st.hub.bus()
            && !st
                .hub
                .connections(&peer)
                .iter()
                .any(|(d, _)| st.calls.accepts((&peer, *d), parsed.call_id, &user))
        {
            // The peer's device that took the call is elsewhere (or nowhere): every node
            // with one of the peer's devices checks its routes.
            let media = Signal::Media { from: user, datagram };
            // Boxed: a publish on the cluster bus is a large future, and this loop lives
            // as long as its connection, mostly idle, in every connection's memory.
            Box::pin(bus.send_account(&peer, &media)).await;
            continue;
        }
        if !send_local(&st, &peer, parsed.call_id, &user, &datagram) {
            dropped += 1;
        }
    }
    if dropped > 0 {
        debug!(dropped, "media datagrams dropped on this connection");
    }
}

/// Hands a datagram from `from` to the devices of `user` connected here that routed the
/// call naming `from` (one, in practice: the device that took the call). Never waits: a
/// full datagram buffer drops the oldest frame.
fn send_local<S>(
    st: &State<S>,
    user: &str,
    call: [u8; 16],
    from: &str,
    datagram: &bytes::Bytes,
) -> bool {
    let mut sent = false;
    for (device, conn) in st.hub.connections(user) {
        if st.calls.accepts((user, device), call, from) {
            sent |= conn.send_datagram(datagram.clone()).is_ok();
        }
    }
    sent
}

/// A datagram from `from` on another node, for the device `to` connected here.
pub(crate) fn deliver<S>(
    st: &State<S>,
    (user, device): (&str, u32),
    from: &str,
    datagram: bytes::Bytes,
) {
    let Ok(parsed) = MediaDatagram::decode(&datagram) else { return };
    if st.calls.accepts((user, device), parsed.call_id, from)
        && let Some(conn) = st.hub.connection(user, device)
    {
        let _ = conn.send_datagram(datagram);
    }
}
