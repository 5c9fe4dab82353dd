"""What a dashboard page shows: the time window, the bucket width and the filters.

Pure: no clock, no archive. The shell passes in the archive's oldest and
newest event times and the current time; everything else follows from the
sidebar's choices.

Rules:
- the window ends at the newest event in the archive (anchor `newest`, the
  default) or at the current time (anchor `now`). Anchored at the newest
  event, a replayed or old archive still shows its last 15 minutes; on a live
  archive the newest event is about a second old, so both anchors agree;
- `All` spans the whole archive, from its oldest event to the window's end;
  no window starts before the oldest event (a fresh archive's rate is not
  diluted by the hour before it existed);
- an empty filter means everything; filters are sorted tuples, so two equal
  choices give equal scopes (and hit the same cached query results);
- time series use the narrowest bucket of `BUCKETS_S` that cuts the window
  into at most `MAX_BUCKETS`: 1 s up to 7 d, each rung at most four times the
  one before, so any window from 30 s to 120 days gets 30 to 120 buckets (a
  5-minute window: 5 s, 15 min: 10 s, an hour: 30 s, 24 h: 15 min).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec

__all__ = [
    "ANCHORS",
    "BUCKETS_S",
    "MAX_BUCKETS",
    "MIN_BUCKETS",
    "RANGES",
    "REFRESH",
    "Scope",
    "Window",
    "bucket_seconds",
    "make_scope",
    "window",
]

RANGES: Final[dict[str, int | None]] = {
    "Last 5 min": 5 * 60,
    "Last 15 min": 15 * 60,
    "Last hour": 3600,
    "Last 6 h": 6 * 3600,
    "Last 24 h": 24 * 3600,
    "All": None,
}
"""Time range label -> seconds before the window's end (None: the whole archive)."""

REFRESH: Final[dict[str, int | None]] = {"Off": None, "5 s": 5, "15 s": 15, "60 s": 60}
"""Auto-refresh label -> seconds between reruns of the page (None: never)."""

ANCHORS: Final = ("newest", "now")
BUCKETS_S: Final = (
    1, 2, 5, 10, 15, 30,
    60, 120, 300, 900,
    3600, 3 * 3600, 6 * 3600,
    86_400, 7 * 86_400,
)  # fmt: skip
"""Bucket widths in seconds; buckets start at round times (`time_bucket` from midnight UTC)."""
MIN_BUCKETS: Final = 30
MAX_BUCKETS: Final = 120


class Window(msgspec.Struct, frozen=True, kw_only=True):
    """[start, end], both inclusive, timezone-aware UTC."""

    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        """The window's length; at least one second, so rates never divide by zero."""
        return max((self.end - self.start).total_seconds(), 1.0)


class Scope(msgspec.Struct, frozen=True, kw_only=True):
    """One page's slice of the archive: a window, its bucket width, the filters."""

    window: Window
    bucket_s: int
    tenants: tuple[str, ...] = ()
    task_types: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    def params(self) -> dict[str, Any]:
        """Query parameters ($start, $end, $bucket_s, $tenants, $task_types, $models)."""
        return {
            "start": self.window.start,
            "end": self.window.end,
            "bucket_s": self.bucket_s,
            "tenants": list(self.tenants),
            "task_types": list(self.task_types),
            "models": list(self.models),
        }

    @property
    def filtered(self) -> bool:
        return bool(self.tenants or self.task_types or self.models)


def window(
    range_s: int | None, *, oldest: datetime, newest: datetime, now: datetime, anchor: str
) -> Window:
    """The window of `range_s` seconds ending at the newest event or now (`anchor`)."""
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {ANCHORS}, not {anchor!r}")
    end = newest if anchor == "newest" else now
    first = min(oldest, end)
    if range_s is None:
        return Window(start=first, end=end)
    return Window(start=max(end - timedelta(seconds=range_s), first), end=end)


def bucket_seconds(span_s: float) -> int:
    """The narrowest bucket of BUCKETS_S that cuts `span_s` into at most MAX_BUCKETS
    (and at least MIN_BUCKETS, for spans from 30 s to 120 days)."""
    for width in BUCKETS_S:
        if span_s / width <= MAX_BUCKETS:
            return width
    return BUCKETS_S[-1]


def make_scope(
    w: Window,
    *,
    tenants: Iterable[str] = (),
    task_types: Iterable[str] = (),
    models: Iterable[str] = (),
) -> Scope:
    """A scope with sorted, de-duplicated filters and the bucket width `w` calls for."""
    return Scope(
        window=w,
        bucket_s=bucket_seconds(w.seconds),
        tenants=tuple(sorted(set(tenants))),
        task_types=tuple(sorted(set(task_types))),
        models=tuple(sorted(set(models))),
    )
