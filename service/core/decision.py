"""What the deciders take and give: the inputs, the effects and the decision.

    IntakeRequest, CallResult   inputs (the shell builds them from records and calls)
    Call, Wait, Respond, Resend the effects the shell carries out
    Context, Decision           the decider's arguments and its result

Pure data: frozen msgspec structs, no behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from turnout.service.core import events as ev
from turnout.service.core.cache import EncodedBody
from turnout.service.core.config import Config
from turnout.service.core.pricing import Price
from turnout.service.core.state import Terminal

__all__ = [
    "Call",
    "CallResult",
    "Context",
    "Decision",
    "Effect",
    "IntakeRequest",
    "Resend",
    "Respond",
    "Wait",
]


class IntakeRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A valid intake request as the core needs it (the wire codec builds it)."""

    request_id: str
    tenant: str
    task_type: str = "general"
    model: str | None = None
    messages_hash: str
    prompt_tokens_est: int
    max_tokens: int | None = None
    params: dict[str, Any] = {}
    messages: list[dict[str, Any]] | None = None
    reply_to: str | None = None
    metadata: dict[str, Any] | None = None
    cache: bool | None = None  # the request's own cache opt-in (True) or opt-out (False)
    redrive_of: str | None = None  # the request id this one re-submits (`turnout replay redrive`)
    intake_partition: int | None = None
    intake_offset: int | None = None
    stream: bool = False  # answer as chunk records, then the last record


class CallResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the upstream client reports for one call (pure data)."""

    model: str
    attempt: int
    ok: bool
    latency_ms: float
    status: int | None = None
    response: dict[str, Any] | None = None
    usage: ev.Usage = ev.Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
    cost_micros: int = 0
    generation_id: str | None = None
    error_class: str = "http_error"
    message: str = ""
    retry_after_ms: int | None = None
    slow: bool = False
    cache_body: EncodedBody | None = None  # the answer, encoded, when it may be cached
    stream: ev.StreamStats | None = None  # a streamed call: what was relayed
    cut: str | None = None  # a stream stopped early: budget | max_tokens (upstream: recorded)


class Call(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    model: str
    attempt: int


class Wait(msgspec.Struct, frozen=True, kw_only=True):
    """Call `decide_retry_due` for the request after `delay_ms`."""

    request_id: str
    delay_ms: int


class Respond(msgspec.Struct, frozen=True, kw_only=True):
    """Answer with `terminal`'s response, acknowledged before the terminal event is sent.
    `delivered`: the response is on its topic already (the last owner sent it and died
    before recording it): record the terminal event only, never answer twice."""

    terminal: Terminal
    delivered: bool = False


class Resend(msgspec.Struct, frozen=True, kw_only=True):
    """A duplicate of a finished request: answer again with the recorded outcome."""

    terminal: Terminal


Effect = Call | Wait | Respond | Resend


class Context(msgspec.Struct, frozen=True, kw_only=True):
    now_ms: int
    cfg: Config
    prices: Mapping[str, Price] = {}


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    events: list[Any]
    effects: list[Effect]
