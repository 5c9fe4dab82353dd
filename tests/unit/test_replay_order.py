"""Replay ordering: the log order replays fold in, and where a trail places breaker events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from turnout.analytics.archive import Archive, open_reader
from turnout.analytics.replay.source import Query, Recorded, from_archive, log_order
from turnout.analytics.replay.trail import describe, place, steps, trail_table
from turnout.analytics.rows import EventRow, KafkaPosition, record_row
from turnout.service.core import events as ev
from turnout.service.wire.cloudevents import encode, wrap

T0 = 1_767_225_600_000
R = {"request_id": "r1", "tenant": "acme"}


def rec(event: Any, time_ms: int, partition: int = 3, offset: int = 0) -> Recorded:
    env = wrap(event, id=f"e-{partition}-{offset}", time_ms=time_ms, source="turnout/router/t")
    return Recorded.of(env, partition=partition, offset=offset)


def marker(partition: int, offset: int, time_ms: int) -> Recorded:
    event = ev.RouterMarker(tenant="_system", instance="t", marker_id="m", partition=partition)
    return rec(event, time_ms, partition, offset)


logs = st.lists(
    st.tuples(st.integers(0, 3), st.integers(-50, 50)), max_size=40
).map(  # (partition, time step) -> records with increasing offsets per partition
    lambda steps: [
        marker(p, i, T0 + sum(s for _, s in steps[: i + 1])) for i, (p, _) in enumerate(steps)
    ]
)


@given(logs)
def test_log_order_keeps_each_partition_in_offset_order_and_loses_nothing(
    records: list[Recorded],
) -> None:
    ordered = log_order(reversed(records))
    assert sorted(ordered, key=lambda r: (r.partition, r.offset)) == sorted(
        records, key=lambda r: (r.partition, r.offset)
    )
    for p in range(4):
        offsets = [r.offset for r in ordered if r.partition == p]
        assert offsets == sorted(offsets)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1000)), max_size=40))
def test_with_clocks_that_never_run_back_log_order_is_time_then_partition_then_offset(
    points: list[tuple[int, int]],
) -> None:
    records, per_partition = [], {p: sorted(t for q, t in points if q == p) for p in range(4)}
    for p, times in per_partition.items():
        records += [marker(p, i, T0 + t) for i, t in enumerate(times)]
    expected = sorted(records, key=lambda r: (r.time_ms, r.partition, r.offset))
    assert log_order(records) == expected


def test_an_event_stamped_earlier_than_its_predecessor_stays_after_it() -> None:
    late = [marker(1, 0, T0 + 100), marker(1, 1, T0 + 5)]  # the second router's clock lags
    other = [marker(2, 0, T0 + 50)]
    assert [(r.partition, r.offset) for r in log_order(late + other)] == [(2, 0), (1, 0), (1, 1)]


def test_the_archive_reads_back_in_the_same_log_order(tmp_path: Path) -> None:
    times = {0: [30, 10, 40], 1: [20, 20, 5], 2: [35]}  # partitions 0 and 1 run back once
    records = [marker(p, i, T0 + t) for p, ts in times.items() for i, t in enumerate(ts)]
    rows = [
        record_row(*encode(wrap(r.data, id=f"e{r.partition}{r.offset}", time_ms=r.time_ms,
                                source="s")), KafkaPosition("t", r.partition, r.offset))
        for r in records
    ]  # fmt: skip
    with Archive.open(tmp_path / "a.duckdb") as archive:
        archive.load_batch([r for r in rows if isinstance(r, EventRow)])
        archive.publish()
    con = open_reader(tmp_path / "a.duckdb")
    try:
        read = from_archive(con, Query()).events
    finally:
        con.close()
    expected = log_order(records)
    assert [(r.partition, r.offset) for r in read] == [(r.partition, r.offset) for r in expected]
    assert [(r.partition, r.offset) for r in expected] == [
        (1, 0), (1, 1), (1, 2), (0, 0), (0, 1), (2, 0), (0, 2)
    ]  # fmt: skip


def test_query_matches_every_condition_given() -> None:
    r = rec(ev.CacheMiss(**R, cache_key="k"), T0 + 10, partition=4)
    assert Query().matches(r)
    assert Query(request_id="r1", types=(ev.CacheMiss.TYPE,), partitions=(4,)).matches(r)
    assert Query(since_ms=T0 + 10, until_ms=T0 + 10, tenant="acme").matches(r)
    assert not Query(request_id="r2").matches(r)
    assert not Query(until_ms=T0 + 9).matches(r)
    assert not Query(partitions=(1, 2)).matches(r)
    assert not Query(tenant="globex").matches(r)


# --- a trail: a retried request that fell back, with the breakers around it ---


def failed(model: str, attempt: int) -> ev.AttemptFailed:
    return ev.AttemptFailed(
        **R, model=model, attempt=attempt, status=503, error_class="http_503",
        message="down", latency_ms=12.5, retryable=True, breaker_failure=True, fallback=True,
    )  # fmt: skip


def request_events() -> list[Recorded]:
    events: list[tuple[Any, int]] = [
        (ev.RouteDecided(**R, task_type="general", strategy="priority",
                         candidates=["bad/m", "good/m"], order=["bad/m", "good/m"]), 0),
        (ev.AttemptStarted(**R, model="bad/m", attempt=1, model_attempt=1), 0),
        (failed("bad/m", 1), 20),
        (ev.RetryScheduled(**R, model="bad/m", attempt=2, delay_ms=40, reason="http_503"), 20),
        (ev.AttemptStarted(**R, model="bad/m", attempt=2, model_attempt=2), 60),
        (failed("bad/m", 2), 80),
        (ev.FallbackTaken(**R, from_model="bad/m", to_model="good/m", reason="http_503"), 80),
        (ev.AttemptStarted(**R, model="good/m", attempt=3, model_attempt=1), 80),
        (ev.AttemptSucceeded(**R, model="good/m", attempt=3, status=200, latency_ms=9.0,
                             usage=ev.Usage(prompt_tokens=1, completion_tokens=2,
                                            total_tokens=3), cost_micros=5), 90),
    ]  # fmt: skip
    return [rec(e, T0 + t, 3, i) for i, (e, t) in enumerate(events)]


def test_a_breaker_the_request_opened_follows_the_failure_that_opened_it() -> None:
    opened = ev.BreakerOpened(model="bad/m", reason="2 consecutive failures", failures=2,
                              calls=2, open_until_ms=T0 + 60_080)  # fmt: skip
    breakers = [
        rec(ev.BreakerClosed(model="bad/m", successes=3), T0 - 1, 7, 0),  # before: left out
        rec(opened, T0 + 80, 7, 1),
        rec(ev.BreakerOpened(model="other/m", reason="x", failures=1, calls=1,
                             open_until_ms=0), T0 + 50, 7, 2),  # not this request's model
        rec(ev.BreakerHalfOpened(model="good/m"), T0 + 85, 7, 3),  # another request's doing
    ]  # fmt: skip
    placed = place(request_events(), breakers)
    types = [(r.type.removeprefix("turnout."), system) for r, system in placed]
    assert types == [
        ("route.decided", False),
        ("attempt.started", False),
        ("attempt.failed", False),
        ("retry.scheduled", False),
        ("attempt.started", False),
        ("attempt.failed", False),
        ("breaker.opened", True),
        ("fallback.taken", False),
        ("attempt.started", False),
        ("breaker.half_opened", True),
        ("attempt.succeeded", False),
    ]


def test_the_trail_explains_its_global_mark_only_when_it_shows_one() -> None:
    opened = ev.BreakerOpened(model="bad/m", reason="2 consecutive failures", failures=2,
                              calls=2, open_until_ms=T0 + 60_080)  # fmt: skip
    alone = trail_table("r", steps(request_events(), []))
    with_breaker = trail_table("r", steps(request_events(), [rec(opened, T0 + 80, 7, 1)]))
    assert alone.caption is None  # a new user read the legend with nothing it explains
    assert with_breaker.caption is not None and "global event" in str(with_breaker.caption)


def test_a_half_open_verdict_precedes_the_probe_it_admits() -> None:
    probe = [rec(ev.AttemptStarted(**R, model="bad/m", attempt=1, model_attempt=1), T0 + 5)]
    half = rec(ev.BreakerHalfOpened(model="bad/m"), T0 + 5, 7, 0)
    assert [r.type for r, _ in place(probe, [half])] == [
        ev.BreakerHalfOpened.TYPE,
        ev.AttemptStarted.TYPE,
    ]


def test_steps_give_offsets_from_the_first_event_and_words_for_each() -> None:
    trail = steps(request_events(), [])
    assert [s.offset_ms for s in trail] == [0, 0, 20, 20, 60, 80, 80, 80, 90]
    assert trail[0].detail == "priority: bad/m → good/m"
    assert trail[2].model == "bad/m" and "http_503 (HTTP 503) in 12.5 ms" in trail[2].detail
    assert trail[3].detail == "attempt 2 in 40 ms (after http_503)"
    assert trail[6].detail == "bad/m → good/m (http_503)" and trail[6].model == "good/m"


def test_every_known_event_type_has_words() -> None:
    breaker_open = [ev.SkippedModel(model="a", reason="breaker_open")]
    skipped = ev.RouteDecided(**R, task_type="g", strategy="priority", candidates=["a", "b"],
                              order=["b"], skipped=breaker_open)  # fmt: skip
    assert describe(skipped)[1] == "priority: b; skipped a (breaker_open)"
    limit = ev.RatelimitExceeded(**R, limit="burst", limit_value=5, retry_after_ms=100)
    assert describe(limit)[1] == "burst = 5 reached; retry after 100 ms"
    unknown = ev.RawEvent(type="turnout.future.thing", data={"n": 1})
    assert describe(unknown) == (None, '{"n":1}')
