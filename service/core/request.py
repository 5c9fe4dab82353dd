"""The request decider: what happens next to a request, as events and effects.

    decide_intake(state, request, ctx)          -> Decision
    decide_result(state, request_id, result, ctx) -> Decision
    decide_retry_due(state, request_id, ctx)    -> Decision

Rules:
- Pure: no clock, no randomness, no I/O. `ctx.now_ms` is the event time; the
  shell folds the returned events into the state (`state.evolve`) and carries
  out the effects (call the upstream, wait, answer).
- Exactly one terminal event per request id: a request already finished is
  answered again from state (`Resend`) when a client sends it again, never
  decided twice; the same intake record redelivered (same partition and
  offset) is not answered again, because the shell acknowledges a response
  before the terminal event that records it; a duplicate of a request still in
  flight is ignored (the running one will answer).
- Retry the same model while the failure is retryable, `max_retries` is not
  spent, the retry budget allows it and its breaker still admits calls; then
  fall back to the next callable candidate when the failure is worth it; else
  fail with the last failure's code and every candidate's error.
- Breaker transitions are decided here, right after the call outcome that
  causes them, and recorded with their reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from service.core import budget, ratelimit
from service.core import cache as caching
from service.core import events as ev
from service.core.breaker import Breaker, can_call, due_trigger, open_until, record_call
from service.core.config import Config, RouteConfig
from service.core.outcomes import CLASSES
from service.core.partitioning import PARTITIONS, home_partition
from service.core.pricing import Price
from service.core.retry import retry_allowed, retry_delay_ms
from service.core.routing import decide_route
from service.core.state import InFlight, RouterState, Terminal

__all__ = [
    "Call",
    "CallResult",
    "Context",
    "Decision",
    "IntakeRequest",
    "Resend",
    "Respond",
    "Wait",
    "admission_key",
    "decide_intake",
    "decide_result",
    "decide_retry_due",
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
    cache_body: caching.EncodedBody | None = None  # the answer, encoded, when it may be cached


class Call(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    model: str
    attempt: int


class Wait(msgspec.Struct, frozen=True, kw_only=True):
    """Call `decide_retry_due` for the request after `delay_ms`."""

    request_id: str
    delay_ms: int


class Respond(msgspec.Struct, frozen=True, kw_only=True):
    terminal: Terminal


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


def _accepted(req: IntakeRequest, cfg: Config, key: str | None) -> ev.RequestAccepted:
    return ev.RequestAccepted(
        request_id=req.request_id,
        tenant=req.tenant,
        task_type=req.task_type,
        model=req.model,
        messages_hash=req.messages_hash,
        prompt_tokens_est=req.prompt_tokens_est,
        max_tokens=req.max_tokens,
        params=req.params,
        messages=req.messages if cfg.privacy.store_prompts else None,
        cache_key=key,
        cacheable=key is not None,
        reply_to=req.reply_to,
        metadata=req.metadata,
        intake_partition=req.intake_partition,
        intake_offset=req.intake_offset,
        redrive_of=req.redrive_of,
    )


def _half_open_due(breakers: Mapping[str, Breaker], model: str, now_ms: int) -> list[Any]:
    b = breakers.get(model)
    if b is not None and b.status == "open" and can_call(b, now_ms):
        return [ev.BreakerHalfOpened(model=model)]
    return []


def _failed(
    flight: InFlight, code: str, message: str, now_ms: int, errors: tuple[ev.CandidateError, ...]
) -> ev.RequestFailed:
    return ev.RequestFailed(
        request_id=flight.request_id,
        tenant=flight.tenant,
        code=code,
        message=message,
        attempts=flight.attempt,
        latency_ms=float(now_ms - flight.accepted_at_ms),
        errors=list(errors),
        reply_to=flight.reply_to,
    )


def _start(
    flight: InFlight, model: str, model_attempt: int, ctx: Context, state: RouterState
) -> tuple[list[Any], Call]:
    attempt = flight.attempt + 1
    events: list[Any] = _half_open_due(state.breakers, model, ctx.now_ms)
    events.append(
        ev.AttemptStarted(
            request_id=flight.request_id,
            tenant=flight.tenant,
            model=model,
            attempt=attempt,
            model_attempt=model_attempt,
        )
    )
    return events, Call(request_id=flight.request_id, model=model, attempt=attempt)


def admission_key(req: IntakeRequest, cfg: Config) -> str | None:
    """The request's cache key when its answer may be cached (and coalesced), else None.

    The shell calls it too: on a live entry it decodes the stored answer and hands it
    to `decide_intake` (the core cannot decompress)."""
    if req.messages is None or not caching.is_cacheable(req.params, req.cache, cfg):
        return None
    return caching.cache_key(
        tenant=req.tenant,
        scope=cfg.cache.scope,
        model=req.model,
        task_type=req.task_type,
        messages=req.messages,
        params=req.params,
    )


def _rejected(req: IntakeRequest, code: str, message: str, retry_after_ms: int | None) -> Decision:
    terminal = ev.RequestRejected(
        request_id=req.request_id,
        tenant=req.tenant,
        code=code,
        message=message,
        retry_after_ms=retry_after_ms,
        reply_to=req.reply_to,
    )
    return Decision(events=[terminal], effects=[Respond(terminal=terminal)])


def _over_limit(state: RouterState, req: IntakeRequest, ctx: Context, hit: bool) -> Decision | None:
    """Rejected by a rate limit (a cache hit counts as a request, not as tokens)."""
    if not ctx.cfg.features.rate_limiting:
        return None
    limits = ctx.cfg.tenant(req.tenant)
    tokens = 0 if hit else ratelimit.token_estimate(req.prompt_tokens_est, req.max_tokens, limits)
    exceeded = ratelimit.check(
        state.limits.get(req.tenant), limits, now_ms=ctx.now_ms, tokens=tokens
    )
    if exceeded is None:
        return None
    message = (
        f"{exceeded.limit} = {exceeded.limit_value} reached for tenant {req.tenant!r}; "
        f"retry after {exceeded.retry_after_ms} ms"
    )
    rejected = _rejected(req, "rate_limited", message, exceeded.retry_after_ms)
    event = exceeded.event(request_id=req.request_id, tenant=req.tenant)
    return Decision(events=[event, *rejected.events], effects=rejected.effects)


def _hit(
    req: IntakeRequest, key: str, lookup: caching.Lookup, response: dict[str, Any], ctx: Context
) -> Decision:
    entry = lookup.entry
    assert entry is not None
    terminal = ev.RequestCompleted(
        request_id=req.request_id,
        tenant=req.tenant,
        model=entry.model,
        cached=True,
        coalesced=False,
        attempts=0,
        latency_ms=0.0,
        usage=_NO_USAGE,
        cost_micros=0,
        response=response,
        reply_to=req.reply_to,
        saved_usage=entry.usage,
        saved_cost_micros=entry.cost_micros,
    )
    events = [_accepted(req, ctx.cfg, key), *lookup.events, terminal]
    return Decision(events=events, effects=[Respond(terminal=terminal)])


_DEFAULT_ROUTE: Final = RouteConfig()
_NO_USAGE = ev.Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)


def _reserve(
    state: RouterState, req: IntakeRequest, order: tuple[str, ...], ctx: Context
) -> list[Any]:
    """`[BudgetReserved]`, `[BudgetExceeded]` (hard: reject) or `[]` (budgets off)."""
    if not ctx.cfg.features.budgets:
        return []
    limits = ctx.cfg.tenant(req.tenant)
    amount = budget.reservation_micros(
        req.prompt_tokens_est, req.max_tokens, [ctx.prices.get(m) for m in order], limits=limits
    )
    return budget.decide_reserve(
        state.budgets.get(req.tenant),
        tenant=req.tenant,
        request_id=req.request_id,
        amount_micros=amount,
        limits=limits,
        now_ms=ctx.now_ms,
    )


def decide_intake(
    state: RouterState,
    req: IntakeRequest,
    ctx: Context,
    *,
    cached_response: dict[str, Any] | None = None,
    resume: bool = False,
) -> Decision:
    """A new intake record: answer a duplicate from state; else admit it (rate limits),
    answer it from the cache, join an identical request in flight, or reserve its
    budget, route it and start its first attempt.

    `cached_response` is the decoded answer of the live cache entry for this request's
    key (the shell decodes it); None when there is none or it could not be decoded.
    `resume`: the request is in flight in the state but no process works on it (its
    router died): start it again where it stands, without admitting, reserving or
    counting it a second time."""
    done = state.finished.get(req.request_id)
    if done is not None:
        if state.intake.get(req.request_id) == (req.intake_partition, req.intake_offset):
            # the very record that was answered, redelivered (crash before commit):
            # its response was acknowledged before its terminal event, so say nothing
            return Decision(events=[], effects=[])
        return Decision(events=[], effects=[Resend(terminal=done)])
    flight = state.inflight.get(req.request_id)
    if flight is not None:
        return _resume(state, flight, ctx) if resume else Decision(events=[], effects=[])
    key = admission_key(req, ctx.cfg)
    lookup: caching.Lookup | None = None
    if key is not None:
        index = _index(state, req.tenant)
        lookup = caching.decide_lookup(
            index, request_id=req.request_id, tenant=req.tenant, key=key, now_ms=ctx.now_ms
        )
        if lookup.entry is not None and cached_response is None:  # unreadable: drop it
            evicted = ev.CacheEvicted(
                tenant=req.tenant, cache_key=key, reason="corrupt",
                stored_bytes=lookup.entry.stored_bytes,
            )  # fmt: skip
            miss = ev.CacheMiss(request_id=req.request_id, tenant=req.tenant, cache_key=key)
            lookup = caching.Lookup(entry=None, events=[evicted, miss])
    hit = lookup is not None and lookup.entry is not None
    refused = _over_limit(state, req, ctx, hit)
    if refused is not None:
        return refused
    if hit:
        assert key is not None and lookup is not None and cached_response is not None
        return _hit(req, key, lookup, cached_response, ctx)
    looked = lookup.events if lookup is not None else []
    if key is not None:
        joined = caching.decide_coalesce(
            _index(state, req.tenant),
            request_id=req.request_id, tenant=req.tenant, key=key, cfg=ctx.cfg,
        )  # fmt: skip
        if joined is not None:  # the leader's answer will answer this one too
            return Decision(events=[_accepted(req, ctx.cfg, key), *looked, joined], effects=[])
    return _route_and_start(state, req, ctx, key, looked)


_EMPTY_INDEX: Final = caching.CacheIndex()


def _index(state: RouterState, tenant: str) -> caching.CacheIndex:
    """The tenant's partition's cache index, read-only (an empty one when none yet)."""
    index = state.cache.get(home_partition(tenant))
    return _EMPTY_INDEX if index is None else index  # not `or`: an index with no entries is falsy


def _resume(state: RouterState, flight: InFlight, ctx: Context) -> Decision:
    """Re-route an orphaned request and start its next attempt (a follower keeps waiting
    while its leader is in flight)."""
    index = state.cache.get(home_partition(flight.tenant))
    leader = index.leader_of(flight.request_id) if index is not None else None
    if leader is not None and leader in state.inflight:
        return Decision(events=[], effects=[])
    route = decide_route(
        ctx.cfg.routes.get(flight.task_type, _DEFAULT_ROUTE),
        request_id=flight.request_id,
        pinned=flight.order[0] if flight.order else None,
        now_ms=ctx.now_ms,
        breakers=state.breakers if ctx.cfg.features.circuit_breaker else {},
        latency=state.latency,
        prices=ctx.prices,
    )
    decided = ev.RouteDecided(
        request_id=flight.request_id, tenant=flight.tenant, task_type=flight.task_type,
        strategy=route.strategy, candidates=list(route.candidates), order=list(route.order),
        skipped=[ev.SkippedModel(model=m, reason=r) for m, r in route.skipped],
        sample=route.sample,
    )  # fmt: skip
    moved = msgspec.structs.replace(flight, order=route.order, index=0)
    if not route.order:
        terminal = _failed(moved, "upstream_unavailable", "no candidate model", ctx.now_ms, ())
        released = _settle(state, flight, None, ctx)
        return _with_followers(state, flight, terminal, [decided, *released, terminal], ctx)
    started, call = _start(moved, route.order[0], 1, ctx, state)
    return Decision(events=[decided, *started], effects=[call])


def _route_and_start(
    state: RouterState, req: IntakeRequest, ctx: Context, key: str | None, looked: list[Any]
) -> Decision:
    route_cfg = ctx.cfg.routes[req.task_type]
    route = decide_route(
        route_cfg,
        request_id=req.request_id,
        pinned=req.model,
        now_ms=ctx.now_ms,
        breakers=state.breakers if ctx.cfg.features.circuit_breaker else {},
        latency=state.latency,
        prices=ctx.prices,
    )
    reserved: list[Any] = []
    if route.order:
        reserved = _reserve(state, req, route.order, ctx)
        if reserved and isinstance(reserved[0], ev.BudgetExceeded):
            over = reserved[0]
            message = (
                f"the {over.period} budget of tenant {req.tenant!r} would be exceeded: "
                f"spent {over.spent_micros / 1e6:.6f} + reserved {over.reserved_micros / 1e6:.6f} "
                f"+ this request {over.requested_micros / 1e6:.6f} > "
                f"{over.limit_micros / 1e6:.6f} USD"
            )
            rejected = _rejected(req, "budget_exceeded", message, None)
            return Decision(events=[over, *rejected.events], effects=rejected.effects)
    events: list[Any] = [
        _accepted(req, ctx.cfg, key),
        *reserved,
        *looked,
        ev.RouteDecided(
            request_id=req.request_id,
            tenant=req.tenant,
            task_type=req.task_type,
            strategy=route.strategy,
            candidates=list(route.candidates),
            order=list(route.order),
            skipped=[ev.SkippedModel(model=m, reason=r) for m, r in route.skipped],
            sample=route.sample,
        ),
    ]
    flight = InFlight(
        request_id=req.request_id,
        tenant=req.tenant,
        task_type=req.task_type,
        accepted_at_ms=ctx.now_ms,
        reply_to=req.reply_to,
        cache_key=key,
        order=route.order,
    )
    if not route.order:
        reasons = ", ".join(f"{m}: {r}" for m, r in route.skipped)
        terminal = _failed(
            flight, "upstream_unavailable", f"no candidate model ({reasons})", ctx.now_ms, ()
        )
        return Decision(events=[*events, terminal], effects=[Respond(terminal=terminal)])
    started, call = _start(flight, route.order[0], 1, ctx, state)
    return Decision(events=events + started, effects=[call])


def _breaker_events(
    state: RouterState, model: str, failed: bool, ctx: Context, retry_after_ms: int | None
) -> tuple[list[Any], Breaker]:
    """The transition (if any) this call outcome causes, and the breaker after it."""
    cfg = ctx.cfg.breaker
    b = record_call(state.breakers.get(model, Breaker()), failed=failed, now_ms=ctx.now_ms, cfg=cfg)
    if not ctx.cfg.features.circuit_breaker:
        return [], b
    due = due_trigger(b, ctx.now_ms, cfg)
    if due is None:
        return [], b
    trigger, reason = due
    if trigger in ("trip", "probe_failed"):
        until = open_until(ctx.now_ms, cfg, retry_after_ms)
        calls = sum(c for _, c, _ in b.buckets) or b.consecutive_failures
        opened = ev.BreakerOpened(
            model=model,
            reason=reason,
            failures=b.consecutive_failures or b.probe_failures,
            calls=calls,
            open_until_ms=until,
        )
        return [opened], Breaker(status="open", open_until_ms=until)
    if trigger == "probes_passed":
        return [ev.BreakerClosed(model=model, successes=b.probe_successes)], Breaker()
    return [], b


def _completed(flight: InFlight, result: CallResult, now_ms: int) -> ev.RequestCompleted:
    return ev.RequestCompleted(
        request_id=flight.request_id,
        tenant=flight.tenant,
        model=result.model,
        cached=False,
        coalesced=False,
        attempts=flight.attempt,
        latency_ms=float(now_ms - flight.accepted_at_ms),
        usage=result.usage,
        cost_micros=result.cost_micros,
        response=result.response or {},
        reply_to=flight.reply_to,
    )


def decide_result(
    state: RouterState, request_id: str, result: CallResult, ctx: Context
) -> Decision:
    """An upstream call finished: record it, then complete, retry, fall back or fail."""
    flight = state.inflight.get(request_id)
    if flight is None or result.attempt != flight.attempt:
        return Decision(events=[], effects=[])  # a stale answer: the request moved on
    if result.ok:
        return _on_success(state, flight, result, ctx)
    return _on_failure(state, flight, result, ctx)


def _on_success(state: RouterState, flight: InFlight, result: CallResult, ctx: Context) -> Decision:
    succeeded = ev.AttemptSucceeded(
        request_id=flight.request_id,
        tenant=flight.tenant,
        model=result.model,
        attempt=result.attempt,
        status=result.status or 200,
        latency_ms=result.latency_ms,
        usage=result.usage,
        cost_micros=result.cost_micros,
        generation_id=result.generation_id,
        slow=result.slow,
    )
    breaker, _ = _breaker_events(state, result.model, result.slow, ctx, None)
    terminal = _completed(flight, result, ctx.now_ms)
    settled = _settle(state, flight, result.cost_micros, ctx)
    stored = _store(state, flight, result, ctx)
    events: list[Any] = [succeeded, *breaker, *settled, *stored, terminal]
    return _with_followers(state, flight, terminal, events, ctx)


def _settle(state: RouterState, flight: InFlight, actual: int | None, ctx: Context) -> list[Any]:
    """Charge the actual cost and release the rest of the reservation (None: release all)."""
    return budget.decide_settle(
        state.budgets.get(flight.tenant),
        tenant=flight.tenant,
        request_id=flight.request_id,
        actual_micros=actual,
        limits=ctx.cfg.tenant(flight.tenant),
    )


def _store(state: RouterState, flight: InFlight, result: CallResult, ctx: Context) -> list[Any]:
    if flight.cache_key is None or result.cache_body is None:
        return []
    return caching.decide_store(
        state.cache_index(flight.tenant),
        request_id=flight.request_id,
        tenant=flight.tenant,
        key=flight.cache_key,
        model=result.model,
        body=result.cache_body,
        usage=result.usage,
        cost_micros=result.cost_micros,
        now_ms=ctx.now_ms,
        cfg=ctx.cfg,
        max_bytes=ctx.cfg.cache.max_bytes // PARTITIONS,
    )


def _with_followers(
    state: RouterState, leader: InFlight, terminal: Terminal, events: list[Any], ctx: Context
) -> Decision:
    """The leader's terminal, then one for every request coalesced onto it."""
    effects: list[Effect] = [Respond(terminal=terminal)]
    index = state.cache.get(home_partition(leader.tenant))
    for follower_id in index.followers(leader.request_id) if index is not None else ():
        follower = state.inflight.get(follower_id)
        if follower is None:
            continue
        answer = _follower_terminal(follower, terminal, ctx.now_ms)
        events.append(answer)
        effects.append(Respond(terminal=answer))
    return Decision(events=events, effects=effects)


def _follower_terminal(follower: InFlight, leader: Terminal, now_ms: int) -> Terminal:
    latency = float(now_ms - follower.accepted_at_ms)
    if isinstance(leader, ev.RequestCompleted):
        return msgspec.structs.replace(
            leader, request_id=follower.request_id, tenant=follower.tenant,
            reply_to=follower.reply_to, coalesced=True, attempts=0, latency_ms=latency,
            usage=_NO_USAGE, cost_micros=0, saved_usage=leader.usage,
            saved_cost_micros=leader.cost_micros,
        )  # fmt: skip
    return msgspec.structs.replace(
        leader, request_id=follower.request_id, tenant=follower.tenant,
        reply_to=follower.reply_to, attempts=0, latency_ms=latency,
    )  # fmt: skip


def _on_failure(state: RouterState, flight: InFlight, result: CallResult, ctx: Context) -> Decision:
    cls = CLASSES.get(result.error_class, CLASSES["http_error"])
    failed = ev.AttemptFailed(
        request_id=flight.request_id,
        tenant=flight.tenant,
        model=result.model,
        attempt=result.attempt,
        status=result.status,
        error_class=cls.name,
        message=result.message,
        latency_ms=result.latency_ms,
        retryable=cls.retryable,
        breaker_failure=cls.breaker_failure,
        fallback=cls.fallback,
        retry_after_ms=result.retry_after_ms,
    )
    breaker_events, breaker = _breaker_events(
        state, result.model, cls.breaker_failure, ctx, result.retry_after_ms
    )
    errors = (
        *flight.errors,
        ev.CandidateError(model=result.model, code=cls.name, message=result.message),
    )
    events: list[Any] = [failed, *breaker_events]
    retry = _plan_retry(state, flight, result, ctx, cls.retryable, breaker)
    if retry is not None:
        return Decision(
            events=[*events, retry],
            effects=[Wait(request_id=flight.request_id, delay_ms=retry.delay_ms)],
        )
    nxt = (
        _next_candidate(state, flight, ctx) if cls.fallback and ctx.cfg.features.fallbacks else None
    )
    if nxt is not None:
        moved = msgspec.structs.replace(flight, errors=errors)
        taken = ev.FallbackTaken(
            request_id=flight.request_id,
            tenant=flight.tenant,
            from_model=result.model,
            to_model=nxt,
            reason=cls.name,
        )
        started, call = _start(moved, nxt, 1, ctx, state)
        return Decision(events=[*events, taken, *started], effects=[call])
    code = cls.code if not cls.fallback or len(errors) == 1 else "upstream_unavailable"
    terminal = _failed(flight, code, result.message or cls.name, ctx.now_ms, errors)
    released = _settle(state, flight, None, ctx)
    return _with_followers(state, flight, terminal, [*events, *released, terminal], ctx)


def _plan_retry(
    state: RouterState,
    flight: InFlight,
    result: CallResult,
    ctx: Context,
    retryable: bool,
    breaker: Breaker,
) -> ev.RetryScheduled | None:
    cfg = ctx.cfg
    if not (retryable and cfg.features.retries) or flight.model_attempt > cfg.retry.max_retries:
        return None
    if breaker.status == "open" or not retry_allowed(state.retry_budget, ctx.now_ms, cfg.retry):
        return None
    delay = retry_delay_ms(
        flight.request_id, flight.model_attempt, cfg.retry, result.retry_after_ms
    )
    if delay is None:
        return None
    return ev.RetryScheduled(
        request_id=flight.request_id,
        tenant=flight.tenant,
        model=result.model,
        attempt=flight.attempt + 1,
        delay_ms=delay,
        reason=result.error_class,
    )


def _next_candidate(state: RouterState, flight: InFlight, ctx: Context) -> str | None:
    for model in flight.order[flight.index + 1 :]:
        b = state.breakers.get(model)
        if b is None or not ctx.cfg.features.circuit_breaker or can_call(b, ctx.now_ms):
            return model
    return None


def decide_retry_due(state: RouterState, request_id: str, ctx: Context) -> Decision:
    """A scheduled retry's delay has passed: start the next attempt on the same model."""
    flight = state.inflight.get(request_id)
    if flight is None or flight.model is None:
        return Decision(events=[], effects=[])
    started, call = _start(flight, flight.model, flight.model_attempt + 1, ctx, state)
    return Decision(events=started, effects=[call])
