"""Sealing: old days leave the archive's main file for read-only parts, and readers
still see one archive (real DuckDB files; no broker needed)."""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from turnout.analytics import archive as archive_module
from turnout.analytics import snapshot as snapshot_module
from turnout.analytics import sql
from turnout.analytics.archive import DERIVED_VERSION, Archive, open_reader, snapshot_path
from turnout.analytics.records import record_batch
from turnout.analytics.rows import EventRow, KafkaPosition, record_row
from turnout.analytics.snapshot import parts_dir, reader_cursor
from turnout.analytics.synthetic import envelopes, workload
from turnout.service.errors import TurnoutError
from turnout.service.wire.cloudevents import encode

DAY_MS = 86_400_000
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed record, as the sink's fast path reads it."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def days_of_records(requests: int, days: float, *, t0_ms: int = T0_MS) -> list[Record]:
    """A mixed workload whose events are spread evenly over `days` from `t0_ms`."""
    events = sum(1 for _ in envelopes(workload(requests), t0_ms=t0_ms, step_ms=1))
    step = days * DAY_MS / events
    out = []
    for i, env in enumerate(envelopes(workload(requests), t0_ms=t0_ms, step_ms=step)):
        key, value, headers = encode(env)
        out.append(Record("t.events", i % 12, i, env.time_ms, key, value, list(headers)))
    return out


def row_of(r: Record) -> EventRow:
    row = record_row(r.key, r.value, r.headers, KafkaPosition(r.topic, r.partition, r.offset))
    assert isinstance(row, EventRow)
    return row


def days_of_rows(requests: int, days: float, *, t0_ms: int = T0_MS) -> list[EventRow]:
    return [row_of(r) for r in days_of_records(requests, days, t0_ms=t0_ms)]


def load_days(archive: Archive, rows: list[EventRow], *, hot_hours: float | None) -> None:
    """Load in batches, publishing after each as the sink does (sealing if asked)."""
    for i in range(0, len(rows), 500):
        archive.load_batch(rows[i : i + 500])
        archive.publish(hot_hours=hot_hours)


QUERIES = {
    "requests": "SELECT * FROM requests ORDER BY ALL",
    "per minute": "SELECT * FROM requests_per_minute ORDER BY ALL",
    "events": "SELECT id, type, time, tenant, request_id, data::VARCHAR FROM events ORDER BY id",
    "attempts": "SELECT * FROM attempts ORDER BY ALL",
    "breakers": "SELECT * FROM breaker_transitions ORDER BY ALL",
    "budget": "SELECT * FROM budget_ledger ORDER BY ALL",
    "alerts": "SELECT * FROM alerts ORDER BY ALL",
}


def answers(con: duckdb.DuckDBPyConnection) -> dict[str, list[Any]]:
    return {name: con.execute(q).fetchall() for name, q in QUERIES.items()}


def archive_files(path: Path) -> list[str]:
    folder = parts_dir(path)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Part files no snapshot lists are deleted at the next publish, not a minute later."""
    monkeypatch.setattr(archive_module, "UNLISTED_GRACE_S", 0.0)


@pytest.fixture(scope="module")
def rows() -> list[EventRow]:
    return days_of_rows(1_500, 5)  # ~8,000 events over five days


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, rows: list[EventRow]) -> dict[str, Any]:
    """What readers see of the same events in an archive that never seals."""
    path = tmp_path_factory.mktemp("unsealed") / "turnout.duckdb"
    with Archive.open(path) as archive:
        load_days(archive, rows, hot_hours=None)
    con = open_reader(path)
    try:
        return answers(con)
    finally:
        con.close()


def sealed_archive(path: Path, rows: list[EventRow]) -> None:
    with Archive.open(path) as archive:
        load_days(archive, rows, hot_hours=24)


def test_a_sealed_archive_answers_every_query_as_the_unsealed_one(
    tmp_path: Path, rows: list[EventRow], reference: dict[str, Any]
) -> None:
    path = tmp_path / "turnout.duckdb"
    sealed_archive(path, rows)
    # five days, the last 24 h kept: the first three whole days are parts
    assert archive_files(path) == ["2026-01-01.duckdb", "2026-01-02.duckdb", "2026-01-03.duckdb"]
    con = open_reader(path)
    got = answers(con)
    for name in QUERIES:
        assert got[name] == reference[name], name
    assert len(got["requests"]) == 1_500  # one row per request, also for those cut by midnight
    # the main file holds the last days only
    main = duckdb.connect(str(snapshot_path(path)), read_only=True)
    kept = main.execute("SELECT count(*), min(time) FROM events").fetchone()
    assert kept is not None
    assert 0 < kept[0] < 0.5 * len(rows)
    assert str(kept[1].date()) == "2026-01-04"
    main.close()
    # a cursor (as the dashboards use) sees what the connection sees
    cur = reader_cursor(con)
    assert cur.execute("SELECT count(*) FROM events").fetchall() == [(len(rows),)]
    assert cur.execute("SELECT count(*) FROM requests").fetchall() == [(1_500,)]
    # and `turnout sql` too
    out = io.StringIO()
    sql.run("SELECT count(*) AS n FROM events", path, "csv", out)
    assert out.getvalue() == f"n\n{len(rows)}\n"


def test_readers_of_a_sealed_archive_still_cannot_write(
    tmp_path: Path, rows: list[EventRow]
) -> None:
    path = tmp_path / "turnout.duckdb"
    sealed_archive(path, rows[:3000])
    con = open_reader(path)
    for statement in (
        "DELETE FROM events",
        "DELETE FROM archive.main.events",
        "DELETE FROM part_20260101.main.events",
        "INSERT INTO request_facts (request_id) VALUES ('x')",
        "CREATE TABLE archive.main.x (a INT)",
    ):
        with pytest.raises(duckdb.Error):
            con.execute(statement)
    assert con.execute("SELECT count(*) FROM events").fetchall() == [(3000,)]


def test_the_main_file_and_the_snapshot_copy_stay_bounded_as_days_pass(tmp_path: Path) -> None:
    """Months in miniature: twelve days, each as busy; the file a publish copies stops
    growing after the first two, while an unsealed archive grows with every day."""
    rows = days_of_rows(3_600, 12)
    sizes: dict[str, list[int]] = {"sealed": [], "unsealed": []}
    per_day = len(rows) // 12
    for name, hot in (("sealed", 24.0), ("unsealed", None)):
        path = tmp_path / name / "turnout.duckdb"
        with Archive.open(path) as archive:
            for day in range(12):
                load_days(archive, rows[day * per_day : (day + 1) * per_day], hot_hours=hot)
                sizes[name].append(snapshot_path(path).stat().st_size)
        con = open_reader(path)
        assert con.execute("SELECT count(*) FROM events").fetchall() == [(12 * per_day,)]
        con.close()
    sealed, unsealed = sizes["sealed"], sizes["unsealed"]
    assert unsealed[-1] > 1.7 * unsealed[2]  # the copy grows with the archive...
    assert max(sealed[3:]) <= 1.15 * sealed[2]  # ... and not once old days are sealed
    assert unsealed[-1] > 1.7 * sealed[-1]
    assert len(archive_files(tmp_path / "sealed" / "turnout.duckdb")) >= 9


def test_the_days_of_a_sealed_month_are_merged_into_one_part(
    tmp_path: Path, no_grace: None
) -> None:
    """An archive months old is a file per month for readers to attach, not one per day."""
    rows = days_of_rows(1_200, 12, t0_ms=T0_MS + 25 * DAY_MS)  # 2026-01-26 .. 02-06
    answers_of: dict[str, dict[str, list[Any]]] = {}
    for name, hot in (("sealed", 24.0), ("unsealed", None)):
        path = tmp_path / name / "turnout.duckdb"
        with Archive.open(path) as archive:
            load_days(archive, rows, hot_hours=hot)
        answers_of[name] = answers(open_reader(path))
    path = tmp_path / "sealed" / "turnout.duckdb"
    assert archive_files(path) == [
        "2026-01.duckdb", "2026-02-01.duckdb", "2026-02-02.duckdb", "2026-02-03.duckdb",
        "2026-02-04.duckdb",
    ]  # fmt: skip
    assert answers_of["sealed"] == answers_of["unsealed"]
    main = duckdb.connect(str(snapshot_path(path)), read_only=True)
    assert main.execute("SELECT day, until, file FROM sealed_parts ORDER BY day").fetchall()[0] == (
        date(2026, 1, 26),
        date(2026, 2, 1),
        "2026-01.duckdb",
    )
    main.close()


def test_merged_days_stay_a_while_for_readers_that_opened_the_snapshot_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader attaches the snapshot, then the parts it lists: the day files a month
    merge unlists are kept for a grace period, and a reader whose snapshot was replaced
    in between opens the new one instead of failing."""
    rows = days_of_rows(600, 8, t0_ms=T0_MS + 25 * DAY_MS)  # 2026-01-26 .. 02-02
    path = tmp_path / "turnout.duckdb"
    before_feb = [r for r in rows if r.time_ms < T0_MS + 31 * DAY_MS + 12 * 3_600_000]
    with Archive.open(path) as archive:
        load_days(archive, before_feb, hot_hours=24)
        assert "2026-01-30.duckdb" in archive_files(path)  # January in days, not merged yet
        # the writer publishes a merge between a reader's two steps
        attach = snapshot_module._attach_parts
        raced: list[bool] = []

        def attach_after_a_merge(con: duckdb.DuckDBPyConnection, main: Path) -> None:
            if not raced:
                raced.append(True)
                monkeypatch.setattr(archive_module, "UNLISTED_GRACE_S", 0.0)
                load_days(archive, rows[len(before_feb) :], hot_hours=24)
                assert "2026-01-30.duckdb" not in archive_files(path)  # gone at once
            attach(con, main)

        monkeypatch.setattr(snapshot_module, "_attach_parts", attach_after_a_merge)
        con = open_reader(path)  # retried on the new snapshot
        assert raced
        assert con.execute("SELECT count(*) FROM events").fetchall() == [(len(rows),)]
        con.close()
    monkeypatch.undo()
    # with the grace period, the day files outlive the publish that merged them
    path = tmp_path / "graced" / "turnout.duckdb"
    with Archive.open(path) as archive:
        load_days(archive, rows, hot_hours=24)
        files = archive_files(path)
        assert "2026-01.duckdb" in files and "2026-01-30.duckdb" in files
        monkeypatch.setattr(archive_module, "UNLISTED_GRACE_S", 0.0)
        archive.load_batch(rows[-1:])  # a redelivery: something to publish
        archive.publish(hot_hours=24)
        assert "2026-01-30.duckdb" not in archive_files(path)


def test_a_redelivered_batch_of_a_sealed_day_is_stored_once(
    tmp_path: Path, rows: list[EventRow]
) -> None:
    path = tmp_path / "turnout.duckdb"
    records = days_of_records(1_500, 5)
    # one record whose time the codec reads but the fast path's check does not (+00:00)
    r0 = records[0]
    headers = [(k, v.replace(b"Z", b"+00:00") if k == "ce_time" else v) for k, v in r0.headers]
    odd = Record(r0.topic, r0.partition, r0.offset, r0.timestamp, r0.key, r0.value, headers)
    records[0] = odd
    with Archive.open(path) as archive:
        for i in range(0, len(records), 500):
            archive.load_records(record_batch(records[i : i + 500]))
            archive.publish(hot_hours=24)
        assert archive_files(path)[0] == "2026-01-01.duckdb"
        # redelivered in the same run, the odd record alone and with current events
        again = archive.load_records(record_batch([odd]))
        assert (again.inserted, again.duplicates) == (0, 1)
        mixed = archive.load_records(record_batch([records[1], *records[-300:]]))
        assert (mixed.inserted, mixed.duplicates) == (0, 301)
    old = rows[:400]  # 2026-01-01: sealed
    with Archive.open(path) as archive:
        again = archive.load_batch(old)
        assert (again.inserted, again.duplicates) == (0, 400)
        # the sink's fast path (raw records) takes the same care
        records = [r for r in days_of_records(1_500, 5)[:400]]
        assert [row_of(r).id for r in records] == [r.id for r in old]
        fast = archive.load_records(record_batch(records))
        assert (fast.inserted, fast.duplicates) == (0, 400)
        archive.publish(hot_hours=24)
    con = open_reader(path)
    assert con.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchall() == [
        (len(rows), len(rows))
    ]


def test_an_event_older_than_the_sealed_days_goes_into_the_next_part(
    tmp_path: Path, rows: list[EventRow]
) -> None:
    path = tmp_path / "turnout.duckdb"
    four_days = [r for r in rows if r.time_ms < T0_MS + 4 * DAY_MS]
    with Archive.open(path) as archive:
        load_days(archive, four_days, hot_hours=24)
    assert archive_files(path) == ["2026-01-01.duckdb", "2026-01-02.duckdb"]
    second = duckdb.connect(str(parts_dir(path) / "2026-01-02.duckdb"), read_only=True)
    in_second = second.execute("SELECT * FROM events ORDER BY ALL").fetchall()
    second.close()
    # a router's event of 2026-01-02 that reaches the archive only now (not a redelivery)
    late = rows[len(rows) // 4]._replace(
        id="0194-late", time_ms=T0_MS + DAY_MS + DAY_MS // 2, kafka_offset=10**9
    )
    # and one that comes through the sink's fast path (raw records)
    record = days_of_records(1_500, 5)[len(rows) // 4]
    fast = Record(
        record.topic, 0, 10**9 + 1, record.timestamp, record.key, record.value,
        [(k, b"0194-late-fast" if k == "ce_id" else v) for k, v in record.headers],
    )  # fmt: skip
    current = days_of_records(1_500, 5)[len(four_days) : len(four_days) + 50]
    with Archive.open(path) as archive:
        assert archive.load_batch([late]).inserted == 1
        assert archive.load_records(record_batch([fast, *current])).inserted == 51
        # the same batch again (a failed offset commit): all duplicates, no crash
        again = archive.load_records(record_batch([fast, *current]))
        assert (again.inserted, again.duplicates) == (0, 51)
        archive.publish(hot_hours=24)
        con = open_reader(path)
        assert con.execute("SELECT count(*) FROM events").fetchall() == [(len(four_days) + 52,)]
        con.close()
        load_days(archive, rows[len(four_days) + 50 :], hot_hours=24)
    # the next part takes it; the sealed day is never written again
    assert archive_files(path) == ["2026-01-01.duckdb", "2026-01-02.duckdb", "2026-01-03.duckdb"]
    third = duckdb.connect(str(parts_dir(path) / "2026-01-03.duckdb"), read_only=True)
    assert third.execute("SELECT count(*) FROM events WHERE id = '0194-late'").fetchall() == [(1,)]
    third.close()
    second = duckdb.connect(str(parts_dir(path) / "2026-01-02.duckdb"), read_only=True)
    assert second.execute("SELECT * FROM events ORDER BY ALL").fetchall() == in_second
    second.close()
    con = open_reader(path)
    assert con.execute("SELECT count(*) FROM events").fetchall() == [(len(rows) + 2,)]


def test_a_part_a_crash_left_unlisted_is_never_read_and_is_written_again(
    tmp_path: Path, rows: list[EventRow], reference: dict[str, Any], no_grace: None
) -> None:
    path = tmp_path / "turnout.duckdb"
    with Archive.open(path) as archive:
        load_days(archive, rows[: len(rows) // 2], hot_hours=None)
        # the state a crash leaves between writing a part and listing it: the file is
        # there, its rows are still in the main file, nothing lists it
        folder = parts_dir(path)
        folder.mkdir()
        day = datetime.fromtimestamp(T0_MS / 1000, UTC)
        assert archive._write_part(folder, day, None, day + timedelta(days=1)) is not None
        (folder / "2026-01-02.duckdb.tmp").write_bytes(b"half a file")
    assert archive_files(path) == ["2026-01-01.duckdb", "2026-01-02.duckdb.tmp"]
    con = open_reader(path)
    assert con.execute("SELECT count(*) FROM events").fetchall() == [(len(rows) // 2,)]
    con.close()
    with Archive.open(path) as archive:
        load_days(archive, rows[len(rows) // 2 :], hot_hours=24)
    assert archive_files(path) == ["2026-01-01.duckdb", "2026-01-02.duckdb", "2026-01-03.duckdb"]
    assert answers(open_reader(path)) == reference


def test_new_derived_tables_unseal_every_part_and_rebuild_from_all_events(
    tmp_path: Path, rows: list[EventRow], reference: dict[str, Any], no_grace: None
) -> None:
    path = tmp_path / "turnout.duckdb"
    sealed_archive(path, rows)
    with Archive.open(path) as archive:
        archive.connection.execute(
            "UPDATE sink_state SET value = ? WHERE name = 'derived_version'", [DERIVED_VERSION - 1]
        )
    old_reader = open_reader(path)  # a reader on the snapshot before the upgrade
    with Archive.open(path) as archive:
        con = archive.connection
        assert con.execute("SELECT count(*) FROM sealed_parts").fetchall() == [(0,)]
        assert con.execute("SELECT count(*) FROM events").fetchall() == [(len(rows),)]
        archive.publish()
        assert archive_files(path) == []  # no snapshot lists them any more
    assert answers(open_reader(path)) == reference
    # one that had them open keeps reading them (POSIX)
    assert old_reader.execute("SELECT count(*) FROM events").fetchall() == [(len(rows),)]
    # and sealing starts again at the next publish that may seal
    with Archive.open(path) as archive:
        assert len(archive.publish(hot_hours=24).sealed) == 3
    assert answers(open_reader(path)) == reference


def test_parts_older_than_keep_days_are_dropped_and_the_rest_reads_as_before(
    tmp_path: Path, rows: list[EventRow], no_grace: None
) -> None:
    path = tmp_path / "turnout.duckdb"
    old_reader = None
    with Archive.open(path) as archive:
        for i in range(0, len(rows), 500):
            archive.load_batch(rows[i : i + 500])
            published = archive.publish(hot_hours=24, keep_days=1)
            if published.expired and old_reader is None:
                assert [p.path.name for p in published.expired] == ["2026-01-01.duckdb"]
            if "2026-01-01.duckdb" in archive_files(path) and old_reader is None:
                old_reader = open_reader(path)  # has the first day's part attached
    # sealed through 2026-01-04; parts whose days ended by 2026-01-03 are gone
    assert archive_files(path) == ["2026-01-03.duckdb"]
    con = open_reader(path)
    since = "2026-01-03"
    kept = {
        "requests": f"SELECT * FROM requests WHERE minute >= '{since}' ORDER BY ALL",
        "per minute": f"SELECT * FROM requests_per_minute WHERE minute >= '{since}' ORDER BY ALL",
        "events": "SELECT id, type, time, tenant, request_id, data::VARCHAR FROM events "
        f"WHERE time >= '{since}' ORDER BY id",
    }
    unsealed = tmp_path / "unsealed" / "turnout.duckdb"
    with Archive.open(unsealed) as archive:
        load_days(archive, rows, hot_hours=None)
    whole = open_reader(unsealed)
    for name, q in kept.items():
        got = con.execute(q).fetchall()
        assert got and got == whole.execute(q).fetchall(), name
    assert con.execute(f"SELECT count(*) FROM events WHERE time < '{since}'").fetchall() == [(0,)]
    n = sum(1 for r in rows if r.time_ms >= T0_MS + 2 * DAY_MS)
    assert con.execute("SELECT count(*) FROM events").fetchall() == [(n,)]
    # the dropped days stay dropped when the sink is sent them again (a reset offset, a
    # group whose committed offsets expired), also after a restart, by either path
    first_day = [r for r in rows if r.time_ms < T0_MS + DAY_MS][:300]
    records = days_of_records(1_500, 5)[: len(first_day)]
    with Archive.open(path) as archive:
        again = archive.load_batch(first_day)
        assert (again.inserted, again.duplicates) == (0, len(first_day))
        fast = archive.load_records(record_batch(records))
        assert (fast.inserted, fast.duplicates) == (0, len(records))
        archive.publish(hot_hours=24, keep_days=1)
    con = open_reader(path)
    assert con.execute("SELECT count(*) FROM events").fetchall() == [(n,)]
    # a reader that opened before keeps what it had open (POSIX)
    assert old_reader is not None
    assert (
        old_reader.execute("SELECT count(*) FROM events WHERE time < '2026-01-02'").fetchall()[0][0]
        > 0
    )


def test_only_files_sealing_wrote_are_ever_removed_from_the_parts_folder(
    tmp_path: Path, rows: list[EventRow], no_grace: None
) -> None:
    path = tmp_path / "turnout.duckdb"
    parts_dir(path).mkdir(parents=True)
    (parts_dir(path) / "lost+found").mkdir()  # the folder is a mount point
    (parts_dir(path) / "2026-01-01.duckdb.backup").write_bytes(b"an operator's copy")
    (parts_dir(path) / "2026-01-09.duckdb").write_bytes(b"not listed: a crash's")
    sealed_archive(path, rows)
    assert archive_files(path) == [
        "2026-01-01.duckdb", "2026-01-01.duckdb.backup", "2026-01-02.duckdb",
        "2026-01-03.duckdb", "lost+found",
    ]  # fmt: skip


def test_a_missing_part_is_named_not_silently_skipped(tmp_path: Path, rows: list[EventRow]) -> None:
    path = tmp_path / "turnout.duckdb"
    sealed_archive(path, rows)
    gone = parts_dir(path) / "2026-01-02.duckdb"
    shutil.move(gone, tmp_path / "elsewhere.duckdb")
    with pytest.raises(TurnoutError, match=r"2026-01-02\.duckdb, which is missing"):
        open_reader(path)


def test_sealing_follows_the_clock_not_an_event_from_the_future(
    tmp_path: Path, rows: list[EventRow]
) -> None:
    path = tmp_path / "turnout.duckdb"
    with Archive.open(path) as archive:
        load_days(archive, rows, hot_hours=None)
        # a record stamped a year ahead does not make every day old: now is 2026-01-03 12:00
        now = T0_MS + 2 * DAY_MS + DAY_MS // 2
        sealed = archive.seal(24, now_ms=now)
        assert [str(p.day) for p in sealed] == ["2026-01-01"]
        assert archive.seal(24, now_ms=now) == []  # nothing more until time moves on
        assert [str(p.day) for p in archive.seal(24, now_ms=now + DAY_MS)] == ["2026-01-02"]


def test_a_seal_keeps_the_days_that_events_read_and_not_yet_stored_belong_to(
    tmp_path: Path, rows: list[EventRow]
) -> None:
    """The sink passes the oldest event it has fetched and not stored (`until_ms`): five
    days are stored, but a batch in flight still holds an event of 2026-01-02 12:00, so
    only 2026-01-01 may close (its requests could otherwise be split across a seal)."""
    path = tmp_path / "turnout.duckdb"
    with Archive.open(path) as archive:
        load_days(archive, rows, hot_hours=None)
        in_flight = T0_MS + DAY_MS + DAY_MS // 2
        assert archive.seal(24, until_ms=in_flight) == []
        in_flight += DAY_MS
        assert [str(p.day) for p in archive.seal(24, until_ms=in_flight)] == ["2026-01-01"]
        # nothing in flight: up to the day ending 24 h before the newest event (01-05 late)
        assert [str(p.day) for p in archive.seal(24)] == ["2026-01-02", "2026-01-03"]


def test_days_are_utc_days_whatever_the_sessions_time_zone(
    tmp_path: Path, rows: list[EventRow]
) -> None:
    """Traffic only between 00:00 and 04:00 UTC: in New York that is the day before,
    and days counted there would leave days unsealed, or rows out of every part."""
    night = [r for r in rows if r.time_ms % DAY_MS < 4 * 3_600_000]
    got: dict[str, dict[str, list[Any]]] = {}
    for name, hot in (("sealed", 24.0), ("unsealed", None)):
        path = tmp_path / name / "turnout.duckdb"
        with Archive.open(path) as archive:
            archive.connection.execute("SET TimeZone = 'America/New_York'")
            load_days(archive, night, hot_hours=hot)
        got[name] = answers(open_reader(path))
    path = tmp_path / "sealed" / "turnout.duckdb"
    assert archive_files(path) == ["2026-01-01.duckdb", "2026-01-02.duckdb", "2026-01-03.duckdb"]
    assert got["sealed"]["events"] == got["unsealed"]["events"]
    assert len(got["sealed"]["events"]) == len(night)
    for day in ("01", "02", "03"):
        part = duckdb.connect(str(parts_dir(path) / f"2026-01-{day}.duckdb"), read_only=True)
        part.execute("SET TimeZone = 'UTC'")
        dates = part.execute("SELECT DISTINCT CAST(time AS DATE) FROM events").fetchall()
        assert [str(d) for (d,) in dates] == [f"2026-01-{day}"]
        part.close()


def test_a_sink_option_and_the_config_turn_sealing_on(tmp_path: Path) -> None:
    from turnout.analytics.sink import SinkOptions
    from turnout.service.core.config import ConfigError, parse_config

    assert SinkOptions().hot_hours == 24.0
    assert parse_config({"duckdb": {"hot_hours": 6}}, {}).duckdb.hot_hours == 6
    assert parse_config({"duckdb": {"hot_hours": 0}}, {}).duckdb.hot_hours == 0  # never
    assert parse_config({"duckdb": {"keep_days": 90}}, {}).duckdb.keep_days == 90
    for bad_days in (-1, 1_000_000):
        with pytest.raises(ConfigError, match="keep_days must be"):
            parse_config({"duckdb": {"keep_days": bad_days}}, {})
    with pytest.raises(ConfigError, match="keep_days needs sealing"):
        parse_config({"duckdb": {"hot_hours": 0, "keep_days": 90}}, {})
    for bad in (0.5, float("inf"), float("nan"), 24 * 367):
        with pytest.raises(ConfigError, match="hot_hours"):
            parse_config({"duckdb": {"hot_hours": bad}}, {})
