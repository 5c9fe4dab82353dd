"""The event model: registry, struct rules, JSON shapes and schema evolution."""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.service.core import events as ev
from turnout.service.core.events import (
    EVENT_TYPES,
    SYSTEM_TENANT,
    Event,
    RawEvent,
    Usage,
    event_type,
)

DURATIONS = {"latency_ms", "ttft_ms"}  # float milliseconds; every other `_ms` is an instant
CONTRACT_TYPES = {
    "turnout.prices.updated",
    "turnout.stream.first_token",
    "turnout.stream.cut",
    "turnout.request.cancelled",
    "turnout.request.accepted",
    "turnout.request.rejected",
    "turnout.request.deadlettered",
    "turnout.request.completed",
    "turnout.request.failed",
    "turnout.request.coalesced",
    "turnout.cache.hit",
    "turnout.cache.miss",
    "turnout.cache.stored",
    "turnout.cache.evicted",
    "turnout.cache.warmed",
    "turnout.route.decided",
    "turnout.fallback.taken",
    "turnout.attempt.started",
    "turnout.attempt.succeeded",
    "turnout.attempt.failed",
    "turnout.retry.scheduled",
    "turnout.breaker.opened",
    "turnout.breaker.half_opened",
    "turnout.breaker.closed",
    "turnout.ratelimit.exceeded",
    "turnout.budget.reserved",
    "turnout.budget.charged",
    "turnout.budget.released",
    "turnout.budget.exceeded",
    "turnout.alert.fired",
    "turnout.alert.resolved",
    "turnout.config.applied",
}
GLOBAL_TYPES = {
    "turnout.cache.evicted",
    "turnout.cache.warmed",
    "turnout.breaker.opened",
    "turnout.breaker.half_opened",
    "turnout.breaker.closed",
    "turnout.alert.fired",
    "turnout.alert.resolved",
    "turnout.config.applied",
    "turnout.prices.updated",
    "turnout.router.marker",
}
USAGE = Usage(prompt_tokens=12, completion_tokens=40, total_tokens=52)
R = {"request_id": "r-1", "tenant": "acme"}

# One realistic instance of every event type (required fields only where possible).
SAMPLES: list[Event] = [
    ev.RequestAccepted(
        **R,
        task_type="general",
        messages_hash="sha256:ab",
        prompt_tokens_est=12,
        params={"temperature": 0},
        cacheable=True,
        cache_key="k1",
    ),
    ev.RequestRejected(**R, code="rate_limited", message="over 600/min", retry_after_ms=1500),
    ev.RequestDeadlettered(
        tenant="acme",
        code="malformed_json",
        detail="bad",
        topic="turnout.requests",
        partition=3,
        offset=17,
    ),
    ev.RequestCompleted(
        **R,
        model="openai/gpt-4o-mini",
        cached=False,
        coalesced=False,
        attempts=2,
        latency_ms=812.4,
        usage=USAGE,
        cost_micros=210,
        response={"id": "gen-1", "object": "chat.completion", "choices": []},
    ),
    ev.RequestFailed(
        **R,
        code="upstream_unavailable",
        message="all candidates failed",
        attempts=4,
        latency_ms=3000.5,
        errors=[ev.CandidateError(model="a/b", code="http_503", message="down")],
    ),
    ev.RequestCoalesced(**R, leader_request_id="r-0", cache_key="k1"),
    ev.CacheHit(
        **R, cache_key="k1", model="a/b", stored_at_ms=1, saved_usage=USAGE, saved_cost_micros=210
    ),
    ev.CacheMiss(**R, cache_key="k1"),
    ev.CacheStored(
        **R,
        cache_key="k1",
        model="a/b",
        stored_at_ms=1,
        expires_at_ms=3_600_001,
        encoding="none",
        body=b'{"id":"gen-1"}',
        size_bytes=14,
        stored_bytes=14,
        usage=USAGE,
        cost_micros=210,
    ),
    ev.CacheEvicted(tenant="acme", cache_key="k1", reason="lru", stored_bytes=14),
    ev.CacheWarmed(
        tenant="acme",
        warm_id="w1",
        source="warm.jsonl",
        requests=3,
        hits=1,
        misses=2,
        stored=2,
        failed=0,
    ),
    ev.RouteDecided(
        **R,
        task_type="general",
        strategy="weighted",
        candidates=["a/b", "c/d"],
        order=["c/d", "a/b"],
        skipped=[ev.SkippedModel(model="e/f", reason="breaker_open")],
        sample=0.25,
    ),
    ev.FallbackTaken(**R, from_model="a/b", to_model="c/d", reason="breaker_open"),
    ev.AttemptStarted(**R, model="a/b", attempt=1, model_attempt=1),
    ev.AttemptSucceeded(
        **R, model="a/b", attempt=2, status=200, latency_ms=40.0, usage=USAGE, cost_micros=210
    ),
    ev.AttemptFailed(
        **R,
        model="a/b",
        attempt=1,
        status=503,
        error_class="http_503",
        message="unavailable",
        latency_ms=12.5,
        retryable=True,
        breaker_failure=True,
        fallback=False,
    ),
    ev.RetryScheduled(**R, model="a/b", attempt=2, delay_ms=200, reason="http_503"),
    ev.BreakerOpened(model="a/b", reason="5 failures", failures=5, calls=5, open_until_ms=60_000),
    ev.BreakerHalfOpened(model="a/b"),
    ev.BreakerClosed(model="a/b", successes=3),
    ev.RatelimitExceeded(**R, limit="requests_per_minute", limit_value=600, retry_after_ms=1000),
    ev.BudgetReserved(**R, amount_micros=500, day="2026-11-27", month="2026-11"),
    ev.BudgetCharged(**R, amount_micros=210, day="2026-11-27", month="2026-11"),
    ev.BudgetReleased(**R, amount_micros=290, day="2026-11-27", month="2026-11"),
    ev.BudgetExceeded(
        **R,
        period="day",
        level="hard",
        limit_micros=50_000_000,
        spent_micros=49_999_900,
        reserved_micros=0,
        requested_micros=500,
    ),
    ev.AlertFired(
        rule="error_rate",
        severity="page",
        labels={"model": "a/b"},
        value=0.5,
        op=">",
        threshold=0.2,
        pending_since_ms=1,
    ),
    ev.AlertResolved(rule="error_rate", severity="page", value=0.0, fired_at_ms=2),
    ev.ConfigApplied(
        instance="r1",
        config_hash="h",
        config={"retry": {"max_retries": 3}},
        features={"caching": True},
    ),
    ev.RouterMarker(tenant="acme", instance="r1", marker_id="m1", partition=4),
    ev.PricesUpdated(instance="r1", prices={"a/b": [1e-07, 4e-07]}),
    ev.StreamFirstToken(request_id="r-1", tenant="acme", model="a/b", attempt=2, ttft_ms=41.5),
    ev.StreamCut(
        request_id="r-1", tenant="acme", model="a/b", attempt=2, why="budget", completion_tokens=40
    ),
    ev.RequestCancelled(
        request_id="r-1",
        tenant="acme",
        reason="client disconnected",
        attempts=1,
        latency_ms=20.5,
        model="a/b",
        cost_micros=12,
        usage=ev.Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3),
        stream=ev.StreamStats(chunks=3, ttft_ms=4.5),
    ),
]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp: Any) -> bool:
    return isinstance(tp, types.UnionType) and type(None) in typing.get_args(tp)


# --- registry ---------------------------------------------------------------


def test_registry_holds_every_contract_type_plus_router_marker() -> None:
    assert set(EVENT_TYPES) == CONTRACT_TYPES | {"turnout.router.marker"}


def test_registry_maps_each_type_to_its_struct_and_matches_the_union() -> None:
    assert all(name == cls.TYPE for name, cls in EVENT_TYPES.items())
    assert set(EVENT_TYPES.values()) == set(typing.get_args(Event))
    declared = {
        obj
        for obj in vars(ev).values()
        if isinstance(obj, type) and "TYPE" in vars(obj) and issubclass(obj, msgspec.Struct)
    }
    assert declared == set(EVENT_TYPES.values())


def test_samples_cover_every_type() -> None:
    assert sorted(event_type(s) for s in SAMPLES) == sorted(EVENT_TYPES)


def test_all_exports_exist() -> None:
    assert all(hasattr(ev, name) for name in ev.__all__)
    assert {cls.__name__ for cls in EVENT_TYPES.values()} <= set(ev.__all__)


# --- struct rules -----------------------------------------------------------


@pytest.mark.parametrize("cls", EVENT_TYPES.values(), ids=list(EVENT_TYPES))
def test_event_struct_rules(cls: type[msgspec.Struct]) -> None:
    assert cls.__struct_config__.frozen
    params = inspect.signature(cls).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    assert re.fullmatch(r"turnout\.[a-z_]+\.[a-z_]+", cls.TYPE)  # type: ignore[attr-defined]
    hints = _hints(cls)
    assert hints["tenant"] is str
    for field in msgspec.structs.fields(cls):
        if _is_optional(field.type):
            assert field.default is None, f"{field.name}: an optional field defaults to None"
        if field.name.endswith("_micros"):
            assert hints[field.name] is int, f"{field.name}: money is int micro-dollars"
        if field.name.endswith("_ms") and field.name not in DURATIONS:
            assert hints[field.name] in (int, int | None), f"{field.name}: instants are int ms"


@pytest.mark.parametrize("name", sorted(set(EVENT_TYPES) - GLOBAL_TYPES))
def test_request_scoped_events_carry_request_id(name: str) -> None:
    assert "request_id" in _hints(EVENT_TYPES[name])


def test_system_events_default_to_the_system_tenant() -> None:
    assert ev.BreakerHalfOpened(model="m").tenant == SYSTEM_TENANT == "_system"


def test_events_are_immutable_and_replace_makes_a_copy() -> None:
    miss = ev.CacheMiss(request_id="r", tenant="t", cache_key="k")
    with pytest.raises(AttributeError):
        miss.cache_key = "other"  # type: ignore[misc]
    assert msgspec.structs.replace(miss, cache_key="k2").cache_key == "k2"
    assert miss.cache_key == "k"


def test_event_type_is_the_class_constant_or_the_raw_type() -> None:
    assert (
        event_type(ev.CacheMiss(request_id="r", tenant="t", cache_key="k")) == "turnout.cache.miss"
    )
    assert event_type(RawEvent(type="turnout.future.thing", data={})) == "turnout.future.thing"


# --- JSON shape -------------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES, ids=event_type)
def test_sample_round_trips_through_json(sample: Event) -> None:
    data = msgspec.json.encode(sample)
    assert msgspec.json.decode(data, type=type(sample)) == sample


def test_json_holds_fields_only_never_the_type() -> None:
    stored = next(s for s in SAMPLES if isinstance(s, ev.CacheStored))
    doc = json.loads(msgspec.json.encode(stored))
    assert "type" not in doc and "TYPE" not in doc
    assert doc["body"] == "eyJpZCI6Imdlbi0xIn0="  # bytes travel as base64
    assert doc["usage"] == {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52}


def test_breaker_opened_json_table() -> None:
    opened = ev.BreakerOpened(model="a/b", reason="r", failures=5, calls=9, open_until_ms=7)
    assert json.loads(msgspec.json.encode(opened)) == {
        "tenant": "_system",
        "model": "a/b",
        "reason": "r",
        "failures": 5,
        "calls": 9,
        "open_until_ms": 7,
    }


# --- schema evolution -------------------------------------------------------


def test_old_record_without_optional_fields_decodes_with_defaults() -> None:
    old = b'{"request_id":"r","tenant":"t","code":"c","message":"m"}'
    rejected = msgspec.json.decode(old, type=ev.RequestRejected)
    assert rejected.retry_after_ms is None


def test_missing_required_field_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="cache_key"):
        msgspec.json.decode(b'{"request_id":"r","tenant":"t"}', type=ev.CacheMiss)


json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)


@given(
    sample=st.sampled_from(SAMPLES),
    extra=st.dictionaries(st.text(min_size=1, max_size=8).map(lambda s: "new_" + s), json_scalars),
)
def test_new_writer_fields_are_ignored_by_old_readers(sample: Event, extra: dict[str, Any]) -> None:
    doc = msgspec.to_builtins(sample) | extra
    assert msgspec.json.decode(json.dumps(doc).encode(), type=type(sample)) == sample
