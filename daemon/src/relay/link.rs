//! The QUIC link to the relay: one long-lived connection, re-established with
//! exponential backoff and jitter, authenticated on every connect by signing the relay's
//! fresh challenge with the device key (no password or token per connection).
//!
//! A relay may have several nodes (`--relay` repeated, or one name resolving to several
//! addresses). Every address of every name is a candidate; a connection that is lost
//! makes the next attempt start with the following candidate, so a device fails over
//! from a dead node at once instead of waiting for its handshake to time out. Nothing
//! else changes on failover: the outbox retransmits what was not acknowledged (the relay
//! recognises retransmits) and the new node delivers the mailbox from the start (the
//! daemon recognises delivery ids it already applied).
//!
//! Protocol (see `letstalk_wire`): one bidirectional stream per request; the relay's
//! pushes arrive on a unidirectional stream it opens after authentication. Pushes and
//! connection-state changes go to one channel, applied in order by the inbox task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use futures::future::BoxFuture;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use letstalk_ipc::types::RelayState;
use letstalk_wire::{
    LEN_PREFIX, MAX_FRAME_LEN, Push, Request, Response, auth_message, split_frame,
};

use super::{Credentials, Pushed, RelayApi, RelayError};
use crate::config::RelayAddr;

/// How long a connection attempt or a request may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A request unanswered this long means the path or the relay is dead (a relay that
/// crashed never closes the connection): the connection is dropped and re-established.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a request waits for a connection being established.
const WAIT_FOR_CONNECTION: Duration = Duration::from_secs(3);
/// How long the path probe after a network change may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Why the link could not be set up at all.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("relay certificate {0}: {1}")]
    Cert(String, String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("UDP socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// What [`QuicRelay::handshake`] returns: the connection, challenge, exporter value and
/// keep-alive.
type Handshake = (quinn::Connection, [u8; 32], [u8; letstalk_wire::AUTH_EXPORTER_LEN], Duration);

/// The current connection and its challenge.
#[derive(Clone)]
struct Live {
    conn: quinn::Connection,
    challenge: [u8; 32],
    /// The connection's TLS exporter value, signed with the challenge.
    exporter: [u8; letstalk_wire::AUTH_EXPORTER_LEN],
    /// The keep-alive interval this connection was made with.
    keepalive: Duration,
}

/// The link. Cheap to share; the connection task owns the reconnection loop.
pub struct QuicRelay {
    /// The relay's addresses, preferred first (never empty).
    addrs: Vec<RelayAddr>,
    /// Index of the candidate to try first on the next attempt.
    next: AtomicUsize,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    idle_timeout: quinn::IdleTimeout,
    /// The keep-alive interval for new connections (by network type, from the settings).
    keepalive: Mutex<Duration>,
    live: watch::Sender<Option<Live>>,
    status: Mutex<RelayState>,
    credentials: Mutex<Option<Credentials>>,
    /// Wakes the connection task to reconnect now (credentials changed).
    kick: Notify,
    /// Ends a backoff wait early (a request is waiting for the connection).
    hurry: Notify,
    pushes: mpsc::UnboundedSender<Pushed>,
    /// Call media datagrams received; bounded, and a full queue drops the newest (late
    /// media is worthless, it never waits).
    datagrams: mpsc::Sender<bytes::Bytes>,
    datagrams_rx: Mutex<Option<mpsc::Receiver<bytes::Bytes>>>,
}

/// Bytes of one stream the relay may send ahead of what was read (quinn's default is
/// sized for 12.5 MB/s at 100 ms): memory is taken only while a download runs.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;

/// Received datagrams waiting for the call manager.
const DATAGRAM_QUEUE: usize = 256;

impl std::fmt::Debug for QuicRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicRelay").field("addrs", &self.address()).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl QuicRelay {
    /// Sets up the endpoint and TLS; nothing is sent until [`QuicRelay::run`]. `addrs` are
    /// the relay's addresses, preferred first; each one's host is its TLS name.
    pub fn new(
        addrs: Vec<RelayAddr>,
        cert: Option<&std::path::Path>,
        keepalive: Duration,
        idle_timeout: Duration,
        pushes: mpsc::UnboundedSender<Pushed>,
    ) -> Result<Arc<Self>, LinkError> {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = cert {
            let pem = std::fs::read(path)
                .map_err(|e| LinkError::Cert(path.display().to_string(), e.to_string()))?;
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                let c =
                    c.map_err(|e| LinkError::Cert(path.display().to_string(), e.to_string()))?;
                roots
                    .add(c)
                    .map_err(|e| LinkError::Cert(path.display().to_string(), e.to_string()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LinkError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![letstalk_wire::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| LinkError::Tls(e.to_string()))?;
        let client_config = quinn::ClientConfig::new(Arc::new(quic));
        let idle_timeout: quinn::IdleTimeout =
            idle_timeout.try_into().map_err(|_| LinkError::Tls("idle timeout".into()))?;
        let socket = std::net::UdpSocket::bind(SocketAddr::from(([0u16; 8], 0)))
            .or_else(|_| std::net::UdpSocket::bind(SocketAddr::from(([0u8; 4], 0))))?;
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config
            .max_udp_payload_size(letstalk_wire::MAX_UDP_PAYLOAD)
            .map_err(|e| LinkError::Tls(format!("UDP payload size: {e}")))?;
        let endpoint =
            quinn::Endpoint::new(endpoint_config, None, socket, Arc::new(quinn::TokioRuntime))?;
        if addrs.is_empty() {
            return Err(LinkError::Tls("no relay address".into()));
        }
        let (datagrams, datagrams_rx) = mpsc::channel(DATAGRAM_QUEUE);
        Ok(Arc::new(Self {
            datagrams,
            datagrams_rx: Mutex::new(Some(datagrams_rx)),
            addrs,
            next: AtomicUsize::new(0),
            endpoint,
            client_config,
            idle_timeout,
            keepalive: Mutex::new(keepalive),
            live: watch::Sender::new(None),
            status: Mutex::new(RelayState::Connecting),
            credentials: Mutex::new(None),
            kick: Notify::new(),
            hurry: Notify::new(),
            pushes,
        }))
    }

    fn set_state(&self, state: RelayState) {
        let changed = {
            let mut s = lock(&self.status);
            let changed = *s != state;
            *s = state;
            changed
        };
        if changed {
            let _ = self.pushes.send(Pushed::State(state));
        }
    }

    /// Keeps a connection up until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        loop {
            self.set_state(RelayState::Connecting);
            let attempt = tokio::select! {
                () = cancel.cancelled() => break,
                r = self.connect() => r,
            };
            match attempt {
                Ok(live) => {
                    backoff = BACKOFF_MIN;
                    let conn = live.conn.clone();
                    self.live.send_replace(Some(live));
                    self.set_state(RelayState::Connected);
                    let readers = tokio::spawn(read_pushes(conn.clone(), self.pushes.clone()));
                    let media = tokio::spawn(read_datagrams(conn.clone(), self.datagrams.clone()));
                    tokio::select! {
                        () = cancel.cancelled() => {
                            conn.close(0u32.into(), b"bye");
                            readers.abort();
                            media.abort();
                            break;
                        }
                        reason = conn.closed() => {
                            tracing::info!(%reason, "relay connection lost");
                            // The node may be gone: start with the next one.
                            self.next.fetch_add(1, Ordering::Relaxed);
                        }
                        () = self.kick.notified() => conn.close(0u32.into(), b"reconnect"),
                    }
                    readers.abort();
                    media.abort();
                    self.live.send_replace(None);
                    self.set_state(RelayState::Offline);
                    // A deliberate reconnect (new credentials) goes at once.
                    continue;
                }
                Err(e) => {
                    tracing::info!(error = %e, relay = %self.address(), "cannot connect to the relay");
                    self.set_state(RelayState::Offline);
                }
            }
            // Exponential backoff with full jitter, so a relay restart is not met by
            // every device at the same instant.
            let jitter = rand::random::<f64>();
            let wait = backoff.mul_f64(0.5 + jitter / 2.0);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
                () = self.kick.notified() => {}
                () = self.hurry.notified() => {}
            }
        }
        self.live.send_replace(None);
        self.endpoint.close(0u32.into(), b"bye");
    }

    /// The device moved to another network: moves the connection onto a fresh UDP
    /// socket (QUIC connection migration: the relay validates the new path and carries
    /// on with the same connection, streams and session) and probes it at once. If the
    /// probe gets no answer, the connection is dropped and re-established right away.
    pub async fn network_changed(&self) {
        let socket = std::net::UdpSocket::bind(SocketAddr::from(([0u16; 8], 0)))
            .or_else(|_| std::net::UdpSocket::bind(SocketAddr::from(([0u8; 4], 0))));
        match socket.and_then(|s| self.endpoint.rebind(s)) {
            Ok(()) => tracing::debug!("relay link moved to a new UDP socket"),
            Err(e) => tracing::warn!(error = %e, "cannot rebind the relay link"),
        }
        let live = self.live.borrow().clone();
        let Some(live) = live else {
            self.hurry.notify_one();
            return;
        };
        let ping = Request::Ping { nonce: rand::random() };
        match tokio::time::timeout(PROBE_TIMEOUT, exchange(&live.conn, &ping)).await {
            Ok(Ok(Response::Pong { .. })) => tracing::info!("relay connection migrated"),
            _ => {
                tracing::info!("relay connection did not survive the network change; reconnecting");
                live.conn.close(0u32.into(), b"network changed");
            }
        }
    }

    /// Every address of every relay name, in order (names that do not resolve now are
    /// skipped).
    async fn candidates(&self) -> Vec<(&RelayAddr, SocketAddr)> {
        let mut out = Vec::new();
        for relay in &self.addrs {
            let target = format!("{}:{}", relay.host, relay.port);
            if let Ok(found) = tokio::net::lookup_host(&target).await {
                out.extend(found.map(|a| (relay, a)));
            }
        }
        out
    }

    /// Connects (trying each candidate once, from the one after the last lost
    /// connection's), says hello and, with credentials, authenticates.
    async fn connect(&self) -> Result<Live, RelayError> {
        let candidates = self.candidates().await;
        let n = candidates.len();
        let start = self.next.load(Ordering::Relaxed);
        let mut last = RelayError::Unavailable;
        for i in 0..n {
            let index = (start + i) % n;
            let Some(&(relay, addr)) = candidates.get(index) else { continue };
            match self.connect_to(relay, addr).await {
                Ok(live) => {
                    self.next.store(index, Ordering::Relaxed);
                    if n > 1 {
                        tracing::info!(relay = %relay, %addr, "connected to a relay node");
                    }
                    return Ok(live);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn connect_to(&self, relay: &RelayAddr, addr: SocketAddr) -> Result<Live, RelayError> {
        let (conn, challenge, exporter, keepalive) = self.handshake(relay, addr).await?;
        let credentials = lock(&self.credentials).clone();
        if let Some(c) = credentials {
            let (device_key, signature) = sign(&c, &challenge, &exporter);
            let auth = Request::Auth { user_id: c.user_id.clone(), device_key, signature };
            match exchange(&conn, &auth).await? {
                Response::Authenticated { .. } => {}
                Response::Error { kind: letstalk_wire::ErrorKind::UnknownDevice, .. } => {
                    // The account moved to another device while we were away.
                    *lock(&self.credentials) = None;
                    let _ = self.pushes.send(Pushed::LoggedOut);
                }
                other => return Err(refusal(other)),
            }
        }
        Ok(Live { conn, challenge, exporter, keepalive })
    }

    /// A QUIC connection to one candidate with the hello exchanged: the connection, the
    /// relay's challenge, the connection's TLS exporter value (signed with the challenge,
    /// so a signature is worth nothing on another connection) and the keep-alive it was
    /// made with.
    async fn handshake(
        &self,
        relay: &RelayAddr,
        addr: SocketAddr,
    ) -> Result<Handshake, RelayError> {
        let keepalive = *lock(&self.keepalive);
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(keepalive));
        transport.max_idle_timeout(Some(self.idle_timeout));
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(letstalk_wire::MAX_UDP_PAYLOAD);
        transport.mtu_discovery_config(Some(mtu));
        // A file download keeps the relay sending while a chunk is written to disk.
        transport.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
        let mut config = self.client_config.clone();
        config.transport_config(Arc::new(transport));
        let connecting = self
            .endpoint
            .connect_with(config, addr, &relay.host)
            .map_err(|_| RelayError::Unavailable)?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| RelayError::Unavailable)?
            .map_err(|e| {
                tracing::debug!(error = %e, "QUIC handshake failed");
                RelayError::Unavailable
            })?;
        let hello = Request::Hello {
            versions: vec![letstalk_wire::PROTOCOL_VERSION],
            client: format!("letstalkd/{}", crate::VERSION),
        };
        let challenge = match exchange(&conn, &hello).await? {
            Response::HelloOk { challenge, .. } => challenge,
            other => return Err(refusal(other)),
        };
        let mut exporter = [0u8; letstalk_wire::AUTH_EXPORTER_LEN];
        conn.export_keying_material(&mut exporter, letstalk_wire::AUTH_EXPORTER_LABEL, &[])
            .map_err(|_| RelayError::Unavailable)?;
        Ok((conn, challenge, exporter, keepalive))
    }

    /// See [`RelayApi::delete_account_as`]: one connection of its own (the first
    /// candidate that answers), authenticated as `c`, one `DeleteAccount`, closed.
    async fn delete_as(&self, c: &Credentials) -> Result<(), RelayError> {
        let candidates = self.candidates().await;
        let mut last = RelayError::Unavailable;
        for (relay, addr) in candidates {
            let (conn, challenge, exporter, _) = match self.handshake(relay, addr).await {
                Ok(h) => h,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let (device_key, signature) = sign(c, &challenge, &exporter);
            let auth = Request::Auth { user_id: c.user_id.clone(), device_key, signature };
            let outcome = match exchange(&conn, &auth).await {
                Ok(Response::Authenticated { .. }) => {
                    exchange(&conn, &Request::DeleteAccount).await.and_then(|r| match r {
                        Response::Ok => Ok(()),
                        other => Err(refusal(other)),
                    })
                }
                Ok(other) => Err(refusal(other)),
                Err(e) => Err(e),
            };
            conn.close(0u32.into(), b"bye");
            return outcome;
        }
        Err(last)
    }

    /// The live connection; while one is being (re)established, waits for it a little
    /// (a reconnect after a logout, or right after start), rather than failing at once.
    async fn current(&self) -> Result<Live, RelayError> {
        if let Some(live) = self.live.borrow().clone() {
            return Ok(live);
        }
        // Skip any backoff: someone needs the relay now.
        self.hurry.notify_one();
        let mut rx = self.live.subscribe();
        let wait = rx.wait_for(Option::is_some);
        match tokio::time::timeout(WAIT_FOR_CONNECTION, wait).await {
            Ok(Ok(live)) => live.clone().ok_or(RelayError::Unavailable),
            _ => Err(RelayError::Unavailable),
        }
    }

    /// Register or login on the current connection, then keep the credentials.
    async fn bind(
        &self,
        credentials: Credentials,
        make: impl FnOnce([u8; 32], [u8; 64]) -> Request,
    ) -> Result<(), RelayError> {
        let live = self.current().await?;
        let (device_key, signature) = sign(&credentials, &live.challenge, &live.exporter);
        match exchange(&live.conn, &make(device_key, signature)).await? {
            Response::Ok | Response::Authenticated { .. } => {
                *lock(&self.credentials) = Some(credentials);
                Ok(())
            }
            other => Err(refusal(other)),
        }
    }
}

fn sign(
    c: &Credentials,
    challenge: &[u8; 32],
    exporter: &[u8; letstalk_wire::AUTH_EXPORTER_LEN],
) -> ([u8; 32], [u8; 64]) {
    let key = SigningKey::from_bytes(&c.device_seed);
    let signature = key.sign(&auth_message(challenge, exporter, &c.user_id));
    (key.verifying_key().to_bytes(), signature.to_bytes())
}

/// An answer that is not the one expected: the relay's error, or `Unexpected`.
fn refusal(response: Response) -> RelayError {
    match super::check(response) {
        Err(e) => e,
        Ok(_) => RelayError::Unexpected,
    }
}

/// One request on its own bidirectional stream.
async fn exchange(conn: &quinn::Connection, request: &Request) -> Result<Response, RelayError> {
    fn lost(what: &'static str) -> impl FnOnce(String) -> RelayError {
        move |e| {
            tracing::debug!(error = %e, what, "relay request failed");
            RelayError::Unavailable
        }
    }
    let work = async {
        let frame = request.encode().map_err(|_| RelayError::Unexpected)?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost("open")(e.to_string()))?;
        send.write_all(&frame).await.map_err(|e| lost("write")(e.to_string()))?;
        send.finish().map_err(|e| lost("finish")(e.to_string()))?;
        let bytes = recv
            .read_to_end(MAX_FRAME_LEN + LEN_PREFIX)
            .await
            .map_err(|e| lost("read")(e.to_string()))?;
        match split_frame(&bytes, MAX_FRAME_LEN) {
            Ok(Some((body, used))) if used == bytes.len() => {
                Response::decode(body).map_err(|_| RelayError::Unexpected)
            }
            _ => Err(RelayError::Unexpected),
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| lost("timeout")("no answer".into()))?
}

/// Reads every push stream the relay opens, frame by frame, in order.
async fn read_pushes(conn: quinn::Connection, out: mpsc::UnboundedSender<Pushed>) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let out = out.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match recv.read(&mut chunk).await {
                    Ok(Some(n)) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    Ok(None) | Err(_) => return,
                }
                loop {
                    let (push, used) = match split_frame(&buf, MAX_FRAME_LEN) {
                        Ok(Some((body, used))) => (Push::decode(body), used),
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "malformed push frame; dropping the connection");
                            conn.close(1u32.into(), b"malformed push");
                            return;
                        }
                    };
                    buf.drain(..used);
                    let pushed = match push {
                        Ok(Push::Message { delivery_id, from, msg_id, body, .. }) => {
                            Pushed::Message { delivery_id, from, msg_id, body }
                        }
                        Ok(Push::Presence(p)) => Pushed::Presence(p),
                        Ok(Push::ProfileChanged(p)) => Pushed::ProfileChanged(p),
                        Ok(Push::LoggedOut) => Pushed::LoggedOut,
                        Err(e) => {
                            tracing::warn!(error = %e, "malformed push; dropping the connection");
                            conn.close(1u32.into(), b"malformed push");
                            return;
                        }
                    };
                    if out.send(pushed).is_err() {
                        return;
                    }
                }
            }
        });
    }
}

/// Hands received datagrams on; drops them when nobody keeps up.
async fn read_datagrams(conn: quinn::Connection, out: mpsc::Sender<bytes::Bytes>) {
    while let Ok(d) = conn.read_datagram().await {
        if let Err(mpsc::error::TrySendError::Closed(_)) = out.try_send(d) {
            return;
        }
    }
}

impl RelayApi for QuicRelay {
    fn register(
        &self,
        credentials: Credentials,
        password: String,
        email: String,
        nickname: String,
        identity: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), RelayError>> {
        Box::pin(async move {
            let user_id = credentials.user_id.clone();
            self.bind(credentials, |device_key, signature| Request::Register {
                user_id,
                password,
                email,
                nickname,
                device_key,
                signature,
                identity,
            })
            .await
        })
    }

    fn login(
        &self,
        credentials: Credentials,
        password: String,
    ) -> BoxFuture<'_, Result<(), RelayError>> {
        Box::pin(async move {
            let user_id = credentials.user_id.clone();
            self.bind(credentials, |device_key, signature| Request::Login {
                user_id,
                password,
                device_key,
                signature,
            })
            .await
        })
    }

    fn delete_account_as(&self, credentials: Credentials) -> BoxFuture<'_, Result<(), RelayError>> {
        Box::pin(async move { self.delete_as(&credentials).await })
    }

    fn set_credentials(&self, credentials: Option<Credentials>) {
        let had = lock(&self.credentials).is_some();
        let has = credentials.is_some();
        *lock(&self.credentials) = credentials;
        // Dropping credentials: reconnect unauthenticated, so nothing more is pushed.
        if had && !has {
            self.kick.notify_one();
        }
    }

    fn request(&self, request: Request) -> BoxFuture<'_, Result<Response, RelayError>> {
        Box::pin(async move {
            let live = self.current().await?;
            exchange(&live.conn, &request).await
        })
    }

    fn status(&self) -> (RelayState, Option<u64>) {
        // Read on demand from QUIC's estimate: no timer wakes the daemon for it.
        let state = *lock(&self.status);
        let rtt = self
            .live
            .borrow()
            .as_ref()
            .filter(|_| state == RelayState::Connected)
            .map(|l| u64::try_from(l.conn.rtt().as_millis()).unwrap_or(u64::MAX));
        (state, rtt)
    }

    fn set_keepalive(&self, keepalive: Duration) {
        let changed = {
            let mut k = lock(&self.keepalive);
            let changed = *k != keepalive;
            *k = keepalive;
            changed
        };
        let connected_with = self.live.borrow().as_ref().map(|l| l.keepalive);
        if changed && connected_with.is_some_and(|k| k != keepalive) {
            // QUIC fixes keep-alive per connection: reconnect to apply the new interval.
            tracing::info!(secs = keepalive.as_secs(), "keep-alive interval changed; reconnecting");
            self.kick.notify_one();
        }
    }

    fn address(&self) -> String {
        self.addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }

    fn open_stream(
        &self,
        header: Request,
    ) -> BoxFuture<'_, Result<super::RelayStream, RelayError>> {
        Box::pin(async move {
            let live = self.current().await?;
            let frame = header.encode().map_err(|_| RelayError::Unexpected)?;
            let opened = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let (mut send, recv) = live.conn.open_bi().await.ok()?;
                send.write_all(&frame).await.ok()?;
                Some((send, recv))
            })
            .await;
            let Ok(Some((send, recv))) = opened else { return Err(RelayError::Unavailable) };
            Ok(super::RelayStream { send: Box::pin(send), recv: Box::pin(recv) })
        })
    }

    fn send_datagram(&self, datagram: Vec<u8>) -> Result<(), RelayError> {
        let live = self.live.borrow().clone().ok_or(RelayError::Unavailable)?;
        live.conn.send_datagram(datagram.into()).map_err(|e| {
            tracing::debug!(error = %e, "datagram not sent");
            RelayError::Unavailable
        })
    }

    fn take_datagrams(&self) -> Option<mpsc::Receiver<bytes::Bytes>> {
        lock(&self.datagrams_rx).take()
    }

    fn max_datagram_size(&self) -> Option<usize> {
        self.live.borrow().as_ref().and_then(|l| l.conn.max_datagram_size())
    }
}

impl crate::netwatch::OnChange for QuicRelay {
    fn network_changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(QuicRelay::network_changed(self))
    }
}
