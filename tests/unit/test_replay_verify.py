"""`replay verify`: what is compared, and the diff that shows where states part."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.analytics.replay.source import Recorded, log_order
from turnout.analytics.replay.verify import (
    MISSING,
    Difference,
    comparable,
    diff,
    parse_live,
    rebuild,
)
from turnout.analytics.synthetic import envelopes, workload
from turnout.service.core.config import parse_config
from turnout.service.health import finished_outcomes

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["a", "b", "c"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["x", "y", "z"]), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(json_values)
def test_a_value_never_differs_from_itself(value: Any) -> None:
    assert diff(value, value) == []


@given(json_values, json_values)
def test_diff_is_empty_exactly_when_the_values_are_equal(a: Any, b: Any) -> None:
    same = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert (diff(a, b) == []) == same


@given(json_values, json_values)
def test_diff_swaps_sides_with_its_arguments(a: Any, b: Any) -> None:
    swapped = [Difference(d.path, d.live, d.log) for d in diff(a, b)]
    assert sorted(diff(b, a), key=repr) == sorted(swapped, key=repr)


def test_diff_names_the_path_and_both_sides() -> None:
    log = {"breakers": {"m": {"status": "closed"}}, "inflight": ["r1", "r2"], "finished": 10}
    live = {"breakers": {"m": {"status": "open"}}, "inflight": ["r2", "r3"], "cache": {}}
    assert diff(log, live) == [
        Difference("breakers.m.status", "closed", "open"),
        Difference("cache", MISSING, {}),
        Difference("finished", 10, MISSING),
        Difference("inflight[]", "r1", MISSING),
        Difference("inflight[]", MISSING, "r3"),
    ]


def test_true_is_not_one() -> None:
    assert diff({"a": True}, {"a": 1}) == [Difference("a", True, 1)]


def snapshot(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "breakers": {"m": {"status": "open", "consecutive_failures": 4, "buckets": [[1, 2, 3]],
                           "open_until_ms": 99, "probe_successes": 0, "probe_failures": 0}},
        "latency": {"m": {"count": 3, "ewma_ms": 81.5}},
        "retry_budget": {"buckets": [[1, 9, 1]]},
        "inflight": ["r9"],
        "finished": 7,
        "budgets": {"acme": {"spent_micros": 10}},
    }  # fmt: skip
    return base | changes


def test_counters_that_depend_on_how_partitions_interleave_are_not_compared() -> None:
    other = snapshot(
        breakers={"m": {"status": "open", "consecutive_failures": 0, "buckets": [],
                        "open_until_ms": 99, "probe_successes": 0, "probe_failures": 0}},
        latency={"m": {"count": 3, "ewma_ms": 80.0}},
        retry_budget={"buckets": []},
    )  # fmt: skip
    assert diff(comparable(snapshot()), comparable(other)) == []


def test_what_the_log_defines_is_compared_including_parts_added_later() -> None:
    other = snapshot(budgets={"acme": {"spent_micros": 11}}, inflight=[], finished=8)
    assert [d.path for d in diff(comparable(snapshot()), comparable(other))] == [
        "budgets.acme.spent_micros",
        "finished",
        "inflight[]",
    ]


def test_the_rebuilt_finished_requests_are_summarised_like_the_router_does() -> None:
    envs = list(envelopes(workload(90)))
    records = log_order(Recorded.of(e, partition=0, offset=i) for i, e in enumerate(envs))
    state = rebuild(records, parse_config({}, {}))
    summary = finished_outcomes(state)
    assert summary["by_outcome"] == {"completed": 50, "failed": 10, "rejected": 10}
    state.finished.pop_kind(next(iter(state.finished)))
    assert finished_outcomes(state)["digest"] != summary["digest"]


def test_a_state_document_is_read_and_a_router_not_ready_is_refused() -> None:
    doc = {"instance": "r1", "ready": True, "partitions": [3, 1], "system_partition": 7,
           "state": snapshot(), "finished_outcomes": {"by_outcome": {}, "digest": "x"}}  # fmt: skip
    live = parse_live(json.dumps(doc).encode(), "file.json")
    assert (live.instance, live.partitions, live.system_partition) == ("r1", (1, 3), 7)
    with pytest.raises(ValueError, match="not ready"):
        parse_live(json.dumps(doc | {"ready": False}).encode(), "u")
    with pytest.raises(ValueError, match="not a router's /state document"):
        parse_live(b'{"status": "alive"}', "u")
