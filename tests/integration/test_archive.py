"""The DuckDB archive on a real file: idempotent loads, the views, snapshots for readers."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest

from turnout.analytics import synthetic
from turnout.analytics.archive import (
    DERIVED_VERSION,
    Archive,
    open_reader,
    snapshot_path,
    view_names,
)
from turnout.analytics.records import record_batch
from turnout.analytics.rows import ErrorRow, EventRow, KafkaPosition, record_row
from turnout.analytics.sink import SinkOptions
from turnout.analytics.synthetic import ROUTE_KINDS, Story, envelopes, workload
from turnout.service.core import events as ev
from turnout.service.errors import TurnoutError
from turnout.service.wire.cloudevents import encode

TERMINAL = {
    ev.RequestCompleted: "completed",
    ev.RequestFailed: "failed",
    ev.RequestRejected: "rejected",
    ev.RequestDeadlettered: "deadlettered",
    ev.RequestCancelled: "cancelled",
}


def rows_of(stories: list[Story], *, seed: int = 0) -> list[EventRow]:
    out = []
    for i, env in enumerate(envelopes(stories, seed=seed)):
        key, value, headers = encode(env)
        row = record_row(key, value, headers, KafkaPosition("t.events", i % 12, i))
        assert isinstance(row, EventRow)
        out.append(row)
    return out


def load(
    archive: Archive, rows: list[EventRow], *, batch: int = 200, derive_every: int = 3
) -> None:
    for n, i in enumerate(range(0, len(rows), batch)):
        archive.load_batch(rows[i : i + batch])
        if n % derive_every == derive_every - 1:
            archive.derive()
    archive.publish()


def query(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    names = [d[0] for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "turnout.duckdb"


# --- loading ----------------------------------------------------------------


def test_a_redelivered_batch_is_stored_once(path: Path) -> None:
    rows = rows_of(workload(20))
    with Archive.open(path) as archive:
        first = archive.load_batch(rows[:60])
        again = archive.load_batch(rows[30:])  # half of it redelivered
        twice = archive.load_batch(rows[:5] + rows[:5])  # a repeat inside one batch
        archive.publish()

    assert (first.inserted, first.duplicates) == (60, 0)
    assert (again.inserted, again.duplicates) == (len(rows) - 60, 30)
    assert (twice.inserted, twice.duplicates) == (0, 10)
    con = open_reader(path)
    assert con.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchall() == [
        (len(rows), len(rows))
    ]
    stored = con.execute("SELECT id, kafka_partition, kafka_offset FROM events ORDER BY id")
    assert stored.fetchall() == sorted((r.id, r.kafka_partition, r.kafka_offset) for r in rows)


def test_columns_hold_the_envelope_and_the_data_as_json(path: Path) -> None:
    rows = rows_of(workload(3))
    with Archive.open(path) as archive:
        archive.load_batch(rows)
        archive.publish()

    con = open_reader(path)
    got = query(
        con, "SELECT *, epoch_ms(time) AS ms, data->>'$.tenant' AS t FROM events ORDER BY id"
    )
    for row, want in zip(got, sorted(rows), strict=True):
        assert (row["id"], row["type"], row["ms"], row["tenant"]) == want[:4]
        assert (row["request_id"], row["source"], row["trace_id"]) == want[4:7]
        assert (row["kafka_partition"], row["kafka_offset"], row["t"]) == (*want[8:], want.tenant)
        assert row["batch_seq"] == 1


def test_data_duckdb_cannot_read_is_kept_as_a_sink_error_and_the_batch_goes_in(path: Path) -> None:
    rows = rows_of(workload(2))
    bad = rows[1]._replace(data="{not json")
    error = ErrorRow("t.events", 7, 99, None, "missing_header", "no ce_id", b"k", b"{}", [])
    with Archive.open(path) as archive:
        result = archive.load_batch([rows[0], bad, *rows[2:]], [error])
        again = archive.load_batch([], [error])  # redelivered errors are kept once
        archive.publish()

    assert (result.inserted, result.errors, again.errors) == (len(rows) - 1, 2, 1)
    con = open_reader(path)
    assert con.execute("SELECT count(*) FROM events").fetchall() == [(len(rows) - 1,)]
    errors = query(con, "SELECT * FROM sink_errors ORDER BY kafka_partition, kafka_offset")
    assert [(e["kafka_partition"], e["kafka_offset"], e["code"]) for e in errors] == [
        (bad.kafka_partition, bad.kafka_offset, "malformed_json"),
        (7, 99, "missing_header"),
    ]
    assert errors[0]["value"] == b"{not json"


def test_a_second_writer_is_refused_with_a_clear_message(path: Path) -> None:
    code = "import sys; from turnout.analytics.archive import Archive; Archive.open(sys.argv[1])"
    with Archive.open(path):
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=30
        )
    assert proc.returncode != 0
    assert "is open in another process" in proc.stderr


def test_a_second_writer_is_refused_also_after_a_snapshot_was_published(path: Path) -> None:
    # the snapshot copy closes a descriptor of the main file, which drops DuckDB's fcntl lock
    code = "import sys; from turnout.analytics.archive import Archive; Archive.open(sys.argv[1])"
    with Archive.open(path) as archive:
        archive.publish()
        proc = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=30
        )
    assert proc.returncode != 0
    assert "is open in another process" in proc.stderr


# --- views --------------------------------------------------------------------


def expected_request(story: Story) -> dict[str, Any]:
    """What `requests` must say, folded in Python straight from the story's events."""
    started = [e for e in story.events if isinstance(e, ev.AttemptStarted)]
    tried = list(dict.fromkeys(e.model for e in sorted(started, key=lambda e: e.attempt)))
    end = next((e for e in story.events if type(e) in TERMINAL), None)
    done = end if isinstance(end, ev.RequestCompleted) else None
    accepted = next((e for e in story.events if isinstance(e, ev.RequestAccepted)), None)
    route = next((e for e in story.events if isinstance(e, ev.RouteDecided)), None)
    ahead = route.candidates[: route.candidates.index(route.order[0])] if route else []
    skipped_open = [s for s in route.skipped if s.reason == "breaker_open"] if route else []
    return {
        "tenant": story.tenant,
        "task_type": accepted.task_type if accepted else None,
        "models_tried": tried,
        "final_model": done.model if done else (tried[-1] if tried else None),
        "outcome": TERMINAL[type(end)] if end else "in_flight",
        "error_code": getattr(end, "code", None),
        "attempts": getattr(end, "attempts", None) or max((e.attempt for e in started), default=0),
        "fallbacks": max(len(tried) - 1, 0) + sum(s.model in ahead for s in skipped_open),
        "cached": any(isinstance(e, ev.CacheHit) for e in story.events),
        "coalesced": any(isinstance(e, ev.RequestCoalesced) for e in story.events),
        "latency_ms": getattr(end, "latency_ms", None),
        "total_tokens": used.total_tokens if (used := getattr(end, "usage", None)) else None,
        "cost_micros": (cost := getattr(end, "cost_micros", None)),
        "cost_usd": cost / 1e6 if cost is not None else None,
    }


def test_requests_agree_with_the_raw_events_of_a_mixed_workload(path: Path) -> None:
    stories = workload(180)
    with Archive.open(path) as archive:
        load(archive, rows_of(stories))

    got = query(open_reader(path), "SELECT * FROM requests")
    assert len(got) == len(stories)
    by_id = {r["request_id"]: r for r in got}
    for story in stories:
        if story.request_id is None:
            continue
        want = expected_request(story)
        assert {k: by_id[story.request_id][k] for k in want} == want, story.kind
    dead = [r for r in got if r["outcome"] == "deadlettered"]
    assert Counter(r["tenant"] for r in dead) == Counter(
        s.tenant for s in stories if s.kind == "deadlettered"
    )
    assert {r["error_code"] for r in dead} == {"malformed_json"}


def test_a_stream_cut_short_or_cancelled_shows_what_it_was_charged(path: Path) -> None:
    """A stream that failed after its first token, or was cancelled, is charged for what
    was streamed (`budget_charged`); `requests` and `requests_per_minute` showed no cost
    and no tokens for it (only a completed request's), so spend in SQL fell short of
    the budget ledger."""
    kinds = ["streamed", "stream_cut", "stream_cancelled"]
    stories = [synthetic.story(k, f"s-{i}", "acme") for i, k in enumerate(kinds)]
    with Archive.open(path) as archive:
        load(archive, rows_of(stories))
    con = open_reader(path)
    got = {r["request_id"]: r for r in query(con, "SELECT * FROM requests")}
    for story in stories:
        want = expected_request(story)
        assert {k: got[story.request_id][k] for k in want} == want, story.kind
    assert [got[f"s-{i}"]["outcome"] for i in range(3)] == ["completed", "failed", "cancelled"]
    (ledger,) = con.execute(
        "SELECT sum(amount_micros) FROM budget_ledger WHERE entry = 'charged'"
    ).fetchone() or (None,)
    (facts,) = con.execute("SELECT sum(cost_micros) FROM requests").fetchone() or (None,)
    (minutes,) = con.execute("SELECT sum(cost_micros) FROM requests_per_minute").fetchone() or (
        None,
    )
    assert facts == minutes == ledger == 210 + 47 + 47


def test_a_first_choice_skipped_for_an_open_breaker_counts_as_a_fallback(path: Path) -> None:
    """The breaker sent the request elsewhere before any attempt: `fallback_rate` must
    see it. A model left out over a price cap is policy, not a fallback."""
    stories = [synthetic.story(k, f"{k}-{i}", "acme") for k in ROUTE_KINDS for i in range(3)]
    stories += [synthetic.story("ok", "ok-1", "acme"), synthetic.story("fallback", "fb-1", "acme")]
    with Archive.open(path) as archive:
        load(archive, rows_of(stories), batch=7)

    con = open_reader(path)
    got = dict(con.execute("SELECT request_id, fallbacks FROM requests").fetchall())
    assert got == {s.request_id: expected_request(s)["fallbacks"] for s in stories}
    assert {k: v for k, v in got.items() if v} == {
        "skipped_open-0": 1, "skipped_open-1": 1, "skipped_open-2": 1, "fb-1": 1
    }  # fmt: skip
    (per_minute,) = con.execute("SELECT sum(fallbacks) FROM requests_per_minute").fetchone() or ()
    assert per_minute == 4


def test_folding_in_steps_equals_folding_at_once(tmp_path: Path) -> None:
    rows = rows_of(workload(120))
    columns = "* EXCLUDE (started_at, finished_at, minute)"
    results = []
    for name, batch, every in [("steps", 37, 1), ("once", len(rows), 1)]:
        with Archive.open(tmp_path / f"{name}.duckdb") as archive:
            load(archive, rows, batch=batch, derive_every=every)
            archive.load_batch(rows[:100])  # a redelivery, folded again
            archive.publish()
        con = open_reader(tmp_path / f"{name}.duckdb")
        results.append(
            (
                con.execute(f"SELECT {columns} FROM requests ORDER BY request_id").fetchall(),
                con.execute("SELECT * FROM requests_per_minute ORDER BY ALL").fetchall(),
            )
        )
    assert results[0] == results[1]


def test_the_per_minute_rollup_equals_a_recount_from_requests(path: Path) -> None:
    with Archive.open(path) as archive:
        load(archive, rows_of(workload(300)), batch=150, derive_every=1)

    con = open_reader(path)
    recount = """
        SELECT minute, tenant, task_type, final_model, outcome, count(*), sum(attempts),
               quantile_cont(latency_ms, 0.99), coalesce(sum(cost_micros), 0)
        FROM requests GROUP BY ALL ORDER BY ALL"""
    table = """
        SELECT minute, tenant, task_type, model, outcome, requests, attempts,
               latency_p99_ms, cost_micros
        FROM requests_per_minute ORDER BY ALL"""
    assert con.execute(table).fetchall() == con.execute(recount).fetchall()
    assert con.execute("SELECT sum(requests) FROM requests_per_minute").fetchall() == [(300,)]


def test_attempts_breakers_budgets_and_alerts_views(path: Path) -> None:
    stories = workload(90)
    with Archive.open(path) as archive:
        load(archive, rows_of(stories))
    events = [e for s in stories for e in s.events]
    con = open_reader(path)

    attempts = query(con, "SELECT * FROM attempts")
    assert len(attempts) == sum(isinstance(e, ev.AttemptStarted) for e in events)
    assert Counter(a["outcome"] for a in attempts) == {
        "succeeded": sum(isinstance(e, ev.AttemptSucceeded) for e in events),
        "failed": sum(isinstance(e, ev.AttemptFailed) for e in events),
        "in_flight": sum(s.kind == "in_flight" for s in stories),
    }
    states = con.execute("SELECT state, count(*) FROM breaker_transitions GROUP BY ALL")
    assert dict(states.fetchall()) == {"open": 1, "half_open": 1, "closed": 1}
    ledger = query(
        con,
        "SELECT entry, sum(amount_micros) AS amount, sum(spent_delta_micros) AS spent,"
        " sum(reserved_delta_micros) AS reserved FROM budget_ledger GROUP BY ALL",
    )
    by_entry = {r["entry"]: r for r in ledger}
    charged = sum(e.amount_micros for e in events if isinstance(e, ev.BudgetCharged))
    assert by_entry["charged"]["spent"] == charged
    released = by_entry["released"]["reserved"]
    assert by_entry["reserved"]["reserved"] + released + by_entry["charged"][
        "reserved"
    ] == 1000 * sum(s.kind == "in_flight" for s in stories)
    alerts = query(con, "SELECT state, rule, labels->>'$.model' AS model FROM alerts ORDER BY time")
    assert [a["state"] for a in alerts] == ["fired", "resolved"]
    assert {a["rule"] for a in alerts} == {"error_rate"}


def test_every_view_answers_on_an_empty_archive(path: Path) -> None:
    with Archive.open(path) as archive:
        archive.publish()
    con = open_reader(path)
    for name in [*view_names(), "requests_per_minute", "sink_errors"]:
        assert con.execute(f"SELECT count(*) FROM {name}").fetchall() == [(0,)], name


def test_changed_derived_tables_are_rebuilt_from_the_events(path: Path) -> None:
    with Archive.open(path) as archive:
        load(archive, rows_of(workload(40)))
        before = archive.connection.execute("SELECT * FROM requests ORDER BY ALL").fetchall()
        archive.connection.execute(
            "UPDATE sink_state SET value = ? WHERE name = 'derived_version'", [DERIVED_VERSION - 1]
        )
    with Archive.open(path) as archive:
        assert archive.connection.execute("SELECT count(*) FROM request_facts").fetchall() == [(0,)]
        archive.publish()
        after = archive.connection.execute("SELECT * FROM requests ORDER BY ALL").fetchall()
    assert after == before


# --- readers ------------------------------------------------------------------


def test_readers_see_the_last_published_snapshot_while_the_writer_holds_the_file(
    path: Path,
) -> None:
    rows = rows_of(workload(30))
    with Archive.open(path) as archive:
        archive.load_batch(rows[:50])
        archive.publish()
        archive.load_batch(rows[50:])  # committed, not yet published

        reader = open_reader(path)
        assert reader.execute("SELECT count(*) FROM events").fetchall() == [(50,)]
        archive.publish()
        assert reader.execute("SELECT count(*) FROM events").fetchall() == [(50,)]  # its snapshot
        assert open_reader(path).execute("SELECT count(*) FROM events").fetchall() == [(len(rows),)]
        reader.close()
    assert not snapshot_path(path).with_name(snapshot_path(path).name + ".tmp").exists()


def test_a_reader_cannot_write(path: Path) -> None:
    with Archive.open(path) as archive:
        archive.load_batch(rows_of(workload(2)))
        archive.publish()
    con = open_reader(path)
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("DELETE FROM events")
    assert con.execute("SELECT count(*) > 0 FROM events").fetchall() == [(True,)]


def test_without_a_snapshot_readers_use_the_main_file_or_say_what_to_do(path: Path) -> None:
    with pytest.raises(TurnoutError, match="no archive at"):
        open_reader(path)
    with Archive.open(path) as archive:
        archive.load_batch(rows_of(workload(2)))
    assert not snapshot_path(path).exists()
    assert open_reader(path).execute("SELECT count(*) > 0 FROM events").fetchall() == [(True,)]


# --- the fast path agrees with the codec ------------------------------------------


@dataclass(frozen=True)
class Rec:
    """A consumed record, as the sink sees it."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    offset: int = 0
    topic: str = "t.events"
    partition: int = 1
    timestamp: int = 1_767_225_600_000


def _set(
    headers: list[tuple[str, bytes]], name: str, value: bytes | None
) -> list[tuple[str, bytes]]:
    kept = [(k, v) for k, v in headers if k != name]
    return kept if value is None else [*kept, (name, value)]


def _mutations() -> dict[str, Callable[[Rec], Rec]]:
    def header(name: str, value: bytes | None) -> Callable[[Rec], Rec]:
        return lambda r: replace(r, headers=_set(r.headers, name, value))

    def time_text(text: str) -> Callable[[Rec], Rec]:
        return header("ce_time", text.encode())

    return {
        "as sent": lambda r: r,
        "time lowercase": lambda r: replace(
            r, headers=_set(r.headers, "ce_time", dict(r.headers)["ce_time"].lower())
        ),
        "time offset": time_text("2026-01-01T01:00:00.5+01:00"),
        "time no fraction": time_text("2026-01-01T00:00:00Z"),
        "time many digits": time_text("2026-01-01T00:00:00.123456789012Z"),
        "time hour 24": time_text("2026-01-01T24:00:00.000Z"),
        "time year 0": time_text("0000-01-01T00:00:00.000Z"),
        "time feb 30": time_text("2026-02-30T00:00:00.000Z"),
        "time offset 24h": time_text("2026-01-01T00:00:00+24:00"),
        "time garbage": time_text("yesterday"),
        "no time": header("ce_time", None),
        "no id": header("ce_id", None),
        "empty source": header("ce_source", b""),
        "no type": header("ce_type", None),
        "unknown type": header("ce_type", b"turnout.future.thing"),
        "spec 0.3": header("ce_specversion", b"0.3"),
        "no spec": header("ce_specversion", None),
        "no content type": header("content-type", None),
        "content type charset": header("content-type", b"Application/JSON; charset=utf-8"),
        "content type text": header("content-type", b"text/plain"),
        "id not utf8": header("ce_id", b"\xff\xfe"),
        "subject not utf8": header("ce_subject", b"\xff"),
        "traceparent not utf8": header("ce_traceparent", b"\xff"),
        "traceparent odd": header("ce_traceparent", b"00-abc-def-01"),
        "traceparent future": header(
            "ce_traceparent", b"01-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01-x"
        ),
        "repeated id": lambda r: replace(r, headers=[("ce_id", b"first"), *r.headers]),
        "no key": lambda r: replace(r, key=None),
        "empty key": lambda r: replace(r, key=b""),
        "key not utf8": lambda r: replace(r, key=b"\xff"),
        "no key, data without tenant": lambda r: replace(
            r, key=None, value=b"[1, 2]", headers=_set(r.headers, "ce_type", b"turnout.x.y")
        ),
        "value not json": lambda r: replace(r, value=b"{nope"),
        "value tombstone": lambda r: replace(r, value=None),
        "value nan": lambda r: replace(r, value=b'{"x": NaN}'),
        "value not utf8": lambda r: replace(r, value=b'{"x": "\xff"}'),
        "value breaks schema": lambda r: replace(r, value=b'{"tenant": "t0"}'),
    }


def test_the_fast_path_stores_and_refuses_exactly_what_the_codec_does(tmp_path: Path) -> None:
    """`load_records` (vectorized checks in DuckDB) against `load_batch` (the codec
    per record) on good records and on every kind of damage to one."""
    env = next(iter(envelopes(workload(1))))
    key, value, headers = encode(env)
    base = Rec(key, value, headers)
    records = [
        replace(
            mutate(replace(base, headers=_set(base.headers, "ce_id", f"id-{i}".encode()))), offset=i
        )
        for i, mutate in enumerate(_mutations().values())
    ]
    results = []
    for name in ("fast", "codec"):
        with Archive.open(tmp_path / f"{name}.duckdb") as archive:
            if name == "fast":
                archive.load_records(record_batch(records))
            else:
                rows = [
                    record_row(
                        r.key,
                        r.value,
                        r.headers,
                        KafkaPosition(r.topic, r.partition, r.offset, r.timestamp),
                    )
                    for r in records
                ]
                archive.load_batch(
                    [r for r in rows if isinstance(r, EventRow)],
                    [r for r in rows if isinstance(r, ErrorRow)],
                )
            con = archive.connection
            results.append(
                (
                    con.execute(
                        "SELECT * EXCLUDE (batch_seq) FROM events ORDER BY kafka_offset"
                    ).fetchall(),
                    con.execute(
                        "SELECT kafka_offset, code, reason FROM sink_errors ORDER BY kafka_offset"
                    ).fetchall(),
                )
            )
    names = list(_mutations())
    fast, codec = results
    assert [(names[e[8]], e) for e in fast[0]] == [(names[e[8]], e) for e in codec[0]]
    assert [(names[e[0]], e) for e in fast[1]] == [(names[e[0]], e) for e in codec[1]]
    assert len(codec[0]) > 10 and len(codec[1]) > 10  # both kinds are exercised


def test_a_record_nested_past_the_stack_is_a_sink_error_not_a_crash(path: Path) -> None:
    """A value nested 5,000 deep made the column builder raise RecursionError in the
    sink's fetch task: the sink died, and died again on the same record after restart."""
    good = [encode(e) for e in envelopes(workload(3))]
    key, _, headers = good[0]
    deep = b'{"tenant": "t0", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    records = [
        Rec(k, v, list(h), offset=i) for i, (k, v, h) in enumerate([*good, (key, deep, headers)])
    ]
    with Archive.open(path) as archive:
        result = archive.load_records(record_batch(records))
        assert (result.inserted, result.errors) == (len(good), 1)
        (code, reason) = archive.connection.execute(
            "SELECT code, reason FROM sink_errors"
        ).fetchone() or ("", "")
    assert code == "malformed_json" and "nested too deep" in reason


def test_attempts_name_the_provider_that_was_called(path: Path) -> None:
    """Events written with `[providers]` carry `provider`; older ones are `[upstream]`'s."""
    stories = workload(24)
    attempt_types = (ev.AttemptStarted, ev.AttemptSucceeded, ev.AttemptFailed)
    local = {s.request_id for s in stories[::2]}
    renamed = [
        replace(s, events=tuple(
            msgspec.structs.replace(e, provider="local")
            if s.request_id in local and isinstance(e, attempt_types) else e
            for e in s.events
        ))
        for s in stories
    ]  # fmt: skip
    with Archive.open(path) as archive:
        load(archive, rows_of(renamed))
    con = open_reader(path)
    rows = query(con, "SELECT request_id, provider FROM attempts")
    assert rows and {r["provider"] for r in rows} == {"local", "upstream"}
    assert all((r["provider"] == "local") == (r["request_id"] in local) for r in rows)


def test_a_catching_up_sink_fills_whole_row_groups_and_its_checkpoints_rewrite_nothing(
    tmp_path: Path,
) -> None:
    """While it catches up, the sink stores full batches and publishes between them. Its
    batch is one DuckDB row group: each lands whole in the file, and the next checkpoint
    leaves it there. With 125,000 records a batch also left a 2,120-row group that each
    checkpoint merged by rewriting the batch (0.5 s per publish) and the file grew to
    1.4-1.7x the size of the same events stored at once."""
    batch = SinkOptions().max_batch_records
    records = [
        Rec(k, v, h, offset=i, partition=i % 12)
        for i, (k, v, h) in enumerate(encode(e) for e in envelopes(workload(43_000), seed=3))
    ][: 2 * batch]
    assert len(records) == 2 * batch
    with Archive.open(tmp_path / "steps.duckdb") as steps:
        for i in range(0, len(records), batch):
            steps.load_records(record_batch(records[i : i + batch]))
            steps.publish()
        groups = steps.connection.execute(
            "SELECT row_group_id, sum(count) FROM pragma_storage_info('events') "
            "WHERE column_name = 'id' AND segment_type = 'VARCHAR' GROUP BY row_group_id"
        ).fetchall()
    with Archive.open(tmp_path / "once.duckdb") as once:
        once.load_records(record_batch(records))
        once.publish()
    assert sorted(n for _, n in groups) == [batch, batch]
    stepped, at_once = (
        (tmp_path / "steps.duckdb").stat().st_size,
        (tmp_path / "once.duckdb").stat().st_size,
    )
    assert stepped <= 1.2 * at_once
