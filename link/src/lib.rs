//! The Rust client of the relay protocol, and the daemon's link to its relay: one
//! long-lived QUIC connection, authenticated on every (re)connect by signing the relay's
//! challenge with the device key, re-established with backoff, failing over between the
//! relay's nodes, with typed requests, pushes on a channel, blob streams and call-media
//! datagrams.
//!
//! # Layout
//!
//! - `lib.rs`: [`Link`] (start, status, identity, keep-alive, network changes, raw
//!   requests, streams, datagrams, shutdown), its configuration and the public types.
//! - `requests.rs`: the typed requests (register, login, send, ack, keys, profile, ...).
//! - `driver.rs`: the background task: candidates in turn, keep the connection, read
//!   pushes and datagrams, reconnect with exponential backoff and jitter.
//! - `conn.rs`: one connection's protocol: the handshake (`Hello`, challenge, TLS
//!   exporter), device authentication, one request on its own stream, frames.
//! - `tls.rs`: TLS 1.3 client config trusting the relay's PEM certificate, ALPN
//!   `letstalk/1`; the QUIC transport settings of one connection.
//! - `error.rs`: [`LinkError`] and its IPC [`Kind`].
//!
//! # Behaviour
//!
//! - **Candidates and failover.** [`LinkConfig::relays`] lists the relay's addresses,
//!   preferred first; every address each name resolves to is a candidate. An attempt
//!   races the handshakes in the manner of happy eyeballs (RFC 8305): the next candidate
//!   starts when the one before it failed or has not answered within 250 ms, and the
//!   first to answer wins, so a dead node costs a fraction of a second. A connection that
//!   is lost makes the next attempt start with the candidate after it.
//! - **A dead node is left in seconds.** A request that has heard nothing at all from the
//!   relay for [`LinkConfig::silence_timeout`] (3 s: not even QUIC's acknowledgement of
//!   its packets) drops the connection, and the link reconnects at once; a message sent
//!   right after its node died goes out through another within about 4 s.
//! - **Keep-alive.** QUIC fixes keep-alive per connection: [`Link::set_keepalive`] applies
//!   to new connections and re-establishes a live one made with another interval. The idle
//!   timeout is one keep-alive and a quarter (at least 2 s more), so an idle device notices
//!   a node killed without closing its connections within about two keep-alives (QUIC
//!   restarts the idle timer when it sends the keep-alive).
//! - **Timeouts.** A handshake may take [`LinkConfig::connect_timeout`]; a request waits up
//!   to [`LinkConfig::wait_for_connection`] for a connection being (re)established, ending
//!   any backoff; a request unanswered after [`LinkConfig::request_timeout`] fails and
//!   drops the connection (a crashed relay never closes it).
//! - **Network changes.** [`Link::network_changed`] moves the connection to a new UDP
//!   socket (QUIC migration) and probes it; without an answer the connection is dropped
//!   and re-established at once.
//! - **No timers while idle** beyond QUIC's keep-alive: the round-trip time is read from
//!   QUIC's estimate on demand ([`Link::rtt`]).
//!
//! The wire protocol is documented in `letstalk-wire`. The caller owns key storage: it
//! hands the link an Ed25519 [`SigningKey`]; the link signs each connection's challenge
//! and TLS exporter value with it and never stores it elsewhere or logs it.

mod conn;
mod driver;
mod error;
mod net;
mod requests;
mod tls;

pub use net::sleep_until;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use ed25519_dalek::SigningKey;
pub use error::{Kind, LinkError};
use letstalk_wire::{AUTH_EXPORTER_LABEL, AUTH_EXPORTER_LEN, ErrorKind, Request, Response};
pub use letstalk_wire::{Avatar, AvatarMeta, AvatarUpdate, Bundle, PreKey, PresenceInfo, Profile};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

/// How to reach the relay, and the link's timings.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The relay's addresses (`HOST:PORT`, HOST also the TLS name), preferred first.
    /// Several name nodes of one relay; each name may resolve to several addresses.
    pub relays: Vec<String>,
    /// A PEM file with the relay's certificate or its CA.
    pub trusted_cert: Option<PathBuf>,
    /// QUIC keep-alive of new connections (cellular NATs forget UDP bindings in ~30 s);
    /// changeable later with [`Link::set_keepalive`]. The idle timeout is 1¼ of it.
    pub keepalive: Duration,
    /// How long one handshake (QUIC, TLS and `Hello`) may take.
    pub connect_timeout: Duration,
    /// A request unanswered this long fails as `relay_unavailable` and drops the
    /// connection.
    pub request_timeout: Duration,
    /// A request that has heard nothing at all from the relay this long (not even QUIC's
    /// acknowledgement of its packets) gives the connection up as dead at once: how fast
    /// a device with something to send leaves a node that died.
    pub silence_timeout: Duration,
    /// How long a request waits for a connection being (re)established.
    pub wait_for_connection: Duration,
    /// How long the probe after a network change may take.
    pub probe_timeout: Duration,
    /// First reconnect delay...
    pub backoff_min: Duration,
    /// ...doubling up to this.
    pub backoff_max: Duration,
    /// Sent in `Hello`, for the relay's logs.
    pub client_name: String,
    /// Runs QUIC on one thread of its own that sleeps until a packet or a deadline is
    /// due, instead of on the caller's runtime: an idle link then wakes its process about
    /// twice per keep-alive (a phone's daemon). Off by default (the tests and benches run
    /// many links in one process). See `net.rs`.
    pub own_thread: bool,
    /// The local address to send from; `None` (the default): any, as the kernel routes.
    /// For benches and tests that open more connections than the relay takes from one
    /// address (`connections_per_ip`): each client sends from its own loopback address.
    pub local_ip: Option<IpAddr>,
}

impl LinkConfig {
    /// One relay address; see [`LinkConfig::with_relays`] for the defaults.
    pub fn new(relay: impl Into<String>, trusted_cert: Option<PathBuf>) -> Self {
        Self::with_relays(vec![relay.into()], trusted_cert)
    }

    /// Several relay addresses, preferred first. Defaults: keep-alive 20 s (idle timeout
    /// 25 s), handshake 10 s, request 15 s, silence 3 s, wait for a connection 3 s, probe
    /// 2 s, backoff 1 s to 60 s.
    pub fn with_relays(relays: Vec<String>, trusted_cert: Option<PathBuf>) -> Self {
        Self {
            relays,
            trusted_cert,
            keepalive: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            silence_timeout: Duration::from_secs(3),
            wait_for_connection: Duration::from_secs(3),
            probe_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            client_name: format!("letstalk-link {}", env!("CARGO_PKG_VERSION")),
            own_thread: false,
            local_ip: None,
        }
    }
}

/// The account this device acts for, and its device key.
#[derive(Clone)]
pub struct Identity {
    /// Lowercased user id.
    pub user_id: String,
    /// The device's Ed25519 key.
    pub key: SigningKey,
}

impl Identity {
    /// An identity from the 32-byte secret seed the daemon stores.
    pub fn from_seed(user_id: impl Into<String>, seed: &[u8; 32]) -> Self {
        Self { user_id: user_id.into(), key: SigningKey::from_bytes(seed) }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("user_id", &self.user_id).finish_non_exhaustive()
    }
}

/// The connection's state as shown in `system.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Trying to connect.
    Connecting,
    /// Connected (and authenticated when an identity is set and accepted).
    Connected,
    /// Not connected; a retry is scheduled.
    Offline,
}

impl ConnState {
    /// The IPC string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Offline => "offline",
        }
    }
}

/// Observable link status (the round-trip time is read on demand: [`Link::rtt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    /// Connection state.
    pub state: ConnState,
    /// The relay addresses as configured, comma-separated.
    pub address: String,
    /// The node connected to, while connected.
    pub remote: Option<SocketAddr>,
    /// The account the connection acts for, once authenticated.
    pub user_id: Option<String>,
    /// Which of the account's devices this is, once authenticated.
    pub device_id: Option<u32>,
    /// Why the relay refused the device's authentication on the last attempt, if it did
    /// (cleared by the next connection).
    pub refused: Option<ErrorKind>,
}

/// A message pushed by the relay. Acknowledge it with [`Link::ack`] once it is stored on
/// the device; until then the relay keeps it and pushes it again on the next connection.
#[derive(Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The relay's id for acknowledging.
    pub delivery_id: u64,
    /// Sending account.
    pub from: String,
    /// Which of the sending account's devices sent it (its sessions are per device).
    pub from_device: u32,
    /// The sender's id (stable across retransmits: deduplicate on `(from, msg_id)`).
    pub msg_id: String,
    /// When the relay accepted it, ms.
    pub server_ts: u64,
    /// Opaque ciphertext.
    pub body: Vec<u8>,
}

impl fmt::Debug for IncomingMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingMessage")
            .field("delivery_id", &self.delivery_id)
            .field("from", &self.from)
            .field("msg_id", &self.msg_id)
            .field("server_ts", &self.server_ts)
            .field("len", &self.body.len())
            .finish()
    }
}

/// What the link tells its owner on its own: the relay's pushes, and the connection's
/// state changes in order with them (a connection's `State(Connected)` comes before its
/// first push, so whoever applies the channel in order sees each push after the state
/// it came in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// A message.
    Message(IncomingMessage),
    /// A watched user's presence changed.
    Presence(PresenceInfo),
    /// A watched user's profile changed.
    ProfileChanged(Profile),
    /// The account was logged in on another device (or this device's key is no longer
    /// bound to it): this device is unbound, and the link has dropped its identity.
    LoggedOut,
    /// The account's list of devices changed.
    DevicesChanged,
    /// The connection state changed.
    State(ConnState),
}

/// Registration details.
#[derive(Clone)]
pub struct Registration {
    /// Wanted user id (lowercased by the relay).
    pub user_id: String,
    /// At least 8 characters.
    pub password: String,
    /// Contact email.
    pub email: String,
    /// Display name.
    pub nickname: String,
    /// Opaque identity-key bytes (may be empty and uploaded later).
    pub identity: Vec<u8>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration").field("user_id", &self.user_id).finish_non_exhaustive()
    }
}

/// Keys to upload; `None` keeps what the relay has.
#[derive(Debug, Clone, Default)]
pub struct KeyUpload {
    /// Opaque identity-key bytes.
    pub identity: Option<Vec<u8>>,
    /// The signed prekey.
    pub signed_prekey: Option<PreKey>,
    /// More one-time prekeys.
    pub one_time_prekeys: Vec<PreKey>,
    /// The last-resort prekey.
    pub last_resort: Option<PreKey>,
}

/// The relay's acknowledgement of a sent message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// When the relay first stored it, ms.
    pub server_ts: u64,
    /// True when the relay already had it (a retransmit).
    pub duplicate: bool,
}

/// The TLS exporter value of `conn` that device authentication signs
/// ([`letstalk_wire::auth_message`]): keying material of this TLS session only, so a
/// signature made for one connection is worthless on any other.
pub fn auth_exporter(conn: &quinn::Connection) -> Result<[u8; AUTH_EXPORTER_LEN], LinkError> {
    let mut out = [0u8; AUTH_EXPORTER_LEN];
    conn.export_keying_material(&mut out, AUTH_EXPORTER_LABEL, &[])
        .map_err(|_| LinkError::Protocol("TLS exporter unavailable".into()))?;
    Ok(out)
}

/// Who a connection authenticated as: the user id as given and the device's public key.
type AuthedAs = (String, [u8; 32]);

/// The live connection, if any.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    pub(crate) conn: quinn::Connection,
    pub(crate) challenge: [u8; 32],
    /// The connection's TLS exporter value, signed with the challenge.
    pub(crate) exporter: [u8; AUTH_EXPORTER_LEN],
    /// The keep-alive interval it was made with.
    pub(crate) keepalive: Duration,
    /// The identity it is authenticated with.
    pub(crate) authed: Option<AuthedAs>,
}

/// One configured relay address: its TLS name and what to resolve.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) address: String,
}

impl Target {
    fn parse(relay: &str) -> Result<Self, LinkError> {
        let (host, port) = relay
            .rsplit_once(':')
            .ok_or_else(|| LinkError::Config(format!("{relay:?}: expected HOST:PORT")))?;
        port.parse::<u16>().map_err(|_| LinkError::Config(format!("{relay:?}: bad port")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(LinkError::Config(format!("{relay:?}: no host")));
        }
        Ok(Self { host: host.to_owned(), address: relay.to_owned() })
    }
}

/// State shared between the [`Link`] handles and the driver task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: LinkConfig,
    pub(crate) targets: Vec<Target>,
    /// Index of the candidate to try first on the next attempt.
    pub(crate) next: AtomicUsize,
    pub(crate) endpoint: quinn::Endpoint,
    /// TLS only; each connection gets its transport settings (keep-alive) when made.
    pub(crate) client_config: quinn::ClientConfig,
    pub(crate) keepalive: Mutex<Duration>,
    pub(crate) identity: Mutex<Option<Identity>>,
    pub(crate) current: watch::Sender<Option<Current>>,
    pub(crate) status: watch::Sender<LinkStatus>,
    pub(crate) pushes: mpsc::Sender<Push>,
    pub(crate) datagrams: mpsc::Sender<bytes::Bytes>,
    pub(crate) datagrams_rx: Mutex<Option<mpsc::Receiver<bytes::Bytes>>>,
    /// Wakes the driver to check whether the live connection still fits the identity
    /// and keep-alive (and to reconnect when `force` is set).
    pub(crate) recheck: Notify,
    pub(crate) force: AtomicBool,
    /// Ends a backoff wait early: a request is waiting for a connection.
    pub(crate) hurry: Notify,
    pub(crate) cancel: CancellationToken,
}

/// Locks, carrying on after a panic elsewhere: every value behind these locks is valid
/// at all times (plain assignments).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn identity(&self) -> Option<Identity> {
        lock(&self.identity).clone()
    }
    pub(crate) fn set_identity(&self, identity: Option<Identity>) {
        *lock(&self.identity) = identity;
    }
    pub(crate) fn keepalive(&self) -> Duration {
        *lock(&self.keepalive)
    }
    /// The timing of an ordinary request.
    pub(crate) fn request_timing(&self) -> conn::Timing {
        self.timing(self.config.request_timeout)
    }
    /// The timing of a request that may take `timeout`.
    pub(crate) fn timing(&self, timeout: Duration) -> conn::Timing {
        conn::Timing { timeout, silence: self.config.silence_timeout }
    }
    pub(crate) fn current(&self) -> Option<Current> {
        self.current.borrow().clone()
    }
    pub(crate) fn set_user(&self, user: Option<String>) {
        self.status.send_if_modified(|s| {
            let changed = s.user_id != user;
            if user.is_none() {
                s.device_id = None;
            }
            s.user_id = user;
            changed
        });
    }

    pub(crate) fn set_device(&self, device_id: u32) {
        self.status.send_if_modified(|s| {
            let changed = s.device_id != Some(device_id);
            s.device_id = Some(device_id);
            changed
        });
    }
    /// Whether `current` was made for another identity or keep-alive than the ones set.
    pub(crate) fn outdated(&self, current: &Current) -> bool {
        let wanted = self.identity().map(|i| authed_as(&i));
        current.authed != wanted || current.keepalive != self.keepalive()
    }
}

pub(crate) fn authed_as(identity: &Identity) -> AuthedAs {
    (identity.user_id.clone(), identity.key.verifying_key().to_bytes())
}

/// A handle on the relay link. Cheap to clone; the background task stops when the last
/// handle is dropped or [`Link::shutdown`] is called.
#[derive(Debug, Clone)]
pub struct Link {
    shared: Arc<Shared>,
    _guard: Arc<DropGuard>,
}

/// Pushes waiting for the owner before the link stops reading (QUIC flow control then
/// slows the relay down for this device only).
const PUSH_CHANNEL: usize = 256;
/// Received datagrams waiting for their reader; a full queue drops the newest (late call
/// media is worthless: it never waits).
const DATAGRAM_QUEUE: usize = 256;

impl Link {
    /// Starts the link: a background task connects, authenticates with `identity` when
    /// given, and reconnects whenever the connection drops. Must be called within a tokio
    /// runtime. Returns the handle and the receiver of pushes and state changes.
    pub fn start(
        config: LinkConfig,
        identity: Option<Identity>,
    ) -> Result<(Self, mpsc::Receiver<Push>), LinkError> {
        if config.relays.is_empty() {
            return Err(LinkError::Config("no relay address".into()));
        }
        let targets = config.relays.iter().map(|r| Target::parse(r)).collect::<Result<_, _>>()?;
        let client_config = tls::client_config(config.trusted_cert.as_deref())?;
        let endpoint = tls::endpoint(new_socket(config.local_ip)?, config.own_thread)?;
        let (pushes, rx) = mpsc::channel(PUSH_CHANNEL);
        let (datagrams, datagrams_rx) = mpsc::channel(DATAGRAM_QUEUE);
        let status = watch::Sender::new(LinkStatus {
            // The driver starts connecting at once.
            state: ConnState::Connecting,
            address: config.relays.join(","),
            remote: None,
            user_id: None,
            device_id: None,
            refused: None,
        });
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            keepalive: Mutex::new(config.keepalive),
            config,
            targets,
            next: AtomicUsize::new(0),
            endpoint,
            client_config,
            identity: Mutex::new(identity),
            current: watch::Sender::new(None),
            status,
            pushes,
            datagrams,
            datagrams_rx: Mutex::new(Some(datagrams_rx)),
            recheck: Notify::new(),
            force: AtomicBool::new(false),
            hurry: Notify::new(),
            cancel: cancel.clone(),
        });
        tokio::spawn(driver::run(shared.clone()));
        Ok((Self { shared, _guard: Arc::new(cancel.drop_guard()) }, rx))
    }

    /// Watches the connection state, the node connected to and the account.
    pub fn status(&self) -> watch::Receiver<LinkStatus> {
        self.shared.status.subscribe()
    }

    /// The smoothed round-trip time of the live connection, from QUIC's estimate.
    pub fn rtt(&self) -> Option<Duration> {
        self.shared.current().map(|c| c.conn.rtt())
    }

    /// Waits until connected (and, with an identity, authenticated), at most `timeout`.
    /// Fails at once with the relay's refusal when it refuses the device's key.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), LinkError> {
        let mut rx = self.status();
        let want_user = self.shared.identity().map(|i| i.user_id.to_ascii_lowercase());
        let ok = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| {
                s.refused.is_some()
                    || (s.state == ConnState::Connected
                        && (want_user.is_none() || s.user_id == want_user))
            }),
        )
        .await;
        match ok {
            Ok(Ok(s)) => match s.refused {
                Some(kind) => Err(LinkError::Relay {
                    kind,
                    message: "device authentication refused".into(),
                    retry_after_ms: 0,
                }),
                None => Ok(()),
            },
            _ => Err(LinkError::Unavailable("not connected".into())),
        }
    }

    /// The identity in use, if any.
    pub fn identity(&self) -> Option<Identity> {
        self.shared.identity()
    }

    /// Sets or clears the identity. A live connection authenticated otherwise is
    /// re-established at once (without an identity: unauthenticated, so nothing more is
    /// pushed to this device).
    pub fn set_identity(&self, identity: Option<Identity>) {
        self.shared.set_identity(identity);
        self.shared.recheck.notify_one();
    }

    /// The keep-alive interval for new connections (by network type); a live connection
    /// made with another one is re-established.
    pub fn set_keepalive(&self, keepalive: Duration) {
        *lock(&self.shared.keepalive) = keepalive;
        self.shared.recheck.notify_one();
    }

    /// Drops the current connection (if any) and connects again at once.
    pub fn reconnect_now(&self) {
        self.shared.force.store(true, Ordering::Relaxed);
        self.shared.recheck.notify_one();
    }

    /// Moves the endpoint to `socket`: QUIC migrates the live connection to it.
    pub fn rebind(&self, socket: std::net::UdpSocket) -> std::io::Result<()> {
        self.shared.endpoint.rebind(socket)
    }

    /// The device moved to another network: moves the connection onto a fresh UDP socket
    /// (QUIC connection migration: the relay validates the new path and carries on with
    /// the same connection, streams and session) and probes it at once. Without an answer
    /// the connection is dropped and re-established right away (from the next candidate).
    pub async fn network_changed(&self) {
        match new_socket(self.shared.config.local_ip)
            .and_then(|s| self.rebind(s).map_err(|e| LinkError::Config(format!("rebind: {e}"))))
        {
            Ok(()) => tracing::debug!("relay link moved to a new UDP socket"),
            Err(e) => tracing::warn!(error = %e, "cannot rebind the relay link"),
        }
        let Some(current) = self.shared.current() else {
            self.shared.hurry.notify_one();
            return;
        };
        let ping = Request::Ping { nonce: rand::random() };
        match conn::exchange(
            &current.conn,
            &ping,
            self.shared.timing(self.shared.config.probe_timeout),
        )
        .await
        {
            Ok(Response::Pong { .. }) => tracing::info!("relay connection migrated"),
            _ => {
                tracing::info!("relay connection did not survive the network change");
                current.conn.close(conn::CLOSE_DEAD, b"network changed");
            }
        }
    }

    /// Stops the background task and closes the connection.
    pub async fn shutdown(&self) {
        self.shared.cancel.cancel();
        if let Some(c) = self.shared.current() {
            c.conn.close(0u32.into(), b"shutdown");
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
    }

    /// The live connection; while one is being (re)established, waits for it up to
    /// [`LinkConfig::wait_for_connection`], ending any backoff, rather than failing at once.
    /// A connection that has just been closed (given up as dead) counts as none.
    async fn live(&self) -> Result<Current, LinkError> {
        let open = |c: &Current| c.conn.close_reason().is_none();
        if let Some(c) = self.shared.current().filter(open) {
            return Ok(c);
        }
        self.shared.hurry.notify_one();
        let mut rx = self.shared.current.subscribe();
        match tokio::time::timeout(
            self.shared.config.wait_for_connection,
            rx.wait_for(|c| c.as_ref().is_some_and(open)),
        )
        .await
        {
            Ok(Ok(c)) => c.clone().ok_or_else(|| LinkError::Unavailable("not connected".into())),
            _ => Err(LinkError::Unavailable("not connected".into())),
        }
    }

    /// Sends one QUIC datagram (call media: a `MediaDatagram`) on the current
    /// connection. Never waits: a full send buffer drops the oldest datagram.
    pub fn send_datagram(&self, datagram: bytes::Bytes) -> Result<(), LinkError> {
        let current =
            self.shared.current().ok_or_else(|| LinkError::Unavailable("not connected".into()))?;
        current
            .conn
            .send_datagram(datagram)
            .map_err(|e| LinkError::Unavailable(format!("datagram: {e}")))
    }

    /// The datagrams received on every connection, in one channel; `None` after the first
    /// call (one reader). A reader that falls behind loses the newest.
    pub fn take_datagrams(&self) -> Option<mpsc::Receiver<bytes::Bytes>> {
        lock(&self.shared.datagrams_rx).take()
    }

    /// The largest datagram the current path carries, if datagrams are available.
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.shared.current().and_then(|c| c.conn.max_datagram_size())
    }

    /// Sends one raw request on the current connection and returns the raw response
    /// (error responses included). Prefer the typed methods where there is one.
    pub async fn request(&self, req: Request) -> Result<Response, LinkError> {
        let current = self.live().await?;
        conn::exchange(&current.conn, &req, self.shared.request_timing()).await
    }

    /// Opens a stream of its own on the current connection (a blob transfer) and writes
    /// the request frame `header` (a `BlobPut` or `BlobGet`) on it; the bytes follow on
    /// the returned send half, the answer comes on the receive half
    /// ([`Link::read_response`]).
    pub async fn open_stream(
        &self,
        header: Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), LinkError> {
        let current = self.live().await?;
        let frame = header.encode().map_err(|e| LinkError::Protocol(e.to_string()))?;
        let opened = async {
            let (mut send, recv) = current.conn.open_bi().await?;
            send.write_all(&frame).await?;
            Ok::<_, LinkError>((send, recv))
        };
        tokio::time::timeout(self.shared.config.request_timeout, opened)
            .await
            .map_err(|_| LinkError::Unavailable("opening a stream timed out".into()))?
    }

    /// Reads one response frame from a stream opened with [`Link::open_stream`].
    pub async fn read_response(recv: &mut quinn::RecvStream) -> Result<Response, LinkError> {
        let body = conn::read_frame(recv).await?;
        Response::decode(&body).map_err(|e| LinkError::Protocol(format!("bad response: {e}")))
    }

    /// Deletes the account `identity` names, authenticating as it on a connection of its
    /// own (the first candidate that answers; the link's connection and identity are left
    /// alone), then closes that connection. For a device that must erase an account it
    /// no longer acts for (e.g. after its data was reset while the relay was away).
    pub async fn delete_account_as(&self, identity: &Identity) -> Result<(), LinkError> {
        let shared = &self.shared;
        let mut last = LinkError::Unavailable("no relay address resolves".into());
        for (target, addr) in driver::candidates(shared).await {
            let hs = match conn::handshake(shared, target, addr, shared.keepalive()).await {
                Ok(hs) => hs,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let timing = shared.request_timing();
            let outcome = async {
                match conn::exchange(&hs.conn, &hs.auth_request(identity), timing).await? {
                    Response::Authenticated { .. } => {}
                    other => return Err(requests::refusal(other)),
                }
                match conn::exchange(&hs.conn, &Request::DeleteAccount, timing).await? {
                    Response::Ok => Ok(()),
                    other => Err(requests::refusal(other)),
                }
            }
            .await;
            hs.conn.close(0u32.into(), b"bye");
            return outcome;
        }
        Err(last)
    }
}

/// A UDP socket for the endpoint: on `local_ip` when given, else dual-stack where the
/// host has IPv6.
fn new_socket(local_ip: Option<IpAddr>) -> Result<std::net::UdpSocket, LinkError> {
    let bound = match local_ip {
        Some(ip) => std::net::UdpSocket::bind(SocketAddr::new(ip, 0)),
        None => std::net::UdpSocket::bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)))
            .or_else(|_| std::net::UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))),
    };
    bound.map_err(|e| LinkError::Config(format!("UDP socket: {e}")))
}
