"""Retry timing (full jitter, Retry-After) and the retry budget."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from turnout.service.core.config import RetryConfig
from turnout.service.core.retry import (
    RetryBudget,
    backoff_ms,
    normalized,
    note_request,
    note_retry,
    retry_allowed,
    retry_delay_ms,
)
from turnout.service.core.sampling import uniform

CFG = RetryConfig(
    base_delay_ms=200,
    max_delay_ms=10_000,
    retry_budget_ratio=0.2,
    retry_budget_window_s=60,
    retry_budget_min=2,
)


@given(st.text(min_size=1), st.integers(min_value=1, max_value=40))
def test_backoff_is_within_the_exponential_cap_and_replays_identically(
    request_id: str, attempt: int
) -> None:
    delay = backoff_ms(request_id, attempt, CFG)
    assert 0 <= delay < min(CFG.max_delay_ms, 200 * 2 ** (attempt - 1)) or delay == 0
    assert delay == backoff_ms(request_id, attempt, CFG)


def test_jitter_spreads_requests_apart() -> None:
    delays = {backoff_ms(f"req-{i}", 3, CFG) for i in range(200)}
    assert len(delays) > 150 and max(delays) < 800


def test_retry_after_is_a_floor_and_too_long_means_fall_back() -> None:
    assert retry_delay_ms("r", 1, CFG, 3_000) == 3_000
    assert retry_delay_ms("r", 1, CFG, None) == backoff_ms("r", 1, CFG)
    assert retry_delay_ms("r", 1, CFG, 60_000) is None


def test_uniform_is_in_unit_interval_and_depends_on_every_part() -> None:
    assert 0 <= uniform("a", 1) < 1
    assert uniform("a", 1) != uniform("a", 2)


def test_budget_allows_the_minimum_then_a_share_of_requests() -> None:
    b = RetryBudget()
    for _ in range(2):
        assert retry_allowed(b, 0, CFG)
        b = note_retry(b, 0, CFG)
    assert not retry_allowed(b, 0, CFG)
    for _ in range(15):
        b = note_request(b, 0, CFG)
    assert retry_allowed(b, 0, CFG)  # 3 <= 0.2 * 15
    b = note_retry(b, 0, CFG)
    assert not retry_allowed(b, 0, CFG)  # 4 > 3
    assert retry_allowed(b, 61_000, CFG)  # the window moved on


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3_000)), max_size=300))
def test_retries_never_exceed_the_budget_in_any_window(steps: list[tuple[bool, int]]) -> None:
    b, now, log = RetryBudget(), 0, []
    for is_retry, gap in steps:
        now += gap
        if not is_retry:
            b = note_request(b, now, CFG)
            log.append((now // 1000, 1, 0))
        elif retry_allowed(b, now, CFG):
            b = note_retry(b, now, CFG)
            log.append((now // 1000, 0, 1))
    for end in {s for s, _, _ in log}:
        window = [x for x in log if end - 60 < x[0] <= end]
        requests = sum(x[1] for x in window)
        retries = sum(x[2] for x in window)
        assert retries <= max(2, 0.2 * requests)


def _counts(log: list[tuple[int, int, int]], second: int) -> tuple[int, int]:
    inside = [x for x in log if second - 60 < x[0]]
    return sum(x[1] for x in inside), sum(x[2] for x in inside)


@given(st.lists(st.tuples(st.booleans(), st.integers(-70_000, 30_000)), max_size=200))
def test_the_budget_counts_what_the_window_holds_even_when_the_clock_steps_back(
    steps: list[tuple[bool, int]],
) -> None:
    """Its buckets stay one per second, oldest first, all inside the window of the last
    bump; a retry is allowed exactly when the counts of the log still in that window
    allow it (the log pruned as the budget prunes: at each bump, by that bump's time)."""
    b, now, log = RetryBudget(), 1_000_000, []
    for is_retry, gap in steps:
        now = max(now + gap, 0)
        second = now // 1000
        if is_retry and not retry_allowed(b, now, CFG):
            continue
        log = [x for x in log if second - 60 < x[0]]
        b = (note_retry if is_retry else note_request)(b, now, CFG)
        log.append((second, int(not is_retry), int(is_retry)))
        seconds = [s for s, _, _ in b.buckets]
        assert seconds == sorted(set(seconds))
        assert all(second - 60 < s for s in seconds)
        requests, retries = _counts(log, second)
        assert sum(r for _, r, _ in b.buckets) == requests
        assert sum(t for _, _, t in b.buckets) == retries
        expected = retries + 1 <= max(CFG.retry_budget_min, CFG.retry_budget_ratio * requests)
        assert retry_allowed(b, now, CFG) == expected


def test_a_budget_from_an_older_snapshot_decides_as_it_did_once_normalized() -> None:
    """Earlier versions appended a bucket whenever the clock stepped back, so a snapshot
    may hold buckets out of order and a second twice; restored, they are merged and
    sorted, and the window drops what it should (the fast path trusts the order)."""
    cfg = RetryConfig(retry_budget_window_s=5, retry_budget_min=2, retry_budget_ratio=0.2)
    old = RetryBudget(buckets=((12, 1, 0), (11, 0, 2), (12, 0, 1)))  # written out of order
    restored = normalized(old)
    assert restored.buckets == ((11, 0, 2), (12, 1, 1))
    bumped = note_request(restored, 16_000, cfg)  # 11 leaves the window (16 - 5)
    assert bumped.buckets == ((12, 1, 1), (16, 1, 0))
    assert retry_allowed(bumped, 15_500, cfg)  # 1 retry in the window: a second is allowed
    unsorted = note_request(old, 16_000, cfg)  # not normalized: 11 would survive
    assert not retry_allowed(unsorted, 15_500, cfg)
