"""Retry timing and the retry budget: pure functions of ids, counts and time.

Rules:
- Exponential backoff with full jitter: the delay before retry n is a uniform
  sample of [0, min(max_delay, base * 2**(n-1))), the sample derived from the
  request id and the attempt number (`sampling.uniform`), so replay agrees.
- An upstream `Retry-After` is a floor: never retry sooner. When it is longer
  than `max_delay_ms` the model is not retried: the request falls back instead.
- The retry budget: within any `retry_budget_window_s`, retries may not exceed
  `retry_budget_ratio` of requests (but `retry_budget_min` retries are always
  allowed), so a failing upstream is not hammered. Counts live in per-second
  buckets folded from events.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from turnout.service.core.config import RetryConfig
from turnout.service.core.sampling import uniform

__all__ = [
    "RetryBudget",
    "backoff_ms",
    "normalized",
    "note_request",
    "note_retry",
    "retry_allowed",
    "retry_delay_ms",
]


def backoff_ms(request_id: str, attempt: int, cfg: RetryConfig) -> int:
    """Full-jitter delay before retry number `attempt` (1 = the first retry)."""
    cap = min(cfg.max_delay_ms, cfg.base_delay_ms * (1 << min(attempt - 1, 30)))
    return int(uniform(request_id, attempt) * cap)


def retry_delay_ms(
    request_id: str, attempt: int, cfg: RetryConfig, retry_after_ms: int | None
) -> int | None:
    """The delay before retrying, or None when Retry-After is beyond max_delay_ms."""
    delay = backoff_ms(request_id, attempt, cfg)
    if retry_after_ms is None:
        return delay
    if retry_after_ms > cfg.max_delay_ms:
        return None
    return max(delay, retry_after_ms)


class RetryBudget(msgspec.Struct, frozen=True, kw_only=True):
    # (unix second, requests, retries), one per second, oldest first, within the window
    # (the window's oldest bucket being in it, the others are: a bump is O(1) then)
    buckets: tuple[tuple[int, int, int], ...] = ()


def _bump(b: RetryBudget, now_ms: int, window_s: int, requests: int, retries: int) -> RetryBudget:
    second = now_ms // 1000
    buckets = b.buckets
    if buckets and buckets[0][0] > second - window_s:  # the oldest is in the window: all are
        last = buckets[-1]
        if last[0] == second:  # the usual case: one more in the current second
            bumped = (second, last[1] + requests, last[2] + retries)
            return RetryBudget(buckets=(*buckets[:-1], bumped))
        if last[0] < second:
            return RetryBudget(buckets=(*buckets, (second, requests, retries)))
    # a bucket left the window, or the clock stepped back: keep the window, oldest first
    kept = [x for x in buckets if x[0] > second - window_s]
    kept.append((second, requests, retries))
    return RetryBudget(buckets=_merged(kept))


def normalized(b: RetryBudget) -> RetryBudget:
    """The same counts one bucket per second, oldest first (what `_bump`'s fast path
    relies on): for buckets from elsewhere, e.g. a snapshot of a version that appended
    a bucket whenever the clock stepped back."""
    buckets = _merged(b.buckets)
    return b if buckets == b.buckets else RetryBudget(buckets=buckets)


def _merged(buckets: Iterable[tuple[int, int, int]]) -> tuple[tuple[int, int, int], ...]:
    """Buckets summed by second, oldest first."""
    merged: dict[int, tuple[int, int]] = {}
    for s, req, ret in buckets:
        old = merged.get(s, (0, 0))
        merged[s] = (old[0] + req, old[1] + ret)
    return tuple((s, req, ret) for s, (req, ret) in sorted(merged.items()))


def note_request(b: RetryBudget, now_ms: int, cfg: RetryConfig) -> RetryBudget:
    return _bump(b, now_ms, cfg.retry_budget_window_s, 1, 0)


def note_retry(b: RetryBudget, now_ms: int, cfg: RetryConfig) -> RetryBudget:
    return _bump(b, now_ms, cfg.retry_budget_window_s, 0, 1)


def retry_allowed(b: RetryBudget, now_ms: int, cfg: RetryConfig) -> bool:
    """Would one more retry stay within the budget of the current window?"""
    oldest = now_ms // 1000 - cfg.retry_budget_window_s
    requests = sum(r for s, r, _ in b.buckets if s > oldest)
    retries = sum(t for s, _, t in b.buckets if s > oldest)
    return retries + 1 <= max(cfg.retry_budget_min, cfg.retry_budget_ratio * requests)
