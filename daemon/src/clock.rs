//! The wall clock as the store records it, and the target that times a message's path.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The `tracing` target of the debug events that time one message's path through the
/// daemon (accepted, encrypted, handed to the relay, stored there, pushed, decrypted,
/// committed). They carry message and relay ids, never content or keys;
/// `letstalk-bench messaging --trace` turns them on (`--log warn,letstalkd::path=debug`)
/// and prints where the time goes.
pub const PATH: &str = "letstalkd::path";
