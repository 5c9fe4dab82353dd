"""The response cache's pure core: keys, eligibility, TTL, LRU, coalescing, and replay."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.service.core import events as ev
from turnout.service.core.cache import (
    IGNORED_PARAMS,
    SWEEP_LIMIT,
    CacheIndex,
    EncodedBody,
    cache_key,
    charged_bytes,
    decide_coalesce,
    decide_lookup,
    decide_store,
    encoding_for,
    evolve_cache,
    is_cacheable,
)
from turnout.service.core.config import Config, parse_config

USAGE = ev.Usage(prompt_tokens=12, completion_tokens=40, total_tokens=52)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital?"}]
BASE: dict[str, Any] = {
    "tenant": "acme",
    "scope": "tenant",
    "model": None,
    "task_type": "general",
    "messages": MESSAGES,
    "params": {"temperature": 0, "max_tokens": 256},
}


def config(*, features: dict[str, bool] | None = None, **cache: Any) -> Config:
    """A config whose cache charges bodies only (`entry_overhead_bytes` 0) unless told:
    the LRU tests count in bodies; the overhead has tests of its own."""
    cache = {"entry_overhead_bytes": 0} | cache
    return parse_config({"cache": cache, "features": features or {}}, {})


def key(**changes: Any) -> str:
    return cache_key(**{**BASE, **changes})


def params(**changes: Any) -> dict[str, Any]:
    return {**BASE["params"], **changes}


# --- keys -------------------------------------------------------------------

DIFFERENT: dict[str, dict[str, Any]] = {
    "temperature": {"params": params(temperature=0.2)},
    "top_p": {"params": params(top_p=0.9)},
    "seed": {"params": params(seed=7)},
    "max_tokens": {"params": params(max_tokens=257)},
    "no max_tokens": {"params": {"temperature": 0}},
    "stop": {"params": params(stop=["\n"])},
    "tools": {"params": params(tools=[{"type": "function", "function": {"name": "f"}}])},
    "tool_choice": {"params": params(tool_choice="none")},
    "response_format": {"params": params(response_format={"type": "json_object"})},
    "provider order": {"params": params(provider={"order": ["openai", "azure"]})},
    "provider order reversed": {"params": params(provider={"order": ["azure", "openai"]})},
    "provider no fallbacks": {"params": params(provider={"allow_fallbacks": False})},
    "unknown provider param": {"params": params(top_k=40)},
    "max price": {"params": params(provider={"max_price": 1.5})},
    "a huge integral float": {"params": params(logit_bias={"50256": 1e300})},
    "user": {"params": params(user="u-1")},
    "tenant": {"tenant": "globex"},
    "pinned model": {"model": "openai/gpt-4o-mini"},
    "another pinned model": {"model": "anthropic/claude-3.5-haiku"},
    "model named like the task type": {"model": "general"},
    "task type": {"task_type": "code"},
    "content": {"messages": [MESSAGES[0], {"role": "user", "content": "Capital? "}]},
    "role": {"messages": [MESSAGES[0], {"role": "assistant", "content": "Capital?"}]},
    "message order": {"messages": [MESSAGES[1], MESSAGES[0]]},
    "one message less": {"messages": MESSAGES[1:]},
    "message name": {"messages": [MESSAGES[0], {**MESSAGES[1], "name": "bob"}]},
}


@pytest.mark.parametrize("change", DIFFERENT, ids=list(DIFFERENT))
def test_every_parameter_tenant_model_and_message_changes_the_key(change: str) -> None:
    assert key(**DIFFERENT[change]) != key()


def test_no_two_different_requests_of_the_table_share_a_key() -> None:
    keys = [key(**c) for c in DIFFERENT.values()]
    assert len(set(keys)) == len(keys)


SAME: dict[str, dict[str, Any]] = {
    "reordered params": {"params": {"max_tokens": 256, "temperature": 0}},
    "reordered message keys": {
        "messages": [{"content": m["content"], "role": m["role"]} for m in MESSAGES]
    },
    "0.0 is 0": {"params": params(temperature=0.0)},
    "request id": {"params": params(request_id="r-2")},
    "reply_to": {"params": params(reply_to="my.responses")},
    "metadata": {"params": params(metadata={"user": "u-42"})},
    "cache opt-in": {"params": params(cache=True)},
}


@pytest.mark.parametrize("change", SAME, ids=list(SAME))
def test_fields_that_cannot_change_the_answer_keep_the_key(change: str) -> None:
    assert key(**SAME[change]) == key()


def test_an_integral_float_is_its_int_at_any_depth_but_other_numbers_stay_apart() -> None:
    assert key(params=params(provider={"max_price": 1.0})) == key(
        params=params(provider={"max_price": 1})
    )
    assert key(params=params(provider={"max_price": 1.5})) != key(
        params=params(provider={"max_price": 1})
    )
    assert key(params=params(seed=True)) != key(params=params(seed=1))


def test_tenants_share_a_key_only_in_shared_scope() -> None:
    assert key(tenant="globex") != key()
    assert key(scope="shared", tenant="globex") == key(scope="shared")
    assert key(scope="shared") != key()
    assert key(tenant="*") != key(scope="shared")  # no tenant id reaches the shared scope


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
param_name = st.text(min_size=1, max_size=8).filter(lambda k: k not in IGNORED_PARAMS)


@settings(max_examples=200)
@given(st.dictionaries(param_name, json_value, max_size=6), param_name, json_value, st.randoms())
def test_any_params_key_ignores_their_order_and_changes_with_any_one_of_them(
    extra: dict[str, Any], name: str, value: Any, rnd: Any
) -> None:
    items = list(extra.items())
    rnd.shuffle(items)
    assert key(params=dict(items)) == key(params=extra)
    changed = {**extra, name: value}
    if changed != extra:
        assert key(params=changed) != key(params=extra)


def test_a_key_is_a_versioned_sha256() -> None:
    prefix, digest = key().split(":")
    assert prefix == "v1" and len(digest) == 64 and int(digest, 16) >= 0


# --- eligibility ------------------------------------------------------------

CACHEABLE = [
    # (params, cache_opt, config, cacheable?)
    ({"temperature": 0}, None, {}, True),
    ({"temperature": 0.0}, None, {}, True),
    ({"temperature": 0.7}, None, {}, False),
    ({}, None, {}, False),  # OpenAI's default temperature is 1
    ({"temperature": False}, None, {}, False),  # not a number
    ({"temperature": 0.7}, True, {}, True),
    ({"temperature": 0}, False, {}, False),
    ({"temperature": 0.7}, None, {"cache_nondeterministic": True}, True),
    ({"temperature": 0.7}, False, {"cache_nondeterministic": True}, False),
    ({"temperature": 0}, True, {"features": {"caching": False}}, False),
]


@pytest.mark.parametrize(("request_params", "opt", "cfg", "expected"), CACHEABLE)
def test_only_deterministic_or_opted_in_requests_are_cacheable(
    request_params: dict[str, Any], opt: bool | None, cfg: dict[str, Any], expected: bool
) -> None:
    assert is_cacheable(request_params, opt, config(**cfg)) is expected


@pytest.mark.parametrize(
    ("compression", "switch", "expected"),
    [
        ("zstd", True, "zstd"),
        ("gzip", True, "gzip"),
        ("none", True, "none"),
        ("zstd", False, "none"),
    ],
)
def test_the_encoding_follows_config_and_the_compression_switch(
    compression: str, switch: bool, expected: str
) -> None:
    cfg = config(compression=compression, features={"cache_compression": switch})
    assert encoding_for(cfg) == expected


# --- lookup and store -------------------------------------------------------


def body(size: int, encoding: str = "none") -> EncodedBody:
    return EncodedBody(encoding=encoding, body=b"x" * size, size_bytes=size * 3)


def store(
    index: CacheIndex, k: str, size: int, now_ms: int, cfg: Config, tenant: str = "acme"
) -> list[Any]:
    events = decide_store(
        index,
        request_id=f"req-{k}-{now_ms}",
        tenant=tenant,
        key=k,
        model="openai/gpt-4o-mini",
        body=body(size),
        usage=USAGE,
        cost_micros=210,
        now_ms=now_ms,
        cfg=cfg,
    )
    for event in events:
        evolve_cache(index, event)
    return events


def lookup(index: CacheIndex, k: str, now_ms: int, tenant: str = "acme") -> list[Any]:
    found = decide_lookup(index, request_id="r", tenant=tenant, key=k, now_ms=now_ms)
    for event in found.events:
        evolve_cache(index, event)
    return found.events


def evictions(events: list[Any]) -> list[tuple[str, str]]:
    return [(e.cache_key, e.reason) for e in events if isinstance(e, ev.CacheEvicted)]


def test_a_hit_reports_what_it_saved_and_a_miss_says_so() -> None:
    index, cfg = CacheIndex(), config()
    [stored] = store(index, "k", 100, 1_000, cfg)
    assert stored.stored_bytes == 100 and stored.size_bytes == 300
    assert stored.expires_at_ms == 1_000 + 3_600_000
    found = decide_lookup(index, request_id="r2", tenant="acme", key="k", now_ms=2_000)
    assert found.entry is stored
    assert found.events == [
        ev.CacheHit(
            request_id="r2",
            tenant="acme",
            cache_key="k",
            model="openai/gpt-4o-mini",
            stored_at_ms=1_000,
            saved_usage=USAGE,
            saved_cost_micros=210,
        )
    ]
    missed = decide_lookup(index, request_id="r3", tenant="acme", key="other", now_ms=2_000)
    assert missed.entry is None
    assert missed.events == [ev.CacheMiss(request_id="r3", tenant="acme", cache_key="other")]


def test_an_entry_answers_until_its_ttl_then_is_evicted_as_a_miss() -> None:
    index, cfg = CacheIndex(), config(ttl_s=10)
    store(index, "k", 100, 0, cfg)
    assert index.lookup("k", 9_999) is not None
    assert [type(e) for e in lookup(index, "k", 9_999)] == [ev.CacheHit]
    events = lookup(index, "k", 10_000)
    assert evictions(events) == [("k", "ttl")]
    assert isinstance(events[-1], ev.CacheMiss)
    assert len(index) == 0 and index.total_bytes == 0


def test_lru_evicts_the_least_recently_used_until_the_new_answer_fits() -> None:
    index, cfg = CacheIndex(), config(max_bytes=300)
    for n, k in enumerate("abc"):
        store(index, k, 100, n, cfg)
    lookup(index, "a", 10)  # a hit moves `a` to the back: b is now the oldest
    assert evictions(store(index, "d", 100, 20, cfg)) == [("b", "lru")]
    assert evictions(store(index, "e", 150, 30, cfg)) == [("c", "lru"), ("a", "lru")]
    assert list(index.entries) == ["d", "e"] and index.total_bytes == 250


def test_a_lookup_decision_alone_does_not_touch_the_lru_order() -> None:
    index, cfg = CacheIndex(), config(max_bytes=200)
    store(index, "a", 100, 0, cfg)
    store(index, "b", 100, 1, cfg)
    decide_lookup(index, request_id="r", tenant="acme", key="a", now_ms=2)  # not folded
    assert evictions(store(index, "c", 100, 3, cfg)) == [("a", "lru")]


def test_an_answer_over_the_whole_budget_is_not_stored_and_evicts_nothing() -> None:
    index, cfg = CacheIndex(), config(max_bytes=300)
    store(index, "a", 200, 0, cfg)
    assert store(index, "big", 301, 1, cfg) == []
    assert list(index.entries) == ["a"]
    assert evictions(store(index, "full", 300, 2, cfg)) == [("a", "lru")]
    assert index.total_bytes == 300


def test_an_index_may_be_given_its_own_share_of_the_budget() -> None:
    index, cfg = CacheIndex(), config(max_bytes=1_000)
    kwargs: dict[str, Any] = {"request_id": "r", "tenant": "acme", "model": "m", "usage": USAGE}
    kwargs |= {"cost_micros": 0, "now_ms": 0, "cfg": cfg, "max_bytes": 250}
    for k in "ab":
        for event in decide_store(index, key=k, body=body(100), **kwargs):
            evolve_cache(index, event)
    assert evictions(decide_store(index, key="c", body=body(100), **kwargs)) == [("a", "lru")]
    assert decide_store(index, key="d", body=body(251), **kwargs) == []


def test_each_entry_is_charged_its_overhead_so_small_answers_cannot_overrun_memory() -> None:
    """Found by bench_state: 540k cached answers of ~400 B took over 500 MB under the
    default 256 MiB budget, which counted their bodies only; each entry costs ~640 B
    more in memory (its key, ids, usage, index links)."""
    index, cfg = CacheIndex(), config(max_bytes=1_000, entry_overhead_bytes=200)
    for n, k in enumerate("abc"):
        store(index, k, 100, n, cfg)  # 3 x (100 + 200) = 900
    assert evictions(store(index, "d", 100, 3, cfg)) == [("a", "lru")]  # 4 x 300 > 1,000
    assert store(index, "big", 801, 4, cfg) == []  # 801 + 200 alone is over the budget
    assert charged_bytes(index, 200) == 900 and index.total_bytes == 300


def test_expired_entries_go_first_and_are_swept_even_when_there_is_room() -> None:
    index, cfg = CacheIndex(), config(ttl_s=10, max_bytes=1_000)
    store(index, "old", 100, 0, cfg)
    store(index, "new", 100, 5_000, cfg)
    assert evictions(store(index, "x", 100, 10_000, cfg)) == [("old", "ttl")]
    assert list(index.entries) == ["new", "x"]


def test_a_sweep_is_bounded_and_the_budget_may_still_evict_an_expired_entry() -> None:
    index, cfg = CacheIndex(), config(ttl_s=1, max_bytes=10_000)
    for n in range(SWEEP_LIMIT + 5):
        store(index, f"k{n}", 10, 0, cfg)
    swept = store(index, "x", 10, 5_000, cfg)
    assert evictions(swept) == [(f"k{n}", "ttl") for n in range(SWEEP_LIMIT)]
    assert len(index) == 6
    room = store(index, "y", 10_000 - 10, 5_001, cfg)  # needs all but one slot of 10
    assert evictions(room) == [(f"k{n}", "ttl") for n in range(SWEEP_LIMIT, SWEEP_LIMIT + 5)]
    assert list(index.entries) == ["x", "y"]


def test_lru_names_an_expired_victim_ttl_when_a_longer_lived_entry_hid_it_from_the_sweep() -> None:
    index = CacheIndex()
    store(index, "long", 100, 0, config(ttl_s=100, max_bytes=200))
    store(index, "short", 100, 0, config(ttl_s=1, max_bytes=200))
    lookup(index, "long", 1)  # LRU: short, long; store order: long, short
    assert evictions(store(index, "new", 100, 5_000, config(ttl_s=1, max_bytes=200))) == [
        ("short", "ttl")
    ]


def test_an_entry_expires_at_its_expiry_instant_not_a_millisecond_later_or_sooner() -> None:
    index, cfg = CacheIndex(), config(ttl_s=1)
    store(index, "a", 10, 0, cfg)
    store(index, "b", 10, 1, cfg)
    assert evictions(store(index, "c", 10, 1_000, cfg)) == [("a", "ttl")]
    assert index.lookup("b", 1_000) is not None and index.lookup("b", 1_001) is None


def test_a_live_entry_keeps_the_first_answer_and_an_expired_one_is_replaced() -> None:
    index, cfg = CacheIndex(), config(ttl_s=10)
    [first] = store(index, "k", 100, 0, cfg)
    assert store(index, "k", 50, 1_000, cfg) == []
    assert index.get("k") is first
    events = store(index, "k", 50, 10_000, cfg)
    assert evictions(events) == [("k", "ttl")]
    assert index.get("k") is events[-1] and index.total_bytes == 50


def test_nothing_is_stored_when_caching_is_off() -> None:
    index = CacheIndex()
    assert store(index, "k", 100, 0, config(features={"caching": False})) == []


def test_an_unknown_encoding_is_a_bug() -> None:
    with pytest.raises(ValueError, match="unknown cache encoding 'lz4'"):
        decide_store(
            CacheIndex(),
            request_id="r",
            tenant="acme",
            key="k",
            model="m",
            body=EncodedBody(encoding="lz4", body=b"x", size_bytes=1),
            usage=USAGE,
            cost_micros=0,
            now_ms=0,
            cfg=config(),
        )


def test_evictions_carry_the_tenant_whose_decision_made_them() -> None:
    index, cfg = CacheIndex(), config(max_bytes=100, scope="shared")
    store(index, "a", 100, 0, cfg, tenant="acme")
    [evicted, _] = store(index, "b", 100, 1, cfg, tenant="globex")
    assert evicted.tenant == "globex" and evicted.stored_bytes == 100


def test_the_snapshot_reports_sizes_and_the_compression_ratio() -> None:
    index, cfg = CacheIndex(), config()
    assert index.snapshot()["compression_ratio"] is None
    store(index, "a", 100, 0, cfg)
    store(index, "b", 200, 0, cfg)
    assert index.snapshot() == {
        "entries": 2,
        "stored_bytes": 300,
        "size_bytes": 900,
        "compression_ratio": 3.0,
        "inflight_keys": 0,
        "waiting_followers": 0,
    }


# --- coalescing -------------------------------------------------------------


def accepted(request_id: str, k: str | None, cacheable: bool = True) -> ev.RequestAccepted:
    return ev.RequestAccepted(
        request_id=request_id,
        tenant="acme",
        task_type="general",
        messages_hash="h",
        prompt_tokens_est=3,
        cache_key=k,
        cacheable=cacheable,
    )


def failed(request_id: str) -> ev.RequestFailed:
    return ev.RequestFailed(
        request_id=request_id,
        tenant="acme",
        code="upstream_unavailable",
        message="down",
        attempts=1,
        latency_ms=1.0,
    )


def arrive(index: CacheIndex, request_id: str, k: str, cfg: Config) -> ev.RequestCoalesced | None:
    """What the decider does on intake: coalesce if someone leads `k`, then fold."""
    coalesced = decide_coalesce(index, request_id=request_id, tenant="acme", key=k, cfg=cfg)
    for event in (accepted(request_id, k), coalesced):
        evolve_cache(index, event)
    return coalesced


def test_identical_requests_in_flight_follow_the_first_until_it_ends() -> None:
    index, cfg = CacheIndex(), config()
    assert arrive(index, "lead", "k", cfg) is None
    assert index.leader_for("k") == "lead"
    assert arrive(index, "f1", "k", cfg) == ev.RequestCoalesced(
        request_id="f1", tenant="acme", leader_request_id="lead", cache_key="k"
    )
    arrive(index, "f2", "k", cfg)
    assert arrive(index, "other", "k2", cfg) is None
    assert index.followers("lead") == ("f1", "f2") and index.leader_of("f2") == "lead"
    evolve_cache(index, failed("lead"))  # the lead answers followers() before folding this
    assert index.leader_for("k") is None
    assert index.followers("lead") == ("f1", "f2")  # until their own terminal events
    evolve_cache(index, failed("f1"))
    evolve_cache(index, failed("f2"))
    assert index.followers("lead") == () and index.leader_for("k2") == "other"
    assert arrive(index, "next", "k", cfg) is None  # a new flight for the freed key


def test_no_coalescing_when_switched_off_for_itself_or_for_uncacheable_requests() -> None:
    index = CacheIndex()
    arrive(index, "lead", "k", config())
    off = config(features={"request_coalescing": False})
    assert decide_coalesce(index, request_id="f", tenant="acme", key="k", cfg=off) is None
    assert decide_coalesce(index, request_id="lead", tenant="acme", key="k", cfg=config()) is None
    evolve_cache(index, accepted("u", "k9", cacheable=False))
    assert index.leader_for("k9") is None


# --- properties -------------------------------------------------------------


class Model:
    """The cache as a dict and two lists, written from the rules, not from the code."""

    def __init__(self, max_bytes: int, overhead: int = 0) -> None:
        self.max_bytes = max_bytes
        self.overhead = overhead  # charged per entry besides its body
        self.size: dict[str, int] = {}
        self.expires: dict[str, int] = {}
        self.lru: list[str] = []
        self.stored: list[str] = []

    def remove(self, k: str) -> None:
        del self.size[k], self.expires[k]
        self.lru.remove(k)
        self.stored.remove(k)

    def lookup(self, k: str, now: int) -> tuple[bool, list[tuple[str, str]]]:
        if k in self.size and now < self.expires[k]:
            self.lru.remove(k)
            self.lru.append(k)
            return True, []
        if k in self.size:
            self.remove(k)
            return False, [(k, "ttl")]
        return False, []

    def store(self, k: str, size: int, now: int, ttl_ms: int) -> list[tuple[str, str]]:
        ov = self.overhead
        if size + ov > self.max_bytes or (k in self.size and now < self.expires[k]):
            return []
        victims = [(k, "ttl")] if k in self.size else []
        for old in self.stored[:SWEEP_LIMIT]:
            if self.expires[old] > now:
                break
            if old != k:
                victims.append((old, "ttl"))
        total = sum(n + ov for n in self.size.values()) - sum(self.size[v] + ov for v, _ in victims)
        for old in self.lru:
            if total + size + ov <= self.max_bytes:
                break
            if old not in [v for v, _ in victims]:
                victims.append((old, "lru" if now < self.expires[old] else "ttl"))
                total -= self.size[old] + ov
        for victim, _ in victims:
            self.remove(victim)
        self.size[k], self.expires[k] = size, now + ttl_ms
        self.lru.append(k)
        self.stored.append(k)
        return victims


op = st.tuples(
    st.sampled_from(["lookup", "store"]),
    st.sampled_from("abcdefgh"),
    st.integers(0, 450),  # size (the budget is 1,000 bytes)
    st.sampled_from([0, 1, 499, 500, 999, 1_000]),  # ms passing before the op: hits boundaries
    st.sampled_from([1, 2, 4]),  # the ttl (s) a store uses: config may change between runs
)


def fold_all(events: list[Any]) -> CacheIndex:
    index = CacheIndex()
    for event in events:
        evolve_cache(index, event)
    return index


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=80), st.integers(0, 80), st.sampled_from([0, 37, 140]))
def test_any_run_agrees_with_the_model_stays_in_budget_and_replays(
    ops: list[tuple[str, str, int, int, int]], cut: int, overhead: int
) -> None:
    cfgs = {
        ttl: config(ttl_s=ttl, max_bytes=1_000, entry_overhead_bytes=overhead) for ttl in (1, 2, 4)
    }
    index, model, log, now = CacheIndex(), Model(1_000, overhead), [], 0
    for name, k, size, dt, ttl in ops:
        now += dt
        if name == "lookup":
            events = lookup(index, k, now)
            hit, expected = model.lookup(k, now)
            assert isinstance(events[-1], ev.CacheHit if hit else ev.CacheMiss)
        else:
            events = store(index, k, size, now, cfgs[ttl])
            expected = model.store(k, size, now, ttl * 1_000)
        assert evictions(events) == expected
        assert charged_bytes(index, overhead) <= 1_000  # bodies and overheads
        assert index.total_bytes == sum(model.size.values())
        assert list(index.entries) == model.lru
        log += events
    assert fold_all(log).dump() == index.dump()
    half = fold_all(log[:cut])
    for event in log[cut:]:
        evolve_cache(half, event)
    assert half.dump() == index.dump()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=60), st.randoms())
def test_every_follower_waits_on_a_live_leader_of_its_key_and_all_is_freed_at_the_end(
    steps: list[tuple[bool, int]], rnd: Any
) -> None:
    """Requests arrive (True) or one in flight ends (False); at the end all end."""
    index, cfg = CacheIndex(), config()
    inflight: dict[str, str] = {}  # request id -> key
    ids = (f"r{n}" for n in itertools.count())
    for arrives, k in steps:
        if arrives or not inflight:
            rid, key_ = next(ids), f"k{k}"
            coalesced = arrive(index, rid, key_, cfg)
            if coalesced is not None:
                assert inflight.get(coalesced.leader_request_id) == key_
            else:
                assert index.leader_for(key_) == rid
            inflight[rid] = key_
        else:
            rid = rnd.choice(sorted(inflight))
            evolve_cache(index, failed(rid))
            del inflight[rid]
            assert index.leader_of(rid) is None
    for rid in list(inflight):
        evolve_cache(index, failed(rid))
    assert index.snapshot()["inflight_keys"] == 0
    assert index.snapshot()["waiting_followers"] == 0
    assert index.dump()["followers"] == []
