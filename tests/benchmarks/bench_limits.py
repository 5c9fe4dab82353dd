"""Benchmark: rate-limit and budget decisions in the pure core, with same-run baselines.

Run: `.venv/bin/python tests/benchmarks/bench_limits.py [--decisions N]`

Limiter: one tenant under the default limits (600/min, 20 000/h, 200 000/day,
burst 50, 2M tokens/min) sends ~17 requests/s (Poisson, seeded), more than it
may. A full day of that traffic is folded first (untimed), so the day window
holds its 200 000 admissions; then N more requests are timed: `check` for
each, `admit` for those admitted, and `settle` (real usage) 1.5 s after each
admission. Baselines, on the same arrivals: the obvious exact limiter (count
each window by bisect, sum the token window each time) and a fixed-window
counter (what many gateways ship: fast, but not "N in any 60 s").

Budget: reserve decisions against a tenant with ~100 reservations in flight
(`decide_reserve` alone, then the full reserve/settle cycle with its folds);
baseline: the same decision computing the UTC period keys with datetime and the
limits with Decimal on every call. Target: >= 200 000 decisions/s each.
"""

from __future__ import annotations

import argparse
import random
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from turnout.service.core import events as ev
from turnout.service.core.budget import (
    TenantBudget,
    decide_reserve,
    decide_settle,
    evolve_budget,
)
from turnout.service.core.config import TenantLimits
from turnout.service.core.pricing import usd_to_micros
from turnout.service.core.ratelimit import DAY_MS, MINUTE_MS, TenantWindows, admit, check, settle

LIMITS = TenantLimits()
START_MS = 1_764_201_600_000  # 2025-11-27T00:00:00Z
Arrival = tuple[int, int, int]  # (time ms, estimated tokens, actual tokens)


def arrivals(count: int, seed: int, start_ms: int) -> list[Arrival]:
    rng = random.Random(seed)
    now, out = start_ms, []
    for _ in range(count):
        now += int(rng.expovariate(1 / 60))  # mean 60 ms: ~16.7 requests/s
        estimate = rng.randint(200, 800) + 512  # prompt + max_tokens
        out.append((now, estimate, rng.randint(150, estimate)))
    return out


# --- limiters: ours and the baselines, one driver ---------------------------------


class Ours:
    name = "turnout (O(1) per count window)"

    def __init__(self) -> None:
        self.w = TenantWindows()

    def decide(self, rid: str, now: int, tokens: int) -> bool:
        if check(self.w, LIMITS, now_ms=now, tokens=tokens) is not None:
            return False
        admit(self.w, LIMITS, request_id=rid, now_ms=now, tokens=tokens)
        return True

    def settle(self, rid: str, tokens: int) -> None:
        settle(self.w, request_id=rid, tokens=tokens)


_WINDOWS = (
    (1_000, LIMITS.burst),
    (60_000, LIMITS.requests_per_minute),
    (3_600_000, LIMITS.requests_per_hour),
    (86_400_000, LIMITS.requests_per_day),
)


class NaiveExact:
    """Exact too: bisect each window's start, sum the minute's tokens on every check."""

    name = "naive exact (bisect + sum)"

    def __init__(self) -> None:
        self.times: list[int] = []
        self.tokens: dict[str, list[int]] = {}  # rid -> [time, tokens], last minute
        self.order: deque[str] = deque()

    def decide(self, rid: str, now: int, tokens: int) -> bool:
        for window, limit in _WINDOWS:
            if (
                limit is not None
                and len(self.times) - bisect_right(self.times, now - window) >= limit
            ):
                return False
        while self.order and self.tokens[self.order[0]][0] <= now - MINUTE_MS:
            del self.tokens[self.order.popleft()]
        used = sum(t for _, t in self.tokens.values())
        if LIMITS.tokens_per_minute is not None and used + tokens > LIMITS.tokens_per_minute:
            return False
        self.times.append(now)
        if self.times[0] <= now - DAY_MS:
            del self.times[: bisect_right(self.times, now - DAY_MS)]
        self.tokens[rid] = [now, tokens]
        self.order.append(rid)
        return True

    def settle(self, rid: str, tokens: int) -> None:
        entry = self.tokens.get(rid)
        if entry is not None:
            entry[1] = tokens


class FixedWindow:
    """Counters per calendar second/minute/hour/day: cheap, and up to 2N in a sliding window."""

    name = "fixed windows (inexact)"

    def __init__(self) -> None:
        self.counts: dict[tuple[int, int], int] = {}
        self.tokens: dict[int, int] = {}

    def decide(self, rid: str, now: int, tokens: int) -> bool:
        keys = []
        for window, limit in _WINDOWS:
            key = (window, now // window)
            if limit is not None and self.counts.get(key, 0) >= limit:
                return False
            keys.append(key)
        minute = now // MINUTE_MS
        if self.tokens.get(minute, 0) + tokens > (LIMITS.tokens_per_minute or 0):
            return False
        for key in keys:
            self.counts[key] = self.counts.get(key, 0) + 1
        self.tokens[minute] = self.tokens.get(minute, 0) + tokens
        return True

    def settle(self, rid: str, tokens: int) -> None:
        pass  # fixed windows cannot move a request's tokens back into its window


def drive(limiter: Any, traffic: list[Arrival], first: int, admitted: list[int]) -> float:
    """Feed `traffic` to `limiter`; returns seconds spent. Admission times go to `admitted`."""
    due: deque[tuple[int, str, int]] = deque()
    start = time.perf_counter()
    for i, (now, estimate, actual) in enumerate(traffic, start=first):
        while due and due[0][0] <= now:
            _, rid, used = due.popleft()
            limiter.settle(rid, used)
        rid = str(i)
        if limiter.decide(rid, now, estimate):
            admitted.append(now)
            due.append((now + 1_500, rid, actual))
    return time.perf_counter() - start


def max_in_window(times: list[int], window: int) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def bench_limiter(decisions: int) -> None:
    warm = arrivals(int(DAY_MS / 60), seed=7, start_ms=START_MS)
    timed = arrivals(decisions, seed=8, start_ms=warm[-1][0])
    print(f"limiter: default limits, ~16.7 req/s; warm-up {len(warm):,}, timed {len(timed):,}")
    baseline_rate = None
    for cls in (Ours, NaiveExact, FixedWindow):
        limiter = cls()
        warm_times: list[int] = []
        drive(limiter, warm, 0, warm_times)
        times: list[int] = []
        seconds = drive(limiter, timed, len(warm), times)
        all_times = warm_times + times
        rate = len(timed) / seconds
        baseline_rate = baseline_rate or rate
        print(
            f"  {cls.name:<33} {rate:>10,.0f} decisions/s  admitted {len(times):>6,}"
            f"  max in any 60 s: {max_in_window(all_times, MINUTE_MS):>4}"
            f" (limit {LIMITS.requests_per_minute}), any 1 s: {max_in_window(all_times, 1_000)}"
            f" (burst {LIMITS.burst})"
        )
        if isinstance(limiter, Ours):
            w = limiter.w
            print(
                f"    state: {len(w.times) - w.start:,} admission times kept"
                f" ({w.times.itemsize * len(w.times):,} bytes),"
                f" {len(w.spends)} token entries (last minute), {len(w.unsettled)} unsettled"
            )
    print("  (decisions/s include the settles folded in the same loop)")


# --- budgets --------------------------------------------------------------------


def naive_reserve(
    b: TenantBudget, *, tenant: str, request_id: str, amount_micros: int, limits: TenantLimits,
    now_ms: int,
) -> list[Any]:  # fmt: skip
    """`decide_reserve` without caching: datetime and Decimal on every call."""
    when = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    day, month = when.strftime("%Y-%m-%d"), when.strftime("%Y-%m")
    for period, key, usd in (
        ("lifetime", "lifetime", limits.budget_usd_lifetime),
        ("month", month, limits.budget_usd_per_month),
        ("day", day, limits.budget_usd_per_day),
    ):
        if usd is None:
            continue
        limit = usd_to_micros(usd)
        spent, reserved = b.spent.get(key, 0), b.reserved.get(key, 0)
        if spent + reserved + amount_micros > limit:
            return [ev.BudgetExceeded(
                request_id=request_id, tenant=tenant, period=period, level="hard",
                limit_micros=limit, spent_micros=spent, reserved_micros=reserved,
                requested_micros=amount_micros,
            )]  # fmt: skip
    return [ev.BudgetReserved(
        request_id=request_id, tenant=tenant, amount_micros=amount_micros, day=day, month=month
    )]  # fmt: skip


def bench_budget(decisions: int) -> None:
    limits = TenantLimits(budget_usd_per_day=50.0, budget_usd_per_month=1000.0)
    b = TenantBudget()
    open_ids: deque[str] = deque()
    now = START_MS

    def cycle(i: int) -> None:  # one reserve decision + fold; settle the oldest of 100
        nonlocal now
        now += 50
        rid = f"r{i}"
        for e in decide_reserve(
            b, tenant="acme", request_id=rid, amount_micros=1_200, limits=limits, now_ms=now
        ):
            evolve_budget(b, e)
        open_ids.append(rid)
        if len(open_ids) > 100:
            done = open_ids.popleft()
            for e in decide_settle(
                b, tenant="acme", request_id=done, actual_micros=300, limits=limits
            ):
                evolve_budget(b, e)

    for i in range(1_000):
        cycle(i)
    print(f"budget: {len(b.open)} reservations in flight, day limit $50, month $1000")

    def rate(decide: Callable[..., list[Any]]) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for i in range(decisions):
                decide(
                    b, tenant="acme", request_id=f"x{i % 64}", amount_micros=1_200,
                    limits=limits, now_ms=now + i,
                )  # fmt: skip
            best = min(best, time.perf_counter() - start)
        return decisions / best

    ours, naive = rate(decide_reserve), rate(naive_reserve)
    start = time.perf_counter()
    for i in range(1_000, 1_000 + decisions):
        cycle(i)
    cycles = decisions / (time.perf_counter() - start)
    print(f"  decide_reserve (turnout)             {ours:>10,.0f} decisions/s")
    print(f"  naive (datetime + Decimal each call) {naive:>10,.0f} decisions/s")
    print(f"  ratio: {ours / naive:.1f}x")
    print(f"  full cycle (reserve + settle, decided and folded): {cycles:>10,.0f} requests/s")
    print(f"  spent today: {b.spent.get(max(k for k in b.spent if len(k) == 10), 0):,} micros")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=500_000)
    decisions = parser.parse_args().decisions
    bench_limiter(decisions)
    bench_budget(decisions)


if __name__ == "__main__":
    main()
