//! Where the daemon's socket lives: the path resolution rules of the spec, shared by the
//! daemon and every client so they cannot disagree.

use std::path::PathBuf;

/// The environment variable naming the socket.
pub const SOCKET_ENV: &str = "LETSTALK_SOCKET";
/// The system-wide socket, for a daemon running as a system service.
pub const SYSTEM_SOCKET: &str = "/run/letstalk/letstalkd.sock";

/// The socket under `$XDG_RUNTIME_DIR`, if that variable is set.
pub fn user_socket() -> Option<PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("letstalk").join("letstalkd.sock"))
}

/// The default path when nothing names one: `$XDG_RUNTIME_DIR/letstalk/letstalkd.sock`,
/// else `/run/letstalk/letstalkd.sock`.
pub fn default_socket() -> PathBuf {
    user_socket().unwrap_or_else(|| PathBuf::from(SYSTEM_SOCKET))
}

/// A client's resolution: `--socket` (given as `flag`), `LETSTALK_SOCKET`, then the
/// defaults.
pub fn client_socket(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os(SOCKET_ENV).filter(|s| !s.is_empty()).map(PathBuf::from))
        .unwrap_or_else(default_socket)
}
