//! The daemon's view of the relay: the operations the methods need, as an object-safe
//! trait ([`RelayApi`]), and the mapping of relay errors onto IPC error kinds.
//!
//! The real implementation drives the QUIC link (`relay/link.rs`); keeping the methods
//! written against this trait keeps them independent of the transport.

use futures::future::BoxFuture;

use letstalk_ipc::types::RelayState;
use letstalk_ipc::{ErrorKind, RpcError};
use letstalk_wire::{Request, Response};

pub mod link;

/// A relay failure as the daemon sees it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RelayError {
    /// Not connected (or the connection dropped mid-request).
    #[error("the relay cannot be reached")]
    Unavailable,
    /// The relay answered with an error.
    #[error("relay: {message}")]
    Refused { kind: letstalk_wire::ErrorKind, retry_after_ms: u64, message: String },
    /// The relay answered something this request does not expect.
    #[error("unexpected answer from the relay")]
    Unexpected,
}

impl RelayError {
    /// The IPC error for this failure; `field` names the param an `Invalid` refers to.
    pub fn to_rpc(&self, field: &str) -> RpcError {
        use letstalk_wire::ErrorKind as W;
        match self {
            Self::Unavailable => {
                RpcError::new(ErrorKind::RelayUnavailable, "the relay cannot be reached now")
            }
            Self::Unexpected => RpcError::internal("unexpected answer from the relay"),
            Self::Refused { kind, retry_after_ms, message } => match kind {
                W::Invalid => RpcError::invalid_params(field, message.clone()),
                W::AuthFailed => RpcError::new(ErrorKind::AuthFailed, "wrong user ID or password"),
                W::Conflict => RpcError::new(ErrorKind::Conflict, message.clone()),
                W::NotFound => RpcError::new(ErrorKind::NotFound, message.clone()),
                W::RateLimited => RpcError::rate_limited(*retry_after_ms),
                W::TooLarge => RpcError::new(ErrorKind::TooLarge, message.clone()),
                W::QuotaExceeded => RpcError::rate_limited(retry_after_ms.max(&1000).to_owned()),
                W::Blocked => RpcError::new(ErrorKind::Blocked, message.clone()),
                W::UnknownDevice | W::Unauthenticated => RpcError::new(
                    ErrorKind::NotLoggedIn,
                    "this device is not logged in on the relay",
                ),
                W::Unsupported | W::Internal | W::Other(_) => {
                    RpcError::internal(format!("relay: {message}"))
                }
            },
        }
    }
}

/// Who this device is on the relay: the account and the Ed25519 seed binding it.
#[derive(Clone)]
pub struct Credentials {
    pub user_id: String,
    pub device_seed: zeroize::Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user_id", &self.user_id).finish_non_exhaustive()
    }
}

/// What the relay sends without being asked.
#[derive(Debug, Clone)]
pub enum Pushed {
    Message {
        delivery_id: u64,
        from: String,
        /// Which of the sending account's devices sent it.
        from_device: u32,
        msg_id: String,
        body: Vec<u8>,
    },
    Presence(letstalk_wire::PresenceInfo),
    ProfileChanged(letstalk_wire::Profile),
    LoggedOut,
    /// The account's device list changed (a device linked or removed elsewhere).
    DevicesChanged,
    /// The connection state changed (connected, connecting, offline).
    State(RelayState),
}

/// A stream of its own to the relay, for a blob transfer: the request frame is already
/// written on `send`; the bytes (up or down) and the answer frame follow.
pub struct RelayStream {
    pub send: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    pub recv: std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>,
}

impl std::fmt::Debug for RelayStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayStream")
    }
}

/// The relay operations the daemon uses.
pub trait RelayApi: Send + Sync + std::fmt::Debug {
    /// Creates an account and binds this device (on success the link authenticates
    /// every later connection with `credentials`).
    fn register(
        &self,
        credentials: Credentials,
        password: String,
        email: String,
        nickname: String,
        identity: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), RelayError>>;
    /// Binds this device to an existing account.
    fn login(
        &self,
        credentials: Credentials,
        password: String,
    ) -> BoxFuture<'_, Result<(), RelayError>>;
    /// Authenticates as a device another device of the account has just added (linking);
    /// on success the link authenticates every later connection with `credentials`.
    fn authenticate(&self, credentials: Credentials) -> BoxFuture<'_, Result<(), RelayError>>;
    /// Which of the account's devices this one is, once authenticated.
    fn device_id(&self) -> Option<u32>;
    /// Deletes the account `credentials` name, authenticating as it on a connection of
    /// its own (the link's own connection and credentials are left alone): what
    /// "restore defaults" owes a relay that was unreachable at the time.
    fn delete_account_as(&self, credentials: Credentials) -> BoxFuture<'_, Result<(), RelayError>>;
    /// Sets (or clears) the credentials used to authenticate connections.
    fn set_credentials(&self, credentials: Option<Credentials>);
    /// One request on the authenticated connection.
    fn request(&self, request: Request) -> BoxFuture<'_, Result<Response, RelayError>>;
    /// The connection state and last round-trip time.
    fn status(&self) -> (RelayState, Option<u64>);
    /// The address, as configured.
    fn address(&self) -> String;
    /// The keep-alive interval to use (by network type); applied to new connections.
    fn set_keepalive(&self, _keepalive: std::time::Duration) {}
    /// Opens a stream of its own on the authenticated connection and writes `header`
    /// (a `BlobPut` or `BlobGet`) on it.
    fn open_stream(&self, header: Request) -> BoxFuture<'_, Result<RelayStream, RelayError>>;
    /// Sends one call media datagram; never waits (a full buffer drops the oldest).
    fn send_datagram(&self, datagram: Vec<u8>) -> Result<(), RelayError>;
    /// Received call media datagrams, for whoever takes them (the call manager).
    fn take_datagrams(&self) -> Option<tokio::sync::mpsc::Receiver<bytes::Bytes>>;
    /// Largest datagram the current path carries, if datagrams are available.
    fn max_datagram_size(&self) -> Option<usize>;
}

/// `request` expecting `Response::Ok`.
pub async fn expect_ok(relay: &dyn RelayApi, request: Request) -> Result<(), RelayError> {
    match relay.request(request).await? {
        Response::Ok => Ok(()),
        Response::Error { kind, retry_after_ms, message } => {
            Err(RelayError::Refused { kind, retry_after_ms, message })
        }
        _ => Err(RelayError::Unexpected),
    }
}

/// Turns an error response into `Err`, passing anything else through.
pub fn check(response: Response) -> Result<Response, RelayError> {
    match response {
        Response::Error { kind, retry_after_ms, message } => {
            Err(RelayError::Refused { kind, retry_after_ms, message })
        }
        other => Ok(other),
    }
}
