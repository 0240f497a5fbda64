//! The Letstalk relay: QUIC (quinn + rustls) server with device authentication, the
//! account and prekey directory, presence, and mailboxes that delete on acknowledgement.
//!
//! # Layout
//!
//! - `config.rs`: flags, environment and TOML file resolved into [`Config`].
//! - `tls.rs`: operator PEM files or a generated, reused self-signed certificate.
//! - `endpoint.rs`: the UDP socket (8 MiB buffers) and the bounded QUIC transport.
//! - `server.rs`: [`Relay`]: bind, accept loop, expiry timer, graceful shutdown.
//! - `conn.rs`: one connection: request streams, the device session, pushes, delivery.
//! - `handlers.rs`: the meaning of each request.
//! - `blobs.rs`: file blobs (files under `blobs/`, metadata in `blobs.db`): upload and
//!   download streams with resume, release by recipients, expiry.
//! - `calls.rs`: call media routes and the datagram forwarding of a connection.
//! - `hub.rs`: connected devices (push routing, which connection acts for an account).
//! - `cluster.rs`: the bus between the nodes of a cluster relay (core NATS): wakes,
//!   pushes, logouts and takeovers for a device connected to another node.
//! - `ratelimit.rs`, `password.rs`: token buckets and per-address connection slots;
//!   Argon2id on dedicated threads behind a bounded queue.
//! - `storage.rs`, `storage/sqlite.rs`, `storage/nats.rs`: the [`Storage`] trait, its
//!   SQLite back end (one machine) and its NATS JetStream back end (`--cluster`).
//! - `testing.rs`: an in-process relay on loopback for tests.
//!
//! The wire protocol (stream usage, frames, versioning) is documented in `letstalk-wire`.
//!
//! **Invariant:** a connection acts only for the account it authenticated as, and only
//! while it is that account's current connection (`hub.rs`); every request that touches
//! an account takes the account from the session, never from the request.

mod blobs;
mod calls;
mod cluster;
mod config;
mod conn;
mod endpoint;
mod handlers;
mod hub;
mod password;
mod ratelimit;
mod server;
pub mod storage;
pub mod testing;
mod tls;

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;

pub use config::{Args, Config, ConfigError, Limits, RateLimit, TlsSource};
pub use conn::close;
pub use handlers::normalize_user_id;
pub use server::{Relay, run};
pub use storage::{NatsStorage, SqliteStorage, Storage, StorageError};
pub use tls::{CERT_FILE, KEY_FILE};
use tokio_util::sync::CancellationToken;

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Bad configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// A file or socket failed.
    #[error("{0}")]
    Io(String),
    /// Certificate or key problems.
    #[error("TLS: {0}")]
    Tls(String),
    /// The storage failed to open.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct State<S> {
    pub(crate) storage: S,
    pub(crate) hub: hub::Hub,
    pub(crate) limits: Limits,
    pub(crate) hasher: password::Hasher,
    pub(crate) register_ip: ratelimit::Limiter<IpAddr>,
    pub(crate) login_ip: ratelimit::Limiter<IpAddr>,
    pub(crate) login_account: ratelimit::Limiter<String>,
    /// Directory reads (lookup, avatar, bundle) per requesting account.
    pub(crate) directory: ratelimit::Limiter<String>,
    /// Reports and feedback per account.
    pub(crate) reports_account: ratelimit::Limiter<String>,
    /// Concurrent connections per address.
    pub(crate) conn_slots: ratelimit::ConnSlots,
    pub(crate) node_id: String,
    pub(crate) next_conn: AtomicU64,
    pub(crate) cancel: CancellationToken,
    /// File blobs.
    pub(crate) blobs: blobs::Blobs,
    /// Call media routes.
    pub(crate) calls: calls::Routes,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
