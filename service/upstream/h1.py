"""A lean HTTP/1.1 keep-alive pool for one origin: the router's non-streamed upstream calls.

Why: aiohttp's `ClientSession` spends ~0.16 ms of CPU per call on this machine where
the same exchange over one asyncio Protocol per connection, parsed by httptools, costs
~0.05 ms (tests/benchmarks/bench_upstream.py); the call is the router's largest single
per-request cost. Everything else (streams, proxies, `GET`s of the price list) stays on
aiohttp.

What it does, and no more:
- one request at a time per connection (no pipelining); at most `size` connections,
  idle ones reused newest first and dropped after `keepalive_s` idle or once the server
  said `Connection: close` or closed them;
- `http` and `https` (the system's CA bundle, SNI and hostname checked);
- one deadline over the whole exchange (waiting for a connection, connecting,
  sending, the complete answer); on expiry, cancellation or any error the connection is
  closed, never reused, so a late answer cannot be read as the next request's;
- bodies by `Content-Length`, chunked, or (when neither is given) up to the close;
- errors are standard exceptions the client already classifies
  (`translate.classify_exception`): `TimeoutError` (the deadline), `H1ConnectError`
  (could not connect), `ConnectionResetError` (closed before the answer was complete),
  `H1ProtocolError` (not HTTP).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httptools

__all__ = ["H1ConnectError", "H1Pool", "H1ProtocolError", "H1Response"]


class H1ConnectError(ConnectionError):
    """No connection to the upstream (refused, unreachable, DNS, TLS, connect timeout)."""


class H1ProtocolError(Exception):
    """The upstream's bytes are not an HTTP/1.1 response."""


_BREAKS = frozenset("\r\n")
H1Response = tuple[int, bytes, dict[str, str]]  # status, body, headers (names lower case)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `waiter` gets the response to the request in flight."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport
        self.waiter: asyncio.Future[H1Response] | None = None
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.headers_done = False
        self.sized = True  # Content-Length or chunked: the parser knows where it ends
        self.reusable = True
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing asked: whatever this is, the connection is spoilt
            self._spoil()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._fail(H1ProtocolError(f"not an HTTP/1.1 response: {err}"))
            self._spoil()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is None or self.waiter.done():
            return
        if self.headers_done and not self.sized:  # the body ends with the connection
            self.reusable = False
            self.on_message_complete()
            return
        reason = f": {exc}" if exc else ""
        self._fail(ConnectionResetError(f"the upstream closed the connection mid-answer{reason}"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.headers_done = True
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self.sized = chunked or "content-length" in self.headers
        self.reusable = self.sized and self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        response = (self.parser.get_status_code(), b"".join(self.body), self.headers)
        self.headers, self.body, self.headers_done = {}, [], False
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # ours

    def _fail(self, error: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _spoil(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


class H1Pool:
    """Keep-alive HTTP/1.1 connections to the origin of `base_url` (its path prefixes
    every request path); `headers` go with every request."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        size: int = 100,
        keepalive_s: float = 30.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"an http(s) URL with a host, not {base_url!r}")
        default_port = 443 if url.scheme == "https" else 80
        self.host = url.hostname
        self.port = url.port or default_port
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._prefix = url.path.rstrip("/")
        host = self.host if ":" not in self.host else f"[{self.host}]"
        authority = host if self.port == default_port else f"{host}:{self.port}"
        bad = [name for name, value in headers.items() if _BREAKS.intersection(name + value)]
        if bad:  # a line break would end the header block early (header injection)
            raise ValueError(f"header {bad[0]!r}: names and values must not hold line breaks")
        if not any(name.lower() == "user-agent" for name in headers):
            headers = {**headers, "user-agent": "turnout"}
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._headers = f"Host: {authority}\r\n{lines}"
        self._heads: dict[tuple[str, str], str] = {}
        self.size, self.keepalive_s, self.connect_timeout_s = size, keepalive_s, connect_timeout_s
        self._idle: list[_Connection] = []
        self._busy = 0
        self._waiting: list[asyncio.Future[None]] = []
        self.connects = 0  # connections opened, for tests and stats

    async def request(
        self, method: str, path: str, payload: bytes | None, deadline_s: float
    ) -> H1Response:
        """One exchange under one deadline; raises as the module docstring says."""
        loop = asyncio.get_running_loop()
        expires = loop.time() + deadline_s
        deadline = _Deadline(deadline_s)
        timer = loop.call_at(expires, deadline.expire)
        conn: _Connection | None = None
        try:
            await self._acquire(loop, deadline)
            try:
                conn = self._reuse() or await self._connect(loop, expires)
                deadline.check()
                waiter: asyncio.Future[H1Response] = loop.create_future()
                conn.waiter = deadline.future = waiter
                conn.transport.write(self._head(method, path, payload))
                response = await waiter
                if conn.reusable and not conn.closed:
                    conn.idle_since = time.monotonic()
                    self._idle.append(conn)
                    conn = None
                return response
            finally:
                if conn is not None:  # failed, timed out or cancelled: never reused
                    conn._spoil()
                self._release()
        finally:
            timer.cancel()

    def close(self) -> None:
        """Close the idle connections (those in use close when their exchange ends)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn._spoil()

    # ------------------------------------------------------------------ internals

    def _head(self, method: str, path: str, payload: bytes | None) -> bytes:
        head = self._heads.get((method, path))
        if head is None:
            head = self._heads[(method, path)] = (
                f"{method} {self._prefix}{path} HTTP/1.1\r\n{self._headers}"
            )
        if payload is None:
            return f"{head}\r\n".encode("latin-1")
        return f"{head}content-length: {len(payload)}\r\n\r\n".encode("latin-1") + payload

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: _Deadline) -> None:
        while self._busy >= self.size:
            deadline.check()
            slot: asyncio.Future[None] = loop.create_future()
            deadline.future = slot
            self._waiting.append(slot)
            try:
                await slot
            except BaseException:
                if slot.done() and not slot.cancelled() and slot.exception() is None:
                    self._wake()  # woken, then cancelled: the next in line gets the slot
                raise
            finally:
                if slot in self._waiting:
                    self._waiting.remove(slot)
        self._busy += 1

    def _release(self) -> None:
        self._busy -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            slot = self._waiting.pop(0)
            if not slot.done():
                slot.set_result(None)
                return

    def _reuse(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_s:
                return conn
            conn._spoil()
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop, expires: float) -> _Connection:
        limit = max(0.0, min(self.connect_timeout_s, expires - loop.time()))
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(
                    _Connection, self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )  # fmt: skip
        except TimeoutError:
            if loop.time() >= expires:
                raise  # the call's deadline: a timeout, not a connect error
            raise H1ConnectError(
                f"could not connect to {self.host}:{self.port} within {limit:g} s"
            ) from None
        except OSError as err:  # refused, unreachable, DNS, TLS
            raise H1ConnectError(f"could not connect to {self.host}:{self.port}: {err}") from err
        self.connects += 1
        return conn


class _Deadline:
    """One exchange's deadline: on expiry, whatever it waits for fails with TimeoutError
    (a timer per call, not `asyncio.timeout`: no task cancelled and uncancelled, and no
    `get_running_loop()`, which costs a system call here)."""

    __slots__ = ("deadline_s", "fired", "future")

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.fired = False
        self.future: asyncio.Future[Any] | None = None

    def expire(self) -> None:
        self.fired = True
        if self.future is not None and not self.future.done():
            self.future.set_exception(self.error())

    def check(self) -> None:
        if self.fired:
            raise self.error()

    def error(self) -> TimeoutError:
        return TimeoutError(f"no complete answer within {self.deadline_s:g} s")
