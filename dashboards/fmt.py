"""How figures read on the dashboards: with their unit, a sensible precision, a dash when unknown.

Pure functions of a value; every figure a page writes (tiles, tables, captions,
titles, tooltips of text) is text from here, so one figure reads the same
everywhere. Chart axes format their ticks themselves (d3 formats in `charts`).

Rules:
- None, NaN, NaT and pandas' NA (what SQL aggregates over no rows give) print
  as `NONE` (an en dash), never as "nan" or "None";
- counts are whole, with thousands separators (12,345);
- measurements keep three significant digits and drop trailing zeros: 220 ms,
  80.5 ms, 1.25 s, 8.14/s; money keeps cents from $1 up ($1,234.56) and three
  significant digits below ($0.000123: LLM calls cost fractions of a cent);
  ratios are percentages with one decimal (12.3%, "<0.1%" for a sliver);
- `*_short` variants are for KPI tiles, which must stay narrow (nine
  characters): from 100,000 (money: $1,000) they abbreviate to k, M, B (228k,
  $5.43k); the tile shows the exact figure in its tooltip.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any, Final

__all__ = [
    "NONE",
    "ago",
    "bytes_",
    "count",
    "count_short",
    "duration",
    "labels",
    "ms",
    "pct",
    "rate",
    "sig",
    "span",
    "times",
    "usd",
    "usd_short",
    "when",
]

NONE: Final = "\u2013"  # an en dash
_BYTE_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB")
_COMPACT: Final = (("", 1.0), ("k", 1e3), ("M", 1e6), ("B", 1e9), ("T", 1e12))
_SHORT_COUNT: Final = 100_000  # tiles abbreviate counts from here (228k)
_SHORT_USD: Final = 1000  # and money from here ($5.43k)


def _missing(value: Any) -> bool:
    """None, NaN, NaT, pandas' NA: anything not equal to itself (NA cannot even say)."""
    if value is None:
        return True
    try:
        return bool(value != value)
    except TypeError:  # pandas.NA
        return True


def sig(value: float | int | None, digits: int = 3) -> str:
    """`value` to `digits` significant digits (the whole part is never rounded away),
    with thousands separators and without trailing zeros: 219.81 -> 220, 0.000123456 ->
    0.000123, 12345.6 -> 12,346."""
    if _missing(value):
        return NONE
    assert value is not None
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    text = f"{value:,.{max(digits - 1 - magnitude, 0)}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _compact(value: float) -> str:
    """228k, 1.23M: three significant digits and the largest unit that keeps them under 1000."""
    for unit, size in _COMPACT:
        text = sig(value / size)
        if abs(float(text.replace(",", ""))) < 1000:
            return text + unit
    return sig(value / _COMPACT[-1][1]) + _COMPACT[-1][0]


def count(value: float | int | None) -> str:
    """12,345"""
    return NONE if _missing(value) else f"{round(value):,}"  # type: ignore[arg-type]


def count_short(value: float | int | None) -> str:
    """12,345 below 100,000; 228k, 1.23M above (for a tile)."""
    if _missing(value) or abs(value) < _SHORT_COUNT:  # type: ignore[arg-type]
        return count(value)
    return _compact(round(value))  # type: ignore[arg-type]


def rate(value: float | None) -> str:
    """Per second: 8.14/s, 0.5/s, 1,235/s; a slower rate per minute or hour: 4.2/min, 3/h."""
    if _missing(value):
        return NONE
    assert value is not None
    if value == 0 or abs(value) >= 0.1:
        return f"{sig(value)}/s"
    if abs(value * 60) >= 0.1:
        return f"{sig(value * 60, 2)}/min"
    return f"{sig(value * 3600, 2)}/h" if abs(value * 3600) >= 0.01 else "<0.01/h"


def ms(value: float | None) -> str:
    """A duration in milliseconds: 80.5 ms, 220 ms, then 1.25 s, 23.5 s, 999 s, 20.6 min,
    3.43 h: three significant digits in the largest unit that keeps them under 1000."""
    if _missing(value):
        return NONE
    assert value is not None
    if 0 < abs(value) < 0.005:
        return "<0.01 ms"
    if abs(value) < 1:
        return f"{round(value, 2):g} ms"
    for unit, size in (("ms", 1), ("s", 1000), ("min", 60_000)):
        if abs(value / size) < 999.5:
            return f"{sig(value / size)} {unit}"
    return f"{sig(value / 3_600_000)} h"


def pct(value: float | None) -> str:
    """A ratio (0.125) as a percentage (12.5%, 480%); a sliver above 0 or below 1 says so."""
    if _missing(value):
        return NONE
    assert value is not None
    percent = value * 100
    if 0 < percent < 0.05:
        return "<0.1%"
    if 99.95 <= percent < 100:
        return ">99.9%"
    return f"{percent:.1f}%" if abs(percent) < 100 else f"{percent:,.0f}%"


def usd(value: float | None) -> str:
    """Dollars: cents from $1 up ($1,234.56), three significant digits below ($0.000123),
    down to the micro-dollar money is counted in."""
    if _missing(value):
        return NONE
    assert value is not None
    sign, size = ("-" if value < 0 else ""), abs(value)
    if 0 < size < 0.0000005:
        return f"<{sign}$0.000001"
    return f"{sign}${size:,.2f}" if size >= 0.995 else f"{sign}${sig(size)}"


def usd_short(value: float | None) -> str:
    """For a tile: `usd` with two significant digits under a tenth of a cent ($0.000034);
    $5.43k, $1.23M from $1,000."""
    if _missing(value):
        return NONE
    assert value is not None
    sign, size = ("-" if value < 0 else ""), abs(value)
    if size >= _SHORT_USD:
        return f"{sign}${_compact(size)}"
    return f"{sign}${sig(size, 2)}" if 0.0000005 <= size < 0.001 else usd(value)


def times(value: float | None) -> str:
    """A factor: 2.8x, 12x (under 0.01: "<0.01x")."""
    if _missing(value):
        return NONE
    assert value is not None
    return "<0.01x" if 0 < abs(value) < 0.005 else f"{sig(value, 2)}x"


def bytes_(value: float | int | None) -> str:
    """1.5 MiB"""
    if _missing(value):
        return NONE
    assert value is not None
    size, unit = float(value), 0
    while abs(size) >= 1024 and unit < len(_BYTE_UNITS) - 1:
        size, unit = size / 1024, unit + 1
    return f"{size:.0f} {_BYTE_UNITS[unit]}" if unit == 0 else f"{size:.1f} {_BYTE_UNITS[unit]}"


def span(seconds: float) -> str:
    """A bucket or window width: 5 s, 1 min, 15 min, 6 h, 1 d (whole units when they fit)."""
    for unit, size in (("d", 86_400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:.0f} {unit}"
    return f"{sig(seconds)} s"


def when(value: Any, *, millis: bool = False) -> str:
    """A moment in UTC: 2026-01-01 05:33:29 (with `millis`: 05:33:29.123, the time only)."""
    if _missing(value):
        return NONE
    if getattr(value, "tzinfo", None) is not None:
        value = value.astimezone(UTC)
    text: str = value.strftime("%H:%M:%S.%f" if millis else "%Y-%m-%d %H:%M:%S")
    return text[:-3] if millis else text


def labels(value: str | None) -> str:
    """An alert's labels (a JSON object) as `name=value, ...`; {} as `NONE`."""
    if not value:
        return NONE
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    if not isinstance(parsed, dict):
        return value
    return ", ".join(f"{k}={v}" for k, v in parsed.items()) or NONE


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
