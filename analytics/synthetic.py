"""Synthetic event streams: a mixed workload built from the real event structs.

For tests and benchmarks of the archive, the sink and the dashboards: each
`Story` is one request told as the router would tell it (ok, retried,
fallback, cached, coalesced, failed, rejected, dead-lettered, still in
flight), and `workload` interleaves many of them with a few global events
(breakers, alerts). Pure and deterministic: times and ids come from the
arguments (ids are UUIDv7 from `uuid7_at`), so two runs give the same log.

`KINDS` is the default mix. `EXTRA_KINDS` add what the dashboards show
besides: a cache miss that stores its answer, a soft and a hard budget
overrun, a cache eviction and an alert left firing. The last two
(`REQUESTLESS`) are no request: their `Story.request_id` is None and they
add no row to the `requests` view. `workload(..., kinds=ALL_KINDS)` mixes
them in; the default output never changes. `ROUTE_KINDS` are told only when
asked for by name (`story`): the preferred model skipped for an open
breaker (a fallback before any attempt), or over a price cap (policy). So are
`STREAM_KINDS`: a streamed answer (first token after 120 ms, 40 tokens in 2 s), one
that failed after 9 tokens (`partial`, charged for them) and one cancelled after 9.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import count
from typing import TypedDict

import msgspec

from turnout.service.clock import uuid7_at
from turnout.service.core import events as ev
from turnout.service.core.events import Event, Usage
from turnout.service.wire.cloudevents import Envelope, wrap

__all__ = [
    "ALL_KINDS",
    "EXTRA_KINDS",
    "KINDS",
    "MODELS",
    "REQUESTLESS",
    "ROUTE_KINDS",
    "STREAM_KINDS",
    "Story",
    "envelopes",
    "story",
    "workload",
]

MODELS = ("openai/gpt-4o-mini", "anthropic/claude-3.5-haiku", "meta-llama/llama-3.1-8b-instruct")
KINDS = (
    "ok",
    "retried",
    "fallback",
    "cached",
    "coalesced",
    "failed",
    "rejected",
    "deadlettered",
    "in_flight",
)
EXTRA_KINDS = ("cache_miss", "budget_warned", "budget_rejected", "evicted", "alert_firing")
ALL_KINDS = KINDS + EXTRA_KINDS
REQUESTLESS = ("evicted", "alert_firing")
ROUTE_KINDS = ("skipped_open", "skipped_price")
STREAM_KINDS = ("streamed", "stream_cut", "stream_cancelled")
_USAGE = Usage(prompt_tokens=12, completion_tokens=40, total_tokens=52)
_COST = 210
_RESPONSE = {
    "id": "gen-1",
    "object": "chat.completion",
    "model": MODELS[0],
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
}


@dataclass(frozen=True, slots=True)
class Story:
    """One request's events in order, and what the `requests` view must say about it."""

    request_id: str | None
    tenant: str
    kind: str
    events: tuple[Event, ...]


class _Req(TypedDict):
    request_id: str
    tenant: str


def _r(request_id: str, tenant: str) -> _Req:
    return {"request_id": request_id, "tenant": tenant}


def _accepted(rid: str, tenant: str) -> list[Event]:
    r = _r(rid, tenant)
    return [
        ev.RequestAccepted(**r, task_type="general", messages_hash="sha256:00",
                           prompt_tokens_est=12, cacheable=True, cache_key=f"k-{rid}"),
        ev.RouteDecided(**r, task_type="general", strategy="priority",
                        candidates=list(MODELS), order=list(MODELS)),
        ev.BudgetReserved(**r, amount_micros=1000, day="2026-01-01", month="2026-01"),
    ]  # fmt: skip


def _attempt_ok(rid: str, tenant: str, model: str, attempt: int) -> list[Event]:
    r = _r(rid, tenant)
    return [
        ev.AttemptStarted(**r, model=model, attempt=attempt, model_attempt=1),
        ev.AttemptSucceeded(**r, model=model, attempt=attempt, status=200, latency_ms=80.0,
                            usage=_USAGE, cost_micros=_COST),
    ]  # fmt: skip


def _attempt_failed(
    rid: str, tenant: str, model: str, attempt: int, *, fallback: bool
) -> list[Event]:
    r = _r(rid, tenant)
    return [
        ev.AttemptStarted(**r, model=model, attempt=attempt, model_attempt=1),
        ev.AttemptFailed(**r, model=model, attempt=attempt, status=503, error_class="http_503",
                         message="upstream down", latency_ms=20.0, retryable=not fallback,
                         breaker_failure=True, fallback=fallback),
    ]  # fmt: skip


def _completed(
    rid: str,
    tenant: str,
    model: str,
    attempts: int,
    *,
    cached: bool = False,
    coalesced: bool = False,
) -> list[Event]:
    r = _r(rid, tenant)
    free = cached or coalesced
    cost = 0 if free else _COST
    done: list[Event] = [
        ev.RequestCompleted(
            **r,
            model=model,
            cached=cached,
            coalesced=coalesced,
            attempts=attempts,
            latency_ms=float(100 * attempts + 5),
            usage=_USAGE,
            cost_micros=cost,
            response=_RESPONSE,
        ),
    ]
    if not free:
        done.insert(0, ev.BudgetCharged(**r, amount_micros=cost, day="2026-01-01", month="2026-01"))
    return done  # fmt: skip


def _ok(rid: str, t: str) -> list[Event]:
    return [
        *_accepted(rid, t),
        *_attempt_ok(rid, t, MODELS[0], 1),
        *_completed(rid, t, MODELS[0], 1),
    ]


def _retried(rid: str, t: str) -> list[Event]:
    retry = ev.RetryScheduled(**_r(rid, t), model=MODELS[0], attempt=2, delay_ms=200, reason="503")
    return [
        *_accepted(rid, t),
        *_attempt_failed(rid, t, MODELS[0], 1, fallback=False),
        retry,
        *_attempt_ok(rid, t, MODELS[0], 2),
        *_completed(rid, t, MODELS[0], 2),
    ]


def _fallback(rid: str, t: str) -> list[Event]:
    hop = ev.FallbackTaken(**_r(rid, t), from_model=MODELS[0], to_model=MODELS[1], reason="503")
    return [
        *_accepted(rid, t),
        *_attempt_failed(rid, t, MODELS[0], 1, fallback=True),
        hop,
        *_attempt_ok(rid, t, MODELS[1], 2),
        *_completed(rid, t, MODELS[1], 2),
    ]


def _skipped(reason: str) -> Callable[[str, str], list[Event]]:
    """The first choice left out (`reason`); the second answers at the first attempt."""

    def tell(rid: str, t: str) -> list[Event]:
        accepted, route, reserved = _accepted(rid, t)
        assert isinstance(route, ev.RouteDecided)
        skip = [ev.SkippedModel(model=MODELS[0], reason=reason)]
        route = msgspec.structs.replace(route, order=list(MODELS[1:]), skipped=skip)
        return [
            accepted, route, reserved,
            *_attempt_ok(rid, t, MODELS[1], 1),
            *_completed(rid, t, MODELS[1], 1),
        ]  # fmt: skip

    return tell


STREAM_TTFT_MS = 120.0
STREAM_LATENCY_MS = 2_120.0  # 40 completion tokens in the 2 s after the first: 20 tokens/s


def _streamed(rid: str, t: str) -> list[Event]:
    r = _r(rid, t)
    stats = ev.StreamStats(chunks=6, ttft_ms=STREAM_TTFT_MS)
    accepted, *rest = _accepted(rid, t)
    assert isinstance(accepted, ev.RequestAccepted)
    *done, completed = _completed(rid, t, MODELS[0], 1)
    assert isinstance(completed, ev.RequestCompleted)
    return [
        msgspec.structs.replace(accepted, stream=True), *rest,
        ev.AttemptStarted(**r, model=MODELS[0], attempt=1, model_attempt=1),
        ev.StreamFirstToken(**r, model=MODELS[0], attempt=1, ttft_ms=STREAM_TTFT_MS),
        ev.AttemptSucceeded(**r, model=MODELS[0], attempt=1, status=200,
                            latency_ms=STREAM_LATENCY_MS, usage=_USAGE, cost_micros=_COST),
        *done, msgspec.structs.replace(completed, stream=stats),
    ]  # fmt: skip


_CUT_USAGE = Usage(prompt_tokens=12, completion_tokens=9, total_tokens=21)
_CUT_COST = 47


def _stream_stopped(cancelled: bool) -> Callable[[str, str], list[Event]]:
    """A stream stopped after 9 tokens: failed upstream (`partial`) or cancelled; either
    way charged for what was streamed."""

    def tell(rid: str, t: str) -> list[Event]:
        r = _r(rid, t)
        accepted, *rest = _accepted(rid, t)
        assert isinstance(accepted, ev.RequestAccepted)
        model = MODELS[0]
        stats = ev.StreamStats(chunks=2, ttft_ms=STREAM_TTFT_MS, usage_estimated=True)
        why = "cancel" if cancelled else "upstream"
        stopped: list[Event] = [
            ev.StreamCut(**r, model=model, attempt=1, why=why, completion_tokens=9),
            ev.BudgetCharged(**r, amount_micros=_CUT_COST, day="2026-01-01", month="2026-01"),
        ]
        if cancelled:
            stopped.append(ev.RequestCancelled(
                **r, reason="client_disconnected", attempts=1, latency_ms=600.0, model=model,
                usage=_CUT_USAGE, cost_micros=_CUT_COST, stream=stats,
            ))  # fmt: skip
        else:
            stopped[:0] = [ev.AttemptFailed(
                **r, model=model, attempt=1, status=200, error_class="upstream_stream_error",
                message="cut", latency_ms=600.0, retryable=False, breaker_failure=True,
                fallback=False,
            )]  # fmt: skip
            stopped.append(ev.RequestFailed(
                **r, code="upstream_stream_error", message="cut", attempts=1, latency_ms=600.0,
                errors=[ev.CandidateError(model=model, code="upstream_stream_error",
                                          message="cut")],
                partial=True, model=model, usage=_CUT_USAGE, cost_micros=_CUT_COST, stream=stats,
            ))  # fmt: skip
        return [
            msgspec.structs.replace(accepted, stream=True), *rest,
            ev.AttemptStarted(**r, model=model, attempt=1, model_attempt=1),
            ev.StreamFirstToken(**r, model=model, attempt=1, ttft_ms=STREAM_TTFT_MS),
            *stopped,
        ]  # fmt: skip

    return tell


def _cached(rid: str, t: str) -> list[Event]:
    r = _r(rid, t)
    hit = ev.CacheHit(**r, cache_key=f"k-{rid}", model=MODELS[0], stored_at_ms=1,
                      saved_usage=_USAGE, saved_cost_micros=_COST)  # fmt: skip
    release = ev.BudgetReleased(**r, amount_micros=1000, day="2026-01-01", month="2026-01")
    return [*_accepted(rid, t), hit, release, *_completed(rid, t, MODELS[0], 0, cached=True)]


def _coalesced(rid: str, t: str) -> list[Event]:
    wait = ev.RequestCoalesced(**_r(rid, t), leader_request_id="leader-1", cache_key=f"k-{rid}")
    return [*_accepted(rid, t)[:1], wait, *_completed(rid, t, MODELS[0], 0, coalesced=True)]


def _failed(rid: str, t: str) -> list[Event]:
    r = _r(rid, t)
    errors = [ev.CandidateError(model=m, code="http_503", message="down") for m in MODELS[:2]]
    return [
        *_accepted(rid, t),
        *_attempt_failed(rid, t, MODELS[0], 1, fallback=True),
        *_attempt_failed(rid, t, MODELS[1], 2, fallback=True),
        ev.BudgetReleased(**r, amount_micros=1000, day="2026-01-01", month="2026-01"),
        ev.RequestFailed(**r, code="upstream_unavailable", message="all candidates failed",
                         attempts=2, latency_ms=250.0, errors=errors),
    ]  # fmt: skip


def _rejected(rid: str, t: str) -> list[Event]:
    r = _r(rid, t)
    return [
        ev.RatelimitExceeded(**r, limit="requests_per_minute", limit_value=600, retry_after_ms=900),
        ev.RequestRejected(**r, code="rate_limited", message="over 600/min", retry_after_ms=900),
    ]


def _offset(rid: str) -> int:
    return int(hashlib.sha256(rid.encode()).hexdigest()[:6], 16)


def _deadlettered(rid: str, t: str) -> list[Event]:
    return [
        ev.RequestDeadlettered(tenant=t, code="malformed_json", detail="not JSON",
                               topic="turnout.requests", partition=0, offset=_offset(rid)),
    ]  # fmt: skip


def _in_flight(rid: str, t: str) -> list[Event]:
    return [*_accepted(rid, t), ev.AttemptStarted(**_r(rid, t), model=MODELS[0], attempt=1,
                                                  model_attempt=1)]  # fmt: skip


_SIZE_BYTES = 812  # the response JSON as cached: 812 bytes, 290 after zstd
_STORED_BYTES = 290
_DAY_LIMIT = 50_000_000


def _cache_miss(rid: str, t: str) -> list[Event]:
    r = _r(rid, t)
    miss = ev.CacheMiss(**r, cache_key=f"k-{rid}")
    stored = ev.CacheStored(**r, cache_key=f"k-{rid}", model=MODELS[0], stored_at_ms=1,
                            expires_at_ms=3_600_001, encoding="zstd", body=b"(\xb5/\xfd synthetic",
                            size_bytes=_SIZE_BYTES, stored_bytes=_STORED_BYTES, usage=_USAGE,
                            cost_micros=_COST)  # fmt: skip
    *done, completed = _completed(rid, t, MODELS[0], 1)
    return [*_accepted(rid, t), miss, *_attempt_ok(rid, t, MODELS[0], 1), *done, stored,
            completed]  # fmt: skip


def _budget_exceeded(rid: str, t: str, level: str) -> ev.BudgetExceeded:
    return ev.BudgetExceeded(request_id=rid, tenant=t, period="day", level=level,
                             limit_micros=_DAY_LIMIT, spent_micros=_DAY_LIMIT * 4 // 5,
                             reserved_micros=1000, requested_micros=1000)  # fmt: skip


def _budget_warned(rid: str, t: str) -> list[Event]:
    head = _accepted(rid, t)
    return [*head, _budget_exceeded(rid, t, "soft"), *_ok(rid, t)[len(head) :]]


def _budget_rejected(rid: str, t: str) -> list[Event]:
    r = _r(rid, t)
    return [
        _budget_exceeded(rid, t, "hard"),
        ev.RequestRejected(**r, code="budget_exceeded", message="over the daily budget"),
    ]


def _evicted(rid: str, t: str) -> list[Event]:
    return [ev.CacheEvicted(tenant=t, cache_key=f"k-{rid}", reason="lru",
                            stored_bytes=_STORED_BYTES)]  # fmt: skip


def _alert_firing(rid: str, t: str) -> list[Event]:
    return [ev.AlertFired(rule="budget_near_limit", severity="warning",
                          labels={"tenant": t, "period": "day"}, value=0.8, op=">=",
                          threshold=0.8, pending_since_ms=1_000)]  # fmt: skip


_STORIES: dict[str, Callable[[str, str], list[Event]]] = {
    "ok": _ok,
    "retried": _retried,
    "fallback": _fallback,
    "cached": _cached,
    "coalesced": _coalesced,
    "failed": _failed,
    "rejected": _rejected,
    "deadlettered": _deadlettered,
    "in_flight": _in_flight,
    "cache_miss": _cache_miss,
    "budget_warned": _budget_warned,
    "budget_rejected": _budget_rejected,
    "evicted": _evicted,
    "alert_firing": _alert_firing,
    "skipped_open": _skipped("breaker_open"),
    "skipped_price": _skipped("over_price"),
    "streamed": _streamed,
    "stream_cut": _stream_stopped(cancelled=False),
    "stream_cancelled": _stream_stopped(cancelled=True),
}


def story(kind: str, request_id: str, tenant: str, *, task_type: str = "general") -> Story:
    """The events of one request of `kind` (`ALL_KINDS`, `ROUTE_KINDS`), routed as `task_type`."""
    events = tuple(_task_type(e, task_type) for e in _STORIES[kind](request_id, tenant))
    no_id = kind == "deadlettered" or kind in REQUESTLESS
    return Story(None if no_id else request_id, tenant, kind, events)


def _task_type(event: Event, task_type: str) -> Event:
    if task_type != "general" and isinstance(event, ev.RequestAccepted | ev.RouteDecided):
        return msgspec.structs.replace(event, task_type=task_type)
    return event


def _global_events(i: int) -> list[Event]:
    model = MODELS[i % len(MODELS)]
    return [
        ev.BreakerOpened(model=model, reason="failures", failures=5, calls=5, open_until_ms=60_000),
        ev.BreakerHalfOpened(model=model),
        ev.BreakerClosed(model=model, successes=3),
        ev.AlertFired(rule="error_rate", severity="page", labels={"model": model}, value=0.5,
                      op=">", threshold=0.1, pending_since_ms=1_000),
        ev.AlertResolved(rule="error_rate", severity="page", labels={"model": model}, value=0.0,
                         fired_at_ms=2_000),
    ]  # fmt: skip


def workload(
    requests: int,
    *,
    tenants: int = 3,
    start: int = 0,
    kinds: Sequence[str] = KINDS,
    task_types: Sequence[str] = ("general",),
) -> list[Story]:
    """`requests` stories cycling through `kinds`, tenants `t0`.. and `task_types`
    (the next one every `tenants` stories); ids from `start`."""
    out = []
    for i in range(start, start + requests):
        kind = kinds[i % len(kinds)]
        rid = "req-" + hashlib.sha256(str(i).encode()).hexdigest()[:12] + f"-{i:04x}"
        task_type = task_types[(i // tenants) % len(task_types)]
        out.append(story(kind, rid, f"t{i % tenants}", task_type=task_type))
    return out


def envelopes(
    stories: list[Story],
    *,
    t0_ms: int = 1_767_225_600_000,
    step_ms: float = 7,
    seed: int = 0,
) -> Iterator[Envelope]:
    """The stories' events as envelopes: up to 50 requests in flight at once, each
    in its own order, a burst of global events every 10 rounds; `step_ms` apart (a fraction of a
    millisecond makes a dense log: 0.01 is 100k events/s)."""
    ids = count()
    waiting = deque(list(s.events) for s in stories)
    active: list[list[Event]] = []
    for round_ in count():
        while len(active) < 50 and waiting:
            active.append(waiting.popleft())
        if not active:
            return
        burst = _global_events(round_ // 10) if round_ % 10 == 9 else []
        for event in [*(q.pop(0) for q in active), *burst]:
            n = next(ids)
            time_ms = t0_ms + int(n * step_ms)
            eid = str(uuid7_at(time_ms, (seed << 40 | n).to_bytes(10, "big")))
            yield wrap(event, id=eid, time_ms=time_ms, source="turnout/router/synthetic",
                       traceparent=f"00-{n + 1:032x}-{n + 1:016x}-01")  # fmt: skip
        active = [q for q in active if q]
