"""The synchronous client: one Unix socket connection to `letstalkd`, JSON-RPC 2.0 lines,
and an event iterator that survives daemon restarts without losing or repeating an
event. One `Client` per thread."""

from __future__ import annotations

import collections
import socket
import time
from typing import Any, Deque, Iterable, Iterator, Optional

from . import _protocol as proto
from .errors import ConnectionLost, ProtocolError
from .helpers import Helpers

#: Waits between reconnection attempts: doubling from the first to the last.
RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 2.0


class Client(Helpers):
    """A connection to the daemon.

    `socket_path` follows the CLI's rules when None (`$LETSTALK_SOCKET`, then
    `$XDG_RUNTIME_DIR/letstalk/letstalkd.sock`, then `/run/letstalk/letstalkd.sock`).
    `timeout` bounds each call, in seconds. Use it as a context manager or `close()` it.
    """

    def __init__(
        self,
        socket_path: Optional[str] = None,
        timeout: float = 30.0,
        client_name: Optional[str] = None,
    ) -> None:
        self.socket_path = proto.default_socket_path(socket_path)
        self.timeout = timeout
        self.client_name = client_name
        self._sock: Optional[socket.socket] = None
        self._buf = bytearray()
        self._next_id = 0
        self._events: Deque[dict] = collections.deque()
        self.connect()

    # connection

    def connect(self) -> None:
        """(Re)connects; says hello with `client_name` when one was given (the daemon
        shows it in `device.info` as the frontend's identity)."""
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.socket_path)
        except OSError as e:
            sock.close()
            raise ConnectionLost(f"cannot connect to {self.socket_path}: {e}") from e
        self._sock = sock
        self._buf.clear()
        if self.client_name:
            self.hello(self.client_name)

    def close(self) -> None:
        """Closes the connection (a later call reconnects only through `connect`)."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # requests

    def call(self, method: str, params: Optional[dict] = None) -> Any:
        """Calls `method` and returns its result; a daemon error is raised as a
        `LetstalkError` (with `kind`), a lost connection as `ConnectionLost`. Events that
        arrive meanwhile are kept for `events()`."""
        self._next_id += 1
        request_id = self._next_id
        self._send(proto.encode_request(request_id, method, params))
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._read_message(deadline)
            if message is None:
                raise ConnectionLost(f"{method}: no answer within {self.timeout} s")
            if proto.is_event(message):
                self._events.append(message.get("params") or {})
            elif message.get("id") == request_id:
                return proto.result_of(message)

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise ConnectionLost("not connected")
        try:
            self._sock.sendall(data)
        except OSError as e:
            self.close()
            raise ConnectionLost(f"the daemon went away: {e}") from e

    def _read_message(self, deadline: Optional[float]) -> Optional[dict]:
        """The next line as an object; None when `deadline` passes first."""
        while True:
            newline = self._buf.find(b"\n")
            if newline >= 0:
                line = bytes(self._buf[:newline])
                del self._buf[: newline + 1]
                if line.strip():
                    return proto.decode_line(line)
                continue
            if len(self._buf) > proto.MAX_LINE:
                self.close()
                raise ProtocolError("the daemon sent a line over 1 MiB")
            if self._sock is None:
                raise ConnectionLost("not connected")
            if deadline is None:
                self._sock.settimeout(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                return None
            except OSError as e:
                self.close()
                raise ConnectionLost(f"the daemon went away: {e}") from e
            if not chunk:
                self.close()
                raise ConnectionLost("the daemon closed the connection")
            self._buf.extend(chunk)

    # events

    def events(
        self,
        since: Optional[int] = None,
        kinds: Optional[Iterable[str]] = None,
        idle_timeout: Optional[float] = None,
        reconnect: bool = True,
    ) -> Iterator[dict]:
        """Subscribes and yields events (`{"seq", "kind", "at", ...}`) in order.

        With `since`, the persisted events after that seq come first. When the daemon
        restarts or the connection drops, it reconnects and resubscribes from the last
        seq it yielded, so nothing is missed or repeated (`reconnect=False` raises
        `ConnectionLost` instead). An `events.overflow` is handled the same way. The
        iterator ends when no event arrives for `idle_timeout` seconds (None: never).
        `resync_required` is raised as `ResyncRequired`."""
        kinds = list(kinds) if kinds is not None else None
        last = since
        last = self._subscribe(last, kinds)
        while True:
            try:
                event = self._next_event(idle_timeout)
            except ConnectionLost:
                if not reconnect:
                    raise
                self._reconnect()
                last = self._subscribe(last, kinds)
                continue
            if event is None:
                return
            if event.get("kind") == "events.overflow":
                last = self._subscribe(last, kinds)
                continue
            seq = event.get("seq")
            if not isinstance(seq, int):
                raise ProtocolError("an event without a seq")
            if last is not None and seq <= last:
                continue
            last = seq
            yield event

    def _subscribe(self, since: Optional[int], kinds: Optional[list]) -> int:
        """Subscribes; returns the seq to continue after (the daemon's `last_seq` when
        there was no `since`)."""
        self._events.clear()
        params: dict = {}
        if since is not None:
            params["since"] = since
        if kinds is not None:
            params["kinds"] = kinds
        result = self.call("events.subscribe", params)
        return since if since is not None else int(result["last_seq"])

    def _next_event(self, idle_timeout: Optional[float]) -> Optional[dict]:
        if self._events:
            return self._events.popleft()
        deadline = None if idle_timeout is None else time.monotonic() + idle_timeout
        while True:
            message = self._read_message(deadline)
            if message is None:
                return None
            if proto.is_event(message):
                return message.get("params") or {}

    def _reconnect(self) -> None:
        wait = RECONNECT_MIN_S
        while True:
            try:
                self.connect()
                return
            except ConnectionLost:
                time.sleep(wait)
                wait = min(wait * 2, RECONNECT_MAX_S)
