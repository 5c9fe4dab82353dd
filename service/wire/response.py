"""Responses (`turnout.responses`, or the request's `reply_to`) from terminal events.

One response per request id, in the shape of docs/reference/records.md, built only from the
terminal event, so a redelivered request is answered with the same bytes.

`terminal_from_response` is the inverse: after a crash between a response and the
terminal event that records it, the next owner finds the response on its topic and
records the terminal event from it (latency to the response's 3 decimals).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from turnout.service.core import events as ev

__all__ = ["encode_response", "response_body", "terminal_from_response"]

_encoder: Final = msgspec.json.Encoder()
Terminal = ev.RequestCompleted | ev.RequestFailed | ev.RequestRejected | ev.RequestCancelled
_ZERO: Final = ev.Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)


def _usage(usage: ev.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def response_body(terminal: Terminal) -> dict[str, Any]:
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
            _stream(body, terminal.stream)
            return body
        case ev.RequestFailed():
            body = _ended(base, terminal, "error", {
                "code": terminal.code, "message": terminal.message,
                "candidates": [msgspec.to_builtins(e) for e in terminal.errors],
            })  # fmt: skip
            if terminal.partial:
                body["partial"] = True
            return body
        case ev.RequestCancelled():
            return _ended(
                base, terminal, "cancelled", {"code": "cancelled", "message": terminal.reason}
            )
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


def _ended(
    base: dict[str, Any],
    terminal: ev.RequestFailed | ev.RequestCancelled,
    status: str,
    error: dict[str, Any],
) -> dict[str, Any]:
    """A request that ended without an answer, with what it used (a stream's part)."""
    body = base | {
        "status": status,
        "model": terminal.model,
        "cached": False,
        "attempts": terminal.attempts,
        "latency_ms": round(terminal.latency_ms, 3),
        "cost_usd": terminal.cost_micros / 1_000_000,
        "usage": _usage(terminal.usage or _ZERO),
        "error": error,
    }
    _stream(body, terminal.stream)
    return body


def _stream(body: dict[str, Any], stats: ev.StreamStats | None) -> None:
    if stats is None:
        return
    body["stream"] = {"chunks": stats.chunks, "ttft_ms": stats.ttft_ms}
    if stats.usage_estimated:
        body["usage_estimated"] = True


def _stream_of(doc: dict[str, Any]) -> ev.StreamStats | None:
    stats = doc.get("stream")
    if not isinstance(stats, dict):
        return None
    ttft = stats.get("ttft_ms")
    return ev.StreamStats(
        chunks=int(stats["chunks"]), ttft_ms=float(ttft) if ttft is not None else None,
        usage_estimated=bool(doc.get("usage_estimated", False)),
    )  # fmt: skip


def encode_response(terminal: Terminal) -> bytes:
    return _encoder.encode(response_body(terminal))


def _usage_of(doc: Any) -> ev.Usage:
    u = doc if isinstance(doc, dict) else {}
    return ev.Usage(
        prompt_tokens=int(u.get("prompt_tokens", 0)),
        completion_tokens=int(u.get("completion_tokens", 0)),
        total_tokens=int(u.get("total_tokens", 0)),
    )


def terminal_from_response(doc: dict[str, Any], *, reply_to: str | None) -> Terminal:
    """The terminal event a response document was built from (`response_body`'s inverse).

    Raises ValueError (or KeyError/TypeError) on a document Turnout did not write."""
    base: dict[str, Any] = {"request_id": str(doc["request_id"]), "tenant": str(doc["tenant"])}
    status = doc["status"]
    if status == "ok":
        saved = doc.get("saved")
        return ev.RequestCompleted(
            **base, model=str(doc["model"]), cached=bool(doc["cached"]),
            coalesced=bool(doc.get("coalesced", False)), attempts=int(doc["attempts"]),
            latency_ms=float(doc["latency_ms"]), usage=_usage_of(doc["usage"]),
            cost_micros=round(float(doc["cost_usd"]) * 1_000_000), response=doc["response"],
            reply_to=reply_to,
            saved_usage=_usage_of(saved["usage"]) if isinstance(saved, dict) else None,
            saved_cost_micros=round(float(saved["cost_usd"]) * 1_000_000)
            if isinstance(saved, dict) else 0,
            stream=_stream_of(doc),
        )  # fmt: skip
    error = doc["error"]
    if status == "error":
        return ev.RequestFailed(
            **base, code=str(error["code"]), message=str(error["message"]),
            attempts=int(doc["attempts"]), latency_ms=float(doc["latency_ms"]),
            errors=[msgspec.convert(c, ev.CandidateError) for c in error.get("candidates", [])],
            reply_to=reply_to, partial=bool(doc.get("partial", False)),
            model=str(doc["model"]) if doc.get("model") is not None else None,
            usage=_usage_of(doc["usage"]) if doc.get("partial") else None,
            cost_micros=round(float(doc.get("cost_usd", 0)) * 1_000_000),
            stream=_stream_of(doc),
        )  # fmt: skip
    if status == "cancelled":
        return ev.RequestCancelled(
            **base, reason=str(error["message"]), attempts=int(doc["attempts"]),
            latency_ms=float(doc["latency_ms"]),
            model=str(doc["model"]) if doc.get("model") is not None else None,
            usage=_usage_of(doc["usage"]), cost_micros=round(float(doc["cost_usd"]) * 1_000_000),
            reply_to=reply_to, stream=_stream_of(doc),
        )  # fmt: skip
    if status == "rejected":
        retry = error.get("retry_after_ms")
        return ev.RequestRejected(
            **base, code=str(error["code"]), message=str(error["message"]),
            retry_after_ms=int(retry) if retry is not None else None, reply_to=reply_to,
        )  # fmt: skip
    raise ValueError(f"not a Turnout response status: {status!r}")
