"""`turnout replay state --at TIME`: the router's state as it was at TIME.

The state is `turnout.service.core.state.evolve` — the reducer the router runs —
folded over every event with time <= TIME, in `source.log_order`. Printing
is generic over `RouterState.snapshot()`: one section per top-level key, so
parts added to the state later show up without a change here.

Rules:
- TIME is RFC 3339 (any offset), a date (midnight UTC), `now`, or a relative
  `-5m` / `-1h30m` / `-250ms` (units ms, s, m, h, d) before now; `parse_when`
  is pure (now is an argument).
- The fold uses the configuration given (`--config`); each router logs the
  configuration it ran with (`turnout.config.applied`), and `config_warnings`
  names the sections that differ in ways the fold can see.
- Instants inside the state (`*_ms` keys holding a Unix time) print as UTC times.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from turnout.analytics.replay.source import Recorded
from turnout.service.core import events as ev
from turnout.service.core.config import Config, config_hash, config_to_dict
from turnout.service.core.state import RouterState, evolve
from turnout.service.wire.cloudevents import format_time, parse_time

__all__ = [
    "FOLD_SECTIONS",
    "Folded",
    "config_warnings",
    "fold_until",
    "parse_when",
    "plain",
    "render_snapshot",
]

_UNITS_MS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_RELATIVE: Final = re.compile(r"-((?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+)", re.ASCII)
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", re.ASCII)
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_TIME_FORMS: Final = "RFC 3339 (2026-11-27T08:15:00Z), a date (2026-11-27), now, or -5m / -1h30m"

FOLD_SECTIONS: Final = frozenset({"breaker", "cache", "features", "retry", "router", "tenants"})
"""The config sections the fold reads (`turnout.service.core.state.evolve` and the parts
it folds into); the others say where things run, or how requests are routed, served
and streamed, which the events already record."""


def parse_when(text: str, *, now_ms: int) -> int:
    """Unix ms of TIME (see the module docstring); ValueError naming the forms it takes."""
    spec = text.strip()
    if spec.lower() == "now":
        return now_ms
    if match := _RELATIVE.fullmatch(spec):
        ago = sum(float(n) * _UNITS_MS[unit] for n, unit in _PART.findall(match[1]))
        return now_ms - round(ago)
    if _DATE.fullmatch(spec):
        spec += "T00:00:00Z"
    try:
        return parse_time(spec)
    except ValueError:
        raise ValueError(f"cannot read the time {text!r}: give {_TIME_FORMS}") from None


@dataclass(frozen=True, slots=True)
class Folded:
    """A state folded from the log, with what went into it (and the configs it names)."""

    state: RouterState
    events: int
    last_ms: int | None
    configs: list[ev.ConfigApplied]


def fold_until(records: Iterable[Recorded], cfg: Config, until_ms: int | None = None) -> Folded:
    """Fold `records` (in log order, read once) with time <= `until_ms` (None: all)."""
    state, count, last, configs = RouterState(), 0, 0, []
    for rec in records:
        if until_ms is not None and rec.time_ms > until_ms:
            continue
        data = rec.data
        evolve(state, data, rec.time_ms, cfg)
        count += 1
        last = max(last, rec.time_ms)
        if isinstance(data, ev.ConfigApplied):
            configs.append(data)
    return Folded(state, count, last if count else None, configs)


def _differing_sections(mine: Mapping[str, Any], logged: Mapping[str, Any]) -> list[str]:
    return sorted(n for n in FOLD_SECTIONS if mine.get(n) != logged.get(n))


def config_warnings(applied: Iterable[ev.ConfigApplied], cfg: Config) -> list[str]:
    """One line per configuration routers ran with that folds differently from `cfg`."""
    ours, mine = config_hash(cfg), plain(config_to_dict(cfg))  # as the event carries it
    differing: dict[str, tuple[list[str], set[str]]] = {}
    for data in applied:
        if data.config_hash != ours:
            sections = _differing_sections(mine, data.config)
            if sections:
                differing.setdefault(data.config_hash, (sections, set()))[1].add(data.instance)
    return [
        f"router {', '.join(sorted(instances))} ran with config {h[:12]}, which differs from "
        f"the config used here (--config, else ./turnout.toml, else the defaults) in "
        f"[{', '.join(sections)}]: the fold uses the one here"
        for h, (sections, instances) in differing.items()
    ]


def plain(value: Any) -> Any:
    """`value` as JSON would give it back (tuples become lists, structs dicts)."""
    return msgspec.json.decode(msgspec.json.encode(value))


# --- printing ---------------------------------------------------------------

_LIST_SHOWN: Final = 20
_EPOCH_2001_MS: Final = 978_307_200_000


def _cell(key: str, value: Any) -> str:
    if (
        key.endswith("_ms")
        and isinstance(value, int)
        and not isinstance(value, bool)
        and value >= _EPOCH_2001_MS
    ):
        return format_time(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return msgspec.json.encode(value).decode()
    return str(value)


def _esc(text: str) -> str:
    return text.replace("[", r"\[")


def _rows_table(name: str, value: Mapping[str, Any]) -> Table:
    """A table for a mapping of mappings: one row per key, one column per inner key."""
    columns: list[str] = []
    for inner in value.values():
        columns.extend(k for k in inner if k not in columns)
    table = Table(name.rstrip("s") or "key", *columns, title=name, title_justify="left")
    for key, inner in value.items():
        table.add_row(_esc(str(key)), *(_esc(_cell(c, inner.get(c, ""))) for c in columns))
    return table


def _section(name: str, value: Any) -> RenderableType:
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return _rows_table(name, value)
    if isinstance(value, dict):
        if not value:
            return Text(f"{name}: none")
        table = Table("key", "value", title=name, title_justify="left")
        for key, inner in value.items():
            table.add_row(_esc(str(key)), _esc(_cell(str(key), inner)))
        return table
    if isinstance(value, list):
        shown = ", ".join(_cell(name, v) for v in value[:_LIST_SHOWN])
        more = f" … and {len(value) - _LIST_SHOWN} more" if len(value) > _LIST_SHOWN else ""
        return Text(f"{name} ({len(value)}): {shown or 'none'}{more}")
    return Text(f"{name}: {_cell(name, value)}")


def render_snapshot(snapshot: Mapping[str, Any]) -> Group:
    """One section per top-level key of a `RouterState.snapshot()` (plain data)."""
    return Group(*(_section(name, value) for name, value in plain(snapshot).items()))
