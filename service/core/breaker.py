"""Circuit breaker per model: a state machine written as a table, folded from events.

    closed --trip--> open --recovery_due--> half_open --probes_passed--> closed
                       ^                        |
                       +------probe_failed------+

Rules:
- `TRANSITIONS` is the whole machine; any other (state, trigger) pair is a bug
  and raises `BreakerTransitionError`. Open never goes straight to closed.
- The breaker never reads the clock: `now_ms` is an argument, so folding the
  same events gives the same breaker.
- Three pure functions: `record_call` folds a call outcome into the counters,
  `due_trigger` says which transition (if any) is now due, and `apply_trigger`
  folds a transition (the recorded `open_until_ms` comes from the event, so a
  replay never recomputes it).
- Trip conditions: `failure_threshold` consecutive failures, or a failure rate
  of at least `failure_rate` over `window_s` seconds with at least `min_calls`
  calls (per-second buckets keep the window small).
- The recovery timeout may be extended by an upstream `Retry-After`, never shortened.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from turnout.service.core.config import BreakerConfig

__all__ = [
    "TRANSITIONS",
    "Breaker",
    "BreakerTransitionError",
    "Status",
    "Trigger",
    "apply_trigger",
    "can_call",
    "due_trigger",
    "open_until",
    "record_call",
]

Status = Literal["closed", "open", "half_open"]
Trigger = Literal["trip", "recovery_due", "probe_failed", "probes_passed"]

TRANSITIONS: Final[dict[tuple[Status, Trigger], Status]] = {
    ("closed", "trip"): "open",
    ("open", "recovery_due"): "half_open",
    ("half_open", "probe_failed"): "open",
    ("half_open", "probes_passed"): "closed",
}


class BreakerTransitionError(Exception):
    """A transition the table does not allow: a bug, never an outcome."""


class Breaker(msgspec.Struct, frozen=True, kw_only=True):
    status: Status = "closed"
    consecutive_failures: int = 0
    # (unix second, calls, failures), oldest first, only within the rate window.
    buckets: tuple[tuple[int, int, int], ...] = ()
    open_until_ms: int = 0
    probe_successes: int = 0
    probe_failures: int = 0


def _next_status(status: Status, trigger: Trigger) -> Status:
    try:
        return TRANSITIONS[(status, trigger)]
    except KeyError:
        raise BreakerTransitionError(f"no transition from {status} on {trigger}") from None


def _add_to_window(
    buckets: tuple[tuple[int, int, int], ...], now_ms: int, failed: bool, window_s: int
) -> tuple[tuple[int, int, int], ...]:
    second = now_ms // 1000
    kept = [b for b in buckets if b[0] > second - window_s]
    if kept and kept[-1][0] == second:
        _, calls, failures = kept[-1]
        kept[-1] = (second, calls + 1, failures + int(failed))
    else:
        kept.append((second, 1, int(failed)))
    return tuple(kept)


def record_call(b: Breaker, *, failed: bool, now_ms: int, cfg: BreakerConfig) -> Breaker:
    """Fold one finished call to the model into the breaker's counters."""
    if b.status == "half_open":
        if failed:
            return msgspec.structs.replace(b, probe_failures=b.probe_failures + 1)
        return msgspec.structs.replace(b, probe_successes=b.probe_successes + 1)
    if b.status == "open":
        return b  # a late answer to a call started before the breaker opened
    buckets = b.buckets
    if cfg.failure_rate is not None:
        buckets = _add_to_window(buckets, now_ms, failed, cfg.window_s)
    consecutive = b.consecutive_failures + 1 if failed else 0
    return msgspec.structs.replace(b, consecutive_failures=consecutive, buckets=buckets)


def _rate_trips(b: Breaker, now_ms: int, cfg: BreakerConfig) -> str | None:
    if cfg.failure_rate is None:
        return None
    oldest = now_ms // 1000 - cfg.window_s
    calls = sum(c for s, c, _ in b.buckets if s > oldest)
    failures = sum(f for s, _, f in b.buckets if s > oldest)
    if calls and calls >= cfg.min_calls and failures / calls >= cfg.failure_rate:
        return f"failure rate {failures}/{calls} over {cfg.window_s}s"
    return None


def due_trigger(b: Breaker, now_ms: int, cfg: BreakerConfig) -> tuple[Trigger, str] | None:
    """The transition now due, with a human reason, or None."""
    if b.status == "closed":
        threshold = cfg.failure_threshold
        if threshold is not None and b.consecutive_failures >= threshold:
            return "trip", f"{b.consecutive_failures} consecutive failures"
        reason = _rate_trips(b, now_ms, cfg)
        return ("trip", reason) if reason else None
    if b.status == "open":
        return ("recovery_due", "recovery timeout elapsed") if now_ms >= b.open_until_ms else None
    if b.probe_failures:
        return "probe_failed", "a probe call failed"
    if b.probe_successes >= cfg.success_threshold:
        return "probes_passed", f"{b.probe_successes} probe calls succeeded"
    return None


def open_until(now_ms: int, cfg: BreakerConfig, retry_after_ms: int | None = None) -> int:
    """When an opening breaker may half-open: a longer Retry-After extends, never shortens."""
    hold = int(cfg.recovery_timeout_s * 1000)
    if retry_after_ms is not None:
        hold = max(hold, retry_after_ms)
    return now_ms + hold


def apply_trigger(b: Breaker, trigger: Trigger, *, open_until_ms: int = 0) -> Breaker:
    """Fold a recorded transition; counters start afresh in the new state."""
    status = _next_status(b.status, trigger)
    return Breaker(status=status, open_until_ms=open_until_ms if status == "open" else 0)


def can_call(b: Breaker, now_ms: int) -> bool:
    """May a call go to the model now? An open breaker past its deadline admits probes."""
    return b.status != "open" or now_ms >= b.open_until_ms
