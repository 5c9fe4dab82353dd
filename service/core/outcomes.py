"""What an upstream failure means: the one classification table.

Every way a call can fail is named by an error class; this table says, for
each, whether to retry the same model, whether it counts against the model's
circuit breaker, whether another model is worth trying, and which error code a
client sees when it is the last word. The shell translates HTTP statuses,
OpenRouter error bodies and transport exceptions into an error class in one
function (`classify_status` here, and the upstream client for exceptions).
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ["CLASSES", "ErrorClass", "classify_status", "lookup"]


class ErrorClass(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    retryable: bool
    breaker_failure: bool
    fallback: bool
    code: str  # the response error code when this is the request's final failure


def _c(name: str, retry: bool, breaker: bool, fallback: bool, code: str) -> ErrorClass:
    return ErrorClass(
        name=name, retryable=retry, breaker_failure=breaker, fallback=fallback, code=code
    )


#                name                     retry  breaker fallback code
CLASSES: Final[dict[str, ErrorClass]] = {
    c.name: c
    for c in (
        _c("bad_request", False, False, False, "invalid_request"),
        _c("unauthorized", False, False, False, "upstream_unauthorized"),
        _c("payment_required", False, False, False, "upstream_payment_required"),
        _c("forbidden", False, False, True, "upstream_forbidden"),
        _c("model_not_found", False, True, True, "upstream_unavailable"),
        _c("request_timeout", True, True, True, "upstream_unavailable"),
        _c("rate_limited", True, False, True, "upstream_rate_limited"),
        _c("server_error", True, True, True, "upstream_unavailable"),
        _c("bad_gateway", True, True, True, "upstream_unavailable"),
        _c("unavailable", True, True, True, "upstream_unavailable"),
        _c("gateway_timeout", True, True, True, "upstream_unavailable"),
        _c("timeout", True, True, True, "upstream_timeout"),
        _c("connect_error", True, True, True, "upstream_unavailable"),
        _c("connection_reset", True, True, True, "upstream_unavailable"),
        _c("malformed_response", True, True, True, "upstream_unavailable"),
        _c("midstream_error", True, True, True, "upstream_unavailable"),
        # a stream that failed after its first chunk went out: never retried or fallen back
        # (the client has seen its tokens), counted against the model's breaker
        _c("upstream_stream_error", False, True, False, "upstream_stream_error"),
        _c("http_error", True, True, True, "upstream_unavailable"),
        # an answer larger than a Kafka record (events and the response carry it whole)
        _c("response_too_large", False, False, False, "response_too_large"),
    )
}

_BY_STATUS: Final[dict[int, str]] = {
    400: "bad_request",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "model_not_found",
    408: "request_timeout",
    413: "bad_request",
    422: "bad_request",
    429: "rate_limited",
    500: "server_error",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


def classify_status(status: int) -> ErrorClass:
    """The class of an HTTP error status (unknown 4xx: not retried; unknown 5xx: retried)."""
    name = _BY_STATUS.get(status)
    if name is None:
        name = "bad_request" if 400 <= status < 500 else "http_error"
    return CLASSES[name]


def lookup(name: str) -> ErrorClass:
    return CLASSES[name]
