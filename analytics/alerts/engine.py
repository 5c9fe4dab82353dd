"""The alert engine: one episode state machine per (rule, label set), as a table.

    evaluate(state, rule, samples, now_ms) -> Evaluation(state, events)

is pure: no clock, no I/O. `samples` are the rule query's rows as
(labels, value); `now_ms` is the evaluation time the shell chose. Per label
set the episode moves through `TRANSITIONS`, keyed by (phase, signal):

    signal   CLEAR    the value is NULL, not finite, or not `op threshold`;
                      a label set missing from `samples` counts as CLEAR
             HOLDING  it holds, but for less than the rule's `for`
             DUE      it has held for at least `for` (`for = 0`: at once)

    ok / resolved --HOLDING--> pending          --CLEAR--> ok (silently)
    ok / resolved --DUE------> firing  (emits AlertFired: one per episode)
    pending       --DUE------> firing  (emits AlertFired)
    firing        --CLEAR----> resolved (emits AlertResolved: one per episode)

Every other pair keeps its phase and emits nothing, so an alert fires once
per episode and resolves once, never on every evaluation. `resolved` behaves
like `ok`; it is kept for one evaluation so a status table can show it.
Episodes in phase `ok` are not stored: the state holds only label sets
that are pending, firing or just resolved.

`evolve(state, event, time_ms)` folds one archived AlertFired/AlertResolved
back into a state (the runner rebuilds firing episodes this way after a
restart); pending episodes are not events, so they start over.
"""

from __future__ import annotations

import decimal
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any, Final, NamedTuple, TypeAlias

import msgspec

from turnout.analytics.alerts.rules import Rule
from turnout.service.core.events import AlertFired, AlertResolved

__all__ = [
    "TRANSITIONS",
    "Action",
    "AlertEvent",
    "AlertState",
    "Episode",
    "Evaluation",
    "Labels",
    "Phase",
    "Sample",
    "Signal",
    "evaluate",
    "evolve",
    "holds",
    "labels_key",
    "phase_of",
    "to_samples",
]

Labels: TypeAlias = tuple[tuple[str, str], ...]
"""A label set as a hashable key: (name, value) pairs sorted by name."""

Sample: TypeAlias = tuple[Mapping[str, str], float | None]


class Phase(StrEnum):
    OK = "ok"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class Signal(StrEnum):
    CLEAR = "clear"
    HOLDING = "holding"
    DUE = "due"


class Action(StrEnum):
    NONE = "none"
    FIRE = "fire"
    RESOLVE = "resolve"


_P, _S, _A = Phase, Signal, Action
TRANSITIONS: Final[Mapping[tuple[Phase, Signal], tuple[Phase, Action]]] = {
    (_P.OK, _S.CLEAR): (_P.OK, _A.NONE),
    (_P.OK, _S.HOLDING): (_P.PENDING, _A.NONE),
    (_P.OK, _S.DUE): (_P.FIRING, _A.FIRE),
    (_P.PENDING, _S.CLEAR): (_P.OK, _A.NONE),
    (_P.PENDING, _S.HOLDING): (_P.PENDING, _A.NONE),
    (_P.PENDING, _S.DUE): (_P.FIRING, _A.FIRE),
    (_P.FIRING, _S.CLEAR): (_P.RESOLVED, _A.RESOLVE),
    (_P.FIRING, _S.HOLDING): (_P.FIRING, _A.NONE),  # only if the shell's clock steps back
    (_P.FIRING, _S.DUE): (_P.FIRING, _A.NONE),
    (_P.RESOLVED, _S.CLEAR): (_P.OK, _A.NONE),
    (_P.RESOLVED, _S.HOLDING): (_P.PENDING, _A.NONE),
    (_P.RESOLVED, _S.DUE): (_P.FIRING, _A.FIRE),
}
"""(phase, signal) -> (next phase, action): the whole episode state machine."""


class Episode(msgspec.Struct, frozen=True, kw_only=True):
    """One label set's episode: `since_ms` is when the condition began to hold
    (pending since), `fired_at_ms` when it fired, `value` the last finite value."""

    phase: Phase
    since_ms: int
    value: float
    fired_at_ms: int | None = None


AlertState: TypeAlias = Mapping[str, Mapping[Labels, Episode]]
"""Rule name -> label set -> episode (label sets in phase `ok` are absent)."""

AlertEvent: TypeAlias = AlertFired | AlertResolved


class Evaluation(NamedTuple):
    """What one evaluation of one rule did: the new state and the events it emits."""

    state: AlertState
    events: list[AlertEvent]


_COMPARE: Final[Mapping[str, Callable[[float, float], bool]]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def labels_key(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def holds(rule: Rule, value: float | None) -> bool:
    """Whether `value op threshold`; NULL and non-finite values never hold."""
    return value is not None and math.isfinite(value) and _COMPARE[rule.op](value, rule.threshold)


def evaluate(state: AlertState, rule: Rule, samples: Iterable[Sample], now_ms: int) -> Evaluation:
    """Step every episode of `rule` by one evaluation at `now_ms`.

    A label set given twice in `samples` counts by its last value.
    """
    current = state.get(rule.name, {})
    seen = {labels_key(labels): value for labels, value in samples}
    episodes: dict[Labels, Episode] = {}
    events: list[AlertEvent] = []
    for labels in [*seen, *(k for k in current if k not in seen)]:
        episode, event = step(current.get(labels), rule, labels, seen.get(labels), now_ms)
        if episode is not None:
            episodes[labels] = episode
        if event is not None:
            events.append(event)
    new_state = {**state, rule.name: episodes}
    if not episodes:
        del new_state[rule.name]
    return Evaluation(new_state, events)


def step(
    episode: Episode | None, rule: Rule, labels: Labels, value: float | None, now_ms: int
) -> tuple[Episode | None, AlertEvent | None]:
    """One label set, one evaluation: the next episode (None = ok) and its event."""
    phase = Phase.OK if episode is None else episode.phase
    since = episode.since_ms if episode and phase in _HOLDING_PHASES else now_ms
    signal = _signal(rule, value, now_ms - since)
    new_phase, action = TRANSITIONS[(phase, signal)]
    if new_phase is Phase.OK:
        return None, None
    last = value if value is not None and math.isfinite(value) else _last_value(episode)
    fired_at = now_ms if action is Action.FIRE else (episode.fired_at_ms if episode else None)
    new = Episode(phase=new_phase, since_ms=since, value=last, fired_at_ms=fired_at)
    return new, _event(action, rule, labels, new)


_HOLDING_PHASES: Final = frozenset({Phase.PENDING, Phase.FIRING})


def _signal(rule: Rule, value: float | None, held_ms: int) -> Signal:
    if not holds(rule, value):
        return Signal.CLEAR
    return Signal.DUE if held_ms >= rule.for_ms else Signal.HOLDING


def _last_value(episode: Episode | None) -> float:
    return 0.0 if episode is None else episode.value


def _event(action: Action, rule: Rule, labels: Labels, ep: Episode) -> AlertEvent | None:
    if action is Action.FIRE:
        return AlertFired(
            rule=rule.name,
            severity=rule.severity,
            labels=dict(labels),
            value=ep.value,
            op=rule.op,
            threshold=rule.threshold,
            pending_since_ms=ep.since_ms,
        )
    if action is Action.RESOLVE:
        assert ep.fired_at_ms is not None  # resolve only leaves a firing episode
        return AlertResolved(
            rule=rule.name,
            severity=rule.severity,
            labels=dict(labels),
            value=ep.value,
            fired_at_ms=ep.fired_at_ms,
        )
    return None


def evolve(state: AlertState, event: AlertEvent, time_ms: int) -> AlertState:
    """`state` after one archived alert event recorded at `time_ms` (its ce_time)."""
    episodes = dict(state.get(event.rule, {}))
    key = labels_key(event.labels)
    match event:
        case AlertFired():
            episodes[key] = Episode(
                phase=Phase.FIRING,
                since_ms=event.pending_since_ms,
                value=event.value,
                fired_at_ms=time_ms,
            )
        case AlertResolved():
            episodes.pop(key, None)
    new_state = {**state, event.rule: episodes}
    if not episodes:
        del new_state[event.rule]
    return new_state


def phase_of(state: AlertState, rule_name: str, labels: Labels) -> Phase:
    episode = state.get(rule_name, {}).get(labels)
    return Phase.OK if episode is None else episode.phase


# --- query results -> samples ------------------------------------------------


def to_samples(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Sample]:
    """The samples of a rule query's result.

    Either one column and at most one row (the number; no row = no sample),
    or a `value` column plus label columns (label values as text, NULL as
    ""). Raises ValueError saying how to fix any other shape.
    """
    if "value" in columns:
        return _labelled(columns, rows)
    if len(columns) != 1:
        raise ValueError(
            f"returns {len(columns)} columns and none is named value: "
            "name the number `value` (the other columns become labels)"
        )
    if len(rows) > 1:
        raise ValueError(
            f"returns {len(rows)} rows of one column: return one number, "
            "or a `value` column plus label columns"
        )
    return [({}, _number(row[0])) for row in rows]


def _labelled(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Sample]:
    at = list(columns).index("value")
    names = [(i, c) for i, c in enumerate(columns) if i != at]
    out: list[Sample] = []
    keys: set[Labels] = set()
    for row in rows:
        labels = {c: "" if row[i] is None else str(row[i]) for i, c in names}
        key = labels_key(labels)
        if key in keys:
            raise ValueError(f"two rows have the labels {labels}: group by the label columns")
        keys.add(key)
        out.append((labels, _number(row[at])))
    return out


def _number(raw: object) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool | int | float | decimal.Decimal):
        return float(raw)
    raise ValueError(f"value {raw!r} is a {type(raw).__name__}, not a number")
