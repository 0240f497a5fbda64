//! [`Fail`]: a refused request, and the refusals the handlers and the blob store share.

use letstalk_wire::{ErrorKind, Request, Response};
use tracing::warn;

use crate::storage::StorageError;
use crate::userid::normalize_user_id;

/// What a handler answers.
pub(crate) type Reply = Result<Response, Fail>;

/// A refused request; becomes a `Response::Error`. Kept small (a `Response` is large) so
/// `Result`s stay cheap to move.
#[derive(Debug)]
pub(crate) struct Fail {
    kind: ErrorKind,
    retry_after_ms: u64,
    message: String,
}

impl Fail {
    /// The error kind the client will see.
    pub(crate) fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl From<Fail> for Response {
    fn from(f: Fail) -> Self {
        Self::Error { kind: f.kind, retry_after_ms: f.retry_after_ms, message: f.message }
    }
}

pub(crate) fn fail(kind: ErrorKind, message: impl Into<String>) -> Fail {
    Fail { kind, retry_after_ms: 0, message: message.into() }
}

pub(crate) fn storage_fail(e: StorageError) -> Fail {
    match e {
        StorageError::Conflict => fail(ErrorKind::Conflict, "user id taken"),
        StorageError::NotFound => fail(ErrorKind::NotFound, "no such user"),
        StorageError::QuotaExceeded => {
            fail(ErrorKind::QuotaExceeded, "the recipient's mailbox is full")
        }
        StorageError::Blocked => {
            fail(ErrorKind::Blocked, "the recipient does not accept your messages")
        }
        // The message handlers answer a mismatch with `Mismatch`; anywhere else it is a
        // request that named devices wrongly.
        StorageError::Mismatch { .. } => {
            fail(ErrorKind::Invalid, "the copies do not match the recipient's devices")
        }
        StorageError::Backend(e) => {
            warn!(error = %e, "storage failure");
            fail(ErrorKind::Internal, "storage failure")
        }
    }
}

pub(crate) fn rate_limited(wait: std::time::Duration) -> Fail {
    Fail {
        kind: ErrorKind::RateLimited,
        retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
        message: "too many attempts".into(),
    }
}

/// A user id a request names, normalized, or `invalid`.
pub(crate) fn user_arg(raw: &str) -> Result<String, Fail> {
    normalize_user_id(raw).ok_or_else(|| fail(ErrorKind::Invalid, "invalid user id"))
}

/// A request the router handed to the handler of another area: a bug, answered
/// `internal` rather than a panic.
pub(crate) fn misrouted(req: &Request) -> Fail {
    warn!(?req, "request routed to the wrong handler");
    fail(ErrorKind::Internal, "request routed to the wrong handler")
}
