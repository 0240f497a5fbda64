//! The daemon's side of the relay connection: one long-lived QUIC connection with device
//! authentication on every (re)connect, automatic reconnection with backoff, typed
//! requests, and pushes (messages, presence, profile changes, logged out) on a channel.
//!
//! # Layout
//!
//! - `lib.rs`: [`Link`], its configuration, status and the request methods.
//! - `driver.rs`: the background task: connect, hello, authenticate, read pushes,
//!   reconnect with exponential backoff and jitter (1 s to 60 s by default).
//! - `tls.rs`: TLS 1.3 client config trusting the relay's PEM certificate, ALPN
//!   `letstalk/1`, keepalive and idle timeout.
//! - `error.rs`: [`LinkError`] and its IPC [`Kind`].
//!
//! The wire protocol is documented in `letstalk-wire`. The daemon owns key storage: it
//! hands the link an Ed25519 [`SigningKey`]; the link signs each connection's challenge
//! with it and never stores or logs it.

mod driver;
mod error;
mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::Signer;
pub use ed25519_dalek::SigningKey;
pub use error::{Kind, LinkError};
pub use letstalk_wire::{Avatar, AvatarMeta, AvatarUpdate, Bundle, PreKey, PresenceInfo, Profile};
use letstalk_wire::{ErrorKind, MAX_AVATAR_LEN, MAX_MESSAGE_LEN, Request, Response, auth_message};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

/// How to reach the relay.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `HOST:PORT`; HOST is also the TLS name.
    pub relay: String,
    /// A PEM file with the relay's certificate or its CA.
    pub trusted_cert: Option<PathBuf>,
    /// QUIC keepalive (cellular NATs forget UDP bindings in ~30 s).
    pub keepalive: Duration,
    /// The connection is considered dead after this long without packets.
    pub idle_timeout: Duration,
    /// First reconnect delay...
    pub backoff_min: Duration,
    /// ...doubling up to this.
    pub backoff_max: Duration,
    /// A request without an answer after this fails as `relay_unavailable`.
    pub request_timeout: Duration,
    /// Sent in `Hello`, for the relay's logs.
    pub client_name: String,
}

impl LinkConfig {
    /// Defaults: keepalive 20 s, idle timeout 60 s, backoff 1 s to 60 s.
    pub fn new(relay: impl Into<String>, trusted_cert: Option<PathBuf>) -> Self {
        Self {
            relay: relay.into(),
            trusted_cert,
            keepalive: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(15),
            client_name: format!("letstalk-link {}", env!("CARGO_PKG_VERSION")),
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

/// Observable link status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    /// Connection state.
    pub state: ConnState,
    /// The relay address as configured (`HOST:PORT`).
    pub address: String,
    /// Smoothed round-trip time while connected.
    pub rtt_ms: Option<u32>,
    /// The account the connection acts for, once authenticated.
    pub user_id: Option<String>,
}

/// A message pushed by the relay. Acknowledge it with [`Link::ack`] once it is stored on
/// the device; until then the relay keeps it and pushes it again on the next connection.
#[derive(Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The relay's id for acknowledging.
    pub delivery_id: u64,
    /// Sending account.
    pub from: String,
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

/// What the relay tells the device on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// A message.
    Message(IncomingMessage),
    /// A watched user's presence changed.
    Presence(PresenceInfo),
    /// A watched user's profile changed.
    ProfileChanged(Profile),
    /// The account was logged in on another device: this device is unbound, and the link
    /// has dropped its identity.
    LoggedOut,
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

/// The live connection, if any.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    pub(crate) conn: quinn::Connection,
    pub(crate) challenge: [u8; 32],
}

/// State shared between the [`Link`] handles and the driver task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: LinkConfig,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) client_config: quinn::ClientConfig,
    pub(crate) identity: Mutex<Option<Identity>>,
    pub(crate) current: Mutex<Option<Current>>,
    pub(crate) status: watch::Sender<LinkStatus>,
    pub(crate) pushes: mpsc::Sender<Push>,
    pub(crate) reconnect: Notify,
    pub(crate) cancel: CancellationToken,
}

impl Shared {
    pub(crate) fn identity(&self) -> Option<Identity> {
        self.identity.lock().ok().and_then(|g| g.clone())
    }
    pub(crate) fn set_identity(&self, identity: Option<Identity>) {
        if let Ok(mut g) = self.identity.lock() {
            *g = identity;
        }
    }
    pub(crate) fn current(&self) -> Option<Current> {
        self.current.lock().ok().and_then(|g| g.clone())
    }
    pub(crate) fn set_user(&self, user: Option<String>) {
        self.status.send_modify(|s| s.user_id = user);
    }
}

/// A handle on the relay link. Cheap to clone; the background task stops when the last
/// handle is dropped or [`Link::shutdown`] is called.
#[derive(Debug, Clone)]
pub struct Link {
    shared: Arc<Shared>,
    _guard: Arc<DropGuard>,
}

/// Pushes waiting for the daemon before the link stops reading (QUIC flow control then
/// slows the relay down for this device only).
const PUSH_CHANNEL: usize = 256;

impl Link {
    /// Starts the link: a background task connects, authenticates with `identity` when
    /// given, and reconnects whenever the connection drops. Must be called within a tokio
    /// runtime. Returns the handle and the receiver of pushes.
    pub fn start(
        config: LinkConfig,
        identity: Option<Identity>,
    ) -> Result<(Self, mpsc::Receiver<Push>), LinkError> {
        let client_config = tls::client_config(&config)?;
        let endpoint =
            quinn::Endpoint::client(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)))
                .or_else(|_| quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0))))
                .map_err(|e| LinkError::Config(format!("UDP socket: {e}")))?;
        let (pushes, rx) = mpsc::channel(PUSH_CHANNEL);
        let (status, _) = watch::channel(LinkStatus {
            state: ConnState::Offline,
            address: config.relay.clone(),
            rtt_ms: None,
            user_id: None,
        });
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            config,
            endpoint,
            client_config,
            identity: Mutex::new(identity),
            current: Mutex::new(None),
            status,
            pushes,
            reconnect: Notify::new(),
            cancel: cancel.clone(),
        });
        tokio::spawn(driver::run(shared.clone()));
        Ok((Self { shared, _guard: Arc::new(cancel.drop_guard()) }, rx))
    }

    /// Watches the connection state, address and RTT.
    pub fn status(&self) -> watch::Receiver<LinkStatus> {
        self.shared.status.subscribe()
    }

    /// Waits until connected (and, with an identity, authenticated), at most `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), LinkError> {
        let mut rx = self.status();
        let want_user = self.shared.identity().map(|i| i.user_id);
        let ok = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| {
                s.state == ConnState::Connected && (want_user.is_none() || s.user_id == want_user)
            }),
        )
        .await;
        match ok {
            Ok(Ok(_)) => Ok(()),
            _ => Err(LinkError::Unavailable("not connected".into())),
        }
    }

    /// The identity in use, if any.
    pub fn identity(&self) -> Option<Identity> {
        self.shared.identity()
    }

    /// Sets or clears the identity and reconnects so the new one takes effect.
    pub fn set_identity(&self, identity: Option<Identity>) {
        self.shared.set_identity(identity);
        self.reconnect_now();
    }

    /// Drops the current connection (if any) and connects again at once, e.g. after a
    /// network change.
    pub fn reconnect_now(&self) {
        self.shared.reconnect.notify_one();
    }

    /// Moves the endpoint to a new UDP socket (network change): QUIC migrates the live
    /// connection to it.
    pub fn rebind(&self, socket: std::net::UdpSocket) -> std::io::Result<()> {
        self.shared.endpoint.rebind(socket)
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

    fn live(&self) -> Result<Current, LinkError> {
        self.shared.current().ok_or_else(|| LinkError::Unavailable("not connected".into()))
    }

    /// Sends one QUIC datagram (call media: a `MediaDatagram`) on the current
    /// connection. Never waits: a full send buffer drops the oldest datagram.
    pub fn send_datagram(&self, datagram: bytes::Bytes) -> Result<(), LinkError> {
        self.live()?
            .conn
            .send_datagram(datagram)
            .map_err(|e| LinkError::Unavailable(format!("datagram: {e}")))
    }

    /// The next datagram received on the current connection.
    pub async fn read_datagram(&self) -> Result<bytes::Bytes, LinkError> {
        self.live()?
            .conn
            .read_datagram()
            .await
            .map_err(|e| LinkError::Unavailable(format!("datagram: {e}")))
    }

    /// Sends one raw request on the current connection and returns the raw response
    /// (error responses included). For tools and tests; prefer the typed methods.
    pub async fn request(&self, req: Request) -> Result<Response, LinkError> {
        let current = self.live()?;
        driver::request(&current.conn, &req, self.shared.config.request_timeout).await
    }

    /// Opens a stream of its own on the current connection (a blob transfer) and writes
    /// the request frame `header` (a `BlobPut` or `BlobGet`) on it; the bytes follow on
    /// the returned send half, the answer comes on the receive half
    /// ([`Link::read_response`]).
    pub async fn open_stream(
        &self,
        header: Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), LinkError> {
        let current = self.live()?;
        let frame = header.encode().map_err(|e| LinkError::Protocol(e.to_string()))?;
        let (mut send, recv) =
            current.conn.open_bi().await.map_err(|e| LinkError::Unavailable(e.to_string()))?;
        send.write_all(&frame).await.map_err(|e| LinkError::Unavailable(e.to_string()))?;
        Ok((send, recv))
    }

    /// Reads one response frame from a stream opened with [`Link::open_stream`].
    pub async fn read_response(recv: &mut quinn::RecvStream) -> Result<Response, LinkError> {
        let body = driver::read_frame(recv).await?;
        Response::decode(&body).map_err(|e| LinkError::Protocol(format!("bad response: {e}")))
    }

    /// Sends a request and turns an error response into [`LinkError::Relay`].
    async fn call_on(&self, conn: &quinn::Connection, req: Request) -> Result<Response, LinkError> {
        match driver::request(conn, &req, self.shared.config.request_timeout).await? {
            Response::Error { kind, retry_after_ms, message } => {
                if matches!(kind, ErrorKind::UnknownDevice) {
                    self.shared.set_identity(None);
                    self.shared.set_user(None);
                }
                Err(LinkError::Relay { kind, message, retry_after_ms })
            }
            r => Ok(r),
        }
    }

    async fn call(&self, req: Request) -> Result<Response, LinkError> {
        let current = self.live()?;
        self.call_on(&current.conn, req).await
    }

    async fn bind_with(
        &self,
        key: SigningKey,
        user_id: &str,
        make: impl FnOnce([u8; 32], [u8; 64]) -> Request,
    ) -> Result<String, LinkError> {
        let current = self.live()?;
        let user = user_id.to_ascii_lowercase();
        let signature = key.sign(&auth_message(&current.challenge, &user)).to_bytes();
        let req = make(key.verifying_key().to_bytes(), signature);
        match self.call_on(&current.conn, req).await? {
            Response::Authenticated { user_id } => {
                self.shared.set_identity(Some(Identity { user_id: user_id.clone(), key }));
                self.shared.set_user(Some(user_id.clone()));
                Ok(user_id)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Creates an account and binds this device's `key` to it; the link then
    /// authenticates with it on every reconnect. Returns the lowercased user id.
    pub async fn register(&self, reg: Registration, key: SigningKey) -> Result<String, LinkError> {
        let user = reg.user_id.to_ascii_lowercase();
        self.bind_with(key, &user.clone(), |device_key, signature| Request::Register {
            user_id: user,
            password: reg.password,
            email: reg.email,
            nickname: reg.nickname,
            device_key,
            signature,
            identity: reg.identity,
        })
        .await
    }

    /// Binds this device's `key` to an existing account (the account moves here; its old
    /// device gets `LoggedOut`).
    pub async fn login(
        &self,
        user_id: &str,
        password: &str,
        key: SigningKey,
    ) -> Result<String, LinkError> {
        let user = user_id.to_ascii_lowercase();
        let password = password.to_owned();
        self.bind_with(key, &user.clone(), |device_key, signature| Request::Login {
            user_id: user,
            password,
            device_key,
            signature,
        })
        .await
    }

    /// Unbinds this device from the account and forgets the identity.
    pub async fn logout(&self) -> Result<(), LinkError> {
        expect_ok(self.call(Request::Logout).await?)?;
        self.shared.set_identity(None);
        self.shared.set_user(None);
        Ok(())
    }

    /// Deletes the account on the relay and forgets the identity.
    pub async fn delete_account(&self) -> Result<(), LinkError> {
        expect_ok(self.call(Request::DeleteAccount).await?)?;
        self.shared.set_identity(None);
        self.shared.set_user(None);
        Ok(())
    }

    /// Changes the password.
    pub async fn change_password(
        &self,
        old_password: &str,
        new_password: &str,
    ) -> Result<(), LinkError> {
        expect_ok(
            self.call(Request::ChangePassword {
                old_password: old_password.to_owned(),
                new_password: new_password.to_owned(),
            })
            .await?,
        )
    }

    /// One's own profile (with email).
    pub async fn profile(&self) -> Result<Profile, LinkError> {
        match self.call(Request::GetProfile).await? {
            Response::Profile(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    /// Changes one's own profile; watchers get a `ProfileChanged` push.
    pub async fn update_profile(
        &self,
        nickname: Option<String>,
        email: Option<String>,
        avatar: AvatarUpdate,
    ) -> Result<Profile, LinkError> {
        if let AvatarUpdate::Set(a) = &avatar
            && a.data.len() > MAX_AVATAR_LEN
        {
            return Err(LinkError::TooLarge("avatar"));
        }
        match self.call(Request::UpdateProfile { nickname, email, avatar }).await? {
            Response::Profile(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    /// Another user's public profile; `not_found` if no such account.
    pub async fn lookup_user(&self, user_id: &str) -> Result<Profile, LinkError> {
        match self.call(Request::LookupUser { user_id: user_id.to_owned() }).await? {
            Response::Profile(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    /// A user's avatar.
    pub async fn fetch_avatar(&self, user_id: &str) -> Result<Avatar, LinkError> {
        match self.call(Request::FetchAvatar { user_id: user_id.to_owned() }).await? {
            Response::Avatar(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    /// Uploads identity bytes and prekeys; returns how many one-time prekeys the relay
    /// now holds.
    pub async fn upload_keys(&self, keys: KeyUpload) -> Result<u32, LinkError> {
        let req = Request::UploadKeys {
            identity: keys.identity,
            signed_prekey: keys.signed_prekey,
            one_time_prekeys: keys.one_time_prekeys,
            last_resort: keys.last_resort,
        };
        match self.call(req).await? {
            Response::KeyCount { one_time_remaining } => Ok(one_time_remaining),
            other => Err(unexpected(&other)),
        }
    }

    /// How many one-time prekeys the relay still holds for this account.
    pub async fn key_count(&self) -> Result<u32, LinkError> {
        match self.call(Request::KeyCount).await? {
            Response::KeyCount { one_time_remaining } => Ok(one_time_remaining),
            other => Err(unexpected(&other)),
        }
    }

    /// A user's prekey bundle (takes one of their one-time prekeys).
    pub async fn fetch_bundle(&self, user_id: &str) -> Result<Bundle, LinkError> {
        match self.call(Request::FetchBundle { user_id: user_id.to_owned() }).await? {
            Response::Bundle(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// Adds and removes watched users; returns the presence of the added ones that exist.
    pub async fn watch(
        &self,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<Vec<PresenceInfo>, LinkError> {
        match self.call(Request::Watch { add, remove }).await? {
            Response::Presence { users } => Ok(users),
            other => Err(unexpected(&other)),
        }
    }

    /// Hands a message to the relay; returns once the relay has persisted it. Retrying
    /// with the same `msg_id` never stores it twice.
    pub async fn send(&self, to: &str, msg_id: &str, body: Vec<u8>) -> Result<Sent, LinkError> {
        if body.len() > MAX_MESSAGE_LEN {
            return Err(LinkError::TooLarge("message"));
        }
        match self
            .call(Request::Send { to: to.to_owned(), msg_id: msg_id.to_owned(), body })
            .await?
        {
            Response::Sent { server_ts, duplicate } => Ok(Sent { server_ts, duplicate }),
            other => Err(unexpected(&other)),
        }
    }

    /// Tells the relay these pushed messages are stored on the device (it deletes them).
    pub async fn ack(&self, delivery_ids: &[u64]) -> Result<(), LinkError> {
        for chunk in delivery_ids.chunks(letstalk_wire::MAX_LIST) {
            expect_ok(self.call(Request::Ack { delivery_ids: chunk.to_vec() }).await?)?;
        }
        Ok(())
    }

    /// Measures one request round trip.
    pub async fn ping(&self) -> Result<Duration, LinkError> {
        let nonce: u64 = rand::random();
        let started = Instant::now();
        match self.call(Request::Ping { nonce }).await? {
            Response::Pong { nonce: n } if n == nonce => Ok(started.elapsed()),
            other => Err(unexpected(&other)),
        }
    }
}

fn expect_ok(r: Response) -> Result<(), LinkError> {
    match r {
        Response::Ok => Ok(()),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(r: &Response) -> LinkError {
    LinkError::Protocol(format!("unexpected response {r:?}"))
}
