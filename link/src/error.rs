//! The link's errors and how they map onto the IPC error kinds.

use letstalk_wire::ErrorKind;

/// The IPC `data.kind` an error maps to (see the IPC protocol's error table). `Invalid`
/// and `QuotaExceeded` have no row there: the daemon reports them as invalid params and
/// as a failed message respectively; `Internal` is `-32603`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `not_logged_in`: no account bound on this device, or it was moved elsewhere.
    NotLoggedIn,
    /// `relay_unavailable`: not connected, or the connection dropped.
    RelayUnavailable,
    /// `not_found`.
    NotFound,
    /// `conflict`.
    Conflict,
    /// `auth_failed`.
    AuthFailed,
    /// `blocked`.
    Blocked,
    /// `rate_limited` (see [`LinkError::retry_after_ms`]).
    RateLimited,
    /// `too_large`.
    TooLarge,
    /// Bad input (IPC `-32602`).
    Invalid,
    /// The recipient's mailbox is full (retry later).
    QuotaExceeded,
    /// Anything else (IPC `-32603`).
    Internal,
}

impl Kind {
    /// The IPC `data.kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotLoggedIn => "not_logged_in",
            Self::RelayUnavailable => "relay_unavailable",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::AuthFailed => "auth_failed",
            Self::Blocked => "blocked",
            Self::RateLimited => "rate_limited",
            Self::TooLarge => "too_large",
            Self::Invalid => "invalid",
            Self::QuotaExceeded => "quota_exceeded",
            Self::Internal => "internal",
        }
    }
}

/// Why a link operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Not connected to the relay, the connection dropped, or no answer in time.
    #[error("relay unavailable: {0}")]
    Unavailable(String),
    /// The operation needs an account bound on this device.
    #[error("not logged in")]
    NotLoggedIn,
    /// The relay refused the request.
    #[error("relay refused ({kind:?}): {message}")]
    Relay {
        /// Its reason.
        kind: ErrorKind,
        /// Its words.
        message: String,
        /// For `RateLimited`.
        retry_after_ms: u64,
    },
    /// Checked locally before sending (e.g. a message over 256 KiB).
    #[error("{0} too large")]
    TooLarge(&'static str),
    /// Bad configuration (relay address, certificate file).
    #[error("configuration: {0}")]
    Config(String),
    /// The relay answered something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl LinkError {
    /// The IPC error kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Unavailable(_) => Kind::RelayUnavailable,
            Self::NotLoggedIn => Kind::NotLoggedIn,
            Self::TooLarge(_) => Kind::TooLarge,
            Self::Config(_) | Self::Protocol(_) => Kind::Internal,
            Self::Relay { kind, .. } => match kind {
                ErrorKind::Invalid | ErrorKind::Unsupported => Kind::Invalid,
                ErrorKind::AuthFailed => Kind::AuthFailed,
                ErrorKind::Conflict => Kind::Conflict,
                ErrorKind::NotFound => Kind::NotFound,
                ErrorKind::RateLimited => Kind::RateLimited,
                ErrorKind::TooLarge => Kind::TooLarge,
                ErrorKind::QuotaExceeded => Kind::QuotaExceeded,
                ErrorKind::Blocked => Kind::Blocked,
                ErrorKind::UnknownDevice | ErrorKind::Unauthenticated => Kind::NotLoggedIn,
                ErrorKind::Internal | ErrorKind::Other(_) => Kind::Internal,
            },
        }
    }

    /// Whether the same request may succeed later without any change (relay down, rate
    /// limit, full mailbox, relay failure); otherwise the refusal is final (no such user,
    /// blocked, too large, invalid, not logged in).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind(),
            Kind::RelayUnavailable | Kind::RateLimited | Kind::QuotaExceeded | Kind::Internal
        )
    }

    /// How long to wait before retrying, for `rate_limited`.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::Relay { kind: ErrorKind::RateLimited, retry_after_ms, .. } => {
                Some(*retry_after_ms)
            }
            _ => None,
        }
    }
}

/// A connection or stream that failed under a request: the relay is unavailable (the
/// connection is gone, or the stream was refused or reset).
macro_rules! unavailable_from {
    ($($t:ty),*) => {$(
        impl From<$t> for LinkError {
            fn from(e: $t) -> Self {
                Self::Unavailable(e.to_string())
            }
        }
    )*};
}

unavailable_from!(quinn::ConnectionError, quinn::WriteError, quinn::ReadExactError);
