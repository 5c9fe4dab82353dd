"""Responses (`turnout.responses`, or the request's `reply_to`) from terminal events.

One response per request id, in CONTRACT.md's shape, built only from the
terminal event, so a redelivered request is answered with the same bytes.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from service.core import events as ev

__all__ = ["encode_response", "response_body"]

_encoder: Final = msgspec.json.Encoder()
_ZERO: Final = ev.Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)


def _usage(usage: ev.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def response_body(
    terminal: ev.RequestCompleted | ev.RequestFailed | ev.RequestRejected,
) -> dict[str, Any]:
    """The response document for a request's terminal event."""
    base: dict[str, Any] = {"request_id": terminal.request_id, "tenant": terminal.tenant}
    match terminal:
        case ev.RequestCompleted():
            body = base | {
                "status": "ok",
                "model": terminal.model,
                "cached": terminal.cached,
                "coalesced": terminal.coalesced,
                "attempts": terminal.attempts,
                "latency_ms": round(terminal.latency_ms, 3),
                "cost_usd": terminal.cost_micros / 1_000_000,
                "usage": _usage(terminal.usage),
                "response": terminal.response,
            }
            if terminal.saved_usage is not None:
                body["saved"] = {
                    "usage": _usage(terminal.saved_usage),
                    "cost_usd": terminal.saved_cost_micros / 1_000_000,
                }
            return body
        case ev.RequestFailed():
            return base | {
                "status": "error",
                "model": None,
                "cached": False,
                "attempts": terminal.attempts,
                "latency_ms": round(terminal.latency_ms, 3),
                "cost_usd": 0.0,
                "usage": _usage(_ZERO),
                "error": {
                    "code": terminal.code,
                    "message": terminal.message,
                    "candidates": [msgspec.to_builtins(e) for e in terminal.errors],
                },
            }
    error: dict[str, Any] = {"code": terminal.code, "message": terminal.message}
    if terminal.retry_after_ms is not None:
        error["retry_after_ms"] = terminal.retry_after_ms
    return base | {
        "status": "rejected",
        "model": None,
        "cached": False,
        "attempts": 0,
        "latency_ms": 0.0,
        "cost_usd": 0.0,
        "usage": _usage(_ZERO),
        "error": error,
    }


def encode_response(terminal: ev.RequestCompleted | ev.RequestFailed | ev.RequestRejected) -> bytes:
    return _encoder.encode(response_body(terminal))
