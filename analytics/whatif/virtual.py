"""A router in virtual time: the log a single router would write for a workload.

For tests and benchmarks of what-if replay: `record(cfg, arrivals, upstream)`
runs the router's own pure core (the same deciders and reducer as
`turnout.service.runtime.router`) over `arrivals`, with `upstream(request_id, model,
model_attempt, now_ms)` saying what each call returns and how long it takes, and
returns the events as `Recorded` values in log order (each tenant's events on its
home partition, with offsets, stamped with the time they were decided at, as the
router stamps them). Retries are due exactly after their delay; a cancel arrives
`cancel_after_ms` after its request. Pure and deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from turnout.analytics.replay.source import Recorded, log_order
from turnout.service.clock import uuid7_at
from turnout.service.core import events as ev
from turnout.service.core.admission import NO_USAGE, admission_key, cache_index
from turnout.service.core.cache import EncodedBody
from turnout.service.core.config import Config, config_hash, config_to_dict
from turnout.service.core.decision import Call, CallResult, Context, Decision, IntakeRequest, Wait
from turnout.service.core.partitioning import home_partition
from turnout.service.core.pricing import Price
from turnout.service.core.request import (
    decide_cancel,
    decide_first_token,
    decide_intake,
    decide_result,
    decide_retry_due,
)
from turnout.service.core.state import RouterState, evolve

__all__ = ["Outcome", "VirtualArrival", "record"]


@dataclass(frozen=True, slots=True)
class VirtualArrival:
    time_ms: int
    request: IntakeRequest
    cancel_after_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one upstream call returns, after `duration_ms`."""

    ok: bool
    duration_ms: int
    status: int = 200
    error_class: str = "server_error"
    usage: ev.Usage = NO_USAGE
    cost_micros: int = 0
    first_token_after_ms: int | None = None
    retry_after_ms: int | None = None


_BODY = EncodedBody(encoding="none", body=b'{"choices":[]}', size_bytes=14)


def record(
    cfg: Config,
    arrivals: Sequence[VirtualArrival],
    upstream: Callable[[str, str, int, int], Outcome],
    *,
    prices: Mapping[str, Price] | None = None,
) -> list[Recorded]:
    """The log a single router writes for `arrivals` (see the module docstring)."""
    state = RouterState()
    table = dict(prices or {})
    out: list[tuple[int, object]] = []
    heap: list[tuple[int, int, int, Any]] = []
    tie = 0
    running: dict[str, tuple[str, int, Outcome]] = {}

    def push(time_ms: int, action: Any) -> None:
        nonlocal tie
        tie += 1
        heapq.heappush(heap, (time_ms, tie, tie, action))

    def apply(decision: Decision, now: int) -> None:
        for event in decision.events:
            evolve(state, event, now, cfg)
            out.append((now, event))
        for effect in decision.effects:
            if isinstance(effect, Call):
                call(effect, now)
            elif isinstance(effect, Wait):
                push(now + effect.delay_ms, ("retry", effect.request_id))

    def call(c: Call, now: int) -> None:
        flight = state.inflight[c.request_id]
        o = upstream(c.request_id, c.model, flight.model_attempt, now)
        running[c.request_id] = (c.model, c.attempt, o)
        result = CallResult(
            model=c.model, attempt=c.attempt, ok=o.ok, latency_ms=float(o.duration_ms),
            status=o.status, usage=o.usage if o.ok else NO_USAGE,
            cost_micros=o.cost_micros if o.ok else 0, error_class=o.error_class,
            retry_after_ms=o.retry_after_ms,
            slow=o.ok and o.duration_ms > cfg.breaker.call_timeout_s * 1000,
            cache_body=_BODY if o.ok and flight.cache_key else None,
        )  # fmt: skip
        if flight.stream and o.first_token_after_ms is not None:
            push(now + o.first_token_after_ms, ("first", c.request_id, c.model, c.attempt,
                                                float(o.first_token_after_ms)))  # fmt: skip
        push(now + o.duration_ms, ("result", c.request_id, result))

    out.append((arrivals[0].time_ms if arrivals else 0, ev.ConfigApplied(
        instance="virtual", config_hash=config_hash(cfg), config=config_to_dict(cfg),
    )))  # fmt: skip
    if table:
        out.append((arrivals[0].time_ms if arrivals else 0, ev.PricesUpdated(
            instance="virtual", prices={m: [p.prompt, p.completion] for m, p in table.items()},
        )))  # fmt: skip
    for arrival in arrivals:
        push(arrival.time_ms, ("arrive", arrival))
    while heap:
        now, _, _, action = heapq.heappop(heap)
        ctx = Context(now_ms=now, cfg=cfg, prices=table)
        kind = action[0]
        if kind == "arrive":
            a: VirtualArrival = action[1]
            key = admission_key(a.request, cfg)
            entry = cache_index(state, a.request.tenant).lookup(key, now) if key else None
            decision = decide_intake(
                state, a.request, ctx, cached_response={} if entry else None, cache_key=key
            )
            apply(decision, now)
            if a.cancel_after_ms is not None:
                push(now + a.cancel_after_ms, ("cancel", a.request.request_id, a.request.tenant))
        elif kind == "result":
            rid, result = action[1], action[2]
            if running.get(rid, ("", -1, None))[1] == result.attempt:
                running.pop(rid, None)
            apply(decide_result(state, rid, result, ctx), now)
        elif kind == "first":
            _, rid, model, attempt, ttft = action
            apply(decide_first_token(state, rid, model, attempt, ttft, ctx), now)
        elif kind == "retry":
            apply(decide_retry_due(state, action[1], ctx), now)
        else:  # cancel
            _, rid, tenant = action
            stopped = None
            if rid in running:
                model, attempt, _o = running.pop(rid)
                stopped = CallResult(
                    model=model, attempt=attempt, ok=False, latency_ms=0.0,
                    error_class="cancelled", message="cancelled",
                )  # fmt: skip
            apply(decide_cancel(state, rid, tenant, "client", ctx, stopped=stopped), now)
    return _as_log(out)


def _as_log(out: list[tuple[int, object]]) -> list[Recorded]:
    """Each event on its tenant's partition, with an id that counts up in the order it
    was decided (as the router's `SystemClock.new_id` does)."""
    offsets: dict[int, int] = {}
    records = []
    for n, (time_ms, event) in enumerate(out):
        tenant = getattr(event, "tenant", ev.SYSTEM_TENANT)
        partition = home_partition(tenant)
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        records.append(Recorded(
            partition=partition, offset=offset, time_ms=time_ms, type=event.TYPE,  # type: ignore[attr-defined]
            tenant=tenant, subject=getattr(event, "request_id", None), data=event,  # type: ignore[arg-type]
            id=str(uuid7_at(time_ms, n.to_bytes(10, "big"))), source="turnout/router/virtual",
        ))  # fmt: skip
    return log_order(records)
