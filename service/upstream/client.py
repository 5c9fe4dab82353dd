"""The upstream client: one pooled HTTP client per process, every outcome as data.

Job: post non-streaming chat completions to an OpenRouter-compatible upstream
and return a `CallResult`; GET JSON (`/models`) over the same pool; count
calls, errors and requests in flight for /healthz.

Rules:
- One `httpx.AsyncClient` per process, on the aiohttp transport
  (docs/design/performance.md: httpcore costs several times the CPU at 32 in flight).
  Pool size and keep-alive come from `[upstream]`; the connect timeout is
  separate from the per-call deadline, which bounds the whole exchange
  (headers and body), not only each read.
- Calls go straight to the shared client's transport (its connection pool)
  with pre-built URLs and headers; the client-level pipeline (auth flows,
  cookies, redirects, hooks) does nothing for us and cost half of a call's CPU.
  Chat calls, plain and streamed, go further still when no proxy is in the way: to
  the lean HTTP/1.1 pool (`h1.py`, one asyncio Protocol per connection parsed by
  httptools), a third of aiohttp's CPU per call; what it cannot do (a proxy, `GET`s)
  goes to the aiohttp session directly: httpx's Request/Response objects around each
  exchange cost as much CPU again as aiohttp's own work (bench_upstream.py). Same
  timeouts and headers; every transport's exceptions are classified the same way
  (`translate._EXCEPTIONS`).
- The API key is read from the environment once, at construction, and lives
  only in the pre-built request headers (httpx masks it in reprs). It is never
  logged, and never put in stats or events.
- `call` never raises for upstream trouble: `_send` returns a `Reply` or the
  transport exception (those in `_CAUGHT`), and
  `turnout.service.upstream.translate.translate`, the one translation, turns either
  into a `CallResult`. Bugs and bad arguments still raise.
- A success slower than `call_timeout_s` stays a success, flagged `slow=True`
  (the breaker counts it as a failure).
"""

from __future__ import annotations

import asyncio
import os
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import lru_cache
from types import TracebackType
from typing import Any, Final

import aiohttp
import httpx
import msgspec
from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient

from turnout.service.clock import Clock
from turnout.service.clock import clock as system_clock
from turnout.service.core.config import BreakerConfig, ProviderConfig, UpstreamConfig
from turnout.service.upstream.h1 import H1Pool, H1ProtocolError, H1Stream
from turnout.service.upstream.translate import (
    CallResult,
    Reply,
    classify_exception,
    translate,
    usage_of,
)
from turnout.service.wire.sse import SSEParser
from turnout.service.wire.stream import completion, has_token, merge

__all__ = [
    "CallResult", "ClientOptions", "ClientStats", "StreamOutcome", "UpstreamClient", "assembled",
]  # fmt: skip

_encode_json = msgspec.json.Encoder().encode
_JSON_HEADERS: Final = {"content-type": "application/json"}


# --------------------------------------------------------------------------- values


_UPSTREAM = UpstreamConfig()  # the defaults come from the config's, so they cannot drift


class ClientOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How the client connects; `from_config` builds it from `[upstream]` and `[breaker]`."""

    base_url: str = _UPSTREAM.base_url
    api_key_env: str = _UPSTREAM.api_key_env
    timeout_s: float = _UPSTREAM.timeout_s
    connect_timeout_s: float = _UPSTREAM.connect_timeout_s
    pool_size: int = _UPSTREAM.pool_size
    keepalive_s: float = _UPSTREAM.keepalive_s
    referer: str = _UPSTREAM.referer
    title: str = _UPSTREAM.title
    call_timeout_s: float = BreakerConfig().call_timeout_s
    trust_env: bool = True  # proxies from HTTP(S)_PROXY, also over the aiohttp transport
    headers: dict[str, str] = {}  # sent with every request (a provider's extra headers)

    @classmethod
    def from_config(
        cls, upstream: UpstreamConfig, breaker: BreakerConfig | None = None
    ) -> ClientOptions:
        return cls(
            base_url=upstream.base_url.rstrip("/"),
            api_key_env=upstream.api_key_env,
            timeout_s=upstream.timeout_s,
            connect_timeout_s=upstream.connect_timeout_s,
            pool_size=upstream.pool_size,
            keepalive_s=upstream.keepalive_s,
            referer=upstream.referer,
            title=upstream.title,
            call_timeout_s=(breaker or BreakerConfig()).call_timeout_s,
        )

    @classmethod
    def from_provider(
        cls, provider: ProviderConfig, breaker: BreakerConfig | None = None
    ) -> ClientOptions:
        """A `[providers.<name>]` table's client: no OpenRouter attribution headers."""
        return cls(
            base_url=provider.base_url.rstrip("/"),
            api_key_env=provider.api_key_env or "",
            timeout_s=provider.timeout_s,
            connect_timeout_s=provider.connect_timeout_s,
            pool_size=provider.pool_size,
            keepalive_s=provider.keepalive_s,
            referer="",
            title="",
            call_timeout_s=(breaker or BreakerConfig()).call_timeout_s,
            headers=dict(provider.headers),
        )


class ClientStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters for /healthz (never the API key; only whether one is configured)."""

    base_url: str
    transport: str
    authorized: bool
    pool_size: int
    keepalive_s: float
    in_flight: int
    peak_in_flight: int
    calls: int
    succeeded: int
    slow: int
    errors: dict[str, int]


_CAUGHT: Final = (httpx.HTTPError, aiohttp.ClientError, OSError)
_CAUGHT_H1: Final = (OSError, H1ProtocolError)  # TimeoutError and H1ConnectError are OSErrors
_CAUGHT_STREAM: Final = (*_CAUGHT, H1ProtocolError)
_DRAIN_S: Final = 0.05  # how long a finished stream's last bytes are waited for, aside
_decode_json = msgspec.json.Decoder().decode

OnChunk = Callable[[dict[str, Any]], Awaitable[None]]


class StreamOutcome(msgspec.Struct, kw_only=True):
    """A streamed call: its outcome (`result.response` is the assembled completion on
    success), the merged stream so far (also after a failure: what was relayed), and when
    its first token came (ms after the call started; None if none did)."""

    result: CallResult
    merged: dict[str, Any] | None = None
    first_token_ms: float | None = None
    comments: int = 0


class _StreamFailure(Exception):
    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


# --------------------------------------------------------------------------- the client


class _Counters:
    def __init__(self) -> None:
        self.in_flight = 0
        self.peak_in_flight = 0
        self.calls = 0
        self.succeeded = 0
        self.slow = 0
        self.errors: dict[str, int] = {}

    def started(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def ended(self) -> None:
        self.in_flight -= 1

    def record(self, result: CallResult) -> None:
        self.calls += 1
        if result.ok:
            self.succeeded += 1
            self.slow += result.slow
        elif result.error_class is not None:
            self.errors[result.error_class] = self.errors.get(result.error_class, 0) + 1


class UpstreamClient:
    """The process's one upstream client; an async context manager.

    async with UpstreamClient(ClientOptions.from_config(cfg.upstream, cfg.breaker)) as up:
        result = await up.call("openai/gpt-4o-mini", {"messages": [...]})

    `transport` replaces the aiohttp transport (benchmarks, tests); `environ`
    replaces `os.environ` as the place the API key is read from.
    """

    def __init__(
        self,
        options: ClientOptions | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.options = options = options or ClientOptions()
        env = os.environ if environ is None else environ
        key = env.get(options.api_key_env) if options.api_key_env else None
        self._authorized = bool(key)
        self._transport = transport or _aiohttp_transport(options)
        self._http = HttpxAiohttpClient(
            base_url=options.base_url,
            headers=_headers(options, key),
            timeout=_timeout(options, options.timeout_s),
            transport=self._transport,
            trust_env=options.trust_env,
            follow_redirects=False,
        )
        self._clock = clock
        self._counters = _Counters()
        self._draining: set[asyncio.Future[None]] = set()  # finished streams' last bytes
        self._timeouts: dict[float, dict[str, float | None]] = {}
        self._urls: dict[str, httpx.URL] = {}
        self._get_headers = httpx.Headers(_headers(options, key))
        self._post_headers = httpx.Headers({**_headers(options, key), **_JSON_HEADERS})
        self._stream_headers = httpx.Headers(
            {**_headers(options, key), **_JSON_HEADERS, "accept": "text/event-stream"}
        )
        # the aiohttp transport's session, used directly for non-streamed calls
        self._direct = self._transport if isinstance(self._transport, AiohttpTransport) else None
        self._direct_headers = {
            "GET": _MaskedHeaders(_headers(options, key)),
            "POST": _MaskedHeaders({**_headers(options, key), **_JSON_HEADERS}),
        }
        # chat calls (plain and streamed) without a proxy: the lean HTTP/1.1 pool (h1.py)
        self._h1 = (
            H1Pool(
                options.base_url, headers=self._direct_headers["POST"],
                size=options.pool_size, keepalive_s=options.keepalive_s,
                connect_timeout_s=options.connect_timeout_s,
            )
            if self._direct is not None and self._direct.proxy is None
            and options.base_url.startswith(("http://", "https://"))
            else None
        )  # fmt: skip

    async def call(
        self, model: str, body: Mapping[str, Any], *, timeout_s: float | None = None
    ) -> CallResult:
        """POST `/chat/completions` for `model`, not streamed; never raises for upstream trouble."""
        payload = _encode_json({**body, "model": model, "stream": False})
        slow_ms = self.options.call_timeout_s * 1000
        return await self._exchange("POST", "/chat/completions", payload, timeout_s, slow_ms)

    async def stream(
        self,
        model: str,
        body: Mapping[str, Any],
        on_chunk: OnChunk,
        *,
        ttft_timeout_s: float,
        timeout_s: float | None = None,
        assemble: bool = True,
    ) -> StreamOutcome:
        """POST `/chat/completions` for `model` streamed (usage asked for), calling
        `on_chunk` with each parsed chunk in order; never raises for upstream trouble.

        Failures: an HTTP error status (classified as for `call`), no first token within
        `ttft_timeout_s` or no end within the call's deadline (`timeout`), a chunk with
        an `error` (`midstream_error`), a stream that stops before `data: [DONE]`
        (`connection_reset`), a chunk that is not JSON (`malformed_response`). An
        exception from `on_chunk` propagates, after the upstream connection is closed
        (which aborts the upstream's generation), as does cancellation. `assemble=False`:
        the caller merges the chunks itself (`merged` and the success's `response` and
        `usage` stay None)."""
        payload = _encode_json({
            **body, "model": model, "stream": True, "stream_options": {"include_usage": True},
        })  # fmt: skip
        deadline_s = self.options.timeout_s if timeout_s is None else timeout_s
        loop = asyncio.get_running_loop()
        started, start_loop = self._clock.monotonic(), loop.time()
        outcome = StreamOutcome(result=CallResult(ok=False))
        deadline = asyncio.timeout_at(start_loop + min(ttft_timeout_s, deadline_s))
        parser = SSEParser()
        reply: Reply | None = None
        failure: BaseException | None = None

        def relay(pieces: AsyncIterator[bytes]) -> Awaitable[None]:
            return self._relay(
                pieces, parser, outcome, on_chunk, started,
                lambda: deadline.reschedule(start_loop + deadline_s), assemble,
            )  # fmt: skip

        self._counters.started()
        try:
            async with deadline:
                if self._h1 is not None:
                    reply = await self._stream_h1(self._h1, payload, deadline_s, relay)
                else:
                    reply = await self._stream_httpx(payload, deadline_s, relay)
        except _StreamFailure as err:
            failure = err
        except _CAUGHT_STREAM as err:
            failure = err
            if deadline.expired():
                what = "first token" if outcome.first_token_ms is None else "end of the stream"
                limit = ttft_timeout_s if outcome.first_token_ms is None else deadline_s
                failure = TimeoutError(f"no {what} within {limit:g} s")
        finally:
            self._counters.ended()
        latency_ms = (self._clock.monotonic() - started) * 1000
        outcome.comments = parser.comments
        outcome.result = self._stream_result(reply, failure, outcome, latency_ms)
        self._counters.record(outcome.result)
        return outcome

    async def _stream_h1(
        self,
        h1: H1Pool,
        payload: bytes,
        deadline_s: float,
        relay: Callable[[AsyncIterator[bytes]], Awaitable[None]],
    ) -> Reply | None:
        """A streamed call on the lean pool: an error status's `Reply`, else None once
        `relay` has read the stream to its `[DONE]`."""
        stream = await h1.open(
            "POST", "/chat/completions", payload, deadline_s, accept="text/event-stream"
        )
        aside = False  # the stream's last bytes are read (and it is closed) by a task
        try:
            if not 200 <= stream.status < 300:
                return _reply(stream.status, await stream.read(), stream.headers)
            await relay(stream)
            aside = not stream.done
            if aside:  # the body's last bytes often follow `[DONE]`: read them aside, so
                # the answer is not held up and the connection can be reused
                draining = asyncio.ensure_future(_drain_and_close(stream))
                self._draining.add(draining)
                draining.add_done_callback(self._draining.discard)
            return None
        finally:
            if not aside:
                stream.close()

    async def _stream_httpx(
        self,
        payload: bytes,
        deadline_s: float,
        relay: Callable[[AsyncIterator[bytes]], Awaitable[None]],
    ) -> Reply | None:
        """`_stream_h1` on the httpx transport (a proxy, or a transport given)."""
        request = httpx.Request(
            "POST", self._url("/chat/completions"), headers=self._stream_headers,
            content=payload, extensions={"timeout": self._timeout_for(deadline_s)},
        )  # fmt: skip
        response = await self._transport.handle_async_request(request)
        try:
            if not 200 <= response.status_code < 300:
                return _reply(response.status_code, await response.aread(), response.headers)
            await relay(response.aiter_raw())
            return None
        finally:
            await response.aclose()

    async def _relay(
        self,
        pieces: AsyncIterator[bytes],
        parser: SSEParser,
        outcome: StreamOutcome,
        on_chunk: OnChunk,
        started: float,
        first_token: Callable[[], None],
        assemble: bool,
    ) -> None:
        async for piece in pieces:
            for event in parser.feed(piece):
                if event.data == "[DONE]":
                    return
                try:
                    chunk = _decode_json(event.data)
                except msgspec.DecodeError:
                    raise _StreamFailure(
                        "malformed_response", f"a stream event is not JSON: {event.data[:80]!r}"
                    ) from None
                if not isinstance(chunk, dict):
                    raise _StreamFailure("malformed_response", "a stream event is not an object")
                error = chunk.get("error")
                if error is not None:
                    message = error.get("message") if isinstance(error, dict) else str(error)
                    raise _StreamFailure("midstream_error", str(message or "error chunk")[:300])
                if assemble:
                    outcome.merged = merge(outcome.merged, chunk)
                if outcome.first_token_ms is None and has_token(chunk):
                    outcome.first_token_ms = (self._clock.monotonic() - started) * 1000
                    first_token()
                await on_chunk(chunk)
        raise _StreamFailure("connection_reset", "the stream ended without data: [DONE]")

    def _stream_result(
        self,
        reply: Reply | None,
        failure: BaseException | None,
        outcome: StreamOutcome,
        latency_ms: float,
    ) -> CallResult:
        if reply is not None:
            return translate(reply, latency_ms=latency_ms, now_ms=self._clock.now_ms())
        if isinstance(failure, _StreamFailure):
            return CallResult(
                ok=False, status=200, latency_ms=latency_ms, error_class=failure.error_class,
                message=str(failure),
            )  # fmt: skip
        if failure is not None:
            name, culprit = classify_exception(failure)
            text = str(culprit).strip()
            return CallResult(
                ok=False, latency_ms=latency_ms, error_class=name,
                message=f"{type(culprit).__name__}: {text}"[:300] if text else name,
            )  # fmt: skip
        slow = latency_ms > self.options.call_timeout_s * 1000
        if outcome.merged is None:
            return CallResult(ok=True, status=200, latency_ms=latency_ms, slow=slow)
        return assembled(outcome.merged, latency_ms=latency_ms, slow=slow)

    async def get_json(self, path: str, *, timeout_s: float | None = None) -> CallResult:
        """GET `path` under the base URL; any JSON object is a success (`response`)."""
        return await self._exchange("GET", path, None, timeout_s, None)

    async def _exchange(
        self,
        method: str,
        path: str,
        payload: bytes | None,
        timeout_s: float | None,
        slow_ms: float | None,
    ) -> CallResult:
        deadline_s = self.options.timeout_s if timeout_s is None else timeout_s
        self._counters.started()
        started = self._clock.monotonic()
        try:
            outcome = await self._send(method, path, payload, deadline_s)
        finally:  # also when the caller is cancelled
            self._counters.ended()
        latency_ms = (self._clock.monotonic() - started) * 1000
        result = translate(
            outcome,
            latency_ms=latency_ms,
            now_ms=self._clock.now_ms(),
            slow_ms=slow_ms,
            chat=slow_ms is not None,
        )
        self._counters.record(result)
        return result

    async def _send(
        self, method: str, path: str, payload: bytes | None, deadline_s: float
    ) -> Reply | BaseException:
        """The HTTP exchange under one deadline: a `Reply`, or the transport exception.

        The request goes straight to the client's transport (its pool): the
        client-level pipeline (auth flows, cookies, redirects, event hooks) does
        nothing for us and cost half of the call's CPU (bench_upstream.py).
        """
        if self._h1 is not None and method == "POST":
            try:
                status, content, headers = await self._h1.request(method, path, payload, deadline_s)
            except _CAUGHT_H1 as err:
                return err
            return _reply(status, content, headers)
        if self._direct is not None:
            return await self._send_direct(self._direct, method, path, payload, deadline_s)
        deadline = asyncio.timeout(deadline_s)
        request = httpx.Request(
            method,
            self._url(path),
            headers=self._post_headers if payload is not None else self._get_headers,
            content=payload,
            extensions={"timeout": self._timeout_for(deadline_s)},
        )
        try:
            async with deadline:
                response = await self._transport.handle_async_request(request)
                try:
                    content = await response.aread()
                finally:
                    await response.aclose()
        except _CAUGHT as err:
            if deadline.expired():
                return TimeoutError(f"no complete answer within {deadline_s:g} s")
            return err
        return _reply(response.status_code, content, response.headers)

    async def _send_direct(
        self,
        transport: AiohttpTransport,
        method: str,
        path: str,
        payload: bytes | None,
        deadline_s: float,
    ) -> Reply | BaseException:
        """`_send` on the aiohttp transport's own session (what its
        `handle_async_request` does, without the httpx objects around it)."""
        session = transport.client
        if not isinstance(session, aiohttp.ClientSession):
            session = transport.client = transport.get_client()
        proxy = transport.proxy
        deadline = asyncio.timeout(deadline_s)
        try:
            async with (
                deadline,
                session.request(
                    method,
                    self.options.base_url + path,
                    headers=self._direct_headers[method],
                    data=payload,
                    allow_redirects=False,
                    timeout=_aiohttp_timeout(self.options.connect_timeout_s, deadline_s),
                    proxy=str(proxy.url) if proxy is not None else None,
                    proxy_auth=aiohttp.BasicAuth(*proxy.auth) if proxy and proxy.auth else None,
                    proxy_headers=proxy.headers if proxy is not None else None,
                ) as response,
            ):
                content = await response.read()
        except _CAUGHT as err:
            if deadline.expired():
                return TimeoutError(f"no complete answer within {deadline_s:g} s")
            return err
        return _reply(response.status, content, response.headers)

    def _url(self, path: str) -> httpx.URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.options.base_url + path)
        return url

    def _timeout_for(self, deadline_s: float) -> dict[str, float | None]:
        timeout = self._timeouts.get(deadline_s)
        if timeout is None:
            if len(self._timeouts) > 64:
                self._timeouts.clear()
            timeout = _timeout(self.options, deadline_s).as_dict()
            self._timeouts[deadline_s] = timeout
        return timeout

    def stats(self) -> ClientStats:
        c = self._counters
        return ClientStats(
            base_url=self.options.base_url,
            transport=self._transport_name(),
            authorized=self._authorized,
            pool_size=self.options.pool_size,
            keepalive_s=self.options.keepalive_s,
            in_flight=c.in_flight,
            peak_in_flight=c.peak_in_flight,
            calls=c.calls,
            succeeded=c.succeeded,
            slow=c.slow,
            errors=dict(c.errors),
        )

    async def aclose(self) -> None:
        for draining in list(self._draining):  # each closes its connection when cancelled
            draining.cancel()
        await asyncio.gather(*self._draining, return_exceptions=True)
        if self._h1 is not None:
            self._h1.close()
        await self._http.aclose()

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _transport_name(self) -> str:
        """What chat calls go through: the lean pool, else the httpx transport's class."""
        return "H1Pool" if self._h1 is not None else type(self._transport).__name__

    def __repr__(self) -> str:
        return (
            f"UpstreamClient(base_url={self.options.base_url!r}, "
            f"transport={self._transport_name()}, authorized={self._authorized})"
        )


async def _drain_and_close(stream: H1Stream) -> None:
    try:
        await stream.drain(_DRAIN_S)
    finally:
        stream.close()


def assembled(merged: dict[str, Any], *, latency_ms: float, slow: bool = False) -> CallResult:
    """The success a whole merged stream amounts to: its completion, usage and cost."""
    usage = merged.get("usage")
    return CallResult(
        ok=True, status=200, latency_ms=latency_ms, response=completion(merged),
        usage=usage_of(usage), generation_id=merged.get("id"),
        cost_usd=usage.get("cost") if isinstance(usage, dict) else None, slow=slow,
    )  # fmt: skip


def _aiohttp_transport(options: ClientOptions) -> AiohttpTransport:
    """The aiohttp transport over one pool. With `trust_env`, HTTP(S)_PROXY/NO_PROXY are
    resolved once here: aiohttp's own `trust_env` re-reads them (and ~/.netrc) in a
    thread on every request, which cost a quarter of the router's CPU."""
    limits = httpx.Limits(
        max_connections=options.pool_size,
        max_keepalive_connections=options.pool_size,
        keepalive_expiry=options.keepalive_s,
    )
    return AiohttpTransport(limits=limits, trust_env=options.trust_env, proxy=_env_proxy(options))


def _env_proxy(options: ClientOptions) -> httpx.Proxy | None:
    if not options.trust_env:
        return None
    url = urllib.parse.urlsplit(options.base_url)
    proxy = urllib.request.getproxies().get(url.scheme)
    if not proxy or urllib.request.proxy_bypass(url.hostname or ""):
        return None
    return httpx.Proxy(proxy)


def _reply(status: int, content: bytes, headers: Mapping[str, str]) -> Reply:
    return Reply(
        status=status,
        content=content,
        retry_after=headers.get("retry-after"),
        generation_id=headers.get("x-generation-id"),
    )


class _MaskedHeaders(dict[str, str]):
    """Request headers whose repr never shows the API key (as httpx.Headers masks it)."""

    def __repr__(self) -> str:
        shown = {k: "[secure]" if k == "authorization" else v for k, v in self.items()}
        return f"{type(self).__name__}({shown!r})"


@lru_cache(maxsize=64)
def _aiohttp_timeout(connect_timeout_s: float, deadline_s: float) -> aiohttp.ClientTimeout:
    """`_timeout` as the aiohttp transport maps it (connect, read, pool)."""
    return aiohttp.ClientTimeout(
        sock_connect=min(connect_timeout_s, deadline_s), sock_read=deadline_s, connect=deadline_s
    )


def _timeout(options: ClientOptions, deadline_s: float) -> httpx.Timeout:
    return httpx.Timeout(deadline_s, connect=min(options.connect_timeout_s, deadline_s))


def _headers(options: ClientOptions, key: str | None) -> dict[str, str]:
    headers = {"accept": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    if options.referer:
        headers["http-referer"] = options.referer
    if options.title:
        headers["x-title"] = options.title
    for name, value in options.headers.items():
        headers[name.lower()] = value
    return headers
