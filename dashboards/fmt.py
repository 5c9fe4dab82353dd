"""How numbers read on the dashboards: short, with their unit, a dash when unknown.

Pure functions of a value. None and NaN (what SQL aggregates over no rows
give) print as `NONE` (an en dash), never as "nan" or "None".
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Final

__all__ = ["NONE", "ago", "bytes_", "count", "duration", "ms", "number", "pct", "rate", "usd"]

NONE: Final = "\u2013"  # an en dash
_BYTE_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB")


def _missing(value: float | int | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def count(value: float | int | None) -> str:
    """12,345"""
    return NONE if _missing(value) else f"{round(value):,}"  # type: ignore[arg-type]


def number(value: float | int | None, digits: int = 2) -> str:
    return NONE if _missing(value) else f"{value:,.{digits}f}"


def rate(value: float | None) -> str:
    """Requests per second: two significant decimals below 10/s."""
    if _missing(value):
        return NONE
    assert value is not None
    return f"{value:,.2f}/s" if value < 10 else f"{value:,.1f}/s"


def ms(value: float | None) -> str:
    """812 ms, 1.25 s"""
    if _missing(value):
        return NONE
    assert value is not None
    return f"{value:,.0f} ms" if value < 1000 else f"{value / 1000:,.2f} s"


def pct(value: float | None) -> str:
    """A ratio (0.125) as a percentage (12.5%)."""
    return NONE if _missing(value) else f"{value * 100:.1f}%"  # type: ignore[operator]


def usd(value: float | None) -> str:
    """Dollars: cents above $1, more digits below (LLM calls cost fractions of a cent)."""
    if _missing(value):
        return NONE
    assert value is not None
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.6f}".rstrip("0").rstrip(".")


def bytes_(value: float | int | None) -> str:
    """1.5 MiB"""
    if _missing(value):
        return NONE
    assert value is not None
    size, unit = float(value), 0
    while abs(size) >= 1024 and unit < len(_BYTE_UNITS) - 1:
        size, unit = size / 1024, unit + 1
    return f"{size:.0f} {_BYTE_UNITS[unit]}" if unit == 0 else f"{size:.1f} {_BYTE_UNITS[unit]}"


def ago(then: datetime, now: datetime) -> str:
    """How long before `now` `then` was: "12 s ago", "3 min ago", "2 h ago", "4 d ago"."""
    seconds = (now - then) / timedelta(seconds=1)
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def duration(ms_: int) -> str:
    """An alert rule's duration as written in rules files: 90000 -> "1m30s", 0 -> "0s"."""
    if ms_ <= 0:
        return "0s"
    parts = []
    rest = ms_
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    if rest:
        parts.append(f"{rest}ms")
    return "".join(parts)
