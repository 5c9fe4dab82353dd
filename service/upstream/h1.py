"""A lean HTTP/1.1 keep-alive pool for one origin: the router's upstream calls, plain and streamed.

Why: aiohttp's `ClientSession` spends ~0.16 ms of CPU per call on this machine where
the same exchange over one asyncio Protocol per connection, parsed by httptools, costs
~0.05 ms (tests/benchmarks/bench_upstream.py); the call is the router's largest single
per-request cost. A streamed call (`H1Pool.open`) spent ~14 % of the router's CPU under
100 concurrent streams through httpx and aiohttp. Everything else (proxies, `GET`s of
the price list) stays on aiohttp.

What it does, and no more:
- one request at a time per connection (no pipelining); at most `size` connections,
  idle ones reused newest first and dropped after `keepalive_s` idle or once the server
  said `Connection: close` or closed them;
- `http` and `https` (the system's CA bundle, SNI and hostname checked);
- one deadline over the whole exchange (waiting for a connection, connecting,
  sending, the complete answer); on expiry, cancellation or any error the connection is
  closed, never reused, so a late answer cannot be read as the next request's; nor
  is one whose upstream sent bytes past the answer before it was reused (bytes a
  server sends only after a request went out on it again cannot be told from that
  request's answer: the race every HTTP/1.1 keep-alive client has);
- bodies by `Content-Length`, chunked, or (when neither is given) up to the close;
  interim `1xx` heads (100 Continue, 103 Early Hints) are skipped, not taken as answers;
- `request` reads the whole answer under its deadline; `open` returns once the head has
  come (under the deadline given) and hands the body over piece by piece as it arrives
  (`H1Stream`: reading pauses while more than 256 KiB wait unread); the caller bounds
  the rest of the exchange (e.g. with `asyncio.timeout`) and must `close()` the stream:
  the connection goes back to the pool only if its answer was read to the end
  (`drain(grace_s)` reads the last bytes an SSE server writes a moment after
  `[DONE]`; the client does it aside, not holding the answer up); one reader at a
  time, and reading a closed stream fails;
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

__all__ = ["H1ConnectError", "H1Pool", "H1ProtocolError", "H1Response", "H1Stream"]


class H1ConnectError(ConnectionError):
    """No connection to the upstream (refused, unreachable, DNS, TLS, connect timeout)."""


class H1ProtocolError(Exception):
    """The upstream's bytes are not an HTTP/1.1 response."""


_BREAKS = frozenset("\r\n")
_PAUSE_AT = 256 * 1024  # unread bytes of a streamed body at which reading pauses
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
        self.stream: H1Stream | None = None  # set while a streamed answer's body is read
        self.interim = False  # the message being parsed is a 1xx head, not the answer

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None and self.stream is None:  # nothing asked: the connection is spoilt
            self._spoil()
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as err:
            # (a 101 Switching Protocols raises the latter, which is no parser error)
            self._fail(H1ProtocolError(f"not an HTTP/1.1 response: {err!r}"))
            self._spoil()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        stream = self.stream
        waiting = self.waiter is not None and not self.waiter.done()
        if not waiting and (stream is None or stream.done):
            return
        if self.headers_done and not self.sized and exc is None:  # the body ends with the
            # connection (a clean close; a reset cuts it short: an error, below)
            self.reusable = False
            self.on_message_complete()
            return
        reason = f": {exc}" if exc else ""
        self._fail(ConnectionResetError(f"the upstream closed the connection mid-answer{reason}"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.waiter is None and self.stream is None:  # bytes past the answer asked for:
            # the head of another would be read as the next request's answer (a desync)
            raise H1ProtocolError("the upstream sent more than its answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue, 103 Early Hints: the answer's head follows
            self.interim = True
            self.headers = {}
            return
        self.headers_done = True
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self.sized = chunked or "content-length" in self.headers
        self.reusable = self.sized and self.parser.should_keep_alive()
        if self.stream is not None:  # a streamed answer: the head now, the body as it comes
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result((status, b"", self.headers))

    def on_body(self, body: bytes) -> None:
        stream = self.stream
        if stream is None:
            self.body.append(body)
            return
        stream.pieces.append(body)
        stream.unread += len(body)
        if stream.unread > _PAUSE_AT and not stream.paused:
            stream.paused = True
            self.transport.pause_reading()
        stream.wake()

    def on_message_complete(self) -> None:
        if self.interim:  # the end of a 1xx head: the answer is still to come
            self.interim = False
            return
        stream = self.stream
        if stream is not None:
            self.stream = None
            self.headers, self.headers_done = {}, False
            stream.done = True
            stream.wake()
            return
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
        stream, self.stream = self.stream, None
        if stream is not None and not stream.done:
            stream.error = error
            stream.wake()

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
        self._authority = authority
        self._header_map = dict(headers)
        self._heads: dict[tuple[str, str, str | None], str] = {}
        self.size, self.keepalive_s, self.connect_timeout_s = size, keepalive_s, connect_timeout_s
        self._idle: list[_Connection] = []
        self._busy = 0
        self._waiting: list[asyncio.Future[None]] = []
        self.connects = 0  # connections opened, for tests and stats

    async def request(
        self, method: str, path: str, payload: bytes | None, deadline_s: float
    ) -> H1Response:
        """One exchange under one deadline; raises as the module docstring says."""
        response = await self._send(method, path, payload, deadline_s, None, streamed=False)
        assert not isinstance(response, H1Stream)
        return response

    async def open(
        self,
        method: str,
        path: str,
        payload: bytes | None,
        head_deadline_s: float,
        *,
        accept: str | None = None,
    ) -> H1Stream:
        """Send a request and return once its answer's head has come (within
        `head_deadline_s`, connecting included); the body is read from the stream, which
        the caller must `close()`. `accept` replaces the pool's `accept` header. Raises
        as `request` does."""
        stream = await self._send(method, path, payload, head_deadline_s, accept, streamed=True)
        assert isinstance(stream, H1Stream)
        return stream

    def close(self) -> None:
        """Close the idle connections (those in use close when their exchange ends)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn._spoil()

    # ------------------------------------------------------------------ internals

    def _head(
        self, method: str, path: str, payload: bytes | None, accept: str | None = None
    ) -> bytes:
        head = self._heads.get((method, path, accept))
        if head is None:
            headers = self._header_map
            if accept is not None:  # in place of the pool's own accept header
                if _BREAKS.intersection(accept):
                    raise ValueError("accept: must not hold line breaks")
                headers = {k: v for k, v in headers.items() if k.lower() != "accept"}
                headers["accept"] = accept
            lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            head = self._heads[(method, path, accept)] = (
                f"{method} {self._prefix}{path} HTTP/1.1\r\nHost: {self._authority}\r\n{lines}"
            )
        if payload is None:
            return f"{head}\r\n".encode("latin-1")
        return f"{head}content-length: {len(payload)}\r\n\r\n".encode("latin-1") + payload

    async def _send(
        self,
        method: str,
        path: str,
        payload: bytes | None,
        deadline_s: float,
        accept: str | None,
        *,
        streamed: bool,
    ) -> H1Response | H1Stream:
        """`request` (the whole answer) or `open` (`streamed`: the head, then a stream that
        owns the connection and the pool slot until it is closed)."""
        loop = asyncio.get_running_loop()
        expires = loop.time() + deadline_s
        deadline = _Deadline(deadline_s)
        timer = loop.call_at(expires, deadline.expire)
        conn: _Connection | None = None
        stream: H1Stream | None = None
        try:
            await self._acquire(loop, deadline)
            try:
                conn = self._reuse() or await self._connect(loop, expires)
                deadline.check()
                waiter: asyncio.Future[H1Response] = loop.create_future()
                conn.waiter = deadline.future = waiter
                if streamed:
                    stream = conn.stream = H1Stream(self, conn)
                conn.transport.write(self._head(method, path, payload, accept))
                response = await waiter
                if stream is not None:
                    stream.status, _, stream.headers = response
                    conn = None
                    return stream
                if conn.reusable and not conn.closed:
                    self._park(conn)
                    conn = None
                return response
            finally:
                if conn is not None:  # failed, timed out or cancelled: never reused
                    conn.stream = None
                    conn._spoil()
                if conn is not None or stream is None:  # else the stream frees the slot
                    self._release()
        finally:
            timer.cancel()

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

    def _park(self, conn: _Connection) -> None:
        """A connection whose answer was read to its end waits for the next request."""
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

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


class H1Stream:
    """A streamed answer (`H1Pool.open`): `status`, `headers` (names lower case), and its
    body as it arrives: `async for piece in stream`, or `await stream.read()` for all of
    it. A body cut short raises `ConnectionResetError`, bytes that are not HTTP
    `H1ProtocolError`. `close()` (idempotent) gives the connection back to the pool if
    the answer was read to its end, else closes it (which stops the upstream's work)."""

    __slots__ = (
        "_conn", "_pool", "done", "error", "headers", "paused", "pieces", "status", "unread",
        "waiter",
    )  # fmt: skip

    def __init__(self, pool: H1Pool, conn: _Connection) -> None:
        self._pool: H1Pool | None = pool
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self.pieces: list[bytes] = []
        self.unread = 0
        self.paused = False
        self.done = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def __aiter__(self) -> H1Stream:
        return self

    async def __anext__(self) -> bytes:
        while not self.pieces:
            if self.error is not None:
                raise self.error.with_traceback(None)  # raised again: no growing traceback
            if self.done:
                raise StopAsyncIteration
            if self.waiter is not None:
                raise RuntimeError("a streamed answer has one reader at a time")
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        pieces, self.pieces, self.unread = self.pieces, [], 0
        if self.paused:
            self.paused = False
            self._conn.transport.resume_reading()
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def read(self) -> bytes:
        """The rest of the body."""
        return b"".join([piece async for piece in self])

    async def drain(self, grace_s: float) -> None:
        """Read and drop the rest of the answer if it ends within `grace_s` (an SSE
        stream's `[DONE]` often comes a moment before the body's last bytes), so that
        `close()` can give the connection back; an answer that does not end in time, or
        breaks, is simply not reused."""
        if self.done or self.error is not None:
            return
        try:
            async with asyncio.timeout(grace_s):
                async for _ in self:
                    pass
        except (TimeoutError, OSError, H1ProtocolError):
            pass

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        conn = self._conn
        if self.done and self.error is None and conn.reusable and not conn.closed:
            if self.paused:  # paused by the answer's last bytes, which nobody read
                conn.transport.resume_reading()
            pool._park(conn)
        else:
            conn.stream = None
            conn._spoil()
            if not self.done and self.error is None:  # a reader after close() fails, not hangs
                self.error = ConnectionAbortedError("the streamed answer was closed")
                self.wake()
        pool._release()


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
