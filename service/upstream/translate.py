"""Upstream outcomes as data: the one translation of a reply or exception into a `CallResult`.

Job: `translate` turns what came back over HTTP (`Reply`) or the transport
exception raised instead into a `CallResult`; `classify_exception` and
`retry_after_ms` are its parts that others reuse.

Rules:
- `translate` never raises: HTTP statuses are classified by
  `turnout.service.core.outcomes.classify_status`, exceptions by the `_EXCEPTIONS`
  table below, bodies that do not parse become `malformed_response`;
- the aiohttp transport maps exceptions lossily (every aiohttp
  ClientConnectionError becomes `httpx.ConnectTimeout`: refused connections
  and server disconnects alike), so exceptions are classified by their whole
  chain, aiohttp's original first, then httpx's, then the standard library's;
- messages are clipped to `_MESSAGE_MAX` characters; a success slower than
  `slow_ms` stays a success, flagged `slow=True`;
- pure: no I/O, no clock (`now_ms` is an argument, for HTTP-date Retry-After).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Final

import aiohttp
import httpx
import msgspec

from turnout.service.core.events import Usage
from turnout.service.core.outcomes import CLASSES, ErrorClass, classify_status
from turnout.service.upstream.h1 import H1ConnectError, H1ProtocolError

__all__ = [
    "MAX_RETRY_AFTER_MS", "CallResult", "Reply", "classify_exception", "retry_after_ms",
    "translate", "usage_of",
]  # fmt: skip

MAX_RETRY_AFTER_MS = 3_600_000
"""The longest wait an upstream's Retry-After is taken for (longer ones are cut to it)."""

_MESSAGE_MAX = 300
_decode_json = msgspec.json.Decoder().decode


# --------------------------------------------------------------------------- values


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
    (H1ConnectError, "connect_error"),
    (H1ProtocolError, "malformed_response"),
    (ConnectionRefusedError, "connect_error"),
    (OSError, "connection_reset"),
)


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


def usage_of(doc: Any) -> Usage | None:
    """An OpenAI `usage` object (a stream's last chunk) as `Usage`; None if it is not one."""
    if not isinstance(doc, dict):
        return None
    try:
        return _usage(msgspec.convert(doc, _Usage))
    except msgspec.ValidationError:
        return None


def retry_after_ms(
    header: str | None, metadata: Mapping[str, Any] | None, now_ms: int
) -> int | None:
    """Milliseconds to wait: Retry-After (seconds or HTTP-date), else OpenRouter metadata;
    at most `MAX_RETRY_AFTER_MS` (a breaker opened with an epoch time or 1e300 as its
    wait would hold the model off for ever, and the log would keep it so)."""
    ms = _retry_after_ms(header, metadata, now_ms)
    return None if ms is None else min(ms, MAX_RETRY_AFTER_MS)


def _retry_after_ms(
    header: str | None, metadata: Mapping[str, Any] | None, now_ms: int
) -> int | None:
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
    return round(min(number * scale, MAX_RETRY_AFTER_MS))  # 1e306 s: no OverflowError
