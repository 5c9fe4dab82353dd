"""`turnout replay verify`: does the log rebuild what a live router holds?

A router serves from the fold of its own event partitions plus the `_system`
partition (`turnout.service.runtime.router`, `_rebuild`). Verify folds the same
partitions from the log (archive or topic) with the same reducer and the
configuration the router runs with (its `/state` carries it; `--config`
when it does not), and compares the result with the router's `GET /state`
(`turnout.service.health`) or a saved copy of it (`--snapshot FILE`).

Only what the log defines whatever the interleaving of partitions is
compared (`comparable`): a breaker's status and `open_until_ms` (its failure
counters depend on how attempts from different partitions interleave), the
number of successful calls per model (not the moving average), the finished
requests (count, outcomes and a digest of every id with its outcome), the
in-flight request ids, and every other part of the snapshot as is: per-tenant
parts (limits, budgets, cache) come from one partition each. Global parts
folded from many partitions in arrival order (`ORDER_DEPENDENT`) are left out.

`diff` is pure: a list of `Difference(path, log, live)`, empty when equal.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import msgspec
from rich.table import Table

from turnout.analytics.replay.source import Recorded
from turnout.analytics.replay.state_at import fold_until, plain
from turnout.service.core.config import Config, ConfigError, parse_config
from turnout.service.core.state import RouterState

__all__ = [
    "MISSING",
    "ORDER_DEPENDENT",
    "Difference",
    "LiveState",
    "comparable",
    "diff",
    "diff_table",
    "fold_config",
    "parse_live",
    "rebuild",
]

ORDER_DEPENDENT: Final = frozenset({"retry_budget"})
"""Snapshot parts that are global and folded in arrival order: not comparable."""
_ONLY: Final[dict[str, tuple[str, ...]]] = {
    "breakers": ("status", "open_until_ms"),
    "latency": ("count",),
}
"""Per-model parts compared by these fields alone."""


class _Missing:
    def __repr__(self) -> str:
        return "—"


MISSING: Final = _Missing()
"""A side that has no value at a path."""


class Difference(NamedTuple):
    path: str
    log: Any
    live: Any


@dataclass(frozen=True, slots=True)
class LiveState:
    """A router's `GET /state` (or a saved copy): who, which partitions, what state."""

    origin: str
    instance: str
    partitions: tuple[int, ...]
    system_partition: int
    state: dict[str, Any]
    finished_outcomes: dict[str, Any] | None
    config: dict[str, Any] | None  # the configuration the router folds with


class _View(msgspec.Struct, kw_only=True):
    instance: str = "?"
    partitions: list[int]
    system_partition: int
    state: dict[str, Any]
    finished_outcomes: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    ready: bool = True


def parse_live(body: bytes, origin: str) -> LiveState:
    """Read a `/state` document; ValueError saying what is wrong with it."""
    try:
        view = msgspec.json.decode(body, type=_View)
    except msgspec.MsgspecError as err:
        raise ValueError(f"{origin} is not a router's /state document: {err}") from None
    if not view.ready:
        raise ValueError(f"router {view.instance} at {origin} is not ready (rebalancing?)")
    return LiveState(
        origin=origin,
        instance=view.instance,
        partitions=tuple(sorted(view.partitions)),
        system_partition=view.system_partition,
        state=view.state,
        finished_outcomes=view.finished_outcomes,
        config=view.config,
    )


def fold_config(live: LiveState, fallback: Config) -> Config:
    """The configuration the router folds with (its /state says), else `fallback`.

    Raises ValueError when the document's configuration is not a valid one."""
    if live.config is None:
        return fallback
    try:
        return parse_config(live.config, {})
    except ConfigError as err:
        raise ValueError(f"the configuration in {live.origin} is not valid: {err}") from None


def rebuild(records: Iterable[Recorded], cfg: Config) -> RouterState:
    """The state a router owning these records' partitions would rebuild (log order)."""
    return fold_until(records, cfg).state


def comparable(
    snapshot: Mapping[str, Any], finished_outcomes: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The parts of a snapshot the log defines regardless of partition interleaving."""
    out: dict[str, Any] = {}
    for key, value in plain(snapshot).items():
        if key in ORDER_DEPENDENT:
            continue
        fields = _ONLY.get(key)
        if fields is not None and isinstance(value, dict):
            value = {
                name: {f: part.get(f) for f in fields} if isinstance(part, dict) else part
                for name, part in value.items()
            }
        out[key] = value
    if finished_outcomes is not None:
        out["finished_outcomes"] = plain(finished_outcomes)
    return out


def _scalar(value: Any) -> bool:
    return not isinstance(value, dict | list)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _diff_list(log: list[Any], live: list[Any], path: str) -> list[Difference]:
    if all(map(_scalar, log)) and all(map(_scalar, live)):
        mine, theirs = Counter(log), Counter(live)
        found = [Difference(f"{path}[]", x, MISSING) for x in (mine - theirs).elements()]
        found += [Difference(f"{path}[]", MISSING, x) for x in (theirs - mine).elements()]
        return found or [Difference(path, log, live)]  # the same items in another order
    found = []
    for i in range(max(len(log), len(live))):
        a = log[i] if i < len(log) else MISSING
        b = live[i] if i < len(live) else MISSING
        found.extend(diff(a, b, f"{path}[{i}]"))
    return found


def diff(log: Any, live: Any, path: str = "") -> list[Difference]:
    """Where `log` and `live` (plain JSON data) differ; empty when they are equal."""
    if isinstance(log, dict) and isinstance(live, dict):
        found = []
        for key in sorted(set(log) | set(live), key=str):
            sub = f"{path}.{key}" if path else str(key)
            found.extend(diff(log.get(key, MISSING), live.get(key, MISSING), sub))
        return found
    if isinstance(log, list) and isinstance(live, list):
        if len(log) == len(live) and all(_equal(a, b) for a, b in zip(log, live, strict=True)):
            return []
        return _diff_list(log, live, path)
    if log is MISSING and live is MISSING:
        return []
    if log is MISSING or live is MISSING or not _same(log, live):
        return [Difference(path or "(all)", log, live)]
    return []


def _equal(a: Any, b: Any) -> bool:
    return not diff(a, b)


def _text(value: Any, width: int = 60) -> str:
    text = repr(value) if value is MISSING else msgspec.json.encode(value).decode()
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("[", r"\[")


def diff_table(
    differences: Sequence[Difference], *, title: str, limit: int = 50, live: str = "live router"
) -> Table:
    """The differences as a rich table (at most `limit` rows, then a count)."""
    table = Table("where", "rebuilt from the log", live, title=title, title_justify="left")
    for d in differences[:limit]:
        table.add_row(d.path.replace("[", r"\["), _text(d.log), _text(d.live))
    if len(differences) > limit:
        table.caption = f"… and {len(differences) - limit} more differences"
    return table
