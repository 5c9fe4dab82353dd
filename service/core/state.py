"""Router state and its one reducer: `evolve(state, event, cfg)`.

Everything the router knows — circuit breakers, latency statistics, the retry
budget, rate-limit windows and budgets per tenant, the cache index per
partition, requests in flight and the outcome of every finished request — is
the fold of `turnout.events`. Replaying the same events with the same config gives
the same state; folding in two halves equals folding at once.

Rules:
- `evolve` never decides: it records what events say (an opening breaker's
  deadline comes from `BreakerOpened.open_until_ms`, never recomputed).
- State holders are mutable for speed (the hot path folds ~10 events per
  request); the values inside them (`Breaker`, `InFlight`, ...) are frozen.
- Per-tenant parts (limits, budgets) and the per-partition cache index depend
  only on their own partition's events, so they fold the same however the
  partitions' events interleave (a tenant lives on one partition).
- Finished requests are remembered for idempotence (a resent request is
  answered from here): their answers for `[router] dedupe_window_s` within
  `dedupe_max_bytes` (1/12 of it per partition, oldest forgotten first; each answer
  is charged its encoded bytes plus `answer_overhead_bytes`), then
  only a 64-bit hash of their id and their outcome (`expired_outcome`) in
  hour buckets until `dedupe_ids_s`, within `dedupe_ids_max_bytes` (`ID_BYTES`
  each, 1/12 per partition, the oldest hours forgotten whole). Both are per
  partition, so they fold the same whichever partitions a router owns, and
  depend on no event older than themselves: snapshots carry them past the
  events' retention. Answers are kept
  encoded (`Answers`): decoded, one takes several times its encoded size in memory,
  and the cap counts encoded bytes, so memory follows the cap. A state made with
  `RouterState(answers=False)` keeps neither (what-if replay: it re-decides each
  recorded request once, so nothing asks it for a duplicate's answer).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Final

import msgspec

from turnout.service.core import budget as budgets
from turnout.service.core import events as ev
from turnout.service.core import ratelimit
from turnout.service.core.breaker import Breaker, Trigger, apply_trigger, record_call
from turnout.service.core.budget import BudgetEvent, TenantBudget, evolve_budget
from turnout.service.core.cache import CacheIndex, evolve_cache
from turnout.service.core.config import Config
from turnout.service.core.partitioning import PARTITIONS, home_partition
from turnout.service.core.retry import RetryBudget, note_request, note_retry
from turnout.service.core.stats import LatencyStat, observe_latency

__all__ = [
    "OUTCOMES", "Answers", "ForgottenIds", "InFlight", "RouterState", "Terminal", "evolve",
    "expired_outcome", "fold", "id_hash", "request_holder",
]  # fmt: skip

BUCKET_MS: Final = 3_600_000  # ids past their answers are kept (and forgotten) by the hour
ID_BYTES: Final = 96  # memory of a forgotten answer's id hash and outcome (90-100 B measured)
OUTCOMES: Final = ("completed", "failed", "rejected", "cancelled")  # codes in `expired`
_OUTCOME_CODE: Final = {f"turnout.request.{o}": n for n, o in enumerate(OUTCOMES)}
_size_encoder: Final = msgspec.msgpack.Encoder()

Terminal = ev.RequestCompleted | ev.RequestFailed | ev.RequestRejected | ev.RequestCancelled
_TERMINAL_DECODERS: Final[dict[str, msgspec.msgpack.Decoder[Terminal]]] = {
    cls.TYPE: msgspec.msgpack.Decoder(cls)
    for cls in (ev.RequestCompleted, ev.RequestFailed, ev.RequestRejected, ev.RequestCancelled)
}


class _Head(msgspec.Struct):
    """The two fields of an encoded answer that say whose it is (the rest is skipped)."""

    request_id: str
    tenant: str


_head_decoder: Final = msgspec.msgpack.Decoder(_Head)


class Answers:
    """The answers of finished requests, by request id, in the order they finished,
    each kept as its terminal event's msgpack encoding (with its type): a duplicate is
    rare, so an answer is decoded only when one is asked for it. Decoded, a completion
    with its response document takes several times its encoded size in memory (the 1 M
    request benchmark: RSS over 1.4 GiB with the default 192 MiB of answers)."""

    __slots__ = ("_raw",)

    def __init__(self) -> None:
        self._raw: OrderedDict[str, tuple[str, bytes]] = OrderedDict()

    def put(self, request_id: str, kind: str, raw: bytes) -> None:
        self._raw[request_id] = (kind, raw)
        self._raw.move_to_end(request_id)

    def get(self, request_id: str) -> Terminal | None:
        kept = self._raw.get(request_id)
        return None if kept is None else _TERMINAL_DECODERS[kept[0]].decode(kept[1])

    def raw(self, request_id: str) -> tuple[str, bytes]:
        """(event type, encoded event) of a kept answer; KeyError when none is kept."""
        return self._raw[request_id]

    def tenant(self, request_id: str) -> str | None:
        """The tenant of a kept answer (None when none is kept), its head decoded only."""
        kept = self._raw.get(request_id)
        return None if kept is None else _head_decoder.decode(kept[1]).tenant

    def pop_kind(self, request_id: str) -> str | None:
        """Forget an answer; its event type (None when none was kept)."""
        kept = self._raw.pop(request_id, None)
        return None if kept is None else kept[0]

    def kinds(self) -> list[tuple[str, str]]:
        """(request id, event type) of every kept answer, in the order they finished."""
        return [(rid, kind) for rid, (kind, _) in self._raw.items()]

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


class ForgottenIds:
    """One partition's requests whose answers are no longer kept: a 64-bit hash of each
    id with its outcome code, by the hour the request finished. One dict answers a
    lookup (every new request asks); the hours list their ids, so an hour goes whole
    (see `_cap_ids`). An id kept in two hours counts in the later one."""

    __slots__ = ("_by_hash", "_hours", "_oldest", "_packed")

    def __init__(self) -> None:
        self._by_hash: dict[int, int] = {}  # id hash -> hour << 2 | outcome code
        self._hours: dict[int, list[int]] = {}  # hour -> id hashes
        self._oldest: int | None = None  # min(self._hours)
        self._packed: dict[int, int] = {}  # hour << 2 | code, interned

    def add(self, hour: int, h: int, code: int) -> None:
        kept = self._by_hash.get(h)
        if kept is not None and kept >> 2 > hour:
            return
        packed = hour << 2 | code
        self._by_hash[h] = self._packed.setdefault(packed, packed)  # one int object each
        self._hours.setdefault(hour, []).append(h)
        if self._oldest is None or hour < self._oldest:
            self._oldest = hour

    def outcome(self, h: int) -> int | None:
        kept = self._by_hash.get(h)
        return None if kept is None else kept & 3

    @property
    def oldest(self) -> int | None:
        return self._oldest

    def drop_oldest(self) -> None:
        hour = self._oldest
        if hour is None:
            return
        for h in self._hours.pop(hour):
            if self._by_hash.get(h, -1) >> 2 == hour:
                del self._by_hash[h]
        for code in range(len(OUTCOMES)):
            self._packed.pop(hour << 2 | code, None)
        self._oldest = min(self._hours) if self._hours else None

    def by_hour(self) -> dict[int, dict[int, int]]:
        """hour -> {id hash: outcome code} (snapshots' form)."""
        out: dict[int, dict[int, int]] = {}
        for hour, hashes in self._hours.items():
            ids = {h: kept & 3 for h in hashes if (kept := self._by_hash[h]) >> 2 == hour}
            if ids:
                out[hour] = ids
        return out

    def __len__(self) -> int:
        return len(self._by_hash)


class InFlight(msgspec.Struct, frozen=True, kw_only=True):
    """A request between `accepted` and its terminal event."""

    request_id: str
    tenant: str
    task_type: str
    accepted_at_ms: int
    reply_to: str | None = None
    cache_key: str | None = None  # set when the answer may be cached (and coalesced)
    order: tuple[str, ...] = ()
    index: int = 0  # position in `order` of the model being tried
    attempt: int = 0  # attempts started, over every model
    model_attempt: int = 0  # attempts started on the current model
    errors: tuple[ev.CandidateError, ...] = ()
    stream: bool = False  # answered as a stream
    first_token_attempt: int = 0  # the attempt whose first token went out (0: none yet)

    @property
    def model(self) -> str | None:
        return self.order[self.index] if self.index < len(self.order) else None


class RouterState:
    """The projection a router serves from; see the module docstring."""

    __slots__ = (
        "answer_bytes", "answers", "breakers", "budgets", "cache", "expired", "finished",
        "inflight", "intake", "keeps_answers", "latency", "limits", "retry_budget",
    )  # fmt: skip

    def __init__(self, *, answers: bool = True) -> None:
        self.keeps_answers = answers  # False: finished requests are not remembered
        self.breakers: dict[str, Breaker] = {}
        self.latency: dict[str, LatencyStat] = {}
        self.retry_budget = RetryBudget()
        self.inflight: dict[str, InFlight] = {}
        self.finished = Answers()
        # request id -> (partition, offset) of the intake record that was accepted
        self.intake: dict[str, tuple[int, int]] = {}
        self.limits: dict[str, ratelimit.TenantWindows] = {}
        self.budgets: dict[str, TenantBudget] = {}
        self.cache: dict[int, CacheIndex] = {}
        # per partition: finished ids in the order they finished -> (finished at, bytes)
        self.answers: dict[int, OrderedDict[str, tuple[int, int]]] = {}
        self.answer_bytes: dict[int, int] = {}
        # per partition, per hour finished: id hash -> outcome code (answers forgotten)
        self.expired: dict[int, ForgottenIds] = {}

    def cache_index(self, tenant: str) -> CacheIndex:
        """The cache index of the tenant's home partition (created empty when new)."""
        partition = home_partition(tenant)
        index = self.cache.get(partition)
        if index is None:
            index = self.cache[partition] = CacheIndex()
        return index

    def snapshot(self) -> dict[str, object]:
        """Plain data for comparisons (replay verify) and /healthz."""
        return {
            "breakers": {m: msgspec.to_builtins(b) for m, b in sorted(self.breakers.items())},
            "latency": {m: msgspec.to_builtins(s) for m, s in sorted(self.latency.items())},
            "retry_budget": msgspec.to_builtins(self.retry_budget),
            "inflight": sorted(self.inflight),
            "finished": len(self.finished),
            "forgotten": sum(len(ids) for ids in self.expired.values()),
            "limits": {t: ratelimit.snapshot(w) for t, w in sorted(self.limits.items())},
            "budgets": {t: budgets.snapshot(b) for t, b in sorted(self.budgets.items())},
            "cache": {str(p): i.snapshot() for p, i in sorted(self.cache.items())},
        }


def _breaker_call(state: RouterState, model: str, failed: bool, now_ms: int, cfg: Config) -> None:
    b = state.breakers.get(model, Breaker())
    state.breakers[model] = record_call(b, failed=failed, now_ms=now_ms, cfg=cfg.breaker)


def _finish(state: RouterState, terminal: Terminal, now_ms: int, cfg: Config) -> None:
    rid = terminal.request_id
    state.inflight.pop(rid, None)
    if state.keeps_answers:
        remember(state, terminal, now_ms)
        forget(state, home_partition(terminal.tenant), now_ms, cfg)
    else:  # nor where its intake record was (`forget` drops that with the answer)
        state.intake.pop(rid, None)


def remember(state: RouterState, terminal: Terminal, at_ms: int) -> None:
    """Keep `terminal` as its request's answer (finished at `at_ms`)."""
    raw = _size_encoder.encode(terminal)
    _keep(state, terminal.request_id, home_partition(terminal.tenant), terminal.TYPE, raw, at_ms)


def remember_encoded(state: RouterState, kind: str, raw: bytes, at_ms: int) -> None:
    """Keep an answer given as its event type and msgpack encoding (a snapshot's), as
    `remember` keeps it, without decoding more than whose it is."""
    head = _head_decoder.decode(raw)
    _keep(state, head.request_id, home_partition(head.tenant), kind, raw, at_ms)


def _keep(state: RouterState, rid: str, p: int, kind: str, raw: bytes, at_ms: int) -> None:
    state.finished.put(rid, kind, raw)
    size = len(raw)
    queue = state.answers.get(p)
    if queue is None:
        queue = state.answers[p] = OrderedDict()
    old = queue.pop(rid, None)
    state.answer_bytes[p] = state.answer_bytes.get(p, 0) + size - (old[1] if old else 0)
    queue[rid] = (at_ms, size)


def forget(state: RouterState, partition: int, now_ms: int, cfg: Config) -> None:
    """Forget the answers of `partition` past the window or over its bytes (keeping id
    and outcome), and the ids past `dedupe_ids_s`."""
    queue = state.answers.get(partition)
    limits = cfg.router
    window_ms, cap = limits.dedupe_window_s * 1000, limits.dedupe_max_bytes // PARTITIONS
    overhead = limits.answer_overhead_bytes
    while queue:
        rid, (at_ms, size) = next(iter(queue.items()))
        charged = state.answer_bytes[partition] + overhead * len(queue)
        if at_ms + window_ms > now_ms and charged <= cap:
            break
        queue.popitem(last=False)
        state.answer_bytes[partition] -= size
        kind = state.finished.pop_kind(rid)
        state.intake.pop(rid, None)
        if kind is not None:
            ids = state.expired.get(partition)
            if ids is None:
                ids = state.expired[partition] = ForgottenIds()
            ids.add(at_ms // BUCKET_MS, id_hash(rid), _OUTCOME_CODE[kind])
    ids = state.expired.get(partition)
    if ids is not None:
        horizon = now_ms - limits.dedupe_ids_s * 1000
        while ids.oldest is not None and (ids.oldest + 1) * BUCKET_MS <= horizon:
            ids.drop_oldest()
        _cap_ids(ids, limits.dedupe_ids_max_bytes // PARTITIONS // ID_BYTES)


def _cap_ids(ids: ForgottenIds, most: int) -> None:
    """Forget the oldest hours of ids of a partition, whole, while it keeps over `most`.

    Whole hours, never a part of one: a live router remembers terminals in the order
    it decided them and a fold of the log in the order their acks came, so the order
    inside an hour differs between the two; which hours are kept does not."""
    while len(ids) > most and ids.oldest is not None:
        ids.drop_oldest()


def id_hash(request_id: str) -> int:
    """64 bits of a request id (the memory of an answer no longer kept)."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")


def request_holder(state: RouterState, request_id: str) -> str | None:
    """The tenant whose request holds `request_id` (in flight, or answered and its answer
    kept), if any: a record of another tenant with this id is not that request's resend."""
    flight = state.inflight.get(request_id)
    return flight.tenant if flight is not None else state.finished.tenant(request_id)


def expired_outcome(state: RouterState, tenant: str, request_id: str) -> str | None:
    """The outcome of a request whose answer is no longer kept, if it finished."""
    ids = state.expired.get(home_partition(tenant))
    if not ids:
        return None
    code = ids.outcome(id_hash(request_id))
    return None if code is None else OUTCOMES[code]


def _update(state: RouterState, request_id: str, **changes: object) -> None:
    current = state.inflight.get(request_id)
    if current is not None:
        state.inflight[request_id] = msgspec.structs.replace(current, **changes)


# --- folders: one function per event type and part of the state (`_FOLDERS`) ---


def _accepted(state: RouterState, event: ev.RequestAccepted, now_ms: int, cfg: Config) -> None:
    state.inflight[event.request_id] = InFlight(
        request_id=event.request_id,
        tenant=event.tenant,
        task_type=event.task_type,
        accepted_at_ms=now_ms,
        reply_to=event.reply_to,
        cache_key=event.cache_key if event.cacheable else None,
        stream=event.stream,
    )
    if event.intake_partition is not None and event.intake_offset is not None:
        state.intake[event.request_id] = (event.intake_partition, event.intake_offset)
    state.retry_budget = note_request(state.retry_budget, now_ms, cfg.retry)


def _routed(state: RouterState, event: ev.RouteDecided, _now_ms: int, _cfg: Config) -> None:
    _update(state, event.request_id, order=tuple(event.order), index=0)


def _started(state: RouterState, event: ev.AttemptStarted, _now_ms: int, _cfg: Config) -> None:
    current = state.inflight.get(event.request_id)
    if current is not None:
        index = current.order.index(event.model) if event.model in current.order else 0
        state.inflight[event.request_id] = msgspec.structs.replace(
            current, index=index, attempt=event.attempt, model_attempt=event.model_attempt
        )


def _first_token(
    state: RouterState, event: ev.StreamFirstToken, _now_ms: int, _cfg: Config
) -> None:
    _update(state, event.request_id, first_token_attempt=event.attempt)


def _retry_scheduled(state: RouterState, _event: object, now_ms: int, cfg: Config) -> None:
    state.retry_budget = note_retry(state.retry_budget, now_ms, cfg.retry)


def _terminal(state: RouterState, event: Terminal, now_ms: int, cfg: Config) -> None:
    if event.intake_partition is not None and event.intake_offset is not None:
        state.intake[event.request_id] = (event.intake_partition, event.intake_offset)
    _finish(state, event, now_ms, cfg)


def _succeeded(state: RouterState, event: ev.AttemptSucceeded, now_ms: int, cfg: Config) -> None:
    state.latency[event.model] = observe_latency(
        state.latency.get(event.model, LatencyStat()), event.latency_ms
    )
    _breaker_call(state, event.model, event.slow, now_ms, cfg)


def _failed(state: RouterState, event: ev.AttemptFailed, now_ms: int, cfg: Config) -> None:
    _breaker_call(state, event.model, event.breaker_failure, now_ms, cfg)
    current = state.inflight.get(event.request_id)
    if current is not None:
        error = ev.CandidateError(model=event.model, code=event.error_class, message=event.message)
        _update(state, event.request_id, errors=(*current.errors, error))


def _opened(state: RouterState, event: ev.BreakerOpened, _now_ms: int, _cfg: Config) -> None:
    _breaker_transition(state, event.model, "open", event.open_until_ms)


def _half_opened(
    state: RouterState, event: ev.BreakerHalfOpened, _now_ms: int, _cfg: Config
) -> None:
    _breaker_transition(state, event.model, "half_open", 0)


def _closed(state: RouterState, event: ev.BreakerClosed, _now_ms: int, _cfg: Config) -> None:
    _breaker_transition(state, event.model, "closed", 0)


_TRIGGER_TO: Final[dict[tuple[str, str], Trigger]] = {
    ("closed", "open"): "trip",
    ("half_open", "open"): "probe_failed",
    ("open", "half_open"): "recovery_due",
    ("half_open", "closed"): "probes_passed",
}


def _breaker_transition(state: RouterState, model: str, target: str, open_until_ms: int) -> None:
    """Apply a recorded transition; a repeat (two routers saw the same trip) is a no-op."""
    b = state.breakers.get(model, Breaker())
    if b.status == target:
        if target == "open" and open_until_ms > b.open_until_ms:
            state.breakers[model] = msgspec.structs.replace(b, open_until_ms=open_until_ms)
        return
    trigger = _TRIGGER_TO.get((b.status, target))
    if trigger is None:  # e.g. closed seen while open: the half-open event was lost
        state.breakers[model] = Breaker(status=target, open_until_ms=open_until_ms)  # type: ignore[arg-type]
        return
    state.breakers[model] = apply_trigger(b, trigger, open_until_ms=open_until_ms)


def _admitted(state: RouterState, event: ev.RequestAccepted, now_ms: int, cfg: Config) -> None:
    if cfg.features.rate_limiting:
        limits = cfg.tenant(event.tenant)
        windows = state.limits.get(event.tenant)
        if windows is None:
            windows = state.limits[event.tenant] = ratelimit.TenantWindows()
        tokens = ratelimit.token_estimate(event.prompt_tokens_est, event.max_tokens, limits)
        ratelimit.admit(windows, limits, request_id=event.request_id, now_ms=now_ms, tokens=tokens)


def _used(
    state: RouterState,
    event: ev.RequestCompleted | ev.RequestFailed | ev.RequestCancelled,
    _now_ms: int,
    _cfg: Config,
) -> None:
    used = event.usage.total_tokens if event.usage is not None else 0
    ratelimit.settle(state.limits.get(event.tenant), request_id=event.request_id, tokens=used)


def _budget(state: RouterState, event: BudgetEvent, _now_ms: int, _cfg: Config) -> None:
    b = state.budgets.get(event.tenant)
    if b is None:
        b = state.budgets[event.tenant] = TenantBudget()
    evolve_budget(b, event)


def _evolve_cache(state: RouterState, event: Any, _now_ms: int, _cfg: Config) -> None:
    evolve_cache(state.cache_index(event.tenant), event)


_Folder = Callable[[RouterState, Any, int, Config], None]
_TERMINALS: Final = (ev.RequestCompleted, ev.RequestFailed, ev.RequestRejected, ev.RequestCancelled)
_PARTS: Final[tuple[dict[type, _Folder], ...]] = (
    {  # the tenant's rate-limit windows and budget
        ev.RequestAccepted: _admitted, ev.RequestCompleted: _used, ev.RequestFailed: _used,
        ev.RequestCancelled: _used, ev.BudgetReserved: _budget, ev.BudgetCharged: _budget,
        ev.BudgetReleased: _budget, ev.BudgetExceeded: _budget,
    },
    {  # the cache index of the tenant's partition
        cls: _evolve_cache
        for cls in (ev.CacheStored, ev.CacheHit, ev.CacheEvicted, ev.RequestAccepted,
                    ev.RequestCoalesced, *_TERMINALS)
    },
    {  # requests in flight, finished requests, the retry budget
        ev.RequestAccepted: _accepted, ev.RouteDecided: _routed, ev.AttemptStarted: _started,
        ev.RetryScheduled: _retry_scheduled, ev.StreamFirstToken: _first_token,
        **{cls: _terminal for cls in _TERMINALS},
    },
    {  # models: latency and breakers
        ev.AttemptSucceeded: _succeeded, ev.AttemptFailed: _failed, ev.BreakerOpened: _opened,
        ev.BreakerHalfOpened: _half_opened, ev.BreakerClosed: _closed,
    },
)  # fmt: skip
_FOLDERS: Final[dict[type, tuple[_Folder, ...]]] = {
    cls: tuple(part[cls] for part in _PARTS if cls in part) for part in _PARTS for cls in part
}
"""What each event type changes, part by part in this order (the hot path folds ~10
events per request: one dict lookup, then a function per part, no `match`)."""


def evolve(state: RouterState, event: object, now_ms: int, cfg: Config) -> RouterState:
    """Fold one event (decoded data, with its event time) into the state."""
    for folder in _FOLDERS.get(type(event), ()):
        folder(state, event, now_ms, cfg)
    return state


def fold(
    events: list[tuple[int, object]], cfg: Config, state: RouterState | None = None
) -> RouterState:
    """Fold `(time_ms, event)` pairs, in log order, into `state` (or a fresh one)."""
    state = state if state is not None else RouterState()
    for now_ms, event in events:
        evolve(state, event, now_ms, cfg)
    return state
