"""What the synchronous and the asyncio client share: the socket path rules, the
method table, request encoding and error decoding. No I/O here."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

from .errors import LetstalkError, ProtocolError, error_from_response

#: The environment variable naming the daemon's socket (the spec's rule 1 for clients).
SOCKET_ENV = "LETSTALK_SOCKET"
#: The socket of a daemon running as a system service (the spec's rule 5).
SYSTEM_SOCKET = "/run/letstalk/letstalkd.sock"
#: The longest line the daemon accepts (and sends); a longer answer is a broken daemon.
MAX_LINE = 1024 * 1024

#: Every method of protocol version 1 this client knows, in the daemon's order. A test
#: compares it with the daemon's `system.schema`, so it cannot drift from the daemon.
METHODS: tuple[str, ...] = (
    "system.hello",
    "system.schema",
    "system.status",
    "account.register",
    "account.login",
    "account.logout",
    "account.info",
    "account.update",
    "account.change_password",
    "account.avatar",
    "contacts.add",
    "contacts.list",
    "contacts.remove",
    "contacts.verify",
    "contacts.mark_verified",
    "contacts.trust",
    "contacts.block",
    "contacts.unblock",
    "groups.create",
    "groups.list",
    "groups.info",
    "groups.add_members",
    "groups.remove_members",
    "groups.rename",
    "groups.leave",
    "messages.send",
    "messages.list",
    "messages.get",
    "messages.mark_read",
    "messages.delete",
    "messages.typing",
    "conversations.list",
    "conversations.mute",
    "files.send",
    "files.download",
    "files.cancel",
    "calls.start",
    "calls.accept",
    "calls.reject",
    "calls.hangup",
    "calls.list",
    "devices.link_start",
    "account.link",
    "devices.list",
    "devices.remove",
    "devices.rename",
    "settings.get",
    "settings.set",
    "privacy.clear_history",
    "privacy.restore_defaults",
    "device.info",
    "diagnostics.preview",
    "diagnostics.upload",
    "feedback.send",
    "events.subscribe",
    "events.unsubscribe",
)


def default_socket_path(socket_path: Optional[str] = None) -> str:
    """The socket a client uses, by the spec's rules: the given path, then
    `$LETSTALK_SOCKET`, then `$XDG_RUNTIME_DIR/letstalk/letstalkd.sock`, then
    `/run/letstalk/letstalkd.sock` (the same rules as the `letstalk` CLI)."""
    if socket_path:
        return socket_path
    named = os.environ.get(SOCKET_ENV)
    if named:
        return named
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "letstalk", "letstalkd.sock")
    return SYSTEM_SOCKET


def encode_request(request_id: int, method: str, params: Optional[Mapping[str, Any]]) -> bytes:
    """One JSON-RPC request line."""
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": dict(params or {})}
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode_line(line: bytes) -> dict:
    """One line from the daemon as a JSON object."""
    try:
        message = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"the daemon sent a line that is not JSON: {e}") from None
    if not isinstance(message, dict):
        raise ProtocolError("the daemon sent a line that is not a JSON object")
    return message


def is_event(message: dict) -> bool:
    """Whether a line is an event notification (`method: "event"`)."""
    return message.get("method") == "event" and "id" not in message


def result_of(message: dict) -> Any:
    """The result of a response, or its error raised as a `LetstalkError`."""
    if "error" in message:
        raise error_from_response(message["error"])
    if "result" not in message:
        raise ProtocolError("a response with neither result nor error")
    return message["result"]


__all__ = [
    "METHODS",
    "MAX_LINE",
    "SOCKET_ENV",
    "SYSTEM_SOCKET",
    "LetstalkError",
    "decode_line",
    "default_socket_path",
    "encode_request",
    "is_event",
    "result_of",
]
