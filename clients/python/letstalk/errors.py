"""Errors: every daemon error is a `LetstalkError` carrying the protocol's stable
`kind` (`data.kind`, e.g. "not_found", "blocked"), with a subclass per kind a script is
likely to catch."""

from __future__ import annotations

from typing import Any, Optional


class LetstalkError(Exception):
    """An error answer from the daemon.

    `code` is the JSON-RPC code, `kind` the stable machine-readable `data.kind` (None for
    the standard JSON-RPC errors without one), `field` the parameter at fault for
    -32602, `retry_after_ms` the wait asked for by `rate_limited`."""

    def __init__(
        self,
        code: int,
        message: str,
        kind: Optional[str] = None,
        field: Optional[str] = None,
        retry_after_ms: Optional[int] = None,
        data: Optional[dict] = None,
    ) -> None:
        super().__init__(f"{message} ({code}{', ' + kind if kind else ''})")
        self.code = code
        self.message = message
        self.kind = kind
        self.field = field
        self.retry_after_ms = retry_after_ms
        self.data = data or {}


class MethodNotFound(LetstalkError):
    """-32601: the daemon does not implement this method (yet)."""


class InvalidParams(LetstalkError):
    """-32602: a parameter is missing or has the wrong type; `field` names it."""


class NotLoggedIn(LetstalkError):
    """`not_logged_in`: the method needs an account on this device."""


class RelayUnavailable(LetstalkError):
    """`relay_unavailable`: the method needs the relay now and it cannot be reached."""


class NotFound(LetstalkError):
    """`not_found`: no such user, group, message, call or file."""


class Blocked(LetstalkError):
    """`blocked`: the recipient blocks you or everyone, or you block them."""


class RateLimited(LetstalkError):
    """`rate_limited`: too many attempts; wait `retry_after_ms`."""


class ResyncRequired(LetstalkError):
    """`resync_required`: the events after `since` are no longer kept; reload state with
    the list methods, then subscribe without `since`."""


class UntrustedIdentity(LetstalkError):
    """`untrusted_identity`: a verified contact's identity key changed; accept it with
    `contacts.trust` first."""


class ProtocolError(LetstalkError):
    """The daemon sent something this client cannot read (not a daemon error)."""

    def __init__(self, message: str) -> None:
        super().__init__(-32603, message, kind="protocol")


class ConnectionLost(OSError):
    """The connection to the daemon closed or could not be made."""


_BY_KIND = {
    "not_logged_in": NotLoggedIn,
    "relay_unavailable": RelayUnavailable,
    "not_found": NotFound,
    "blocked": Blocked,
    "rate_limited": RateLimited,
    "resync_required": ResyncRequired,
    "untrusted_identity": UntrustedIdentity,
}


def error_from_response(error: Any) -> LetstalkError:
    """The exception for a JSON-RPC `error` member."""
    if not isinstance(error, dict):
        return ProtocolError("an error that is not an object")
    code = error.get("code") if isinstance(error.get("code"), int) else -32603
    message = str(error.get("message", ""))
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    kind = data.get("kind") if isinstance(data.get("kind"), str) else None
    field = data.get("field") if isinstance(data.get("field"), str) else None
    retry = data.get("retry_after_ms") if isinstance(data.get("retry_after_ms"), int) else None
    if code == -32601:
        cls = MethodNotFound
    elif code == -32602:
        cls = InvalidParams
    else:
        cls = _BY_KIND.get(kind or "", LetstalkError)
    return cls(code, message, kind=kind, field=field, retry_after_ms=retry, data=data)
