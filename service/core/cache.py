"""The response cache and request coalescing: keys, decisions and the index they fold into.

    cache_key(...)                -> "v1:<sha256 hex>" of the canonical request
    is_cacheable(params, opt, cfg) -> may this request's answer be cached?
    decide_lookup(index, ...)     -> Lookup(entry, [CacheHit] | [CacheEvicted(ttl)?, CacheMiss])
    decide_store(index, ...)      -> [CacheEvicted(ttl|lru)..., CacheStored] or []
    decide_coalesce(index, ...)   -> RequestCoalesced | None
    evolve_cache(index, event)    -> folds one event into the `CacheIndex`

Rules:
- Pure: no clock, no I/O, no compression library. The shell encodes the answer
  (`turnout.service.runtime.cachecodec`) and hands the core an `EncodedBody`; on a hit
  it decodes the entry's body. `now_ms` is the event time.
- The key covers everything that can change the answer: the scope (tenant id,
  or "*" when shared), the pinned model (else the task type), the exact
  messages and every other parameter except `IGNORED_PARAMS`. Canonical JSON
  (sorted keys, no whitespace; an integral float is written as an int, so
  `0.0` and `0` are one temperature). Two requests differing in one provider
  parameter never share a key.
- The index is a fold of events, so a restart rebuilds it from the log:
  `CacheStored` adds an entry at the back of the LRU order, `CacheHit` moves it
  to the back, `CacheEvicted` removes it. `evolve_cache` never decides: every
  eviction is an event the deciders emitted, always before the store that
  needed the room, so the total never passes `max_bytes` while folding.
- `max_bytes` bounds memory, not only payload: each entry is charged its stored
  body plus `[cache] entry_overhead_bytes` (640: its key, ids, usage and index links
  in memory, measured with tracemalloc), so many small answers cannot take several
  times the budget (bench_state: 540k entries of ~400 B bodies took over 500 MB
  under a 256 MiB budget).
- Coalescing: a cacheable `RequestAccepted` makes its request the key's leader
  when none is in flight; `RequestCoalesced` adds a follower; the leader's
  terminal event frees the key (read `followers()` before folding it); a
  follower's own terminal event removes the follower.
- Evictions carry the tenant of the request whose decision made them, so they
  land on the partition whose index they change (with shared scope, an entry
  may have been stored by another tenant).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, TypeAlias

import msgspec

from turnout.service.core import events as ev
from turnout.service.core.config import Config

__all__ = [
    "ENCODINGS",
    "IGNORED_PARAMS",
    "KEY_VERSION",
    "SHARED_SCOPE",
    "SWEEP_LIMIT",
    "CacheDump",
    "CacheIndex",
    "EncodedBody",
    "Entry",
    "Lookup",
    "cache_key",
    "charged_bytes",
    "decide_coalesce",
    "decide_lookup",
    "decide_store",
    "dump_index",
    "encoding_for",
    "evolve_cache",
    "is_cacheable",
    "load_index",
]

KEY_VERSION: Final = "v1"
SHARED_SCOPE: Final = "*"
ENCODINGS: Final = ("zstd", "gzip", "none")
SWEEP_LIMIT: Final = 32
"""Most expired entries one store evicts beyond those it needs the room of."""

IGNORED_PARAMS: Final = frozenset(
    {"request_id", "tenant", "reply_to", "metadata", "cache", "redrive_of",
     "intake_partition", "intake_offset"}
)  # fmt: skip
"""Intake fields that never change the answer, so never part of the key."""

Entry: TypeAlias = ev.CacheStored
"""A cache entry is the event that stored it (body, usage, cost, expiry)."""

_encoder: Final = msgspec.json.Encoder(order="sorted")
_EXACT: Final = 2**53  # floats below this are exact integers


class EncodedBody(msgspec.Struct, frozen=True, kw_only=True):
    """A response body as the shell encoded it: `size_bytes` is the JSON before encoding."""

    encoding: str
    body: bytes
    size_bytes: int


class Lookup(msgspec.Struct, frozen=True, kw_only=True):
    """The entry to answer from (None on a miss) and the events the lookup writes."""

    entry: Entry | None
    events: list[Any]


# --- keys and eligibility ----------------------------------------------------


def _canonical(value: Any) -> Any:
    """`value` with every integral float as an int (JSON does not tell 0.0 from 0)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < _EXACT else value
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def cache_key(
    *,
    tenant: str,
    scope: str,
    model: str | None,
    task_type: str,
    messages: list[dict[str, Any]],
    params: Mapping[str, Any],
) -> str:
    """The key of a request: `v1:` + sha256 of its canonical JSON (see the module rules)."""
    kept = {k: v for k, v in params.items() if k not in IGNORED_PARAMS}
    target = ["model", model] if model is not None else ["task_type", task_type]
    where = [SHARED_SCOPE] if scope == "shared" else ["tenant", tenant]
    canonical = [KEY_VERSION, where, target, messages, _canonical(kept)]
    return f"{KEY_VERSION}:{hashlib.sha256(_encoder.encode(canonical)).hexdigest()}"


def _is_zero(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def is_cacheable(params: Mapping[str, Any], cache_opt: bool | None, cfg: Config) -> bool:
    """Caching on, not opted out, and deterministic: temperature 0, the request opts in
    (`cache: true`) or `[cache] cache_nondeterministic`. (A streamed request is cacheable
    too: its answer is cached as its chunks, under a key of its own.)"""
    if not cfg.features.caching or cache_opt is False:
        return False
    return bool(
        cache_opt or cfg.cache.cache_nondeterministic or _is_zero(params.get("temperature"))
    )


def encoding_for(cfg: Config) -> str:
    """The encoding new entries get: `[cache] compression` unless compression is off."""
    return cfg.cache.compression if cfg.features.cache_compression else "none"


# --- the index ---------------------------------------------------------------


class CacheIndex:
    """Cache entries in LRU order (front = least recently used) and in-flight leaders.

    A mutable holder folded by `evolve_cache`; entries themselves are frozen.
    Compare two indexes with `dump()`.
    """

    __slots__ = (
        "_follower_of",
        "_followers",
        "_leader_key",
        "_leaders",
        "entries",
        "stored_order",
        "total_bytes",
        "total_size_bytes",
    )

    def __init__(self) -> None:
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.stored_order: OrderedDict[str, int] = OrderedDict()  # key -> expires_at_ms
        self.total_bytes = 0  # sum of stored (encoded) bytes
        self.total_size_bytes = 0  # sum of uncompressed bytes
        self._leaders: dict[str, str] = {}  # cache key -> leader request id
        self._leader_key: dict[str, str] = {}  # leader request id -> cache key
        self._followers: dict[str, list[str]] = {}  # leader request id -> followers
        self._follower_of: dict[str, str] = {}  # follower request id -> leader

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> Entry | None:
        """The entry under `key`, live or expired."""
        return self.entries.get(key)

    def lookup(self, key: str, now_ms: int) -> Entry | None:
        """The live entry under `key` at `now_ms`, or None (absent or expired)."""
        entry = self.entries.get(key)
        return entry if entry is not None and now_ms < entry.expires_at_ms else None

    def leader_for(self, key: str) -> str | None:
        """The request already in flight for `key`, if any."""
        return self._leaders.get(key)

    def followers(self, leader_request_id: str) -> tuple[str, ...]:
        """The requests waiting for `leader_request_id`'s answer, in arrival order."""
        return tuple(self._followers.get(leader_request_id, ()))

    def leader_of(self, follower_request_id: str) -> str | None:
        return self._follower_of.get(follower_request_id)

    def snapshot(self) -> dict[str, object]:
        """Plain data for /healthz and replay verify: sizes, ratio, in-flight counts."""
        ratio = self.total_size_bytes / self.total_bytes if self.total_bytes else None
        return {
            "entries": len(self.entries),
            "stored_bytes": self.total_bytes,
            "size_bytes": self.total_size_bytes,
            "compression_ratio": round(ratio, 3) if ratio is not None else None,
            "inflight_keys": len(self._leaders),
            "waiting_followers": len(self._follower_of),
        }

    def dump(self) -> dict[str, object]:
        """Everything, in order: equal dumps mean equal indexes (for tests and verify)."""
        return {
            "lru": [(k, msgspec.to_builtins(e)) for k, e in self.entries.items()],
            "stored_order": list(self.stored_order.items()),
            "total_bytes": self.total_bytes,
            "total_size_bytes": self.total_size_bytes,
            "leaders": sorted(self._leaders.items()),
            "followers": sorted((k, list(v)) for k, v in self._followers.items()),
        }


# --- deciders ----------------------------------------------------------------


def decide_lookup(
    index: CacheIndex, *, request_id: str, tenant: str, key: str, now_ms: int
) -> Lookup:
    """A hit (the entry's usage and cost are what the hit saved), or a miss; an
    expired entry is a miss that also evicts it (`ttl`)."""
    entry = index.get(key)
    if entry is not None and now_ms < entry.expires_at_ms:
        hit = ev.CacheHit(
            request_id=request_id,
            tenant=tenant,
            cache_key=key,
            model=entry.model,
            stored_at_ms=entry.stored_at_ms,
            saved_usage=entry.usage,
            saved_cost_micros=entry.cost_micros,
        )
        return Lookup(entry=entry, events=[hit])
    events: list[Any] = []
    if entry is not None:
        events.append(_evicted(tenant, key, entry, "ttl"))
    events.append(ev.CacheMiss(request_id=request_id, tenant=tenant, cache_key=key))
    return Lookup(entry=None, events=events)


def _evicted(tenant: str, key: str, entry: Entry, reason: str) -> ev.CacheEvicted:
    return ev.CacheEvicted(
        tenant=tenant, cache_key=key, reason=reason, stored_bytes=entry.stored_bytes
    )


def _expired_front(index: CacheIndex, now_ms: int) -> Iterator[str]:
    """Keys from the front of the store order while they are expired (at most SWEEP_LIMIT)."""
    for n, (key, expires_at_ms) in enumerate(index.stored_order.items()):
        if n >= SWEEP_LIMIT or expires_at_ms > now_ms:
            return
        yield key


def charged_bytes(index: CacheIndex, overhead: int) -> int:
    """What the index's entries are charged against `max_bytes`: their bodies and, for
    each, `overhead` (`[cache] entry_overhead_bytes`)."""
    return index.total_bytes + overhead * len(index.entries)


def _evictions(
    index: CacheIndex,
    tenant: str,
    key: str,
    need: int,
    now_ms: int,
    max_bytes: int,
    overhead: int,
) -> list[ev.CacheEvicted]:
    """Expired entries (the one under `key`, the oldest stored), then LRU until `need`
    (a body, plus its entry's overhead) fits."""
    victims: dict[str, str] = {}
    if key in index.entries:  # present, so expired: a live entry is never re-stored
        victims[key] = "ttl"
    for k in _expired_front(index, now_ms):
        victims[k] = "ttl"
    freed = sum(index.entries[k].stored_bytes + overhead for k in victims)
    used, need = charged_bytes(index, overhead), need + overhead
    for k, entry in index.entries.items():
        if used - freed + need <= max_bytes:
            break
        if k not in victims:
            victims[k] = "lru" if now_ms < entry.expires_at_ms else "ttl"
            freed += entry.stored_bytes + overhead
    return [_evicted(tenant, k, index.entries[k], reason) for k, reason in victims.items()]


def decide_store(
    index: CacheIndex,
    *,
    request_id: str,
    tenant: str,
    key: str,
    model: str,
    body: EncodedBody,
    usage: ev.Usage,
    cost_micros: int,
    now_ms: int,
    cfg: Config,
    max_bytes: int | None = None,
) -> list[Any]:
    """Store a successful answer of a cacheable request: the evictions that make room,
    then `CacheStored`. Nothing when caching is off, a live entry already holds the
    key (the first answer stays until it expires), or the body alone is over budget.

    `max_bytes` is this index's budget (default `[cache] max_bytes`); an index per
    partition passes its share, so the indexes together stay within the config."""
    if body.encoding not in ENCODINGS:
        raise ValueError(f"unknown cache encoding {body.encoding!r}")
    budget = cfg.cache.max_bytes if max_bytes is None else max_bytes
    stored_bytes = len(body.body)
    ttl_ms = cfg.cache.ttl_s * 1000
    overhead = cfg.cache.entry_overhead_bytes
    if not cfg.features.caching or ttl_ms <= 0 or stored_bytes + overhead > budget:
        return []
    if index.lookup(key, now_ms) is not None:
        return []
    events: list[Any] = _evictions(index, tenant, key, stored_bytes, now_ms, budget, overhead)
    stored = ev.CacheStored(
        request_id=request_id,
        tenant=tenant,
        cache_key=key,
        model=model,
        stored_at_ms=now_ms,
        expires_at_ms=now_ms + ttl_ms,
        encoding=body.encoding,
        body=body.body,
        size_bytes=body.size_bytes,
        stored_bytes=stored_bytes,
        usage=usage,
        cost_micros=cost_micros,
    )
    events.append(stored)
    return events


def decide_coalesce(
    index: CacheIndex, *, request_id: str, tenant: str, key: str, cfg: Config
) -> ev.RequestCoalesced | None:
    """`RequestCoalesced` when another request is in flight for `key` and coalescing is on."""
    if not cfg.features.request_coalescing:
        return None
    leader = index.leader_for(key)
    if leader is None or leader == request_id:
        return None
    return ev.RequestCoalesced(
        request_id=request_id, tenant=tenant, leader_request_id=leader, cache_key=key
    )


# --- the fold ----------------------------------------------------------------


def _remove(index: CacheIndex, key: str) -> None:
    entry = index.entries.pop(key, None)
    index.stored_order.pop(key, None)
    if entry is not None:
        index.total_bytes -= entry.stored_bytes
        index.total_size_bytes -= entry.size_bytes


def _store(index: CacheIndex, event: ev.CacheStored) -> None:
    _remove(index, event.cache_key)
    index.entries[event.cache_key] = event
    index.stored_order[event.cache_key] = event.expires_at_ms
    index.total_bytes += event.stored_bytes
    index.total_size_bytes += event.size_bytes


def _lead(index: CacheIndex, request_id: str, key: str) -> None:
    if key not in index._leaders and request_id not in index._follower_of:
        index._leaders[key] = request_id
        index._leader_key[request_id] = key


def _follow(index: CacheIndex, event: ev.RequestCoalesced) -> None:
    if event.request_id in index._follower_of:
        return
    index._followers.setdefault(event.leader_request_id, []).append(event.request_id)
    index._follower_of[event.request_id] = event.leader_request_id


def _finish(index: CacheIndex, request_id: str) -> None:
    key = index._leader_key.pop(request_id, None)
    if key is not None and index._leaders.get(key) == request_id:
        del index._leaders[key]
    leader = index._follower_of.pop(request_id, None)
    if leader is not None:
        waiting = index._followers[leader]
        waiting.remove(request_id)
        if not waiting:
            del index._followers[leader]


def evolve_cache(index: CacheIndex, event: object) -> None:
    """Fold one event into the index (other events are ignored)."""
    fold = _FOLDS.get(type(event))
    if fold is not None:
        fold(index, event)


def _on_hit(index: CacheIndex, event: ev.CacheHit) -> None:
    if event.cache_key in index.entries:
        index.entries.move_to_end(event.cache_key)


def _on_evicted(index: CacheIndex, event: ev.CacheEvicted) -> None:
    _remove(index, event.cache_key)


def _on_accepted(index: CacheIndex, event: ev.RequestAccepted) -> None:
    if event.cacheable and event.cache_key is not None:
        _lead(index, event.request_id, event.cache_key)


def _on_ended(index: CacheIndex, event: Any) -> None:
    _finish(index, event.request_id)


_FOLDS: Final[dict[type, Callable[[CacheIndex, Any], None]]] = {
    ev.CacheStored: _store, ev.CacheHit: _on_hit, ev.CacheEvicted: _on_evicted,
    ev.RequestAccepted: _on_accepted, ev.RequestCoalesced: _follow,
    ev.RequestCompleted: _on_ended, ev.RequestFailed: _on_ended,
    ev.RequestRejected: _on_ended, ev.RequestCancelled: _on_ended,
}  # fmt: skip
"""What each event type does to the index (one dict lookup, no `match`)."""


# --- snapshots ----------------------------------------------------------------


class CacheDump(msgspec.Struct, frozen=True, array_like=True):
    """A partition's cache index as plain data (`turnout.service.core.snapshot`), in order:
    `entries` least recently used first, `stored_order` as stored."""

    entries: list[ev.CacheStored]
    stored_order: list[tuple[str, int]]
    total_bytes: int
    total_size_bytes: int
    leaders: list[tuple[str, str]]  # (cache key, leader request id)
    followers: list[tuple[str, list[str]]]  # (leader request id, followers in order)


def dump_index(index: CacheIndex) -> CacheDump:
    return CacheDump(
        list(index.entries.values()), list(index.stored_order.items()), index.total_bytes,
        index.total_size_bytes, list(index._leaders.items()),
        [(leader, list(waiting)) for leader, waiting in index._followers.items()],
    )  # fmt: skip


def load_index(data: CacheDump) -> CacheIndex:
    index = CacheIndex()
    index.entries = OrderedDict((e.cache_key, e) for e in data.entries)
    index.stored_order = OrderedDict(data.stored_order)
    index.total_bytes, index.total_size_bytes = data.total_bytes, data.total_size_bytes
    for key, leader in data.leaders:
        index._leaders[key] = leader
        index._leader_key[leader] = key
    for leader, waiting in data.followers:
        index._followers[leader] = list(waiting)
        for follower in waiting:
            index._follower_of[follower] = leader
    return index
