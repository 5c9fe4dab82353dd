"""The request decider: what happens next to a request, as events and effects.

    decide_intake(state, request, ctx)          -> Decision
    decide_result(state, request_id, result, ctx) -> Decision
    decide_retry_due(state, request_id, ctx)    -> Decision
    decide_delivered(state, terminal, ctx)      -> Decision   (found answered after a crash)
    decide_first_token(state, request_id, model, attempt, ttft_ms, ctx) -> Decision
    decide_cancel(state, request_id, tenant, reason, ctx, stopped=None) -> Decision

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
- Streams pass a first-token gate: retries and fallbacks happen only before an
  attempt's first token is recorded (`decide_first_token`); a failure after it,
  or a router that died after it, ends the request `partial` with
  `upstream_stream_error`, charging what was streamed.
- Breaker transitions are decided here, right after the call outcome that
  causes them, and recorded with their reason.
- What a tenant may do and what the cache can answer is decided at the door,
  in `turnout.service.core.admission`; the inputs, effects and `Decision` are plain
  data in `turnout.service.core.decision` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from turnout.service.core import cache as caching
from turnout.service.core import events as ev
from turnout.service.core.admission import (
    NO_USAGE,
    accepted_event,
    admission_key,
    answer_from_cache,
    cache_index,
    over_budget,
    over_limit,
    reserve,
    settle,
    store,
    with_followers,
)
from turnout.service.core.breaker import Breaker, can_call, due_trigger, open_until, record_call
from turnout.service.core.budget import period_keys
from turnout.service.core.config import RouteConfig
from turnout.service.core.decision import (
    Call,
    CallResult,
    Context,
    Decision,
    IntakeRequest,
    Resend,
    Respond,
    Wait,
)
from turnout.service.core.outcomes import CLASSES
from turnout.service.core.providers import provider_of
from turnout.service.core.retry import retry_allowed, retry_delay_ms
from turnout.service.core.routing import RouteDecision, decide_route
from turnout.service.core.state import InFlight, RouterState, Terminal, expired_outcome

__all__ = [
    "Call",
    "CallResult",
    "Context",
    "Decision",
    "IntakeRequest",
    "Resend",
    "Respond",
    "Streamed",
    "Wait",
    "admission_key",
    "decide_cancel",
    "decide_delivered",
    "decide_first_token",
    "decide_intake",
    "decide_internal_error",
    "decide_result",
    "decide_retry_due",
    "shares_its_answer",
]


def _provider(ctx: Context, model: str) -> str | None:
    """The provider serving `model`, recorded in events when `[providers]` are configured
    (None otherwise: a config with only `[upstream]` writes the events it always wrote)."""
    return provider_of(ctx.cfg, model) if ctx.cfg.providers else None


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
            provider=_provider(ctx, model),
        )
    )
    return events, Call(request_id=flight.request_id, model=model, attempt=attempt)


_DEFAULT_ROUTE: Final = RouteConfig()


class _Unset:
    """`cache_key` not given: compute it."""


_UNSET: Final = _Unset()


def decide_intake(
    state: RouterState,
    req: IntakeRequest,
    ctx: Context,
    *,
    cached_response: dict[str, Any] | None = None,
    cache_key: str | _Unset | None = _UNSET,
    resume: bool = False,
    streamed: Streamed | None = None,
) -> Decision:
    """A new intake record: answer a duplicate from state; else admit it (rate limits),
    answer it from the cache, join an identical request in flight, or reserve its
    budget, route it and start its first attempt.

    `cached_response` is the decoded answer of the live cache entry for this request's
    key (the shell decodes it); None when there is none or it could not be decoded.
    `cache_key`: `admission_key(req, ctx.cfg)` when the shell has computed it already.
    `resume`: the request is in flight in the state but no process works on it (its
    router died): start it again where it stands, without admitting, reserving or
    counting it a second time. `streamed`: for such a request whose stream had begun,
    what its chunk records on the reply topic say was streamed (charged as it ends)."""
    done = state.finished.get(req.request_id)
    if done is not None:
        if state.intake.get(req.request_id) == (req.intake_partition, req.intake_offset):
            # the very record that was answered, redelivered (crash before commit):
            # its response was acknowledged before its terminal event, so say nothing
            return Decision(events=[], effects=[])
        if done.reply_to != req.reply_to:  # answered where this copy's sender listens
            done = msgspec.structs.replace(done, reply_to=req.reply_to)
        return Decision(events=[], effects=[Resend(terminal=done)])
    forgotten = expired_outcome(state, req.tenant, req.request_id)
    if forgotten is not None:  # answered before the duplicate window: never called again
        hours = ctx.cfg.router.dedupe_window_s / 3600
        expired = ev.RequestRejected(
            request_id=req.request_id, tenant=req.tenant, code="duplicate_expired",
            message=f"request {req.request_id} was already answered ({forgotten}) more than "
            f"{hours:g} h ago; its answer is no longer kept, and it is not run again",
            reply_to=req.reply_to,
        )  # fmt: skip
        return Decision(events=[], effects=[Resend(terminal=expired)])
    flight = state.inflight.get(req.request_id)
    if flight is not None:
        return _resume(state, flight, ctx, streamed) if resume else Decision(events=[], effects=[])
    key = admission_key(req, ctx.cfg) if isinstance(cache_key, _Unset) else cache_key
    lookup: caching.Lookup | None = None
    if key is not None:
        index = cache_index(state, req.tenant)
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
    refused = over_limit(state, req, ctx, hit, key)
    if refused is not None:
        return refused
    if hit:
        assert key is not None and lookup is not None and cached_response is not None
        return answer_from_cache(req, key, lookup, cached_response, ctx)
    looked = lookup.events if lookup is not None else []
    if key is not None:  # a streamed follower shares its leader's stream, as it goes
        joined = caching.decide_coalesce(
            cache_index(state, req.tenant),
            request_id=req.request_id, tenant=req.tenant, key=key, cfg=ctx.cfg,
        )  # fmt: skip
        if joined is not None:  # the leader's answer will answer this one too
            return Decision(events=[accepted_event(req, ctx.cfg, key), *looked, joined], effects=[])
    return _route_and_start(state, req, ctx, key, looked)


class Streamed(msgspec.Struct, frozen=True, kw_only=True):
    """What a router that died mid-stream had streamed, read back from the reply topic
    by the next owner: chunk records, and the usage and cost estimated from them."""

    chunks: int
    usage: ev.Usage
    cost_micros: int


def _resume(
    state: RouterState, flight: InFlight, ctx: Context, streamed: Streamed | None = None
) -> Decision:
    """Re-route an orphaned request and start its next attempt (a follower keeps waiting
    while its leader is in flight). One whose stream had begun ends `partial`, charged
    for what was streamed (`streamed`, estimated; nothing when unknown)."""
    leader = cache_index(state, flight.tenant).leader_of(flight.request_id)
    if leader is not None and leader in state.inflight:
        return Decision(events=[], effects=[])
    if flight.first_token_attempt:  # its stream had begun: the client saw some of it, and
        # an upstream stream cannot be picked up where it stopped
        terminal = msgspec.structs.replace(
            _failed(flight, "upstream_stream_error", "the router relaying this stream stopped "
                    "after its first chunk; a stream cannot be resumed upstream", ctx.now_ms,
                    flight.errors),
            partial=True, model=flight.model,
        )  # fmt: skip
        if streamed is not None:
            terminal = msgspec.structs.replace(
                terminal, usage=streamed.usage, cost_micros=streamed.cost_micros,
                stream=ev.StreamStats(chunks=streamed.chunks, usage_estimated=True),
            )  # fmt: skip
        charged = settle(state, flight, streamed.cost_micros if streamed else None, ctx)
        # its followers end with it: they had its chunks, and must not start over from seq 1
        return with_followers(state, flight, terminal, [*charged, terminal], ctx)
    pinned = flight.order[0] if flight.order else None
    route, decided = _route(state, ctx, request=flight, pinned=pinned)
    moved = msgspec.structs.replace(flight, order=route.order, index=0)
    if not route.order:
        terminal = _failed(moved, "upstream_unavailable", "no candidate model", ctx.now_ms, ())
        released = settle(state, flight, None, ctx)
        return with_followers(state, flight, terminal, [decided, *released, terminal], ctx)
    started, call = _start(moved, route.order[0], 1, ctx, state)
    return Decision(events=[decided, *started], effects=[call])


def _route(
    state: RouterState, ctx: Context, *, request: InFlight | IntakeRequest, pinned: str | None
) -> tuple[RouteDecision, ev.RouteDecided]:
    """The candidate order for a request, and the event that records it."""
    request_id, tenant, task_type = request.request_id, request.tenant, request.task_type
    route = decide_route(
        ctx.cfg.routes.get(task_type, _DEFAULT_ROUTE),
        request_id=request_id,
        pinned=pinned,
        now_ms=ctx.now_ms,
        breakers=state.breakers if ctx.cfg.features.circuit_breaker else {},
        latency=state.latency,
        prices=ctx.prices,
    )
    decided = ev.RouteDecided(
        request_id=request_id, tenant=tenant, task_type=task_type, strategy=route.strategy,
        candidates=list(route.candidates), order=list(route.order),
        skipped=[ev.SkippedModel(model=m, reason=r) for m, r in route.skipped],
        sample=route.sample,
        providers=[provider_of(ctx.cfg, m) for m in route.order] if ctx.cfg.providers else None,
    )  # fmt: skip
    return route, decided


def _route_and_start(
    state: RouterState, req: IntakeRequest, ctx: Context, key: str | None, looked: list[Any]
) -> Decision:
    route, decided = _route(state, ctx, request=req, pinned=req.model)
    reserved: list[Any] = []
    if route.order:
        reserved = reserve(state, req, route.order, ctx)
        if reserved and isinstance(reserved[0], ev.BudgetExceeded):
            return over_budget(req, reserved[0], key)
    events: list[Any] = [accepted_event(req, ctx.cfg, key), *reserved, *looked, decided]
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


def _provider_unreachable(
    state: RouterState, model: str, transitions: list[Any], ctx: Context
) -> list[Any]:
    """A model whose breaker just opened because its provider refused the connection: the
    whole API is unreachable, so the breakers of the provider's other route models open
    too (with `[providers]` only; with `[upstream]` alone every model would stop at once)."""
    opened = next((e for e in transitions if isinstance(e, ev.BreakerOpened)), None)
    if opened is None or not ctx.cfg.providers or not ctx.cfg.features.circuit_breaker:
        return []
    provider = provider_of(ctx.cfg, model)
    out: list[Any] = []
    seen = {model}
    for route in ctx.cfg.routes.values():
        for other in route.models:
            if other in seen or provider_of(ctx.cfg, other) != provider:
                continue
            seen.add(other)
            b = state.breakers.get(other)
            if b is not None and b.status != "closed":
                continue
            out.append(ev.BreakerOpened(
                model=other, reason=f"provider {provider} unreachable ({model}: {opened.reason})",
                failures=0, calls=0, open_until_ms=opened.open_until_ms,
            ))  # fmt: skip
    return out


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
        stream=result.stream,
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
        provider=_provider(ctx, result.model),
    )
    breaker, _ = _breaker_events(state, result.model, result.slow, ctx, None)
    terminal = _completed(flight, result, ctx.now_ms)
    settled = settle(state, flight, result.cost_micros, ctx)
    stored = store(state, flight, result, ctx) if result.cut is None else []
    events: list[Any] = [succeeded, *breaker, *settled, *stored, terminal]
    if result.cut is not None:  # stopped at its allowance: said before it settles
        events.insert(1, ev.StreamCut(
            request_id=flight.request_id, tenant=flight.tenant, model=result.model,
            attempt=result.attempt, why=result.cut,
            completion_tokens=result.usage.completion_tokens,
        ))  # fmt: skip
    return with_followers(state, flight, terminal, events, ctx)


def _on_failure(state: RouterState, flight: InFlight, result: CallResult, ctx: Context) -> Decision:
    if flight.first_token_attempt == result.attempt:  # its tokens went out: no second try
        return _stream_broken(state, flight, result, ctx)
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
        provider=_provider(ctx, result.model),
    )
    breaker_events, breaker = _breaker_events(
        state, result.model, cls.breaker_failure, ctx, result.retry_after_ms
    )
    if cls.name == "connect_error" and breaker_events:
        breaker_events += _provider_unreachable(state, result.model, breaker_events, ctx)
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
    just_opened = {e.model for e in breaker_events if isinstance(e, ev.BreakerOpened)}
    nxt = (
        _next_candidate(state, flight, ctx, skip=just_opened)
        if cls.fallback and ctx.cfg.features.fallbacks
        else None
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
    released = settle(state, flight, None, ctx)
    return with_followers(state, flight, terminal, [*events, *released, terminal], ctx)


def _stream_broken(
    state: RouterState, flight: InFlight, result: CallResult, ctx: Context
) -> Decision:
    """A stream failed after its first chunk was published (the first-token gate): the
    request ends `partial` with what was streamed charged, and the model's breaker counts
    the failure. Never retried or fallen back: the client has seen this attempt's tokens."""
    cls = CLASSES["upstream_stream_error"]
    cause = result.error_class if result.error_class != cls.name else None
    message = f"{cause}: {result.message}" if cause else result.message or cls.name
    failed = ev.AttemptFailed(
        request_id=flight.request_id, tenant=flight.tenant, model=result.model,
        attempt=result.attempt, status=result.status, error_class=cls.name, message=message,
        latency_ms=result.latency_ms, retryable=False, breaker_failure=True, fallback=False,
        retry_after_ms=result.retry_after_ms, provider=_provider(ctx, result.model),
    )  # fmt: skip
    breaker_events, _ = _breaker_events(state, result.model, True, ctx, result.retry_after_ms)
    errors = (*flight.errors, ev.CandidateError(model=result.model, code=cls.name, message=message))
    terminal = msgspec.structs.replace(
        _failed(flight, cls.code, message, ctx.now_ms, errors),
        partial=True, model=result.model, usage=result.usage, cost_micros=result.cost_micros,
        stream=result.stream,
    )  # fmt: skip
    cut = ev.StreamCut(
        request_id=flight.request_id, tenant=flight.tenant, model=result.model,
        attempt=result.attempt, why="upstream", completion_tokens=result.usage.completion_tokens,
    )  # fmt: skip
    charged = settle(state, flight, result.cost_micros, ctx)
    return with_followers(
        state, flight, terminal, [failed, cut, *breaker_events, *charged, terminal], ctx
    )


def decide_first_token(
    state: RouterState, request_id: str, model: str, attempt: int, ttft_ms: float, ctx: Context
) -> Decision:
    """A streamed attempt has its first token, about to be published: record it, which
    closes the first-token gate (a failure after it ends the request `partial`). Empty
    when the attempt is stale (the request moved on): its tokens must not go out."""
    flight = state.inflight.get(request_id)
    if flight is None or flight.attempt != attempt or flight.first_token_attempt:
        return Decision(events=[], effects=[])
    first = ev.StreamFirstToken(
        request_id=request_id, tenant=flight.tenant, model=model, attempt=attempt,
        ttft_ms=ttft_ms,
    )  # fmt: skip
    return Decision(events=[first], effects=[])


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


def _next_candidate(
    state: RouterState, flight: InFlight, ctx: Context, *, skip: set[str] | None = None
) -> str | None:
    """The next model of the request's order whose breaker admits a call (`skip`: breakers
    this very decision opens)."""
    for model in flight.order[flight.index + 1 :]:
        if skip and model in skip and ctx.cfg.features.circuit_breaker:
            continue
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


def decide_delivered(
    state: RouterState,
    terminal: Terminal,
    ctx: Context,
    *,
    intake: tuple[int, int] | None = None,
) -> Decision:
    """An orphaned request whose response its last owner delivered but did not record (it
    died, or its events failed, between the two): record the terminal event rebuilt from
    that response, with the budget settlement it still lacks, and answer nothing again.
    Its followers are not answered here: each is found, or resumed, on its own.

    `intake`: the (partition, offset) of the record being handled. When the log never
    accepted the request, the terminal event records it, so that record delivered yet
    again (a second crash before its commit) is not answered again either."""
    if terminal.request_id in state.finished:
        return Decision(events=[], effects=[])
    flight = state.inflight.get(terminal.request_id)
    if flight is None and intake is not None:
        terminal = msgspec.structs.replace(
            terminal, intake_partition=intake[0], intake_offset=intake[1]
        )
    recorded = Respond(terminal=terminal, delivered=True)
    actual = None if isinstance(terminal, ev.RequestRejected) else terminal.cost_micros or None
    if isinstance(terminal, ev.RequestCompleted):
        actual = terminal.cost_micros
    if flight is not None:
        settled = settle(state, flight, actual, ctx)  # [] when its settlement is in the log
        return Decision(events=[*settled, terminal], effects=[recorded])
    # not even its acceptance reached the log (answered in the decision that accepted or
    # rejected it): its cost is charged to the day it is recorded on
    charged: list[Any] = []
    if actual and ctx.cfg.features.budgets:
        day, month = period_keys(ctx.now_ms)
        charged.append(ev.BudgetCharged(
            request_id=terminal.request_id, tenant=terminal.tenant, amount_micros=actual,
            day=day, month=month,
        ))  # fmt: skip
    return Decision(events=[*charged, terminal], effects=[recorded])


def decide_cancel(
    state: RouterState,
    request_id: str,
    tenant: str,
    reason: str,
    ctx: Context,
    *,
    stopped: CallResult | None = None,
) -> Decision:
    """A cancel for a request in flight: end it `cancelled`, charging what its stopped
    call (`stopped`: a stream's relayed part) used, and releasing the rest of its
    reservation. Ignored (empty) when the request is not in flight, belongs to another
    tenant (no tenant stops another's request), or has followers waiting on its answer."""
    flight = state.inflight.get(request_id)
    if flight is None or flight.tenant != tenant or shares_its_answer(state, flight):
        return Decision(events=[], effects=[])
    events: list[Any] = []
    usage, cost, model, stats = NO_USAGE, 0, flight.model, None
    if stopped is not None and stopped.attempt == flight.attempt:
        usage, cost, model = stopped.usage, stopped.cost_micros, stopped.model
        stats = stopped.stream
        if flight.first_token_attempt == stopped.attempt:
            events.append(ev.StreamCut(
                request_id=request_id, tenant=tenant, model=stopped.model,
                attempt=stopped.attempt, why="cancel", completion_tokens=usage.completion_tokens,
            ))  # fmt: skip
    terminal = ev.RequestCancelled(
        request_id=request_id, tenant=tenant, reason=reason, attempts=flight.attempt,
        latency_ms=float(ctx.now_ms - flight.accepted_at_ms), model=model, usage=usage,
        cost_micros=cost, reply_to=flight.reply_to, stream=stats,
    )  # fmt: skip
    events += settle(state, flight, cost or None, ctx)
    events.append(terminal)
    return Decision(events=events, effects=[Respond(terminal=terminal)])


def shares_its_answer(state: RouterState, flight: InFlight) -> bool:
    """Do other requests wait on this one's answer (coalesced onto it)? A cancel of such a
    leader is ignored: its call runs on for them (and the router must not stop it)."""
    return bool(cache_index(state, flight.tenant).followers(flight.request_id))


def decide_internal_error(
    state: RouterState, request_id: str, message: str, ctx: Context
) -> Decision:
    """The router itself failed on a request in flight (a bug in a request task): fail it
    with `internal_error`, release what it holds, and answer it and its followers, so it
    still ends with exactly one terminal event. Nothing to do if it is not in flight."""
    flight = state.inflight.get(request_id)
    if flight is None:
        return Decision(events=[], effects=[])
    terminal = _failed(flight, "internal_error", message, ctx.now_ms, flight.errors)
    released = settle(state, flight, None, ctx)
    return with_followers(state, flight, terminal, [*released, terminal], ctx)
