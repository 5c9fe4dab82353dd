"""The upstream client: one pooled HTTP client per process, every outcome as data.

Job: post non-streaming chat completions to an OpenRouter-compatible upstream
and return a `CallResult`; GET JSON (`/models`) over the same pool; count
calls, errors and requests in flight for /healthz.

Rules:
- One `httpx.AsyncClient` per process, on the aiohttp transport
  (PERFORMANCE.md: httpcore costs several times the CPU at 32 in flight).
  Pool size and keep-alive come from `[upstream]`; the connect timeout is
  separate from the per-call deadline, which bounds the whole exchange
  (headers and body), not only each read.
- The API key is read from the environment once, at construction, and lives
  only in the HTTP client's default headers (httpx masks it in reprs). It is
  never logged, kept on this object, or put in stats.
- `call` never raises for upstream trouble. `translate` is the one function
  that turns a reply or a transport exception into a `CallResult`: HTTP
  statuses through `service.core.outcomes.classify_status`, exceptions
  through `_EXCEPTIONS` below. Bugs and bad arguments still raise.
- The aiohttp transport maps exceptions lossily (every aiohttp
  ClientConnectionError becomes `httpx.ConnectTimeout`: refused connections
  and server disconnects alike), so exceptions are classified by their whole
  chain, aiohttp's original first, then httpx's, then the standard library's.
- A success slower than `call_timeout_s` stays a success, flagged `slow=True`
  (the breaker counts it as a failure).
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Final

import aiohttp
import httpx
import msgspec
from httpx_aiohttp import AiohttpTransport, HttpxAiohttpClient

from service.clock import Clock
from service.clock import clock as system_clock
from service.core.config import BreakerConfig, UpstreamConfig
from service.core.events import Usage
from service.core.outcomes import CLASSES, ErrorClass, classify_status

__all__ = [
    "CallResult",
    "ClientOptions",
    "ClientStats",
    "Reply",
    "UpstreamClient",
    "classify_exception",
    "retry_after_ms",
    "translate",
]

_MESSAGE_MAX = 300
_decode_json = msgspec.json.Decoder().decode
_encode_json = msgspec.json.Encoder().encode
_JSON_HEADERS: Final = {"content-type": "application/json"}


# --------------------------------------------------------------------------- values


class ClientOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How the client connects; `from_config` builds it from `[upstream]` and `[breaker]`."""

    base_url: str = "https://openrouter.ai/api/v1"
    api_key_env: str = "OPENROUTER_API_KEY"
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    pool_size: int = 100
    keepalive_s: float = 30.0
    referer: str = ""
    title: str = ""
    call_timeout_s: float = 30.0
    trust_env: bool = True  # proxies from HTTP(S)_PROXY, also over the aiohttp transport

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


class CallResult(msgspec.Struct, frozen=True, kw_only=True):
    """One upstream call's outcome, pure data: a success or a classified failure.

    Success: `ok`, `status`, `response` (the parsed body), `usage`, `cost_usd`
    (OpenRouter's `usage.cost`), `generation_id`, `latency_ms`, `slow`.
    Failure: `ok=False`, `status` (None without an HTTP answer), `error_class`
    (a name in `outcomes.CLASSES`), `message`, `retry_after_ms`, `latency_ms`.
    """

    ok: bool
    status: int | None = None
    latency_ms: float = 0.0
    response: dict[str, Any] | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    generation_id: str | None = None
    slow: bool = False
    error_class: str | None = None
    message: str | None = None
    retry_after_ms: int | None = None

    @property
    def error(self) -> ErrorClass | None:
        """The classification row (retryable, breaker_failure, fallback, code)."""
        return None if self.error_class is None else CLASSES[self.error_class]


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """What came back over HTTP, before any interpretation."""

    status: int
    content: bytes
    retry_after: str | None = None
    generation_id: str | None = None


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


# --------------------------------------------------------------------------- translation


class _ErrorDetail(msgspec.Struct):
    code: int | str | None = None
    message: str | None = None
    metadata: dict[str, Any] | None = None


class _Choice(msgspec.Struct):
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int | None = None
    cost: float | None = None


class _Envelope(msgspec.Struct):
    id: str | None = None
    error: _ErrorDetail | None = None
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorDetail | None = None


_decode_error_envelope = msgspec.json.Decoder(_ErrorEnvelope).decode

# Checked in order against every exception in the chain; the first row that matches wins.
_EXCEPTIONS: Final[tuple[tuple[type[BaseException], str], ...]] = (
    (aiohttp.ConnectionTimeoutError, "connect_error"),
    (aiohttp.ClientConnectorError, "connect_error"),
    (aiohttp.ServerTimeoutError, "timeout"),
    (aiohttp.ServerDisconnectedError, "connection_reset"),
    (aiohttp.ClientPayloadError, "connection_reset"),
    (aiohttp.ClientConnectionError, "connection_reset"),
    (aiohttp.ClientResponseError, "malformed_response"),
    (aiohttp.ClientError, "http_error"),
    (httpx.ConnectTimeout, "connect_error"),
    (httpx.ConnectError, "connect_error"),
    (httpx.ProxyError, "connect_error"),
    (httpx.UnsupportedProtocol, "connect_error"),
    (httpx.TimeoutException, "timeout"),
    (httpx.RemoteProtocolError, "connection_reset"),
    (httpx.ReadError, "connection_reset"),
    (httpx.WriteError, "connection_reset"),
    (httpx.DecodingError, "malformed_response"),
    (httpx.HTTPError, "http_error"),
    (TimeoutError, "timeout"),
    (ConnectionRefusedError, "connect_error"),
    (OSError, "connection_reset"),
)
_CAUGHT: Final = (httpx.HTTPError, aiohttp.ClientError, OSError)


def translate(
    outcome: Reply | BaseException,
    *,
    latency_ms: float,
    now_ms: int,
    slow_ms: float | None = None,
    chat: bool = True,
) -> CallResult:
    """The one translation of an upstream outcome into a `CallResult`; never raises.

    `chat=False` accepts any JSON object as a success (for `/models`);
    `now_ms` resolves an HTTP-date Retry-After; `slow_ms` flags slow successes.
    """
    if isinstance(outcome, BaseException):
        name, culprit = classify_exception(outcome)
        return _failure(name, None, _describe(culprit), latency_ms)
    if not 200 <= outcome.status < 300:
        return _http_failure(outcome, latency_ms, now_ms)
    return _success(outcome, latency_ms, now_ms, slow_ms, chat)


def classify_exception(exc: BaseException) -> tuple[str, BaseException]:
    """The error class of a transport exception, and the exception in its chain that decided."""
    chain = _chain(exc)
    for kind, name in _EXCEPTIONS:
        for link in chain:
            if isinstance(link, kind):
                return name, link
    return "http_error", exc


def _chain(exc: BaseException) -> list[BaseException]:
    links: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in links and len(links) < 8:
        links.append(link)
        link = link.__cause__ or link.__context__
    return links


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return _clip(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _clip(text: str) -> str:
    return text if len(text) <= _MESSAGE_MAX else text[: _MESSAGE_MAX - 3] + "..."


def _failure(
    name: str,
    status: int | None,
    message: str,
    latency_ms: float,
    *,
    retry_after_ms: int | None = None,
    generation_id: str | None = None,
) -> CallResult:
    return CallResult(
        ok=False,
        status=status,
        latency_ms=latency_ms,
        error_class=name,
        message=message,
        retry_after_ms=retry_after_ms,
        generation_id=generation_id,
    )


def _http_failure(reply: Reply, latency_ms: float, now_ms: int) -> CallResult:
    detail = _error_detail(reply.content)
    message = detail.message if detail and detail.message else f"HTTP {reply.status}"
    metadata = detail.metadata if detail else None
    return _failure(
        classify_status(reply.status).name,
        reply.status,
        _clip(message),
        latency_ms,
        retry_after_ms=retry_after_ms(reply.retry_after, metadata, now_ms),
        generation_id=reply.generation_id,
    )


def _error_detail(content: bytes) -> _ErrorDetail | None:
    try:
        return _decode_error_envelope(content).error
    except msgspec.MsgspecError:
        return None


def _success(
    reply: Reply, latency_ms: float, now_ms: int, slow_ms: float | None, chat: bool
) -> CallResult:
    try:
        data = _decode_json(reply.content)
        if not isinstance(data, dict):
            raise msgspec.ValidationError("expected a JSON object")
        envelope = msgspec.convert(data, _Envelope) if chat else _Envelope()
    except msgspec.MsgspecError as err:
        return _failure("malformed_response", reply.status, _clip(f"bad body: {err}"), latency_ms)
    generation_id = reply.generation_id or envelope.id
    if chat and _is_midstream_error(envelope):
        message = envelope.error.message if envelope.error else None
        return _failure(
            "midstream_error",
            reply.status,
            _clip(message or "finish_reason: error"),
            latency_ms,
            retry_after_ms=retry_after_ms(None, _metadata(envelope), now_ms),
            generation_id=generation_id,
        )
    if chat and not envelope.choices:
        return _failure(
            "malformed_response", reply.status, "a completion without choices", latency_ms
        )
    usage = envelope.usage
    return CallResult(
        ok=True,
        status=reply.status,
        latency_ms=latency_ms,
        response=data,
        usage=_usage(usage),
        cost_usd=usage.cost if usage else None,
        generation_id=generation_id,
        slow=slow_ms is not None and latency_ms > slow_ms,
    )


def _is_midstream_error(envelope: _Envelope) -> bool:
    return envelope.error is not None or any(c.finish_reason == "error" for c in envelope.choices)


def _metadata(envelope: _Envelope) -> dict[str, Any] | None:
    return envelope.error.metadata if envelope.error else None


def _usage(usage: _Usage | None) -> Usage | None:
    if usage is None:
        return None
    total = usage.total_tokens
    if total is None:
        total = usage.prompt_tokens + usage.completion_tokens
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=total,
    )


def retry_after_ms(
    header: str | None, metadata: Mapping[str, Any] | None, now_ms: int
) -> int | None:
    """Milliseconds to wait: Retry-After (seconds or HTTP-date), else OpenRouter metadata."""
    if header is not None and (ms := _parse_retry_after(header, now_ms)) is not None:
        return ms
    if not metadata:
        return None
    for key, scale in (("retry_after_ms", 1), ("retry_after_seconds", 1000), ("retry_after", 1000)):
        if (ms := _milliseconds(metadata.get(key), scale)) is not None:
            return ms
    headers = metadata.get("headers")
    if isinstance(headers, Mapping):
        value = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return _parse_retry_after(str(value), now_ms)
    return None


def _parse_retry_after(value: str, now_ms: int) -> int | None:
    ms = _milliseconds(value.strip(), 1000)
    if ms is not None:
        return ms
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0, round(when.timestamp() * 1000) - now_ms)


def _milliseconds(value: object, scale: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return round(number * scale)


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
        self._timeouts: dict[float, httpx.Timeout] = {}

    async def call(
        self, model: str, body: Mapping[str, Any], *, timeout_s: float | None = None
    ) -> CallResult:
        """POST `/chat/completions` for `model`, not streamed; never raises for upstream trouble."""
        payload = _encode_json({**body, "model": model, "stream": False})
        slow_ms = self.options.call_timeout_s * 1000
        return await self._exchange("POST", "/chat/completions", payload, timeout_s, slow_ms)

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
        """The HTTP exchange under one deadline: a `Reply`, or the transport exception."""
        deadline = asyncio.timeout(deadline_s)
        try:
            async with deadline:
                response = await self._http.request(
                    method,
                    path,
                    content=payload,
                    headers=_JSON_HEADERS if payload is not None else None,
                    timeout=self._timeout_for(deadline_s),
                )
        except _CAUGHT as err:
            if deadline.expired():
                return TimeoutError(f"no complete answer within {deadline_s:g} s")
            return err
        headers = response.headers
        return Reply(
            status=response.status_code,
            content=response.content,
            retry_after=headers.get("retry-after"),
            generation_id=headers.get("x-generation-id"),
        )

    def _timeout_for(self, deadline_s: float) -> httpx.Timeout:
        timeout = self._timeouts.get(deadline_s)
        if timeout is None:
            if len(self._timeouts) > 64:
                self._timeouts.clear()
            timeout = self._timeouts[deadline_s] = _timeout(self.options, deadline_s)
        return timeout

    def stats(self) -> ClientStats:
        c = self._counters
        return ClientStats(
            base_url=self.options.base_url,
            transport=type(self._transport).__name__,
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

    def __repr__(self) -> str:
        return (
            f"UpstreamClient(base_url={self.options.base_url!r}, "
            f"transport={type(self._transport).__name__}, authorized={self._authorized})"
        )


def _aiohttp_transport(options: ClientOptions) -> AiohttpTransport:
    limits = httpx.Limits(
        max_connections=options.pool_size,
        max_keepalive_connections=options.pool_size,
        keepalive_expiry=options.keepalive_s,
    )
    return AiohttpTransport(limits=limits, trust_env=options.trust_env)


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
    return headers
