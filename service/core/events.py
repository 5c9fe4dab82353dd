"""Every domain event Turnout writes to `turnout.events`: the one source of truth.

Each event is a frozen, keyword-only `msgspec.Struct` whose class constant
`TYPE` is its CloudEvents type (`turnout.<noun>.<verb>`). The struct's fields
are the event's JSON data; the envelope (id, time, source, subject, trace,
tenant key) lives in `turnout.service.wire.cloudevents`. All router state is a fold of
these events, so they record every choice that replay must not make again.

Units: money is integer micro-dollars (`*_micros`), instants are integer Unix
milliseconds UTC (`*_ms`), latencies are float milliseconds. Every event has
`tenant` (`SYSTEM_TENANT` for global events); request-scoped events have
`request_id`. Event data never holds an API key, and prompt text only when
`[privacy] store_prompts` is on.

Schema evolution (old readers meet new writers, and the log keeps old events):
- a new field gets a default (None or empty), so old records still decode;
- unknown fields are ignored on decode, so old readers accept new records;
- never change a field's type, never rename or remove a field;
- an incompatible change is a new type (`turnout.x.y.v2`, a new struct); the
  old struct stays, and an upcaster where events are decoded turns it into
  the new one;
- a type this reader does not know decodes to `RawEvent`, never an error.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, TypeAlias, get_args

import msgspec

__all__ = [
    "EVENT_TYPES",
    "SYSTEM_TENANT",
    "AlertFired",
    "AlertResolved",
    "AttemptFailed",
    "AttemptStarted",
    "AttemptSucceeded",
    "BreakerClosed",
    "BreakerHalfOpened",
    "BreakerOpened",
    "BudgetCharged",
    "BudgetExceeded",
    "BudgetReleased",
    "BudgetReserved",
    "CacheEvicted",
    "CacheHit",
    "CacheMiss",
    "CacheStored",
    "CacheWarmed",
    "CandidateError",
    "ConfigApplied",
    "Event",
    "FallbackTaken",
    "IntakeFacts",
    "PricesUpdated",
    "RatelimitExceeded",
    "RawEvent",
    "RequestAccepted",
    "RequestCancelled",
    "RequestCoalesced",
    "RequestCompleted",
    "RequestDeadlettered",
    "RequestFailed",
    "RequestRejected",
    "RetryScheduled",
    "RouteDecided",
    "RouterMarker",
    "SkippedModel",
    "StreamCut",
    "StreamFirstToken",
    "StreamStats",
    "Usage",
    "event_type",
]

SYSTEM_TENANT: Final = "_system"
"""The tenant (and Kafka key) of events that belong to no tenant: breakers, alerts, config."""


# --- shared values ----------------------------------------------------------


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts as the upstream reported them (OpenAI `usage`)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class SkippedModel(msgspec.Struct, frozen=True, kw_only=True):
    """A candidate the router left out, and why (e.g. `breaker_open`)."""

    model: str
    reason: str


class CandidateError(msgspec.Struct, frozen=True, kw_only=True):
    """The last error one candidate model gave for a failed request."""

    model: str
    code: str
    message: str


class StreamStats(msgspec.Struct, frozen=True, kw_only=True):
    """How a streamed answer went: chunk records published, time to the first token (ms
    since the attempt that answered started), and whether `usage` is Turnout's estimate
    (the stream was cut short before the upstream reported it)."""

    chunks: int
    ttft_ms: float | None = None
    usage_estimated: bool = False


class _EventBase(msgspec.Struct, frozen=True, kw_only=True):
    """Config shared by every event; `TYPE` is the CloudEvents type."""

    TYPE: ClassVar[str]


# --- requests ---------------------------------------------------------------


class RequestAccepted(_EventBase, frozen=True, kw_only=True):
    """An intake request passed validation; `params` are the OpenAI params but messages."""

    TYPE: ClassVar[str] = "turnout.request.accepted"
    request_id: str
    tenant: str
    task_type: str
    model: str | None = None
    messages_hash: str
    prompt_tokens_est: int
    max_tokens: int | None = None
    params: dict[str, Any] = {}
    messages: list[dict[str, Any]] | None = None
    cache_key: str | None = None
    cacheable: bool
    reply_to: str | None = None
    metadata: dict[str, Any] | None = None
    intake_partition: int | None = None
    intake_offset: int | None = None
    redrive_of: str | None = None
    stream: bool = False  # answered as chunk records, then the last record
    cache_opt: bool | None = None  # the request's own `cache` opt-in/out (what-if replay)


class IntakeFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What a rejected request asked for, so `turnout replay whatif` can decide it again
    under another config (a higher rate limit, a larger budget). No prompt text."""

    task_type: str
    model: str | None = None
    messages_hash: str
    prompt_tokens_est: int
    max_tokens: int | None = None
    params: dict[str, Any] = {}
    cache_opt: bool | None = None
    stream: bool = False
    # the cache key the router computed (when cacheable): what-if finds the answer a
    # request refused here would have had from the cache, had it been admitted
    cache_key: str | None = None


class RequestRejected(_EventBase, frozen=True, kw_only=True):
    """Terminal: refused before any upstream call (rate limit, budget, bad request)."""

    TYPE: ClassVar[str] = "turnout.request.rejected"
    request_id: str
    tenant: str
    code: str
    message: str
    retry_after_ms: int | None = None
    reply_to: str | None = None
    # the intake record rejected (a redelivered copy of it is not answered again)
    intake_partition: int | None = None
    intake_offset: int | None = None
    intake: IntakeFacts | None = None  # set when refused at admission (limits, budgets)


class RequestDeadlettered(_EventBase, frozen=True, kw_only=True):
    """Terminal: an intake record that could not be read went to the DLQ."""

    TYPE: ClassVar[str] = "turnout.request.deadlettered"
    request_id: str | None = None
    tenant: str
    code: str
    detail: str
    path: str | None = None
    topic: str
    partition: int
    offset: int


class RequestCompleted(_EventBase, frozen=True, kw_only=True):
    """Terminal: answered; `response` is the OpenAI chat.completion object."""

    TYPE: ClassVar[str] = "turnout.request.completed"
    request_id: str
    tenant: str
    model: str
    cached: bool
    coalesced: bool
    attempts: int
    latency_ms: float
    usage: Usage
    cost_micros: int
    response: dict[str, Any]
    reply_to: str | None = None
    # a cache hit or a coalesced follower used nothing itself: what the answer cost when it
    # was made (so savings are visible, while usage/cost above count what this request used)
    saved_usage: Usage | None = None
    saved_cost_micros: int = 0
    stream: StreamStats | None = None  # a streamed answer: its chunks and first token
    # set only when a response its last router delivered is recorded for a request whose
    # acceptance never reached the log: that intake record, redelivered, is not answered again
    intake_partition: int | None = None
    intake_offset: int | None = None


class RequestFailed(_EventBase, frozen=True, kw_only=True):
    """Terminal: every candidate failed; `errors` holds the last error of each."""

    TYPE: ClassVar[str] = "turnout.request.failed"
    request_id: str
    tenant: str
    code: str
    message: str
    attempts: int
    latency_ms: float
    errors: list[CandidateError] = []
    reply_to: str | None = None
    # a stream that failed after its first chunk: what was streamed (and is charged)
    partial: bool = False
    model: str | None = None
    usage: Usage | None = None
    cost_micros: int = 0
    stream: StreamStats | None = None
    # set only when a response its last router delivered is recorded for a request whose
    # acceptance never reached the log: that intake record, redelivered, is not answered again
    intake_partition: int | None = None
    intake_offset: int | None = None


class RequestCancelled(_EventBase, frozen=True, kw_only=True):
    """Terminal: stopped on request (a cancel record, or a gateway client that went away);
    what it used before it stopped (a stream's relayed tokens) is charged."""

    TYPE: ClassVar[str] = "turnout.request.cancelled"
    request_id: str
    tenant: str
    reason: str
    attempts: int
    latency_ms: float
    model: str | None = None
    usage: Usage | None = None
    cost_micros: int = 0
    reply_to: str | None = None
    stream: StreamStats | None = None
    # set only when a response its last router delivered is recorded for a request whose
    # acceptance never reached the log: that intake record, redelivered, is not answered again
    intake_partition: int | None = None
    intake_offset: int | None = None


class RequestCoalesced(_EventBase, frozen=True, kw_only=True):
    """The request waits for an identical in-flight request (the leader)."""

    TYPE: ClassVar[str] = "turnout.request.coalesced"
    request_id: str
    tenant: str
    leader_request_id: str
    cache_key: str


# --- cache ------------------------------------------------------------------


class CacheHit(_EventBase, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "turnout.cache.hit"
    request_id: str
    tenant: str
    cache_key: str
    model: str
    stored_at_ms: int
    saved_usage: Usage
    saved_cost_micros: int


class CacheMiss(_EventBase, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "turnout.cache.miss"
    request_id: str
    tenant: str
    cache_key: str


class CacheStored(_EventBase, frozen=True, kw_only=True):
    """A response entered the cache. `body` is the compressed response JSON
    (base64 in JSON), so the cache index is rebuilt from the log alone."""

    TYPE: ClassVar[str] = "turnout.cache.stored"
    request_id: str
    tenant: str
    cache_key: str
    model: str
    stored_at_ms: int
    expires_at_ms: int
    encoding: str  # "zstd" | "gzip" | "none"
    body: bytes
    size_bytes: int
    stored_bytes: int
    usage: Usage
    cost_micros: int


class CacheEvicted(_EventBase, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "turnout.cache.evicted"
    tenant: str
    cache_key: str
    reason: str  # "lru" | "ttl"
    stored_bytes: int


class CacheWarmed(_EventBase, frozen=True, kw_only=True):
    """Summary of one `turnout cache warm` run."""

    TYPE: ClassVar[str] = "turnout.cache.warmed"
    tenant: str
    warm_id: str
    source: str
    requests: int
    hits: int
    misses: int
    stored: int
    failed: int


# --- routing, attempts, retries ---------------------------------------------


class RouteDecided(_EventBase, frozen=True, kw_only=True):
    """The candidate order chosen; `sample` is the uniform draw it used, if any."""

    TYPE: ClassVar[str] = "turnout.route.decided"
    request_id: str
    tenant: str
    task_type: str
    strategy: str
    candidates: list[str]
    order: list[str]
    skipped: list[SkippedModel] = []
    sample: float | None = None
    providers: list[str] | None = None  # with [providers]: the provider of each of `order`


class StreamFirstToken(_EventBase, frozen=True, kw_only=True):
    """A streamed attempt's first token is about to be published: from here on the request
    is answered by this attempt or ends `partial` (no retry, no fallback after it)."""

    TYPE: ClassVar[str] = "turnout.stream.first_token"
    request_id: str
    tenant: str
    model: str
    attempt: int
    ttft_ms: float


class StreamCut(_EventBase, frozen=True, kw_only=True):
    """A stream stopped before the upstream ended it: `why` is budget (its reservation
    would be passed), max_tokens, cancel, or upstream (it failed after the first token)."""

    TYPE: ClassVar[str] = "turnout.stream.cut"
    request_id: str
    tenant: str
    model: str
    attempt: int
    why: str
    completion_tokens: int


class FallbackTaken(_EventBase, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "turnout.fallback.taken"
    request_id: str
    tenant: str
    from_model: str
    to_model: str
    reason: str


class AttemptStarted(_EventBase, frozen=True, kw_only=True):
    """`attempt` counts from 1 over the whole request; `model_attempt` per model."""

    TYPE: ClassVar[str] = "turnout.attempt.started"
    request_id: str
    tenant: str
    model: str
    attempt: int
    model_attempt: int
    provider: str | None = None  # set when [providers] are configured: who was called


class AttemptSucceeded(_EventBase, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "turnout.attempt.succeeded"
    request_id: str
    tenant: str
    model: str
    attempt: int
    status: int
    latency_ms: float
    usage: Usage
    cost_micros: int
    generation_id: str | None = None
    slow: bool = False  # slower than [breaker] call_timeout_s: counts as a breaker failure
    provider: str | None = None


class AttemptFailed(_EventBase, frozen=True, kw_only=True):
    """One upstream call failed; the flags record the classification that was applied."""

    TYPE: ClassVar[str] = "turnout.attempt.failed"
    request_id: str
    tenant: str
    model: str
    attempt: int
    status: int | None = None
    error_class: str
    message: str
    latency_ms: float
    retryable: bool
    breaker_failure: bool
    fallback: bool
    retry_after_ms: int | None = None
    provider: str | None = None


class RetryScheduled(_EventBase, frozen=True, kw_only=True):
    """`attempt` is the number of the attempt that will run after `delay_ms`."""

    TYPE: ClassVar[str] = "turnout.retry.scheduled"
    request_id: str
    tenant: str
    model: str
    attempt: int
    delay_ms: int
    reason: str


# --- circuit breakers (tenant = SYSTEM_TENANT) -------------------------------


class BreakerOpened(_EventBase, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "turnout.breaker.opened"
    tenant: str = SYSTEM_TENANT
    model: str
    reason: str
    failures: int
    calls: int
    open_until_ms: int


class BreakerHalfOpened(_EventBase, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "turnout.breaker.half_opened"
    tenant: str = SYSTEM_TENANT
    model: str


class BreakerClosed(_EventBase, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "turnout.breaker.closed"
    tenant: str = SYSTEM_TENANT
    model: str
    successes: int


# --- rate limits and budgets ------------------------------------------------


class RatelimitExceeded(_EventBase, frozen=True, kw_only=True):
    """`limit` names the config key that refused: `requests_per_minute`, ..., `burst`."""

    TYPE: ClassVar[str] = "turnout.ratelimit.exceeded"
    request_id: str
    tenant: str
    limit: str
    limit_value: int
    retry_after_ms: int


class BudgetReserved(_EventBase, frozen=True, kw_only=True):
    """`day` is `YYYY-MM-DD`, `month` is `YYYY-MM` (UTC) of the reservation."""

    TYPE: ClassVar[str] = "turnout.budget.reserved"
    request_id: str
    tenant: str
    amount_micros: int
    day: str
    month: str


class BudgetCharged(_EventBase, frozen=True, kw_only=True):
    """Settles the request's reservation at the real cost (same day/month)."""

    TYPE: ClassVar[str] = "turnout.budget.charged"
    request_id: str
    tenant: str
    amount_micros: int
    day: str
    month: str


class BudgetReleased(_EventBase, frozen=True, kw_only=True):
    """Returns the request's reservation unspent (failure, cache hit)."""

    TYPE: ClassVar[str] = "turnout.budget.released"
    request_id: str
    tenant: str
    amount_micros: int
    day: str
    month: str


class BudgetExceeded(_EventBase, frozen=True, kw_only=True):
    """`period`: day | month | lifetime; `level`: soft (warning) | hard (refused)."""

    TYPE: ClassVar[str] = "turnout.budget.exceeded"
    request_id: str | None = None
    tenant: str
    period: str
    level: str
    limit_micros: int
    spent_micros: int
    reserved_micros: int
    requested_micros: int


# --- alerts, config, router -------------------------------------------------


class AlertFired(_EventBase, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "turnout.alert.fired"
    tenant: str = SYSTEM_TENANT
    rule: str
    severity: str
    labels: dict[str, str] = {}
    value: float
    op: str
    threshold: float
    pending_since_ms: int


class AlertResolved(_EventBase, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "turnout.alert.resolved"
    tenant: str = SYSTEM_TENANT
    rule: str
    severity: str
    labels: dict[str, str] = {}
    value: float
    fired_at_ms: int


class ConfigApplied(_EventBase, frozen=True, kw_only=True):
    """A router instance started with this config; `config` is redacted (no keys)."""

    TYPE: ClassVar[str] = "turnout.config.applied"
    tenant: str = SYSTEM_TENANT
    instance: str
    config_hash: str
    config: dict[str, Any] = {}
    features: dict[str, bool] = {}


class PricesUpdated(_EventBase, frozen=True, kw_only=True):
    """The price table a router decides with changed (fetched at start, refreshed every
    `[upstream] pricing_ttl_s`): USD per token, `[prompt, completion]` per model. Budgets
    reserve, and `cheapest` routes, by it; `turnout replay whatif` re-decides with it."""

    TYPE: ClassVar[str] = "turnout.prices.updated"
    tenant: str = SYSTEM_TENANT
    instance: str
    prices: dict[str, list[float]] = {}


class RouterMarker(_EventBase, frozen=True, kw_only=True):
    """Written by a router and read back to know it has caught up on `partition`."""

    TYPE: ClassVar[str] = "turnout.router.marker"
    tenant: str
    instance: str
    marker_id: str
    partition: int


# --- the union and the registry ---------------------------------------------

Event: TypeAlias = (
    RequestAccepted
    | RequestRejected
    | RequestDeadlettered
    | RequestCompleted
    | RequestFailed
    | RequestCancelled
    | RequestCoalesced
    | CacheHit
    | CacheMiss
    | CacheStored
    | CacheEvicted
    | CacheWarmed
    | RouteDecided
    | FallbackTaken
    | StreamFirstToken
    | StreamCut
    | AttemptStarted
    | AttemptSucceeded
    | AttemptFailed
    | RetryScheduled
    | BreakerOpened
    | BreakerHalfOpened
    | BreakerClosed
    | RatelimitExceeded
    | BudgetReserved
    | BudgetCharged
    | BudgetReleased
    | BudgetExceeded
    | AlertFired
    | AlertResolved
    | ConfigApplied
    | PricesUpdated
    | RouterMarker
)

EVENT_TYPES: Final[dict[str, type[Event]]] = {cls.TYPE: cls for cls in get_args(Event)}
"""CloudEvents type -> struct, for every event this reader knows."""


class RawEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event of a type this reader does not know (written by a newer version).

    `data` is the decoded JSON; `raw`, when set, is the exact value bytes it
    came from, and the codec writes them back verbatim, so forwarding an
    unknown event never changes it. Reducers ignore RawEvents.
    """

    type: str
    data: Any
    raw: bytes | None = None


def event_type(event: Event | RawEvent) -> str:
    """The CloudEvents type of `event`, in O(1)."""
    if isinstance(event, RawEvent):
        return event.type
    return event.TYPE
