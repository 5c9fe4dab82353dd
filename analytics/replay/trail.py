"""`turnout replay trail REQUEST_ID`: every event of one request, in order, with its reasons.

A trail is the request's own events (its id is their subject) in log order,
plus the global breaker transitions (`_system` events, no request id) of the
models the request tried or skipped, within the request's time span. Each
step says how long after the first event it happened and, in words, what the
event records: the route and why models were skipped, each attempt's status,
error class and latency, retries and their delay, fallbacks, breaker
verdicts, cache, rate-limit and budget events, and the terminal outcome.

Placing a global event among the request's (pure, `place`): a transition the
request's own call caused is decided with that call's outcome, at the same
millisecond, so `opened`/`closed` of model M at time t go right after the
request's attempt result on M at t, and `half_opened` right before its
attempt start on M at t (the decider emits them in that order). Any other
transition goes after the last request event at or before its time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from rich.table import Table

from turnout.analytics.replay.source import BREAKER_TYPES, Recorded
from turnout.service.core import events as ev
from turnout.service.wire.cloudevents import format_time

__all__ = ["Step", "describe", "models_of", "place", "steps", "trail_json", "trail_table"]

_PREFIX: Final = "turnout."
_JSON: Final = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Step:
    """One line of a trail."""

    rec: Recorded
    offset_ms: int  # since the trail's first event
    system: bool  # a global event (no request id), shown for context
    model: str | None
    detail: str


def models_of(events: Sequence[Recorded]) -> set[str]:
    """The models a request tried, skipped or fell back between."""
    models: set[str] = set()
    for rec in events:
        match rec.data:
            case ev.AttemptStarted(model=model) | ev.AttemptFailed(model=model):
                models.add(model)
            case ev.RouteDecided(skipped=skipped):
                models.update(s.model for s in skipped)
            case ev.FallbackTaken(from_model=a, to_model=b):
                models.update((a, b))
    return models


def _at(
    request: Sequence[Recorded], kinds: type | tuple[type, ...], model: Any, t: int
) -> list[int]:
    """Indexes of the request's events of `kinds` on `model` at time `t`."""
    return [
        i
        for i, rec in enumerate(request)
        if isinstance(rec.data, kinds)
        and (rec.time_ms, getattr(rec.data, "model", None)) == (t, model)
    ]


def _breaker_position(request: Sequence[Recorded], brk: Recorded) -> float:
    """Where a transition goes among the request's events (see the module docstring)."""
    t, model = brk.time_ms, getattr(brk.data, "model", None)
    if isinstance(brk.data, ev.BreakerHalfOpened):
        if starts := _at(request, ev.AttemptStarted, model, t):
            return starts[0] - 0.5
    elif results := _at(request, (ev.AttemptFailed, ev.AttemptSucceeded), model, t):
        return results[-1] + 0.5
    return max((i for i, rec in enumerate(request) if rec.time_ms <= t), default=-1) + 0.5


def place(request: Sequence[Recorded], breakers: Sequence[Recorded]) -> list[tuple[Recorded, bool]]:
    """The request's events (in the order given) with the relevant breaker transitions
    placed among them; each paired with True when it is a global event."""
    if not request:
        return []
    models = models_of(request)
    lo, hi = min(r.time_ms for r in request), max(r.time_ms for r in request)
    keyed: list[tuple[float, int, Recorded, bool]] = [
        (float(i), 0, rec, False) for i, rec in enumerate(request)
    ]
    for j, brk in enumerate(breakers):
        model = getattr(brk.data, "model", None)
        if brk.type in BREAKER_TYPES and model in models and lo <= brk.time_ms <= hi:
            keyed.append((_breaker_position(request, brk), j + 1, brk, True))
    keyed.sort(key=lambda k: k[:2])
    return [(rec, system) for _, _, rec, system in keyed]


def steps(request: Sequence[Recorded], breakers: Sequence[Recorded]) -> list[Step]:
    """The trail of a request: its events (in log order) and the global context."""
    placed = place(request, breakers)
    if not placed:
        return []
    t0 = min(rec.time_ms for rec, _ in placed)
    out = []
    for rec, system in placed:
        model, detail = describe(rec.data)
        out.append(Step(rec, rec.time_ms - t0, system, model, detail))
    return out


# --- words ------------------------------------------------------------------


def _usd(micros: int) -> str:
    return f"${micros / 1e6:.6f}"


def _ms(value: float) -> str:
    return f"{value:,.1f} ms"


def _request_words(e: Any) -> tuple[str | None, str] | None:
    match e:
        case ev.RequestAccepted():
            parts = [f"tenant {e.tenant}, task type {e.task_type}"]
            parts.append(f"model pinned to {e.model}" if e.model else "")
            parts.append(f"~{e.prompt_tokens_est} prompt tokens")
            parts.append(f"max_tokens {e.max_tokens}" if e.max_tokens is not None else "")
            parts.append("prompt stored" if e.messages is not None else "")
            parts.append(f"redrive of {e.redrive_of}" if e.redrive_of else "")
            return e.model, ", ".join(p for p in parts if p)
        case ev.RouteDecided():
            order = " → ".join(e.order) or "no callable candidate"
            skipped = ", ".join(f"{s.model} ({s.reason})" for s in e.skipped)
            return None, f"{e.strategy}: {order}" + (f"; skipped {skipped}" if skipped else "")
        case ev.RequestCompleted():
            how = " from the cache" if e.cached else " (coalesced)" if e.coalesced else ""
            streamed = f", streamed in {e.stream.chunks} chunk record(s)" if e.stream else ""
            return e.model, (
                f"completed{how} after {e.attempts} attempt(s) in {_ms(e.latency_ms)}, "
                f"{e.usage.total_tokens} tokens, {_usd(e.cost_micros)}{streamed}"
            )
        case ev.RequestFailed():
            errors = "; ".join(f"{c.model}: {c.code}" for c in e.errors)
            return None, (
                f"failed {e.code}: {e.message} after {e.attempts} attempt(s) in "
                f"{_ms(e.latency_ms)}" + (f" [{errors}]" if errors else "")
            )
        case ev.RequestCancelled():
            used = e.usage.total_tokens if e.usage is not None else 0
            return (
                e.model,
                f"cancelled ({e.reason}) after {_ms(e.latency_ms)}, {used} tokens, "
                f"{_usd(e.cost_micros)}",
            )
        case ev.StreamFirstToken():
            return e.model, f"first token of attempt {e.attempt} after {_ms(e.ttft_ms)}"
        case ev.StreamCut():
            return e.model, f"stream cut ({e.why}) at {e.completion_tokens} tokens"
        case ev.RequestRejected():
            after = f", retry after {e.retry_after_ms} ms" if e.retry_after_ms is not None else ""
            return None, f"rejected {e.code}: {e.message}{after}"
        case ev.RequestDeadlettered():
            at = f" at {e.path}" if e.path else ""
            return None, f"{e.code}{at}: {e.detail} ({e.topic}[{e.partition}]@{e.offset})"
        case ev.RequestCoalesced():
            return None, f"waits for the identical request {e.leader_request_id}"
    return None


def _attempt_words(e: Any) -> tuple[str | None, str] | None:
    match e:
        case ev.AttemptStarted():
            return e.model, f"attempt {e.attempt} (try {e.model_attempt} on this model)"
        case ev.AttemptSucceeded():
            slow = "; slow: counts as a breaker failure" if e.slow else ""
            return e.model, (
                f"attempt {e.attempt}: HTTP {e.status} in {_ms(e.latency_ms)}, "
                f"{e.usage.total_tokens} tokens, {_usd(e.cost_micros)}{slow}"
            )
        case ev.AttemptFailed():
            status = f" (HTTP {e.status})" if e.status is not None else ""
            flags = [
                "retryable" if e.retryable else "not retryable",
                "counts against the breaker" if e.breaker_failure else "",
                "may fall back" if e.fallback else "",
                f"Retry-After {e.retry_after_ms} ms" if e.retry_after_ms is not None else "",
            ]
            return e.model, (
                f"attempt {e.attempt}: {e.error_class}{status} in {_ms(e.latency_ms)}: "
                f"{e.message or '-'} [{', '.join(f for f in flags if f)}]"
            )
        case ev.RetryScheduled():
            return e.model, f"attempt {e.attempt} in {e.delay_ms} ms (after {e.reason})"
        case ev.FallbackTaken():
            return e.to_model, f"{e.from_model} → {e.to_model} ({e.reason})"
    return None


def _breaker_words(e: Any) -> tuple[str | None, str] | None:
    match e:
        case ev.BreakerOpened():
            return e.model, (
                f"breaker opened: {e.reason} ({e.failures} failure(s) in {e.calls} call(s)); "
                f"open until {format_time(e.open_until_ms)}"
            )
        case ev.BreakerHalfOpened():
            return e.model, "breaker half-open: probe calls admitted"
        case ev.BreakerClosed():
            return e.model, f"breaker closed after {e.successes} successful probe(s)"
    return None


def _limit_words(e: Any) -> tuple[str | None, str] | None:
    match e:
        case ev.RatelimitExceeded():
            return None, (f"{e.limit} = {e.limit_value} reached; retry after {e.retry_after_ms} ms")
        case ev.BudgetReserved() | ev.BudgetCharged() | ev.BudgetReleased():
            verb = e.TYPE.rsplit(".", 1)[1]
            return None, f"{verb} {_usd(e.amount_micros)} (day {e.day}, month {e.month})"
        case ev.BudgetExceeded():
            return None, (
                f"{e.level} {e.period} limit {_usd(e.limit_micros)}: spent "
                f"{_usd(e.spent_micros)}, reserved {_usd(e.reserved_micros)}, "
                f"asked {_usd(e.requested_micros)}"
            )
    return None


def _cache_words(e: Any) -> tuple[str | None, str] | None:
    match e:
        case ev.CacheHit():
            return e.model, (
                f"hit {e.cache_key[:16]}, stored {format_time(e.stored_at_ms)}, saves "
                f"{e.saved_usage.total_tokens} tokens and {_usd(e.saved_cost_micros)}"
            )
        case ev.CacheMiss():
            return None, f"miss {e.cache_key[:16]}"
        case ev.CacheStored():
            return e.model, (
                f"stored {e.cache_key[:16]}: {e.size_bytes} B as {e.stored_bytes} B "
                f"{e.encoding}, expires {format_time(e.expires_at_ms)}"
            )
    return None


def describe(event: Any) -> tuple[str | None, str]:
    """(model, words) for one event's data; unknown types show their JSON."""
    for words in (_request_words, _attempt_words, _breaker_words, _limit_words, _cache_words):
        found = words(event)
        if found is not None:
            return found
    if isinstance(event, ev.RawEvent):
        return None, _JSON.encode(event.data).decode()
    return getattr(event, "model", None), _JSON.encode(event).decode()


# --- output -----------------------------------------------------------------


def _short(type_: str) -> str:
    return type_.removeprefix(_PREFIX)


def trail_table(request_id: str, trail: Sequence[Step]) -> Table:
    """The trail as a rich table; global events are marked ⚙."""
    table = Table(
        "+ms", "time (UTC)", "event", "model", "detail",
        title=f"request {request_id}", title_justify="left",
        caption="⚙ global event (no request id): a breaker of a model this request used"
        if any(step.system for step in trail) else None,
        caption_justify="left",
    )  # fmt: skip
    for step in trail:
        event = ("⚙ " if step.system else "") + _short(step.rec.type)
        table.add_row(
            f"+{step.offset_ms:,}",
            format_time(step.rec.time_ms)[11:],
            event,
            step.model or "",
            step.detail.replace("[", r"\["),
            style="dim" if step.system else None,
        )
    return table


def _data(event: Any) -> Any:
    return event.data if isinstance(event, ev.RawEvent) else event


def trail_json(trail: Sequence[Step]) -> bytes:
    """The trail as a JSON array: one object per step, the event's data included."""
    return _JSON.encode(
        [
            {
                "offset_ms": s.offset_ms,
                "time": format_time(s.rec.time_ms),
                "type": s.rec.type,
                "global": s.system,
                "model": s.model,
                "detail": s.detail,
                "id": s.rec.id,
                "tenant": s.rec.tenant,
                "source": s.rec.source,
                "partition": s.rec.partition,
                "offset": s.rec.offset,
                "data": _data(s.rec.data),
            }
            for s in trail
        ]
    )
