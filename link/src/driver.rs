//! The link's background task: connect, `Hello`, authenticate, read the push stream,
//! keep the status current, and reconnect with exponential backoff and jitter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::Signer;
use letstalk_wire::{
    ErrorKind, MAX_FRAME_LEN, PROTOCOL_VERSION, Push as WirePush, Request, Response, auth_message,
    frame_len,
};
use tracing::{debug, info, warn};

use crate::{ConnState, Current, IncomingMessage, LinkError, Push, Shared};

/// A connection that lived this long resets the backoff: the relay was fine.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How often the RTT in the status is refreshed.
const RTT_EVERY: Duration = Duration::from_secs(5);

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut backoff = shared.config.backoff_min;
    loop {
        if shared.cancel.is_cancelled() {
            break;
        }
        shared.status.send_modify(|s| {
            s.state = ConnState::Connecting;
            s.rtt_ms = None;
        });
        match connect(&shared).await {
            Ok(conn) => {
                let since = Instant::now();
                let stay = hold(&shared, &conn).await;
                if let Ok(mut g) = shared.current.lock() {
                    *g = None;
                }
                shared.status.send_modify(|s| {
                    s.state = ConnState::Offline;
                    s.rtt_ms = None;
                });
                if !stay {
                    conn.close(0u32.into(), b"client shutdown");
                    break;
                }
                if since.elapsed() >= STABLE_AFTER {
                    backoff = shared.config.backoff_min;
                }
            }
            Err(e) => {
                info!(relay = %shared.config.relay, error = %e, "relay connection failed");
                shared.status.send_modify(|s| {
                    s.state = ConnState::Offline;
                    s.rtt_ms = None;
                });
            }
        }
        // Full jitter over the upper half: many devices reconnecting after a relay
        // restart spread out instead of arriving together.
        let jittered = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        tokio::select! {
            () = shared.cancel.cancelled() => break,
            () = shared.reconnect.notified() => backoff = shared.config.backoff_min,
            () = tokio::time::sleep(jittered) => backoff = (backoff * 2).min(shared.config.backoff_max),
        }
    }
    shared.status.send_modify(|s| s.state = ConnState::Offline);
}

/// Waits while the connection lives; `false` when the link is shutting down.
async fn hold(shared: &Arc<Shared>, conn: &quinn::Connection) -> bool {
    let mut rtt = tokio::time::interval(RTT_EVERY);
    loop {
        tokio::select! {
            () = shared.cancel.cancelled() => return false,
            reason = conn.closed() => {
                info!(%reason, "relay connection lost");
                return true;
            }
            () = shared.reconnect.notified() => {
                conn.close(0u32.into(), b"reconnecting");
                return true;
            }
            _ = rtt.tick() => {
                let ms = u32::try_from(conn.rtt().as_millis()).unwrap_or(u32::MAX);
                shared.status.send_modify(|s| s.rtt_ms = Some(ms));
            }
        }
    }
}

fn split_host(relay: &str) -> Result<String, LinkError> {
    let (host, _) = relay
        .rsplit_once(':')
        .ok_or_else(|| LinkError::Config(format!("{relay:?}: expected HOST:PORT")))?;
    Ok(host.trim_start_matches('[').trim_end_matches(']').to_owned())
}

async fn resolve(relay: &str) -> Result<SocketAddr, LinkError> {
    let mut addrs = tokio::net::lookup_host(relay)
        .await
        .map_err(|e| LinkError::Unavailable(format!("resolving {relay}: {e}")))?;
    addrs.next().ok_or_else(|| LinkError::Unavailable(format!("{relay}: no address")))
}

/// One connection attempt: handshake, `Hello`, and `Auth` when an identity is set.
async fn connect(shared: &Arc<Shared>) -> Result<quinn::Connection, LinkError> {
    let relay = &shared.config.relay;
    let host = split_host(relay)?;
    let addr = resolve(relay).await?;
    let connecting = shared
        .endpoint
        .connect_with(shared.client_config.clone(), addr, &host)
        .map_err(|e| LinkError::Unavailable(format!("connect: {e}")))?;
    let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| LinkError::Unavailable("handshake timed out".into()))?
        .map_err(|e| LinkError::Unavailable(format!("handshake: {e}")))?;
    // Read pushes from the start: the relay opens the push stream as soon as it accepts
    // the device.
    tokio::spawn(read_pushes(shared.clone(), conn.clone()));
    let timeout = shared.config.request_timeout;
    let hello = Request::Hello {
        versions: vec![PROTOCOL_VERSION],
        client: shared.config.client_name.clone(),
    };
    let challenge = match request(&conn, &hello, timeout).await? {
        Response::HelloOk { challenge, .. } => challenge,
        other => return Err(LinkError::Protocol(format!("hello answered with {other:?}"))),
    };
    let mut user = None;
    if let Some(identity) = shared.identity() {
        let signature = identity.key.sign(&auth_message(&challenge, &identity.user_id)).to_bytes();
        let auth = Request::Auth {
            user_id: identity.user_id.clone(),
            device_key: identity.key.verifying_key().to_bytes(),
            signature,
        };
        match request(&conn, &auth, timeout).await? {
            Response::Authenticated { user_id } => user = Some(user_id),
            Response::Error { kind: ErrorKind::UnknownDevice, .. } => {
                // Logged in elsewhere (or the account is gone) while this device was away.
                warn!("device no longer bound to the account: logged out");
                shared.set_identity(None);
                let _ = shared.pushes.send(Push::LoggedOut).await;
            }
            Response::Error { kind, message, .. } => {
                warn!(?kind, message, "device authentication refused");
            }
            other => return Err(LinkError::Protocol(format!("auth answered with {other:?}"))),
        }
    }
    if let Ok(mut g) = shared.current.lock() {
        *g = Some(Current { conn: conn.clone(), challenge });
    }
    let rtt = u32::try_from(conn.rtt().as_millis()).unwrap_or(u32::MAX);
    shared.status.send_modify(|s| {
        s.state = ConnState::Connected;
        s.rtt_ms = Some(rtt);
        s.user_id = user;
    });
    debug!(%addr, "connected to the relay");
    Ok(conn)
}

/// One request on its own stream.
pub(crate) async fn request(
    conn: &quinn::Connection,
    req: &Request,
    timeout: Duration,
) -> Result<Response, LinkError> {
    let frame = req.encode().map_err(|e| LinkError::Protocol(e.to_string()))?;
    let exchange = async {
        let (mut send, mut recv) =
            conn.open_bi().await.map_err(|e| LinkError::Unavailable(e.to_string()))?;
        send.write_all(&frame).await.map_err(|e| LinkError::Unavailable(e.to_string()))?;
        let _ = send.finish();
        let body = read_frame(&mut recv).await?;
        Response::decode(&body).map_err(|e| LinkError::Protocol(format!("bad response: {e}")))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| LinkError::Unavailable("request timed out".into()))?
}

pub(crate) async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, LinkError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.map_err(|e| LinkError::Unavailable(e.to_string()))?;
    let len = frame_len(prefix, MAX_FRAME_LEN).map_err(|e| LinkError::Protocol(e.to_string()))?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| LinkError::Unavailable(e.to_string()))?;
    Ok(body)
}

/// Reads every push stream the relay opens on this connection.
async fn read_pushes(shared: Arc<Shared>, conn: quinn::Connection) {
    while let Ok(mut recv) = conn.accept_uni().await {
        loop {
            let body = match read_frame(&mut recv).await {
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
                    conn.close(1u32.into(), b"malformed push");
                    return;
                }
            };
            let push = match push {
                WirePush::Message { delivery_id, from, msg_id, server_ts, body } => {
                    Push::Message(IncomingMessage { delivery_id, from, msg_id, server_ts, body })
                }
                WirePush::Presence(p) => Push::Presence(p),
                WirePush::ProfileChanged(p) => Push::ProfileChanged(p),
                WirePush::LoggedOut => {
                    shared.set_identity(None);
                    shared.set_user(None);
                    Push::LoggedOut
                }
            };
            if shared.pushes.send(push).await.is_err() {
                return;
            }
        }
    }
}
