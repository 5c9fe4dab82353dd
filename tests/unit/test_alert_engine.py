"""The alert engine: its transition table, an error-rate episode driven by `now_ms`,
label sets, restore by folding events, and Hypothesis properties of episodes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.analytics.alerts.engine import (
    TRANSITIONS,
    AlertEvent,
    AlertState,
    Phase,
    Sample,
    Signal,
    evaluate,
    evolve,
    phase_of,
    to_samples,
)
from turnout.analytics.alerts.rules import Rule
from turnout.service.core.events import AlertFired, AlertResolved

T0 = 1_767_225_600_000
ERROR_RATE = Rule(
    name="error_rate", sql="SELECT 1", op=">", threshold=0.05,
    for_ms=30_000, every_ms=10_000, severity="critical",
)  # fmt: skip


def rule(**changes: object) -> Rule:
    fields = {f: getattr(ERROR_RATE, f) for f in ERROR_RATE.__slots__}
    return Rule(**{**fields, **changes})  # type: ignore[arg-type]


def run(r: Rule, steps: Sequence[tuple[int, list[Sample]]], state: AlertState | None = None):
    """Evaluate `r` at each (seconds after T0, samples); the events per step and the state."""
    state = {} if state is None else state
    out: list[list[AlertEvent]] = []
    for seconds, samples in steps:
        state, events = evaluate(state, r, samples, T0 + seconds * 1000)
        out.append(events)
    return out, state


def one(value: float | None) -> list[Sample]:
    return [({}, value)]


# --- the table ------------------------------------------------------------------


def test_the_table_covers_every_phase_and_signal() -> None:
    assert set(TRANSITIONS) == {(p, s) for p in Phase for s in Signal}


@pytest.mark.parametrize(
    ("phase", "signal", "expected"),
    [
        (Phase.OK, Signal.CLEAR, (Phase.OK, "none")),
        (Phase.OK, Signal.HOLDING, (Phase.PENDING, "none")),
        (Phase.OK, Signal.DUE, (Phase.FIRING, "fire")),
        (Phase.PENDING, Signal.CLEAR, (Phase.OK, "none")),
        (Phase.PENDING, Signal.DUE, (Phase.FIRING, "fire")),
        (Phase.FIRING, Signal.DUE, (Phase.FIRING, "none")),
        (Phase.FIRING, Signal.CLEAR, (Phase.RESOLVED, "resolve")),
        (Phase.RESOLVED, Signal.CLEAR, (Phase.OK, "none")),
        (Phase.RESOLVED, Signal.HOLDING, (Phase.PENDING, "none")),
    ],
)
def test_transitions(phase: Phase, signal: Signal, expected: tuple[Phase, str]) -> None:
    assert TRANSITIONS[(phase, signal)] == expected


# --- one episode, time driven by now_ms ------------------------------------------


def test_error_rate_over_5_percent_for_30s_fires_once_and_resolves_once() -> None:
    steps = [
        (0, one(0.01)),  # below: ok
        (10, one(0.04)),  # below: ok
        (20, one(0.08)),  # holds: pending since 20 s
        (40, one(0.09)),  # 20 s: still pending
        (50, one(0.12)),  # 30 s: fires
        (60, one(0.15)),  # firing: nothing new
        (70, one(0.10)),
        (80, one(0.03)),  # clears: resolves
        (90, one(0.02)),  # ok: nothing
    ]
    events, state = run(ERROR_RATE, steps)
    assert [len(e) for e in events] == [0, 0, 0, 0, 1, 0, 0, 1, 0]
    fired, resolved = events[4][0], events[7][0]
    assert fired == AlertFired(
        rule="error_rate", severity="critical", labels={}, value=0.12,
        op=">", threshold=0.05, pending_since_ms=T0 + 20_000,
    )  # fmt: skip
    assert resolved == AlertResolved(
        rule="error_rate", severity="critical", labels={}, value=0.03, fired_at_ms=T0 + 50_000
    )
    assert state == {}


def test_phases_along_the_episode() -> None:
    phases = []
    state: AlertState = {}
    for seconds, value in [(0, 0.01), (20, 0.08), (50, 0.1), (80, 0.0), (90, 0.0)]:
        state, _ = evaluate(state, ERROR_RATE, one(value), T0 + seconds * 1000)
        phases.append(phase_of(state, "error_rate", ()))
    assert phases == ["ok", "pending", "firing", "resolved", "ok"]


def test_pending_that_stops_holding_goes_back_to_ok_silently() -> None:
    events, state = run(
        ERROR_RATE, [(0, one(0.2)), (20, one(0.2)), (25, one(0.01)), (40, one(0.2))]
    )
    assert events == [[], [], [], []]
    assert state["error_rate"][()].since_ms == T0 + 40_000  # a new episode starts over


def test_for_zero_fires_on_the_first_holding_evaluation() -> None:
    events, _ = run(rule(for_ms=0), [(0, one(0.2)), (1, one(0.2))])
    assert [type(e) for step in events for e in step] == [AlertFired]
    assert events[0][0].pending_since_ms == T0


def test_a_new_episode_after_resolve_fires_again() -> None:
    r = rule(for_ms=0)
    events, _ = run(r, [(0, one(1)), (1, one(0)), (2, one(1)), (3, one(0))])
    kinds = [type(e).__name__ for step in events for e in step]
    assert kinds == ["AlertFired", "AlertResolved", "AlertFired", "AlertResolved"]


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf])
def test_null_or_non_finite_does_not_hold(value: float | None) -> None:
    r = rule(for_ms=0, op="<", threshold=1.0)
    events, state = run(r, [(0, one(value))])
    assert events == [[]] and state == {}


def test_null_resolves_a_firing_alert_with_its_last_value() -> None:
    events, _ = run(rule(for_ms=0), [(0, one(0.3)), (1, one(None))])
    assert events[1] == [
        AlertResolved(rule="error_rate", severity="critical", labels={}, value=0.3, fired_at_ms=T0)
    ]


@pytest.mark.parametrize(
    ("op", "value", "holding"),
    [(">", 0.05, False), (">=", 0.05, True), ("<", 0.05, False), ("<=", 0.05, True),
     ("<", 0.04, True), (">", 0.06, True)],
)  # fmt: skip
def test_operators_at_the_threshold(op: str, value: float, holding: bool) -> None:
    events, _ = run(rule(op=op, for_ms=0), [(0, one(value))])
    assert bool(events[0]) is holding


# --- label sets ---------------------------------------------------------------------


def test_each_label_set_is_its_own_episode() -> None:
    a, b = {"model": "a"}, {"model": "b"}
    r = rule(for_ms=10_000)
    events, state = run(
        r,
        [
            (0, [(a, 0.2), (b, 0.01)]),
            (10, [(a, 0.2), (b, 0.2)]),  # a fires; b pending
            (20, [(a, 0.2), (b, 0.2)]),  # b fires
            (30, [(b, 0.2)]),  # a disappears: resolves
        ],
    )
    flat = [(type(e).__name__, e.labels["model"]) for step in events for e in step]
    assert flat == [("AlertFired", "a"), ("AlertFired", "b"), ("AlertResolved", "a")]
    assert phase_of(state, "error_rate", (("model", "b"),)) == "firing"


def test_rules_do_not_touch_each_others_episodes() -> None:
    other = rule(name="other", for_ms=0)
    state, _ = evaluate({}, other, one(1.0), T0)
    state, _ = evaluate(state, rule(for_ms=0), one(0.0), T0)
    assert phase_of(state, "other", ()) == "firing"


# --- restore: folding the archived events -------------------------------------------


def test_folding_the_events_restores_firing_and_resolve_follows() -> None:
    r = rule(for_ms=10_000)
    live: AlertState = {}
    log: list[tuple[AlertEvent, int]] = []
    for seconds, value in [(0, 0.2), (10, 0.2), (20, 0.3)]:
        now = T0 + seconds * 1000
        live, events = evaluate(live, r, one(value), now)
        log += [(e, now) for e in events]
    restored: AlertState = {}
    for event, time_ms in log:
        restored = evolve(restored, event, time_ms)
    assert _firing(restored) == _firing(live)  # the last value seen is not an event
    restored, again = evaluate(restored, r, one(0.4), T0 + 30_000)
    assert again == []  # no second fire after a restart
    _, done = evaluate(restored, r, one(0.0), T0 + 40_000)
    assert done == [
        AlertResolved(
            rule="error_rate", severity="critical", labels={}, value=0.0, fired_at_ms=T0 + 10_000
        )
    ]


def _firing(state: AlertState) -> dict[tuple[str, object], tuple[int, int | None]]:
    return {
        (name, labels): (ep.since_ms, ep.fired_at_ms)
        for name, episodes in state.items()
        for labels, ep in episodes.items()
        if ep.phase is Phase.FIRING
    }


def test_folding_a_resolved_event_clears_the_episode() -> None:
    fired = AlertFired(rule="x", severity="info", labels={"m": "a"}, value=1, op=">",
                       threshold=0, pending_since_ms=T0)  # fmt: skip
    resolved = AlertResolved(rule="x", severity="info", labels={"m": "a"}, value=0, fired_at_ms=T0)
    assert evolve(evolve({}, fired, T0), resolved, T0 + 1) == {}


# --- query results ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "rows", "samples"),
    [
        (["n"], [(3,)], [({}, 3.0)]),
        (["n"], [], []),
        (["n"], [(None,)], [({}, None)]),
        (["flag"], [(True,)], [({}, 1.0)]),
        (["value"], [(0.5,)], [({}, 0.5)]),
        (["model", "value"], [("a", 1), ("b", None)],
         [({"model": "a"}, 1.0), ({"model": "b"}, None)]),
        (["value", "tenant", "n"], [(2, None, 7)], [({"tenant": "", "n": "7"}, 2.0)]),
    ],
)  # fmt: skip
def test_to_samples(
    columns: list[str], rows: list[tuple[object, ...]], samples: list[Sample]
) -> None:
    assert to_samples(columns, rows) == samples


@pytest.mark.parametrize(
    ("columns", "rows", "message"),
    [
        (["a", "b"], [(1, 2)], "none is named value"),
        (["n"], [(1,), (2,)], "returns 2 rows of one column"),
        (["m", "value"], [("a", 1), ("a", 2)], "group by the label columns"),
        (["value"], [("high",)], "not a number"),
    ],
)
def test_to_samples_refuses_shapes_it_cannot_read(
    columns: list[str], rows: list[tuple[object, ...]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        to_samples(columns, rows)


# --- properties ---------------------------------------------------------------------

evaluations = st.lists(
    st.tuples(st.booleans(), st.integers(min_value=0, max_value=20_000)), max_size=60
)


@settings(max_examples=300, deadline=None)
@given(evaluations, st.sampled_from([0, 1, 5_000, 30_000]))
def test_fired_and_resolved_alternate_one_fire_per_episode(
    steps: list[tuple[bool, int]], for_ms: int
) -> None:
    r = rule(for_ms=for_ms, threshold=0.5)
    state: AlertState = {}
    now, held_since = T0, None
    kinds: list[str] = []
    for holding, dt in steps:
        now += dt
        held_since = (held_since or now) if holding else None
        state, events = evaluate(state, r, one(1.0 if holding else 0.0), now)
        assert len(events) <= 1
        for event in events:
            kinds.append(type(event).__name__)
            if isinstance(event, AlertFired):  # fires only after holding `for`
                assert holding and now - held_since >= for_ms
                assert event.pending_since_ms == held_since
            else:  # resolves only when it stops holding
                assert not holding
        firing = phase_of(state, "error_rate", ()) == Phase.FIRING
        assert firing == (kinds[-1:] == ["AlertFired"])
    assert kinds == ["AlertFired", "AlertResolved"] * (len(kinds) // 2) + ["AlertFired"] * (
        len(kinds) % 2
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from("abc"), st.sampled_from([None, 0.0, 1.0])),
            st.integers(min_value=0, max_value=5_000),
        ),
        max_size=40,
    ),
    st.sampled_from([0, 3_000]),
)
def test_per_label_set_alternation_and_replay_restores_firing(
    steps: list[tuple[dict[str, float | None], int]], for_ms: int
) -> None:
    r = rule(for_ms=for_ms, threshold=0.5)
    state: AlertState = {}
    replayed: AlertState = {}
    now = T0
    kinds: dict[str, list[str]] = {}
    for values, dt in steps:
        now += dt
        samples: list[Sample] = [({"model": m}, v) for m, v in values.items()]
        state, events = evaluate(state, r, samples, now)
        for event in events:
            kinds.setdefault(event.labels["model"], []).append(type(event).__name__)
            replayed = evolve(replayed, event, now)
    for seq in kinds.values():
        assert seq[::2] == ["AlertFired"] * len(seq[::2])
        assert seq[1::2] == ["AlertResolved"] * len(seq[1::2])
    firing = {k for k, ep in state.get("error_rate", {}).items() if ep.phase is Phase.FIRING}
    assert set(replayed.get("error_rate", {})) == firing
