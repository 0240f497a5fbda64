//! The daemon's version, as the IPC and the relay are told it.

/// The daemon's version string as `system.hello` reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
