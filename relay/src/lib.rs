//! The Letstalk relay: QUIC (quinn + rustls) server with device authentication, the
//! account and prekey directory, presence, and mailboxes that delete on acknowledgement.
//!
//! # Layout
//!
//! Along the path of a request, top first; a module uses only modules below it
//! (`tests/it/layering.rs` checks it).
//!
//! - `server.rs`: [`Relay`]: bind, accept loop, expiry timer, graceful shutdown.
//! - `endpoint.rs`, `tls.rs`: the UDP socket (8 MiB buffers) and the bounded QUIC
//!   transport; operator PEM files or a generated, reused self-signed certificate.
//! - `conn.rs`: one connection: request streams (bounded), one frame per stream, handed
//!   to the router; blob streams handed to their handler.
//! - `handlers/`: the request router (`mod.rs`) and one handler per area: `account`,
//!   `devices` (an account's devices, the link rendezvous), `directory`, `presence`,
//!   `messages`, `reports`, `blobs`, `calls`.
//! - `session.rs`: a connection made to act for one device of an account (registration
//!   in the hub and on the bus, push stream, delivery task of the device's mailbox,
//!   presence announcements, `require_auth`, a removed device logged out).
//! - `cluster/`: the bus between the nodes of a cluster relay (core NATS): `bus.rs` (the
//!   signals, this node's end), `follow.rs` (signals for a device connected here:
//!   wakes, pushes, media, logouts, takeovers).
//! - `media.rs`: call media datagrams forwarded along their routes.
//! - `state.rs`: `State`, what every connection shares.
//! - `hub.rs`: connected devices by account and device id (push routing, which
//!   connection acts for a device).
//! - `blobs.rs`: the blob store (files under `blobs/`, metadata in `blobs.db`, complete
//!   blobs shared through the object store in a cluster).
//! - `calls.rs`: call media routes.
//! - `ratelimit.rs`, `password.rs`: token buckets and per-address connection slots;
//!   Argon2id on dedicated threads behind a bounded queue.
//! - `fail.rs`, `error.rs`: a refused request (`Fail`); [`RelayError`].
//! - `config.rs`: flags, environment and TOML file resolved into [`Config`].
//! - `storage.rs`, `storage/sqlite/`, `storage/nats/`: the [`Storage`] trait, its
//!   SQLite back end (one machine) and its NATS JetStream back end (`--cluster`).
//! - `clock.rs`, `close.rs`, `ctx.rs`, `userid.rs`: the clock, close codes, what a
//!   connection's tasks share, the user id rule.
//! - `testing.rs`: an in-process relay on loopback, and `nats-server` processes, for
//!   tests.
//!
//! The wire protocol (stream usage, frames, versioning) is documented in `letstalk-wire`.
//!
//! **Invariant:** a connection acts only for the account and device it authenticated
//! as, and only while it is that device's current connection (`hub.rs`,
//! `session::require_auth`); every request that touches an account takes the account
//! and device from the session, never from the request.

mod blobs;
mod calls;
mod clock;
pub mod close;
mod cluster;
mod config;
mod conn;
mod ctx;
mod endpoint;
mod error;
mod fail;
mod handlers;
mod hub;
mod media;
mod password;
mod ratelimit;
mod server;
mod session;
mod state;
pub mod storage;
pub mod testing;
mod tls;
mod userid;

pub use config::{Args, Config, ConfigError, Limits, RateLimit, TlsSource};
pub use error::RelayError;
pub use server::{Relay, run};
pub use storage::nats::NatsStorage;
pub use storage::sqlite::SqliteStorage;
pub use storage::{Storage, StorageError};
pub use tls::{CERT_FILE, KEY_FILE};
pub use userid::normalize_user_id;
