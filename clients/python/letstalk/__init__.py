"""A client for letstalkd's local JSON-RPC socket, with nothing but the standard library.

    from letstalk import Client
    with Client() as c:
        c.send_text("user:bob", "hello")
        for event in c.events(kinds=["message.received"]):
            print(event["message"]["text"])

`AsyncClient` is the asyncio variant. The protocol is described in the project's
`ipc/PROTOCOL.md`; every daemon error is a `LetstalkError` with the protocol's `kind`.
"""

from ._protocol import METHODS, default_socket_path
from .aio import AsyncClient
from .client import Client
from .errors import (
    Blocked,
    ConnectionLost,
    InvalidParams,
    LetstalkError,
    MethodNotFound,
    NotFound,
    NotLoggedIn,
    ProtocolError,
    RateLimited,
    RelayUnavailable,
    ResyncRequired,
    UntrustedIdentity,
)

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "AsyncClient",
    "Blocked",
    "Client",
    "ConnectionLost",
    "InvalidParams",
    "LetstalkError",
    "MethodNotFound",
    "NotFound",
    "NotLoggedIn",
    "ProtocolError",
    "RateLimited",
    "RelayUnavailable",
    "ResyncRequired",
    "UntrustedIdentity",
    "default_socket_path",
]
