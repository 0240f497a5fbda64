//! One connection's protocol: the handshake (QUIC and TLS, `Hello`, the relay's challenge
//! and the connection's TLS exporter value), the device's `Auth` request, and one request
//! on its own bidirectional stream.

use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::Signer;
use letstalk_wire::{
    AUTH_EXPORTER_LEN, MAX_FRAME_LEN, PROTOCOL_VERSION, Request, Response, auth_message, frame_len,
};

use crate::{Identity, LinkError, Shared, Target, auth_exporter, tls};

/// The close code for a connection given up as dead (a request or probe unanswered):
/// the driver then starts with the next candidate.
pub(crate) const CLOSE_DEAD: quinn::VarInt = quinn::VarInt::from_u32(2);

/// A connection with `Hello` exchanged.
#[derive(Debug)]
pub(crate) struct Handshake {
    pub(crate) conn: quinn::Connection,
    pub(crate) challenge: [u8; 32],
    pub(crate) exporter: [u8; AUTH_EXPORTER_LEN],
}

impl Handshake {
    /// `Auth` as `identity`: its signature covers this connection's challenge and TLS
    /// exporter value, so it is worth nothing on any other connection.
    pub(crate) fn auth_request(&self, identity: &Identity) -> Request {
        let message = auth_message(&self.challenge, &self.exporter, &identity.user_id);
        Request::Auth {
            user_id: identity.user_id.clone(),
            device_key: identity.key.verifying_key().to_bytes(),
            signature: identity.key.sign(&message).to_bytes(),
        }
    }
}

/// Connects to one candidate with `keepalive` and exchanges `Hello`, all within the
/// configured connect timeout.
pub(crate) async fn handshake(
    shared: &Shared,
    target: &Target,
    addr: SocketAddr,
    keepalive: Duration,
) -> Result<Handshake, LinkError> {
    let config = tls::with_transport(&shared.client_config, keepalive)?;
    let connecting = shared
        .endpoint
        .connect_with(config, addr, &target.host)
        .map_err(|e| LinkError::Unavailable(format!("connect: {e}")))?;
    let timeout = shared.config.connect_timeout;
    let handshake = async {
        let conn = connecting.await?;
        let hello = Request::Hello {
            versions: vec![PROTOCOL_VERSION],
            client: shared.config.client_name.clone(),
        };
        let challenge = match exchange(&conn, &hello, shared.timing(timeout)).await? {
            Response::HelloOk { challenge, .. } => challenge,
            other => return Err(crate::requests::refusal(other)),
        };
        let exporter = auth_exporter(&conn)?;
        Ok(Handshake { conn, challenge, exporter })
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| LinkError::Unavailable(format!("{addr}: handshake timed out")))?
}

/// One request on its own stream, answered within `timing.timeout`. A request left
/// unanswered drops the connection: the path or the relay is dead (a crashed relay never
/// closes it). So does one that has heard nothing at all from the relay after
/// `timing.silence`: a live relay acknowledges the request's packets within a round trip
/// (and QUIC retransmits them on its probe timeout), even while the answer itself takes
/// longer, so silence that long means the node or the path is gone.
pub(crate) async fn exchange(
    conn: &quinn::Connection,
    req: &Request,
    timing: Timing,
) -> Result<Response, LinkError> {
    let frame = req.encode().map_err(|e| LinkError::Protocol(e.to_string()))?;
    let before = heard(conn);
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&frame).await?;
        let _ = send.finish();
        let body = read_frame(&mut recv).await?;
        Response::decode(&body).map_err(|e| LinkError::Protocol(format!("bad response: {e}")))
    };
    tokio::pin!(exchange);
    let deadline = tokio::time::sleep(timing.timeout);
    tokio::pin!(deadline);
    let silence = tokio::time::sleep(timing.silence.min(timing.timeout));
    tokio::pin!(silence);
    let mut checked = false;
    loop {
        tokio::select! {
            r = &mut exchange => return r,
            () = &mut deadline => {
                conn.close(CLOSE_DEAD, b"request timed out");
                return Err(LinkError::Unavailable("request timed out".into()));
            }
            () = &mut silence, if !checked => {
                checked = true;
                if heard(conn) == before {
                    conn.close(CLOSE_DEAD, b"relay silent");
                    return Err(LinkError::Unavailable("the relay went silent".into()));
                }
            }
        }
    }
}

/// How long a request may take: its answer, and silence from the relay while it waits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) timeout: Duration,
    pub(crate) silence: Duration,
}

/// UDP datagrams received on `conn` so far.
fn heard(conn: &quinn::Connection) -> u64 {
    conn.stats().udp_rx.datagrams
}

/// Reads one length-prefixed frame.
pub(crate) async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, LinkError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await?;
    let len = frame_len(prefix, MAX_FRAME_LEN).map_err(|e| LinkError::Protocol(e.to_string()))?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(body)
}
