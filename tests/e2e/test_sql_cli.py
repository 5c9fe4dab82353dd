"""`turnout sql` as a user runs it: read-only queries on the archive, three formats."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from turnout.analytics.archive import Archive, snapshot_path
from turnout.analytics.rows import EventRow, KafkaPosition, record_row
from turnout.analytics.synthetic import envelopes, workload
from turnout.service.wire.cloudevents import encode

REQUESTS = 45


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnout", "sql", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd, env={**os.environ, **(env or {})},
    )  # fmt: skip


def rows(requests: int) -> list[EventRow]:
    out = []
    for i, env in enumerate(envelopes(workload(requests))):
        row = record_row(*encode(env), KafkaPosition("t.events", i % 12, i))
        assert isinstance(row, EventRow)
        out.append(row)
    return out


@pytest.fixture(scope="module")
def archive_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sql") / "turnout.duckdb"
    with Archive.open(path) as archive:
        archive.load_batch(rows(REQUESTS))
        archive.publish()
    return path


@pytest.fixture
def writer(archive_path: Path) -> Iterator[Archive]:
    """The archive held open read-write, as a running sink holds it."""
    with Archive.open(archive_path) as archive:
        yield archive


def events_in(path: Path) -> int:
    with Archive.open(path) as archive:
        return int(archive.connection.execute("SELECT count(*) FROM events").fetchall()[0][0])


def test_count_as_a_table_while_the_sink_holds_the_archive(
    archive_path: Path, writer: Archive
) -> None:
    n = writer.connection.execute("SELECT count(*) FROM events").fetchall()[0][0]

    proc = run(
        "select count(*) as n from events", "--duckdb", str(archive_path), cwd=archive_path.parent
    )

    assert proc.returncode == 0, proc.stderr
    assert f"│ {n} │" in proc.stdout.replace("  ", " ")
    assert "1 row" in proc.stdout


def test_csv_and_json_formats(archive_path: Path) -> None:
    sql = "select outcome, count(*) n, sum(cost_micros) cost from requests group by all order by 1"
    env = {"TURNOUT_DUCKDB_PATH": str(archive_path)}  # the config key, from the environment

    as_csv = run(sql, "--format", "csv", cwd=archive_path.parent, env=env)
    as_json = run(sql, "--format", "json", cwd=archive_path.parent, env=env)

    assert as_csv.returncode == as_json.returncode == 0, as_csv.stderr + as_json.stderr
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    objects = json.loads(as_json.stdout)
    assert [r["outcome"] for r in table] == [o["outcome"] for o in objects] == [
        "completed", "deadlettered", "failed", "in_flight", "rejected",
    ]  # fmt: skip
    assert sum(int(r["n"]) for r in table) == sum(o["n"] for o in objects) == REQUESTS
    # a failed request was charged 0; nothing is known of the others' cost: NULL, which
    # is empty in CSV
    assert [r["cost"] for r in table][1:] == ["", "0", "", ""]
    assert [o["cost"] for o in objects][1:] == [None, 0, None, None]


def test_json_embeds_json_columns_and_a_query_can_come_from_a_file(archive_path: Path) -> None:
    query = archive_path.parent / "q.sql"
    query.write_text(
        "-- the newest event\nselect id, time, data from events order by time desc limit 1\n"
    )

    proc = run(
        "--file",
        str(query),
        "--format",
        "json",
        "--duckdb",
        str(archive_path),
        cwd=archive_path.parent,
    )

    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert isinstance(row["data"], dict) and row["time"].endswith("Z")


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("drop table events", "DROP"),
        ("delete from events", "DELETE"),
        ("insert into events select * from events", "INSERT"),
        ("create table x (a int)", "CREATE"),
    ],
)
def test_a_write_fails_with_one_line_and_changes_nothing(
    archive_path: Path, sql: str, kind: str
) -> None:
    before = events_in(archive_path)

    proc = run(sql, "--duckdb", str(archive_path), cwd=archive_path.parent)

    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "read-only" in proc.stderr and kind in proc.stderr
    assert events_in(archive_path) == before


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["selec 1"], 1, "query failed: Parser Error"),
        (["select * from nope"], 1, "query failed: Catalog Error"),
        ([], 2, "give one query"),
        (["select 1", "--file", "q.sql"], 2, "give one query"),
        (["--file", "missing.sql"], 1, "cannot read the query file"),
    ],
)
def test_bad_input_gets_one_line_saying_what_to_do(
    archive_path: Path, args: list[str], code: int, says: str
) -> None:
    proc = run(*args, "--duckdb", str(archive_path), cwd=archive_path.parent)

    assert proc.returncode == code
    assert proc.stderr.count("\n") == 1 and says in proc.stderr


def test_no_archive_and_no_snapshot_yet_say_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "turnout.duckdb"
    missing = run("select 1", "--duckdb", str(path), cwd=tmp_path)
    with Archive.open(path):  # a sink that has not published yet
        assert not snapshot_path(path).exists()
        busy = run("select 1", "--duckdb", str(path), cwd=tmp_path)

    assert (missing.returncode, busy.returncode) == (1, 1)
    assert "no archive at" in missing.stderr and "turnout sink" in missing.stderr
    assert "no snapshot yet" in busy.stderr
    assert missing.stderr.count("\n") == busy.stderr.count("\n") == 1
