"""Benchmark: what publishing a snapshot costs as the archive ages, sealed and not.

Run: `.venv/bin/python tests/benchmarks/bench_archive_age.py [--days 8] [--per-day 200000]`

Every snapshot the sink publishes is a copy of the archive's main file (readers can only
open a file no process writes: `turnout.analytics.snapshot`). Unsealed, that file holds
every event ever stored, so each copy, and the wait before the next snapshot (10x the
copy), grows with the archive's age: a month-old archive is published minutes apart.
Sealed (`[duckdb] hot_hours`, 24 by default), whole old days move to read-only part
files and the main file keeps about the last two days.

The same synthetic log (the mixed workload of `turnout.analytics.synthetic`, `--per-day`
events a day for `--days` days) is loaded twice in one run, a row group (122,880 events)
per batch and a publish after each, as the sink does on a catch-up: once with
`hot_hours` 24 and once never sealing (the baseline). Printed per day of age: the
snapshot's size and the last publish's copy; at the end, a reader's open and the
default-style alert query (failed requests of the last 15 minutes) on both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from turnout.analytics.archive import ROW_GROUP_ROWS, Archive, open_reader, snapshot_path
from turnout.analytics.rows import EventRow, KafkaPosition, record_row
from turnout.analytics.synthetic import envelopes, workload
from turnout.service.wire.cloudevents import encode

DAY_MS = 86_400_000
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
ALERT = """
    SELECT count(*) FILTER (WHERE outcome = 'failed') AS failed, count(*) AS finished
    FROM requests
    WHERE finished_at > (SELECT max(finished_at) FROM requests) - INTERVAL 15 MINUTE
"""


def rows_for(days: int, per_day: int) -> list[EventRow]:
    requests = days * per_day // 6  # ~6 events per request in the mix
    envs = envelopes(workload(requests), t0_ms=T0_MS, step_ms=DAY_MS / per_day)
    out = []
    for i, env in enumerate(envs):
        key, value, headers = encode(env)
        row = record_row(key, value, headers, KafkaPosition("t.events", i % 12, i))
        assert isinstance(row, EventRow)
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--per-day", type=int, default=200_000)
    args = parser.parse_args()
    out = Console(highlight=False)
    began = time.perf_counter()
    rows = rows_for(args.days, args.per_day)
    out.print(f"{len(rows):,} events over {args.days} days, made in "
              f"{time.perf_counter() - began:.0f} s")  # fmt: skip
    by_day: list[list[EventRow]] = [[] for _ in range(args.days + 1)]
    for r in rows:
        by_day[min((r.time_ms - T0_MS) // DAY_MS, args.days)].append(r)
    table = Table("age (days)", "sealed: snapshot MB", "sealed: copy s", "sealed: seal s",
                  "unsealed: snapshot MB", "unsealed: copy s",
                  title="the file each publish copies, as the archive ages",
                  title_justify="left")  # fmt: skip
    results: dict[str, list[tuple[float, float, float]]] = {}
    readers: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, hot in (("sealed", 24.0), ("unsealed", None)):
            path = Path(tmp) / name / "turnout.duckdb"
            per: list[tuple[float, float, float]] = []
            with Archive.open(path) as archive:
                for day in by_day:
                    if not day:
                        continue
                    seal_s = 0.0
                    for i in range(0, len(day), ROW_GROUP_ROWS):
                        archive.load_batch(day[i : i + ROW_GROUP_ROWS])
                        published = archive.publish(hot_hours=hot)
                        seal_s += published.seal_s
                    size = snapshot_path(path).stat().st_size / 1e6
                    per.append((size, published.copy_s, seal_s))
                    out.print(f"  {name}: day {len(per)}: snapshot {size:,.0f} MB, copy "
                              f"{published.copy_s:.2f} s, sealing {seal_s:.2f} s")  # fmt: skip
            results[name] = per
            t = time.perf_counter()
            con = open_reader(path)
            opened = time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(5):
                con.execute(ALERT).fetchall()
            readers[name] = (opened, (time.perf_counter() - t) / 5)
            assert con.execute("SELECT count(*) FROM events").fetchone() == (len(rows),)
            con.close()
    for age, (s, u) in enumerate(zip(results["sealed"], results["unsealed"], strict=True), 1):
        table.add_row(str(age), f"{s[0]:,.0f}", f"{s[1]:.2f}", f"{s[2]:.2f}", f"{u[0]:,.0f}",
                      f"{u[1]:.2f}")  # fmt: skip
    out.print(table)
    for name, (opened, query) in readers.items():
        out.print(f"{name}: a reader opens in {opened * 1000:.0f} ms; the alert query "
                  f"takes {query * 1000:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
