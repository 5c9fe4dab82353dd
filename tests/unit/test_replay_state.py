"""`replay state --at`: reading TIME, folding up to it with the router's reducer, printing."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from turnout.analytics.replay.source import Recorded
from turnout.analytics.replay.state_at import (
    FOLD_SECTIONS,
    config_warnings,
    fold_until,
    parse_when,
    render_snapshot,
)
from turnout.analytics.synthetic import envelopes, workload
from turnout.service.core import events as ev
from turnout.service.core.config import config_hash, config_to_dict, parse_config
from turnout.service.core.state import fold
from turnout.service.wire.cloudevents import format_time, wrap

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        (" NOW ", NOW),
        ("-5m", NOW - 300_000),
        ("-1h30m", NOW - 5_400_000),
        ("-250ms", NOW - 250),
        ("-1.5s", NOW - 1_500),
        ("-2d", NOW - 172_800_000),
        ("2026-01-01T00:00:01.5Z", NOW + 1_500),
        ("2026-01-01T01:00:00+01:00", NOW),
        ("2025-12-31", NOW - 86_400_000),
    ],
)
def test_time_forms(text: str, expected: int) -> None:
    assert parse_when(text, now_ms=NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "-5", "5m", "-5x", "2026-13-01", "-m"])
def test_a_time_that_cannot_be_read_names_the_forms_that_can(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_when(text, now_ms=NOW)


@given(st.integers(0, 253_402_300_799_999))
def test_any_printed_event_time_reads_back_exactly(time_ms: int) -> None:
    assert parse_when(format_time(time_ms), now_ms=NOW) == time_ms


@given(st.integers(0, 10_000), st.integers(0, 59), st.integers(0, 999))
def test_relative_times_add_up(hours: int, minutes: int, ms: int) -> None:
    assert parse_when(f"-{hours}h{minutes}m{ms}ms", now_ms=NOW) == NOW - (
        hours * 3_600_000 + minutes * 60_000 + ms
    )


def log(requests: int = 60) -> list[Recorded]:
    envs = envelopes(workload(requests), t0_ms=NOW)
    return [Recorded.of(e, partition=0, offset=i) for i, e in enumerate(envs)]


CFG = parse_config({}, {})


@given(st.integers(NOW - 10, NOW + 3_000))
def test_the_state_at_a_time_is_the_router_fold_of_the_events_up_to_it(at: int) -> None:
    records = log()
    folded = fold_until(records, CFG, at)
    upto = [(r.time_ms, r.data) for r in records if r.time_ms <= at]
    assert folded.events == len(upto)
    assert folded.state.snapshot() == fold(upto, CFG).snapshot()


def test_a_breaker_open_at_the_time_shows_open_and_closed_after() -> None:
    opened = ev.BreakerOpened(model="m", reason="r", failures=5, calls=5, open_until_ms=NOW + 60)
    events = [(opened, NOW), (ev.BreakerHalfOpened(model="m"), NOW + 60),
              (ev.BreakerClosed(model="m", successes=3), NOW + 90)]  # fmt: skip
    records = [
        Recorded.of(wrap(e, id=str(i), time_ms=t, source="s"), partition=2, offset=i)
        for i, (e, t) in enumerate(events)
    ]
    status = [
        fold_until(records, CFG, at).state.breakers["m"].status for at in (NOW, NOW + 60, NOW + 90)
    ]
    assert status == ["open", "half_open", "closed"]


def applied(cfg_raw: dict[str, Any], instance: str) -> ev.ConfigApplied:
    cfg = parse_config(cfg_raw, {})
    logged = json.loads(json.dumps(config_to_dict(cfg)))  # as the event carries it
    return ev.ConfigApplied(instance=instance, config_hash=config_hash(cfg), config=logged)


def test_a_router_config_that_folds_differently_is_named_and_one_that_only_runs_elsewhere_not() -> (
    None
):
    def local(url: str, glob: str) -> dict[str, Any]:
        return {"providers": {"local": {"base_url": url, "models": [glob]}}}

    here = parse_config(local("http://here/v1", "m/*"), {})
    records = [
        applied(local("http://here/v1", "m/*"), "same"),
        applied(
            local("http://here/v1", "m/*") | {"kafka": {"bootstrap": "elsewhere:9092"}}, "moved"
        ),
        # where a provider runs, what it serves, the gateway, topics, routes and streaming
        # do not change the fold (the events record what was routed and served)
        applied(
            local("http://elsewhere/v1", "n/*")
            | {
                "gateway": {"port": 9000},
                "topics": {"events_retention_ms": 86_400_000},
                "routes": {"general": {"models": ["n/one"]}},
                "streaming": {"flush_ms": 5},
            },
            "served",
        ),
        applied(local("http://here/v1", "m/*") | {"cache": {"ttl_s": 5}}, "c1"),
        applied(local("http://here/v1", "m/*") | {"breaker": {"failure_threshold": 2}}, "r1"),
        applied(local("http://here/v1", "m/*") | {"breaker": {"failure_threshold": 2}}, "r2"),
    ]
    warnings = config_warnings(records, here)
    assert len(warnings) == 2
    assert "router c1" in warnings[0] and "[cache]" in warnings[0]
    assert "router r1, r2" in warnings[1] and "[breaker]" in warnings[1]


def test_the_sections_the_fold_reads_are_sections_of_the_config() -> None:
    assert set(config_to_dict(CFG)) >= FOLD_SECTIONS


def render(snapshot: dict[str, Any]) -> str:
    out = io.StringIO()
    Console(file=out, width=200).print(render_snapshot(snapshot))
    return out.getvalue()


def test_printing_is_generic_so_a_new_part_of_the_state_shows_up_as_a_section() -> None:
    text = render(
        {
            "breakers": {"m": {"status": "open", "open_until_ms": NOW}},
            "budgets": {"acme": {"spent_micros": 1200, "day": "2026-01-01"}},
            "inflight": ["r1", "r2"],
            "finished": 3,
            "cache": {},
        }
    )
    assert "open" in text and format_time(NOW) in text  # an instant prints as a time
    assert "budgets" in text and "acme" in text and "1200" in text
    assert "inflight (2): r1, r2" in text
    assert "finished: 3" in text and "cache: none" in text
