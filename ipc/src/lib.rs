//! The letstalkd local IPC protocol in Rust: the one serde boundary between the daemon
//! and its clients (UIs, the `letstalk` CLI, scripts and tests).
//!
//! The protocol is JSON-RPC 2.0, one JSON object per line, over a Unix stream socket.
//! `PROTOCOL.md` beside this crate is the project's copy of the contract; a test keeps
//! it in step with the method and event definitions here.
//!
//! # Layout
//! - [`error`]: JSON-RPC error codes, the stable `data.kind` values, [`RpcError`].
//! - [`types`]: params, results, objects and events of every implemented method.
//! - [`methods`]: the method table (names, param and result types) and its OpenRPC schema.
//! - [`framing`]: sans-IO line framing with the 1 MiB limit.
//! - [`jsonrpc`]: decoding a line into requests, encoding responses and notifications.
//! - [`socket`]: where the socket lives (the path resolution rules of the spec).
//! - [`client`]: an async client with many requests in flight and an event stream.

pub mod client;
pub mod error;
pub mod framing;
pub mod jsonrpc;
pub mod methods;
pub mod socket;
pub mod types;

pub use client::{Client, ClientError};
pub use error::{ErrorKind, RpcError};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest line (without its `\n`) either side accepts: 1 MiB.
pub const MAX_LINE: usize = 1 << 20;
