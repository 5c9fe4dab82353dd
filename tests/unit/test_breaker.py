"""Circuit breaker: the transition table, the trip conditions, and properties."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.service.core.breaker import (
    TRANSITIONS,
    Breaker,
    BreakerTransitionError,
    apply_trigger,
    can_call,
    due_trigger,
    open_until,
    record_call,
)
from turnout.service.core.config import BreakerConfig

COUNT = BreakerConfig(failure_threshold=3, recovery_timeout_s=10, success_threshold=2)
RATE = BreakerConfig(failure_threshold=None, failure_rate=0.5, window_s=10, min_calls=4)


def fold_calls(b: Breaker, outcomes: list[bool], now_ms: int, cfg: BreakerConfig) -> Breaker:
    for failed in outcomes:
        b = record_call(b, failed=failed, now_ms=now_ms, cfg=cfg)
    return b


def test_consecutive_failures_trip_and_a_success_resets_the_count() -> None:
    b = fold_calls(Breaker(), [True, True], 0, COUNT)
    assert due_trigger(b, 0, COUNT) is None
    b = fold_calls(b, [False, True, True], 0, COUNT)
    assert due_trigger(b, 0, COUNT) is None
    b = record_call(b, failed=True, now_ms=0, cfg=COUNT)
    assert due_trigger(b, 0, COUNT) == ("trip", "3 consecutive failures")


def test_failure_rate_needs_min_calls_and_forgets_old_seconds() -> None:
    b = fold_calls(Breaker(), [True, True, True], 0, RATE)
    assert due_trigger(b, 0, RATE) is None  # 3 calls < min_calls
    b = record_call(b, failed=False, now_ms=500, cfg=RATE)
    assert due_trigger(b, 500, RATE) == ("trip", "failure rate 3/4 over 10s")
    assert due_trigger(b, 11_000, RATE) is None  # the failures left the window


def test_open_waits_for_recovery_then_half_opens() -> None:
    b = apply_trigger(Breaker(), "trip", open_until_ms=open_until(1_000, COUNT))
    assert b.status == "open" and not can_call(b, 5_000)
    assert due_trigger(b, 10_999, COUNT) is None
    assert due_trigger(b, 11_000, COUNT) == ("recovery_due", "recovery timeout elapsed")
    assert can_call(b, 11_000)


def test_retry_after_extends_recovery_but_never_shortens_it() -> None:
    assert open_until(0, COUNT, retry_after_ms=30_000) == 30_000
    assert open_until(0, COUNT, retry_after_ms=1_000) == 10_000


def test_half_open_closes_after_enough_probes_or_reopens_on_one_failure() -> None:
    half = apply_trigger(apply_trigger(Breaker(), "trip", open_until_ms=5), "recovery_due")
    ok = fold_calls(half, [False], 0, COUNT)
    assert due_trigger(ok, 0, COUNT) is None
    ok = fold_calls(ok, [False], 0, COUNT)
    assert due_trigger(ok, 0, COUNT) == ("probes_passed", "2 probe calls succeeded")
    assert apply_trigger(ok, "probes_passed").status == "closed"
    bad = fold_calls(half, [False, True], 0, COUNT)
    assert due_trigger(bad, 0, COUNT) == ("probe_failed", "a probe call failed")


def test_transitions_outside_the_table_are_bugs() -> None:
    with pytest.raises(BreakerTransitionError):
        apply_trigger(Breaker(status="open"), "probes_passed")
    with pytest.raises(BreakerTransitionError):
        apply_trigger(Breaker(), "recovery_due")


def test_late_answers_while_open_change_nothing() -> None:
    b = apply_trigger(Breaker(), "trip", open_until_ms=100)
    assert record_call(b, failed=False, now_ms=50, cfg=COUNT) == b


calls = st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=5_000)), max_size=80)


@given(calls, st.sampled_from([COUNT, RATE]))
def test_a_breaker_driven_by_any_calls_never_skips_half_open(
    steps: list[tuple[bool, int]], cfg: BreakerConfig
) -> None:
    b, now, path = Breaker(), 0, ["closed"]
    for failed, gap in steps:
        now += gap
        if can_call(b, now):
            b = record_call(b, failed=failed, now_ms=now, cfg=cfg)
        while (due := due_trigger(b, now, cfg)) is not None:
            b = apply_trigger(b, due[0], open_until_ms=open_until(now, cfg))
            path.append(b.status)
    for before, after in itertools.pairwise(path):
        assert (before, after) in {(s, t) for (s, _), t in TRANSITIONS.items()}
        assert (before, after) != ("open", "closed")
