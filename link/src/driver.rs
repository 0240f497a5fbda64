//! The link's background task: connect (the candidates in turn), authenticate, keep the
//! connection while it lives, read its pushes and datagrams, and reconnect: at once
//! after a deliberate or a long-lived connection ends, otherwise with exponential backoff
//! and jitter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use letstalk_wire::{ErrorKind, Push as WirePush, Response};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::conn::{self, CLOSE_DEAD, Handshake};
use crate::{ConnState, Current, IncomingMessage, LinkError, Push, Shared, Target, authed_as};

/// A connection that lived this long was fine: when it ends, reconnect at once.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// How a connection ended.
enum Ended {
    /// The link is shutting down.
    Shutdown,
    /// Closed on purpose (new identity or keep-alive, reconnect asked): reconnect now.
    Deliberate,
    /// Lost: closed by the relay or timed out (`given_up` false), or given up as dead
    /// by the link (a request or probe unanswered, a malformed push).
    Lost { given_up: bool },
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut backoff = shared.config.backoff_min;
    // Whether the link gave up a node since its last long-lived connection.
    let mut failed_over = false;
    loop {
        set_state(&shared, ConnState::Connecting).await;
        let attempt = tokio::select! {
            () = shared.cancel.cancelled() => break,
            r = connect(&shared) => r,
        };
        match attempt {
            Ok(current) => {
                backoff = shared.config.backoff_min;
                let since = Instant::now();
                let conn = current.conn.clone();
                shared.status.send_modify(|s| {
                    // The socket is dual-stack: an IPv4 node shows as itself, not as
                    // its IPv4-mapped IPv6 form.
                    let remote = conn.remote_address();
                    s.remote = Some(SocketAddr::new(remote.ip().to_canonical(), remote.port()));
                    s.refused = None;
                });
                shared.current.send_replace(Some(current));
                set_state(&shared, ConnState::Connected).await;
                // Read only now: the state change goes out before this connection's pushes.
                let pushes = tokio::spawn(read_pushes(shared.clone(), conn.clone()));
                let media = tokio::spawn(read_datagrams(conn.clone(), shared.datagrams.clone()));
                let ended = hold(&shared, &conn).await;
                pushes.abort();
                media.abort();
                shared.current.send_replace(None);
                shared.status.send_modify(|s| {
                    s.remote = None;
                    s.user_id = None;
                });
                match ended {
                    Ended::Shutdown => {
                        conn.close(0u32.into(), b"bye");
                        break;
                    }
                    Ended::Deliberate => {
                        set_state(&shared, ConnState::Offline).await;
                        continue;
                    }
                    Ended::Lost { given_up } => {
                        // The node may be gone: start with the next one. At once after a
                        // connection that lived, and after the first node given up as
                        // dead (a second in a row waits for the backoff: something other
                        // than one dead node is wrong).
                        shared.next.fetch_add(1, Ordering::Relaxed);
                        set_state(&shared, ConnState::Offline).await;
                        let stable = since.elapsed() >= STABLE_AFTER;
                        let first_failover = given_up && (stable || !failed_over);
                        failed_over = given_up || (failed_over && !stable);
                        if stable || first_failover {
                            continue;
                        }
                    }
                }
            }
            Err(e) => {
                info!(relay = %shared.status.borrow().address, error = %e, "cannot connect to the relay");
                set_state(&shared, ConnState::Offline).await;
            }
        }
        // Jitter over the upper half: many devices reconnecting after a relay restart
        // spread out instead of arriving together.
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        backoff = (backoff * 2).min(shared.config.backoff_max);
        tokio::select! {
            () = shared.cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
            () = shared.recheck.notified() => {}
            () = shared.hurry.notified() => {}
        }
    }
    shared.current.send_replace(None);
    shared.status.send_modify(|s| s.state = ConnState::Offline);
    shared.endpoint.close(0u32.into(), b"bye");
}

/// Sets the state; a change is also sent on the push channel, in order with the pushes.
async fn set_state(shared: &Shared, state: ConnState) {
    let changed = shared.status.send_if_modified(|s| {
        let changed = s.state != state;
        s.state = state;
        changed
    });
    if changed {
        tokio::select! {
            () = shared.cancel.cancelled() => {}
            _ = shared.pushes.send(Push::State(state)) => {}
        }
    }
}

/// Waits while the connection lives and still fits the identity and keep-alive.
async fn hold(shared: &Shared, conn: &quinn::Connection) -> Ended {
    loop {
        tokio::select! {
            () = shared.cancel.cancelled() => return Ended::Shutdown,
            reason = conn.closed() => {
                info!(%reason, "relay connection lost");
                let given_up = matches!(reason, quinn::ConnectionError::LocallyClosed);
                return Ended::Lost { given_up };
            }
            () = shared.recheck.notified() => {
                let outdated = shared.current().is_some_and(|c| shared.outdated(&c));
                if shared.force.swap(false, Ordering::Relaxed) || outdated {
                    debug!("re-establishing the relay connection");
                    conn.close(0u32.into(), b"reconnecting");
                    return Ended::Deliberate;
                }
            }
        }
    }
}

/// Every address of every relay name, in order (names that do not resolve now are
/// skipped).
pub(crate) async fn candidates(shared: &Shared) -> Vec<(&Target, SocketAddr)> {
    let mut out = Vec::new();
    for target in &shared.targets {
        match tokio::net::lookup_host(&target.address).await {
            Ok(found) => out.extend(found.map(|a| (target, a))),
            Err(e) => debug!(relay = %target.address, error = %e, "relay name does not resolve"),
        }
    }
    out
}

/// One attempt: a handshake with the candidates, from the one after the last lost
/// connection's, then (with an identity) the device's authentication on the first that
/// answered.
async fn connect(shared: &Shared) -> Result<Current, LinkError> {
    shared.force.store(false, Ordering::Relaxed);
    let candidates = candidates(shared).await;
    let keepalive = shared.keepalive();
    let (index, hs) = race(shared, &candidates, keepalive).await?;
    let (target, addr) = candidates[index];
    shared.next.store(index, Ordering::Relaxed);
    if candidates.len() > 1 {
        info!(relay = %target.address, %addr, "connected to a relay node");
    }
    authenticate(shared, hs, keepalive).await.inspect_err(|e| {
        if !matches!(e, LinkError::Relay { .. }) {
            // The node answered the handshake but not the device: try another next.
            shared.next.store(index + 1, Ordering::Relaxed);
        }
    })
}

/// Handshakes with the candidates in turn, from `shared.next`, in the manner of happy
/// eyeballs (RFC 8305): the next one starts when the one before it failed or has not
/// answered within [`STAGGER`], so a dead node costs a fraction of a second, not the
/// handshake timeout. The first to answer wins; the others are dropped (quinn closes
/// them). Returns the winner's index in `candidates`.
async fn race(
    shared: &Shared,
    candidates: &[(&Target, SocketAddr)],
    keepalive: Duration,
) -> Result<(usize, Handshake), LinkError> {
    let n = candidates.len();
    let start = shared.next.load(Ordering::Relaxed);
    let mut order = (0..n).map(|i| (start + i) % n);
    let attempt = |index: usize| {
        let (target, addr) = candidates[index];
        async move { (index, conn::handshake(shared, target, addr, keepalive).await) }
    };
    let mut running = FuturesUnordered::new();
    let mut last = LinkError::Unavailable("no relay address resolves".into());
    loop {
        if running.is_empty() {
            match order.next() {
                Some(index) => running.push(attempt(index)),
                None => return Err(last),
            }
        }
        tokio::select! {
            Some((index, outcome)) = running.next() => match outcome {
                Ok(hs) => return Ok((index, hs)),
                Err(e) => {
                    let (target, addr) = candidates[index];
                    debug!(relay = %target.address, %addr, error = %e, "relay candidate failed");
                    last = e;
                    if let Some(next) = order.next() {
                        running.push(attempt(next));
                    }
                }
            },
            () = tokio::time::sleep(STAGGER) => {
                if let Some(next) = order.next() {
                    running.push(attempt(next));
                }
            }
        }
    }
}

/// How long a handshake has before the next candidate starts beside it (RFC 8305 advises
/// 250 ms).
const STAGGER: Duration = Duration::from_millis(250);

/// `Auth` on a fresh connection when an identity is set.
async fn authenticate(
    shared: &Shared,
    hs: Handshake,
    keepalive: Duration,
) -> Result<Current, LinkError> {
    let mut authed = None;
    let mut user = None;
    if let Some(identity) = shared.identity() {
        let auth = hs.auth_request(&identity);
        match conn::exchange(&hs.conn, &auth, shared.request_timing()).await? {
            Response::Authenticated { user_id, device_id } => {
                authed = Some(authed_as(&identity));
                user = Some(user_id);
                shared.set_device(device_id);
            }
            Response::Error { kind: ErrorKind::UnknownDevice, .. } => {
                // Logged in elsewhere (or the account is gone) while this device was away.
                warn!("device no longer bound to the account: logged out");
                shared.set_identity(None);
                let _ = shared.pushes.send(Push::LoggedOut).await;
            }
            Response::Error { kind, retry_after_ms, message } => {
                warn!(?kind, "device authentication refused");
                hs.conn.close(0u32.into(), b"refused");
                shared.status.send_modify(|s| s.refused = Some(kind));
                return Err(LinkError::Relay { kind, message, retry_after_ms });
            }
            other => return Err(crate::requests::refusal(other)),
        }
    }
    shared.set_user(user);
    Ok(Current { conn: hs.conn, challenge: hs.challenge, exporter: hs.exporter, keepalive, authed })
}

/// Reads every push stream the relay opens on this connection, frame by frame, in order.
async fn read_pushes(shared: Arc<Shared>, conn: quinn::Connection) {
    while let Ok(mut recv) = conn.accept_uni().await {
        loop {
            let body = match conn::read_frame(&mut recv).await {
                Ok(b) => b,
                Err(e) => {
                    debug!(error = %e, "push stream ended");
                    break;
                }
            };
            let push = match WirePush::decode(&body) {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "malformed push: closing the connection");
                    conn.close(CLOSE_DEAD, b"malformed push");
                    return;
                }
            };
            let push = match push {
                WirePush::Message { delivery_id, from, from_device, msg_id, server_ts, body } => {
                    Push::Message(IncomingMessage {
                        delivery_id,
                        from,
                        from_device,
                        msg_id,
                        server_ts,
                        body,
                    })
                }
                WirePush::Presence(p) => Push::Presence(p),
                WirePush::ProfileChanged(p) => Push::ProfileChanged(p),
                WirePush::LoggedOut => {
                    shared.set_identity(None);
                    shared.set_user(None);
                    Push::LoggedOut
                }
                WirePush::DevicesChanged => Push::DevicesChanged,
            };
            if shared.pushes.send(push).await.is_err() {
                return;
            }
        }
    }
}

/// Hands received datagrams on; drops them when the reader does not keep up.
async fn read_datagrams(conn: quinn::Connection, out: mpsc::Sender<bytes::Bytes>) {
    while let Ok(d) = conn.read_datagram().await {
        if let Err(mpsc::error::TrySendError::Closed(_)) = out.try_send(d) {
            return;
        }
    }
}
