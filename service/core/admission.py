"""Tenants and the cache at the door: rate limits, budgets, cache hits and coalescing.

    admission_key(req, cfg)          the cache key when the answer may be cached
    over_limit(state, req, ctx, hit) a rejection when a rate limit says no
    reserve(state, req, order, ctx)  [BudgetReserved] | [BudgetExceeded] | []
    answer_from_cache(...)           a hit: accepted, cache.hit, completed(cached)
    settle / store / with_followers  at the end of a call: charge and release the
                                     budget, store the answer, answer the followers

Rules: pure, like the rest of the core; a rejected request consumes nothing (no
window, no reservation); a cache hit or a coalesced follower uses nothing itself
and reports what the answer cost as `saved_*`.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from turnout.service.core import budget, ratelimit
from turnout.service.core import cache as caching
from turnout.service.core import events as ev
from turnout.service.core.config import Config
from turnout.service.core.decision import (
    CallResult,
    Context,
    Decision,
    Effect,
    IntakeRequest,
    Respond,
)
from turnout.service.core.partitioning import PARTITIONS, home_partition
from turnout.service.core.state import InFlight, RouterState, Terminal

__all__ = [
    "NO_USAGE",
    "accepted_event",
    "admission_key",
    "answer_from_cache",
    "cache_index",
    "follower_terminal",
    "over_budget",
    "over_limit",
    "rejected",
    "reserve",
    "settle",
    "store",
    "with_followers",
]

NO_USAGE: Final = ev.Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)


def accepted_event(req: IntakeRequest, cfg: Config, key: str | None) -> ev.RequestAccepted:
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
        stream=req.stream,
        cache_opt=req.cache,
    )


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
        # a streamed answer is cached as its chunks, apart from the same question's whole one
        params={**req.params, "stream": True} if req.stream else req.params,
    )


def rejected(
    req: IntakeRequest,
    code: str,
    message: str,
    retry_after_ms: int | None,
    cache_key: str | None = None,
) -> Decision:
    terminal = ev.RequestRejected(
        request_id=req.request_id,
        tenant=req.tenant,
        code=code,
        message=message,
        retry_after_ms=retry_after_ms,
        reply_to=req.reply_to,
        intake_partition=req.intake_partition,
        intake_offset=req.intake_offset,
        intake=ev.IntakeFacts(
            task_type=req.task_type, model=req.model, messages_hash=req.messages_hash,
            prompt_tokens_est=req.prompt_tokens_est, max_tokens=req.max_tokens,
            params=req.params, cache_opt=req.cache, stream=req.stream, cache_key=cache_key,
        ),
    )  # fmt: skip
    return Decision(events=[terminal], effects=[Respond(terminal=terminal)])


def over_limit(
    state: RouterState, req: IntakeRequest, ctx: Context, hit: bool, key: str | None = None
) -> Decision | None:
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
    if exceeded.limit == "tokens_per_minute" and tokens > exceeded.limit_value:
        # never admitted, however long it waits: a bad request, not a busy tenant (a 429
        # would have clients retry it)
        message = (
            f"this request counts {tokens} tokens (its prompt estimate and max_tokens), over "
            f"tokens_per_minute = {exceeded.limit_value} for tenant {req.tenant!r}: it can "
            "never be admitted; lower max_tokens"
        )
        refusal = rejected(req, "invalid_request", message, None, key)
    else:
        message = (
            f"{exceeded.limit} = {exceeded.limit_value} reached for tenant {req.tenant!r}; "
            f"retry after {exceeded.retry_after_ms} ms"
        )
        refusal = rejected(req, "rate_limited", message, exceeded.retry_after_ms, key)
    event = exceeded.event(request_id=req.request_id, tenant=req.tenant)
    return Decision(events=[event, *refusal.events], effects=refusal.effects)


def over_budget(req: IntakeRequest, over: ev.BudgetExceeded, key: str | None = None) -> Decision:
    """Rejected because its reservation would pass a budget (`over` says which)."""
    message = (
        f"the {over.period} budget of tenant {req.tenant!r} would be exceeded: "
        f"spent {over.spent_micros / 1e6:.6f} + reserved {over.reserved_micros / 1e6:.6f} "
        f"+ this request {over.requested_micros / 1e6:.6f} > "
        f"{over.limit_micros / 1e6:.6f} USD"
    )
    refusal = rejected(req, "budget_exceeded", message, None, key)
    return Decision(events=[over, *refusal.events], effects=refusal.effects)


def answer_from_cache(
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
        usage=NO_USAGE,
        cost_micros=0,
        response=response,
        reply_to=req.reply_to,
        saved_usage=entry.usage,
        saved_cost_micros=entry.cost_micros,
    )
    events = [accepted_event(req, ctx.cfg, key), *lookup.events, terminal]
    return Decision(events=events, effects=[Respond(terminal=terminal)])


def reserve(
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


_EMPTY_INDEX: Final = caching.CacheIndex()


def cache_index(state: RouterState, tenant: str) -> caching.CacheIndex:
    """The tenant's partition's cache index, read-only (an empty one when none yet)."""
    index = state.cache.get(home_partition(tenant))
    return _EMPTY_INDEX if index is None else index  # not `or`: an index with no entries is falsy


def settle(state: RouterState, flight: InFlight, actual: int | None, ctx: Context) -> list[Any]:
    """Charge the actual cost and release the rest of the reservation (None: release all)."""
    return budget.decide_settle(
        state.budgets.get(flight.tenant),
        tenant=flight.tenant,
        request_id=flight.request_id,
        actual_micros=actual,
        limits=ctx.cfg.tenant(flight.tenant),
    )


def store(state: RouterState, flight: InFlight, result: CallResult, ctx: Context) -> list[Any]:
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


def with_followers(
    state: RouterState, leader: InFlight, terminal: Terminal, events: list[Any], ctx: Context
) -> Decision:
    """The leader's terminal, then one for every request coalesced onto it."""
    effects: list[Effect] = [Respond(terminal=terminal)]
    index = state.cache.get(home_partition(leader.tenant))
    for follower_id in index.followers(leader.request_id) if index is not None else ():
        follower = state.inflight.get(follower_id)
        if follower is None:
            continue
        answer = follower_terminal(follower, terminal, ctx.now_ms)
        events.append(answer)
        effects.append(Respond(terminal=answer))
    return Decision(events=events, effects=effects)


def follower_terminal(follower: InFlight, leader: Terminal, now_ms: int) -> Terminal:
    latency = float(now_ms - follower.accepted_at_ms)
    if isinstance(leader, ev.RequestCompleted):
        return msgspec.structs.replace(
            leader, request_id=follower.request_id, tenant=follower.tenant,
            reply_to=follower.reply_to, coalesced=True, attempts=0, latency_ms=latency,
            usage=NO_USAGE, cost_micros=0, saved_usage=leader.usage,
            saved_cost_micros=leader.cost_micros,
        )  # fmt: skip
    if isinstance(leader, ev.RequestFailed | ev.RequestCancelled):  # used nothing itself
        return msgspec.structs.replace(
            leader, request_id=follower.request_id, tenant=follower.tenant,
            reply_to=follower.reply_to, attempts=0, latency_ms=latency, usage=None,
            cost_micros=0,
        )  # fmt: skip
    return msgspec.structs.replace(
        leader, request_id=follower.request_id, tenant=follower.tenant,
        reply_to=follower.reply_to, attempts=0, latency_ms=latency,
    )  # fmt: skip
