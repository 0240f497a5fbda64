//! Error codes and kinds of the protocol: standard JSON-RPC codes plus application
//! errors, each with a stable machine-readable `data.kind`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Application error kinds from the spec's error table. The daemon's internal errors map
/// one to one onto these; UIs match on [`ErrorKind::as_str`], never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    NotLoggedIn,
    RelayUnavailable,
    NotFound,
    Conflict,
    AuthFailed,
    Blocked,
    RateLimited,
    ConfirmRequired,
    TooLarge,
    InvalidState,
    ResyncRequired,
    UntrustedIdentity,
}

impl ErrorKind {
    /// Every kind, in code order.
    pub const ALL: [Self; 12] = [
        Self::NotLoggedIn,
        Self::RelayUnavailable,
        Self::NotFound,
        Self::Conflict,
        Self::AuthFailed,
        Self::Blocked,
        Self::RateLimited,
        Self::ConfirmRequired,
        Self::TooLarge,
        Self::InvalidState,
        Self::ResyncRequired,
        Self::UntrustedIdentity,
    ];

    /// The JSON-RPC error code of this kind.
    pub fn code(self) -> i64 {
        match self {
            Self::NotLoggedIn => -32000,
            Self::RelayUnavailable => -32001,
            Self::NotFound => -32002,
            Self::Conflict => -32003,
            Self::AuthFailed => -32004,
            Self::Blocked => -32005,
            Self::RateLimited => -32006,
            Self::ConfirmRequired => -32007,
            Self::TooLarge => -32008,
            Self::InvalidState => -32009,
            Self::ResyncRequired => -32010,
            Self::UntrustedIdentity => -32011,
        }
    }

    /// The stable `data.kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotLoggedIn => "not_logged_in",
            Self::RelayUnavailable => "relay_unavailable",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::AuthFailed => "auth_failed",
            Self::Blocked => "blocked",
            Self::RateLimited => "rate_limited",
            Self::ConfirmRequired => "confirm_required",
            Self::TooLarge => "too_large",
            Self::InvalidState => "invalid_state",
            Self::ResyncRequired => "resync_required",
            Self::UntrustedIdentity => "untrusted_identity",
        }
    }

    /// The kind named by a `data.kind` string, if it is one of ours.
    pub fn parse(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

/// Standard JSON-RPC codes.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL: i64 = -32603;
}

/// A JSON-RPC error object, as sent on the wire.
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema, thiserror::Error,
)]
#[error("{message} ({code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// An application error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            code: kind.code(),
            message: message.into(),
            data: Some(json!({"kind": kind.as_str()})),
        }
    }

    /// `rate_limited` with the time to wait.
    pub fn rate_limited(retry_after_ms: u64) -> Self {
        Self {
            code: ErrorKind::RateLimited.code(),
            message: format!("too many attempts; retry in {retry_after_ms} ms"),
            data: Some(json!({"kind": "rate_limited", "retry_after_ms": retry_after_ms})),
        }
    }

    pub fn parse_error(message: impl Into<String>) -> Self {
        Self { code: code::PARSE_ERROR, message: message.into(), data: None }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self { code: code::INVALID_REQUEST, message: message.into(), data: None }
    }

    /// The answer to a line over [`crate::MAX_LINE`].
    pub fn line_too_large() -> Self {
        Self {
            code: code::INVALID_REQUEST,
            message: format!("line longer than {} bytes", crate::MAX_LINE),
            data: Some(json!({"kind": "too_large"})),
        }
    }

    pub fn method_not_found(method: &str) -> Self {
        Self {
            code: code::METHOD_NOT_FOUND,
            message: format!("method not found: {method}"),
            data: None,
        }
    }

    /// `-32602` naming the offending field in `data.field` (a dotted path; empty for the
    /// params value as a whole).
    pub fn invalid_params(field: &str, message: impl Into<String>) -> Self {
        Self {
            code: code::INVALID_PARAMS,
            message: message.into(),
            data: Some(json!({"field": field})),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self { code: code::INTERNAL, message: message.into(), data: None }
    }

    /// The application kind, if this error carries one.
    pub fn kind(&self) -> Option<ErrorKind> {
        self.data.as_ref()?.get("kind")?.as_str().and_then(ErrorKind::parse)
    }

    /// `data.field`, for invalid params.
    pub fn field(&self) -> Option<&str> {
        self.data.as_ref()?.get("field")?.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_codes_are_distinct() {
        let mut codes: Vec<i64> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(k));
            assert_eq!(RpcError::new(k, "x").kind(), Some(k));
        }
    }
}
