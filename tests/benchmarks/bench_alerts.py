"""Benchmark: every default alert rule's query on archives of 1M and 10M events.

    .venv/bin/python tests/benchmarks/bench_alerts.py [--events 1000000 10000000]
        [--dir /tmp/turnout-bench-alerts] [--rounds 5] [--keep]

Builds each archive with the real schema and views (`Archive.open`), filling
`events` in DuckDB SQL from `range()`: one template per request story of
`turnout.analytics.synthetic` (the real event structs, JSON-encoded, with the request
id, tenant and latency as placeholders), expanded per request and spread over
the last 24 hours ending now, plus global events (breakers, budgets, alerts).
Request mix: 70 % ok, 8 % cached, 6 % retried, 5 % fallback, 3 % failed,
3 % rejected, 2 % coalesced, 2 % in flight, 1 % dead-lettered. The sink's
derive step then folds `request_facts`, exactly as before a snapshot.

Then, on a read-only connection (`open_reader`, as the runner opens it), it
times each rule's query (one warm-up, then the median and worst of `rounds`
runs), the runner's restore query, and the baseline `SELECT count(*) FROM
events`, all in the same run. Target: <= 200 ms per rule at 10M events.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb
import msgspec

from turnout.analytics.alerts.rules import load_rules
from turnout.analytics.alerts.runner import _RESTORE_SQL
from turnout.analytics.archive import Archive, open_reader
from turnout.analytics.synthetic import MODELS, story
from turnout.service.clock import clock
from turnout.service.core import events as ev

MIX = {"ok": 70, "cached": 8, "retried": 6, "fallback": 5, "failed": 3, "rejected": 3,
       "coalesced": 2, "in_flight": 2, "deadlettered": 1}  # fmt: skip
RID = "req-@RID@-0000"  # deadlettered stories parse the last 4 characters as hex
DAY_MS = 86_400_000
GLOBAL_EVERY = 500  # one burst of global events per this many requests
_ENC = msgspec.json.Encoder()
_LATENCY = re.compile(r'"latency_ms":[0-9.]+')


def templates() -> list[tuple[str, int, str, str, bool]]:
    """(kind, seq, type, data with @RID@/@TENANT@/@LAT@ placeholders, has request id)."""
    out = []
    for kind in MIX:
        s = story(kind, RID, "@TENANT@")
        for seq, event in enumerate(s.events):
            data = _LATENCY.sub('"latency_ms":@LAT@', _ENC.encode(event).decode())
            out.append((kind, seq, event.TYPE, data, s.request_id is not None))
    return out


def global_templates() -> list[tuple[int, str, str]]:
    model = MODELS[0]
    events: list[ev.Event] = [
        ev.BreakerOpened(model=model, reason="failures", failures=5, calls=5, open_until_ms=1),
        ev.BreakerHalfOpened(model=model),
        ev.BreakerClosed(model=model, successes=3),
        ev.BudgetExceeded(tenant="@TENANT@", period="day", level="soft", limit_micros=1_000_000,
                          spent_micros=810_000, reserved_micros=0, requested_micros=1_000),
        ev.AlertFired(rule="error_rate", severity="critical", labels={"model": model}, value=0.2,
                      op=">", threshold=0.05, pending_since_ms=1),
        ev.AlertResolved(rule="error_rate", severity="critical", labels={"model": model},
                         value=0.01, fired_at_ms=2),
    ]  # fmt: skip
    return [(seq, e.TYPE, _ENC.encode(e).decode()) for seq, e in enumerate(events)]


def requests_for(events: int, tpl: Sequence[tuple[str, int, str, str, bool]]) -> int:
    per_kind = {k: sum(1 for t in tpl if t[0] == k) for k in MIX}
    per_request = sum(MIX[k] * per_kind[k] for k in MIX) / 100 + 6 / GLOBAL_EVERY
    return round(events / per_request)


_MIX_SQL = " ".join(
    f"WHEN h < {sum(list(MIX.values())[: i + 1])} THEN '{k}'" for i, k in enumerate(MIX)
)
_FILL = f"""
INSERT INTO events
WITH r AS (
    SELECT i, hash(i) % 100 AS h,
           lpad(to_hex(i), 12, '0') AS rid,
           't' || (hash(i + 1) % 50)::VARCHAR AS tenant,
           (50 + hash(i + 2) % 4000)::VARCHAR AS lat,
           $t0 + i * $span // $n AS t_ms
    FROM range($n) r(i)
), k AS (SELECT *, CASE {_MIX_SQL} END AS kind FROM r)
SELECT
    printf('%012x-7%03x-8000-%012x', t_ms, tpl.seq, i) AS id,
    tpl.type,
    epoch_ms(t_ms + tpl.seq * 7)::TIMESTAMPTZ AS time,
    k.tenant,
    CASE WHEN tpl.has_rid THEN 'req-' || rid || '-0000' END AS request_id,
    'turnout/router/bench' AS source,
    NULL AS trace_id,
    replace(replace(replace(tpl.data, '@RID@', rid), '@TENANT@', k.tenant), '@LAT@', k.lat)
        ::JSON AS data,
    (hash(k.tenant) % 12)::INTEGER AS kafka_partition,
    i * 16 + tpl.seq AS kafka_offset,
    1 AS batch_seq
FROM k JOIN tpl USING (kind)
ORDER BY time  -- the sink appends in log order, so row groups are time ranges
"""
_FILL_GLOBAL = """
INSERT INTO events
SELECT
    printf('%012x-7%03x-9000-%012x', t_ms, g.seq, i),
    g.type,
    epoch_ms(t_ms + g.seq * 1000)::TIMESTAMPTZ,
    CASE WHEN g.type = 'turnout.budget.exceeded' THEN 't' || (i % 50)::VARCHAR ELSE '_system' END,
    NULL, 'turnout/router/bench', NULL,
    replace(replace(g.data, '@TENANT@', 't' || (i % 50)::VARCHAR),
            $model, $models[1 + i % 3])::JSON,
    0, i * 8 + g.seq, 1
FROM (SELECT i, $t0 + i * $span // $n AS t_ms FROM range($n) r(i)) r, gtpl g
"""


_TYPE_SCAN = "SELECT count(*) FROM events WHERE type = 'turnout.request.completed'"


def build(path: Path, events: int) -> dict[str, float]:
    """Fill a fresh archive at `path` with about `events` events; the timings in seconds."""
    for p in (path, path.with_suffix(".duckdb.wal")):
        p.unlink(missing_ok=True)
    tpl, now = templates(), clock.now_ms()
    n = requests_for(events, tpl)
    started = time.perf_counter()
    with Archive.open(path) as archive:
        con = archive.connection
        con.execute("CREATE TEMP TABLE tpl (kind VARCHAR, seq INT, type VARCHAR, data VARCHAR, "
                    "has_rid BOOLEAN)")  # fmt: skip
        con.executemany("INSERT INTO tpl VALUES (?, ?, ?, ?, ?)", tpl)
        con.execute("CREATE TEMP TABLE gtpl (seq INT, type VARCHAR, data VARCHAR)")
        con.executemany("INSERT INTO gtpl VALUES (?, ?, ?)", global_templates())
        con.execute(_FILL, {"t0": now - DAY_MS, "span": DAY_MS, "n": n})
        con.execute(_FILL_GLOBAL, {"t0": now - DAY_MS, "span": DAY_MS, "n": n // GLOBAL_EVERY,
                                   "model": MODELS[0], "models": list(MODELS)})  # fmt: skip
        con.execute("INSERT OR REPLACE INTO sink_state VALUES ('batch_seq', 1)")
        con.execute("CHECKPOINT")
    filled = time.perf_counter()
    with Archive.open(path) as archive:  # reopened so it sees batch_seq = 1
        archive.derive()
        archive.connection.execute("CHECKPOINT")
    return {"fill_s": filled - started, "derive_s": time.perf_counter() - filled}


def timed(run: Callable[[], object], rounds: int) -> tuple[float, float, object]:
    result = run()  # warm-up
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        result = run()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times), result


def measure(path: Path, rounds: int) -> list[tuple[str, float, float, str]]:
    con = open_reader(path)
    try:
        queries = [
            ("baseline: count(*) FROM events", "SELECT count(*) FROM events"),
            ("baseline: scan of events.type", _TYPE_SCAN),
        ]
        queries += [(r.name, r.sql) for r in load_rules()]
        queries.append(("runner restore (alert events)", _RESTORE_SQL))
        return [_measure_one(con, name, sql, rounds) for name, sql in queries]
    finally:
        con.close()


def _measure_one(
    con: duckdb.DuckDBPyConnection, name: str, sql: str, rounds: int
) -> tuple[str, float, float, str]:
    median, worst, rows = timed(lambda: con.execute(sql).fetchall(), rounds)
    assert isinstance(rows, list)
    shown = str(rows[0]) if len(rows) == 1 else f"{len(rows)} rows"
    return name, median, worst, shown[:48]


Timing = tuple[str, float, float, str]


def report(path: Path, build_s: dict[str, float], rows: list[Timing]) -> None:
    con = open_reader(path)
    (count,) = con.execute("SELECT count(*) FROM events").fetchone() or (0,)
    (reqs,) = con.execute("SELECT count(*) FROM request_facts").fetchone() or (0,)
    con.close()
    size = path.stat().st_size / 2**20
    print(f"\n== {count:,} events ({reqs:,} requests), {size:,.0f} MiB; "
          f"fill {build_s['fill_s']:.1f} s, derive {build_s['derive_s']:.1f} s")  # fmt: skip
    print(f"{'query':<32} {'median ms':>10} {'max ms':>8}  result")
    for name, median, worst, shown in rows:
        flag = "" if name.startswith(("baseline", "runner")) or median <= 200 else "  OVER 200 ms"
        print(f"{name:<32} {median:>10.1f} {worst:>8.1f}  {shown}{flag}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/turnout-bench-alerts"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the archives afterwards")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"duckdb {duckdb.__version__}; archives under {args.dir}")
    try:
        for events in args.events:
            path = args.dir / f"bench-{events}.duckdb"
            build_s = build(path, events)
            report(path, build_s, measure(path, args.rounds))
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
