"""The asyncio client: the same protocol as `Client`, with many calls in flight on one
connection (answers matched by id) and an async event iterator that resumes after a
daemon restart."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Dict, Iterable, Optional

from . import _protocol as proto
from .errors import ConnectionLost, ProtocolError
from .helpers import Helpers

RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 2.0


class AsyncClient(Helpers):
    """`await AsyncClient.connect(socket_path)`, then `await client.call(...)` or the
    helpers; `async for event in client.events(since=...)`. `aclose()` when done (or
    `async with`)."""

    def __init__(
        self, socket_path: Optional[str] = None, timeout: float = 30.0,
        client_name: Optional[str] = None,
    ) -> None:
        self.socket_path = proto.default_socket_path(socket_path)
        self.timeout = timeout
        self.client_name = client_name
        self._reader: Optional[asyncio.StreamReader] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._task: Optional[asyncio.Task] = None
        self._pending: Dict[int, asyncio.Future] = {}
        self._events: "asyncio.Queue[Optional[dict]]" = asyncio.Queue()
        self._next_id = 0

    @classmethod
    async def connect(cls, socket_path: Optional[str] = None, **kwargs: Any) -> "AsyncClient":
        client = cls(socket_path, **kwargs)
        await client.reconnect()
        return client

    async def reconnect(self) -> None:
        """(Re)opens the connection."""
        await self.aclose()
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                self.socket_path, limit=proto.MAX_LINE + 1
            )
        except OSError as e:
            raise ConnectionLost(f"cannot connect to {self.socket_path}: {e}") from e
        self._events = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        if self.client_name:
            await self.hello(self.client_name)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None
        self._fail_pending(ConnectionLost("closed"))

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def _read_loop(self) -> None:
        assert self._reader is not None
        error: Exception = ConnectionLost("the daemon closed the connection")
        try:
            while True:
                try:
                    line = await self._reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    error = ProtocolError("the daemon sent a line over 1 MiB")
                    break
                except OSError as e:
                    error = ConnectionLost(f"the daemon went away: {e}")
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                message = proto.decode_line(line)
                if proto.is_event(message):
                    self._events.put_nowait(message.get("params") or {})
                    continue
                future = self._pending.pop(message.get("id"), None)
                if future is not None and not future.done():
                    try:
                        future.set_result(proto.result_of(message))
                    except Exception as e:  # a daemon error for this call
                        future.set_exception(e)
        finally:
            self._fail_pending(error)
            # Wakes an events() waiter: the connection is gone.
            self._events.put_nowait(None)

    async def call(self, method: str, params: Optional[dict] = None) -> Any:
        """Calls `method`; raises `LetstalkError` (with `kind`) or `ConnectionLost`."""
        if self._writer is None:
            raise ConnectionLost("not connected")
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(proto.encode_request(request_id, method, params))
            await self._writer.drain()
        except OSError as e:
            self._pending.pop(request_id, None)
            raise ConnectionLost(f"the daemon went away: {e}") from e
        try:
            return await asyncio.wait_for(future, self.timeout)
        except asyncio.TimeoutError:
            self._pending.pop(request_id, None)
            raise ConnectionLost(f"{method}: no answer within {self.timeout} s") from None

    async def events(
        self,
        since: Optional[int] = None,
        kinds: Optional[Iterable[str]] = None,
        idle_timeout: Optional[float] = None,
        reconnect: bool = True,
    ) -> AsyncIterator[dict]:
        """As `Client.events`: in order, resuming from the last seq after a reconnect or
        an overflow, never repeating one; ends after `idle_timeout` s without events."""
        kinds = list(kinds) if kinds is not None else None
        last = await self._subscribe(since, kinds)
        while True:
            try:
                event = await asyncio.wait_for(self._events.get(), idle_timeout)
            except asyncio.TimeoutError:
                return
            if event is None:
                if not reconnect:
                    raise ConnectionLost("the daemon closed the connection")
                await self._reconnect_with_backoff()
                last = await self._subscribe(last, kinds)
                continue
            if event.get("kind") == "events.overflow":
                last = await self._subscribe(last, kinds)
                continue
            seq = event.get("seq")
            if not isinstance(seq, int):
                raise ProtocolError("an event without a seq")
            if last is not None and seq <= last:
                continue
            last = seq
            yield event

    async def _subscribe(self, since: Optional[int], kinds: Optional[list]) -> int:
        params: dict = {}
        if since is not None:
            params["since"] = since
        if kinds is not None:
            params["kinds"] = kinds
        result = await self.call("events.subscribe", params)
        return since if since is not None else int(result["last_seq"])

    async def _reconnect_with_backoff(self) -> None:
        wait = RECONNECT_MIN_S
        while True:
            try:
                await self.reconnect()
                return
            except ConnectionLost:
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECONNECT_MAX_S)
