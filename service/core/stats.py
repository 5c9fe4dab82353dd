"""Latency statistics per model, folded from successful attempts.

An exponentially weighted moving average (alpha 0.2) of attempt latency, plus
a count. Floats folded in the same order give the same result, so the fold
replays exactly; routing records its chosen order anyway.
"""

from __future__ import annotations

import msgspec

__all__ = ["ALPHA", "LatencyStat", "observe_latency"]

ALPHA = 0.2


class LatencyStat(msgspec.Struct, frozen=True, kw_only=True):
    count: int = 0
    ewma_ms: float = 0.0


def observe_latency(stat: LatencyStat, latency_ms: float) -> LatencyStat:
    if stat.count == 0:
        return LatencyStat(count=1, ewma_ms=latency_ms)
    ewma = stat.ewma_ms + ALPHA * (latency_ms - stat.ewma_ms)
    return LatencyStat(count=stat.count + 1, ewma_ms=ewma)
