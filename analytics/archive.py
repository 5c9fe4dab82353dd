"""The DuckDB event archive, as its one writer (the sink) sees it.

`Archive.open` opens the main file read-write (one process at a time: see
`turnout.analytics.snapshot` for how readers get in), creates or upgrades the tables
(schema.sql), rebuilds derived tables whose shape changed (`DERIVED_VERSION`)
and (re)creates the views (views/*.sql).

Rules:
- one batch, one transaction: `load_records` (the sink's fast path: raw
  records checked and parsed by DuckDB, stage.sql) and `load_batch` (decoded
  rows) store events and sink errors and advance `batch_seq` together;
- a redelivered event is stored once: the primary key on the id refuses it,
  and the batch is retried, skipping ids already stored (an anti-join). Not
  INSERT ... ON CONFLICT DO NOTHING: DuckDB runs that as a MERGE joining the
  whole table, ten times slower on a large archive;
- a record that is not a readable CloudEvent becomes a `sink_errors` row,
  never an exception;
- derived tables (`request_facts` behind the `requests` view, and the
  `requests_per_minute` rollup) are folded from the new events by `derive`
  (derive.sql) before each snapshot, so readers never scan every event to
  answer "how did requests go"; they are caches, rebuilt from `events`;
- `publish` = derive + seal + CHECKPOINT + a new snapshot for readers;
- sealing (`seal`) keeps the main file, and so each snapshot's copy, bounded
  however old the archive grows: whole UTC days of events older than
  `hot_hours` behind the newest event move to read-only part files (with the
  `request_facts` and `requests_per_minute` rows of their minutes), listed in
  `sealed_parts` in the same transaction that drops them here. A part file is
  written and renamed into place first; one that a crash left unlisted is
  written again by the next seal, and deleted by the next publish. Readers see
  the union (`turnout.analytics.snapshot`). An event the sink gets again after
  its day was sealed (a redelivery) is found in its part and stored once. An
  event of a request whose row was sealed (a resend answered more than
  `hot_hours` after the request's day) makes a second row for that request id, and
  a late request of a sealed minute a second `requests_per_minute` row for it.
  Part files no longer listed are deleted `UNLISTED_GRACE_S` later, not at once:
  a reader may have attached the snapshot that lists them a moment before.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import duckdb
import pyarrow as pa

from turnout.analytics.records import RecordBatch
from turnout.analytics.rows import ErrorRow, EventRow, decode_records, errors_table, events_table
from turnout.analytics.snapshot import (
    SEALED_TABLES,
    copy_atomically,
    open_error,
    open_reader,
    parts_dir,
    snapshot_path,
)
from turnout.service.clock import clock
from turnout.service.errors import TurnoutError

__all__ = [
    "DERIVED_VERSION",
    "ROW_GROUP_ROWS",
    "Archive",
    "LoadResult",
    "Published",
    "Sealed",
    "apply_views",
    "open_reader",
    "snapshot_path",
    "view_names",
]

DERIVED_VERSION = 3  # 2: request_facts.skipped_open; 3: usage and cost of every terminal
"""Bump when a derived table (schema.sql) or derive.sql changes: they are rebuilt."""

ROW_GROUP_ROWS = 122_880
"""The rows of one DuckDB row group (its default `ROW_GROUP_SIZE`): the sink's batch size."""

_EVENT_COLUMNS = (
    "id, type, time, tenant, request_id, source, trace_id, data, kafka_partition, kafka_offset"
)
# The fast path: the primary key's index refuses a duplicate, and the whole
# batch is retried on the slow path, which skips events already stored (and
# repeats within the batch). Not ON CONFLICT DO NOTHING: DuckDB plans it as a
# MERGE that joins the whole table, ten times slower on a large archive.
_INSERT_EVENTS = f"""
    INSERT INTO events ({_EVENT_COLUMNS}, batch_seq)
    SELECT {_EVENT_COLUMNS}, $seq FROM _sink_events
"""
_INSERT_NEW_EVENTS = f"""
    INSERT INTO events ({_EVENT_COLUMNS}, batch_seq)
    SELECT {_EVENT_COLUMNS}, $seq FROM _sink_events AS b
    WHERE NOT EXISTS (SELECT 1 FROM events AS e WHERE e.id = b.id)
    QUALIFY row_number() OVER (PARTITION BY b.id ORDER BY b.kafka_partition, b.kafka_offset) = 1
"""
_INSERT_STAGED = f"""
    INSERT INTO events ({_EVENT_COLUMNS}, batch_seq)
    SELECT {_EVENT_COLUMNS}, $seq FROM _staged WHERE ok AND time >= $through
"""
_INSERT_NEW_STAGED = f"""
    INSERT INTO events ({_EVENT_COLUMNS}, batch_seq)
    SELECT {_EVENT_COLUMNS}, $seq FROM _staged AS b
    WHERE ok AND time >= $through AND NOT EXISTS (SELECT 1 FROM events AS e WHERE e.id = b.id)
    QUALIFY row_number() OVER (PARTITION BY b.id ORDER BY b.kafka_partition, b.kafka_offset) = 1
"""
_REFUSED = "SELECT i FROM _staged WHERE NOT ok ORDER BY i"
_LATE = "SELECT count(*) FROM _staged WHERE ok AND time < $through"
_NEVER = datetime(1, 1, 1, tzinfo=UTC)  # `through` while no day is sealed
# DuckDB checkpoints on its own once the WAL passes 16 MB, in the middle of a batch's
# commit, and a checkpoint rewrites the id index (1.5 s at 1M events); `publish`
# checkpoints on the sink's schedule instead, and the WAL is replayed after a crash
_CHECKPOINT_THRESHOLD = "1GB"
_INSERT_ERRORS = "INSERT INTO sink_errors SELECT * FROM _sink_errors ON CONFLICT DO NOTHING"
_SET_STATE = "INSERT OR REPLACE INTO sink_state VALUES ($name, $value)"


def _sql(name: str) -> str:
    return resources.files("turnout.analytics").joinpath(name).read_text(encoding="utf-8")


def _statements(name: str) -> list[str]:
    """The statements of an SQL file, without comment lines, in order."""
    lines = [ln for ln in _sql(name).splitlines() if not ln.lstrip().startswith("--")]
    return [st.strip() for st in "\n".join(lines).split(";\n") if st.strip()]


def view_names() -> list[str]:
    """The views the archive defines (one file each in analytics/views/)."""
    views = resources.files("turnout.analytics").joinpath("views")
    return sorted(f.name.removesuffix(".sql") for f in views.iterdir() if f.name.endswith(".sql"))


def apply_views(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create every view; a view that reads another is retried after it."""
    pending = view_names()
    while pending:
        failed: list[str] = []
        for name in pending:
            try:
                con.execute(_sql(f"views/{name}.sql"))
            except duckdb.CatalogException:
                failed.append(name)
        if len(failed) == len(pending):
            con.execute(_sql(f"views/{failed[0]}.sql"))  # raises the real error
        pending = failed


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one `load_batch` did: events stored, redeliveries skipped, records refused."""

    batch_seq: int
    inserted: int
    duplicates: int
    errors: int
    last_event_ms: int | None


@dataclass(frozen=True, slots=True)
class Published:
    """A snapshot made by `Archive.publish`: where, with what, and how long it took."""

    path: Path
    requests_folded: int
    seconds: float
    fold_s: float = 0.0  # of `seconds`, the fold into the derived tables (`derive`)
    copy_s: float = 0.0  # ... and the copy to the readers' snapshot
    sealed: tuple[Sealed, ...] = ()  # parts sealed by this publish
    seal_s: float = 0.0  # ... and the time that took (with retention's)
    expired: tuple[Sealed, ...] = ()  # parts dropped by retention (`keep_days`)


@dataclass(frozen=True, slots=True)
class Sealed:
    """A part `Archive.seal` wrote: its first day, file, rows, and the days it holds
    (one, or a month's when that month's days were merged)."""

    day: date
    path: Path
    events: int
    requests: int
    days: int = 1


class _Straggler(Exception):
    """A batch holds events older than the sealed days: it takes the checked path."""


_SEALED_BY = {"events": "time", "request_facts": "minute", "requests_per_minute": "minute"}
"""The time column each sealed table is split on."""
_DAY = timedelta(days=1)
_PART_FILE = re.compile(r"\d{4}-\d{2}(-\d{2})?\.duckdb(\.tmp)?(\.wal)?")
"""The names of the files sealing writes in the parts folder (a day's, a month's)."""
UNLISTED_GRACE_S = 60.0
"""How long a part file no snapshot lists is kept before a publish deletes it."""


def _writer_lock(path: Path) -> IO[bytes]:
    """Hold `<archive>.lock` for the writer's life: one writer per archive.

    DuckDB's own lock is an fcntl lock, which POSIX drops as soon as the process
    closes *any* descriptor of the file (the snapshot copy does), so it cannot
    be the guard; a flock on a separate file is kept until `close()`.
    """
    fh = path.with_name(path.name + ".lock").open("ab")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise TurnoutError(
            f"the archive {path} is open in another process (one `turnout sink` per archive): "
            "stop that one, or give this one another --duckdb path"
        ) from None
    return fh


class Archive:
    """The archive's main file, opened read-write by its one writer (the sink)."""

    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection, lock: IO[bytes]) -> None:
        self.path = path
        self._lock = lock
        self.snapshot = snapshot_path(path)
        self._con = con
        self._seq = self._state("batch_seq")
        self._through = self._sealed_through()  # the end of the last sealed day, if any
        self._unlisted: dict[str, float] = {}  # part files no longer listed, since when
        expired = _state(con, "expired_before_ms")  # retention dropped the days before it
        self._expired_before = _from_ms(expired) if expired is not None else None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Archive:
        """Open (or create) the archive at `path` read-write and bring its schema up to date."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        lock = _writer_lock(p)
        try:
            con = duckdb.connect(str(p), config={"checkpoint_threshold": _CHECKPOINT_THRESHOLD})
        except (duckdb.IOException, duckdb.ResourceInUseException) as err:
            lock.close()
            raise open_error(p, err, writing=True) from None
        try:
            _prepare(con, p)
        except BaseException:
            con.close()
            lock.close()
            raise
        return cls(p, con, lock)

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The writer's connection (for tests and the benchmark; the sink uses the methods)."""
        return self._con

    @property
    def batch_seq(self) -> int:
        return self._seq

    def load_batch(self, rows: Sequence[EventRow], errors: Sequence[ErrorRow] = ()) -> LoadResult:
        """Store one batch in one transaction; a redelivered event is stored once.

        An event whose data DuckDB will not take as JSON is moved to `errors`
        (the batch is retried once without it), never lost and never fatal.
        """
        rows, sealed = self._unsealed(rows)
        try:
            result = self._load(rows, errors, dedupe=False)
        except duckdb.ConstraintException:  # a redelivery: some ids are stored already
            result = self._load(rows, errors, dedupe=True)
        except (duckdb.ConversionException, duckdb.InvalidInputException):
            good, bad = self._split_invalid_json(rows)
            result = self._load(good, [*errors, *bad], dedupe=True)
        if not sealed:
            return result
        return LoadResult(
            result.batch_seq, result.inserted, result.duplicates + sealed, result.errors,
            result.last_event_ms,
        )  # fmt: skip

    @property
    def _checked_before(self) -> datetime | None:
        """Events older than this may be stored already, in a part, or dropped by retention."""
        known = [d for d in (self._through, self._expired_before) if d is not None]
        return max(known) if known else None

    def _unsealed(self, rows: Sequence[EventRow]) -> tuple[Sequence[EventRow], int]:
        """`rows` without the events already stored in a sealed part or of a day retention
        dropped (a redelivery: counted as duplicates), and how many those were."""
        checked = self._checked_before
        if checked is None:
            return rows, 0
        limit = int(checked.timestamp() * 1000)
        old = [r.id for r in rows if r.time_ms < limit]
        if not old:
            return rows, 0
        stored = self._ids_in_parts(old)
        expired = self._expired_before
        gone = -(2**62) if expired is None else int(expired.timestamp() * 1000)
        kept = [r for r in rows if r.id not in stored and r.time_ms >= gone]
        return kept, len(rows) - len(kept)

    def _ids_in_parts(self, ids: list[str]) -> set[str]:
        """Which of `ids` the sealed parts hold (a rare path: a redelivery of old events)."""
        found: set[str] = set()
        for (file,) in self._con.execute("SELECT file FROM sealed_parts").fetchall():
            with _attached(self._con, parts_dir(self.path) / file, "_sealed"):
                rows = self._con.execute(
                    "SELECT DISTINCT id FROM _sealed.main.events WHERE id IN (SELECT unnest($ids))",
                    {"ids": ids},
                ).fetchall()
            found.update(i for (i,) in rows)
        return found

    def _load(
        self, rows: Sequence[EventRow], errors: Sequence[ErrorRow], *, dedupe: bool
    ) -> LoadResult:
        seq = self._seq + 1
        with self._transaction():
            inserted = self._insert_rows(rows, errors, seq, dedupe=dedupe)
            self._set_state("batch_seq", seq)
        self._seq = seq
        last = max(r.time_ms for r in rows) if rows else None
        return LoadResult(seq, inserted, len(rows) - inserted, len(errors), last)

    def _insert_rows(
        self, rows: Sequence[EventRow], errors: Sequence[ErrorRow], seq: int, *, dedupe: bool
    ) -> int:
        """Insert event and error rows inside the caller's transaction; return events stored."""
        inserted = 0
        with self._registered(rows, errors):
            if rows:
                sql = _INSERT_NEW_EVENTS if dedupe else _INSERT_EVENTS
                inserted = int(self._one(sql, {"seq": seq})[0])
            if errors:
                self._con.execute(_INSERT_ERRORS)
        return inserted

    def load_records(self, batch: RecordBatch) -> LoadResult:
        """Store raw records (the sink's fast path) in one transaction; see stage.sql.

        Records the vectorized check refuses go through the codec
        (`record_row`), which stores them or records why they are unreadable.
        """
        try:
            try:
                return self._load_records(batch, dedupe=False)
            except duckdb.ConstraintException:  # a redelivery: some ids are stored already
                return self._load_records(batch, dedupe=True)
        except (duckdb.ConversionException, duckdb.InvalidInputException, _Straggler):
            # also a redelivery that holds events of a sealed day (`_Straggler`)
            return self.load_batch(*decode_records([*batch.records, *batch.refused]))

    def _load_records(self, batch: RecordBatch, *, dedupe: bool) -> LoadResult:
        seq = self._seq + 1
        with self._registered_table("_records", batch.table), self._transaction():
            self._con.execute(_sql("stage.sql"))
            insert = _INSERT_NEW_STAGED if dedupe else _INSERT_STAGED
            checked = self._checked_before
            through = checked or _NEVER
            inserted = int(self._one(insert, {"seq": seq, "through": through})[0])
            refused: list[tuple[int]] = []
            if dedupe or inserted < len(batch.records):  # a second pass only when needed
                if checked is not None and self._one(_LATE, {"through": through})[0]:
                    raise _Straggler  # events of a sealed day: stored there already, maybe
                refused = self._con.execute(_REFUSED).fetchall()
            decoded, errors = decode_records(
                [*batch.refused, *(batch.records[i] for (i,) in refused)]
            )
            rows, skipped = self._unsealed(decoded)  # the codec's rows skip no sealed day either
            inserted += self._insert_rows(rows, errors, seq, dedupe=True)
            self._set_state("batch_seq", seq)
            self._con.execute("DROP VIEW _staged")
        self._seq = seq
        events = len(batch.records) - len(refused) + len(rows) + skipped
        last = max([r.time_ms for r in rows], default=batch.last_time_ms)
        return LoadResult(seq, inserted, events - inserted, len(errors), last)

    @contextmanager
    def _registered_table(self, name: str, table: pa.Table) -> Iterator[None]:
        self._con.register(name, table)
        try:
            yield
        finally:
            self._unregister(name)

    def _unregister(self, name: str) -> None:
        # Fails inside an aborted transaction; a later register() replaces it anyway.
        with suppress(duckdb.Error):
            self._con.unregister(name)

    @contextmanager
    def _registered(self, rows: Sequence[EventRow], errors: Sequence[ErrorRow]) -> Iterator[None]:
        """The batch as Arrow tables `_sink_events` and `_sink_errors`, for one statement each."""
        names = []
        if rows:
            self._con.register("_sink_events", events_table(rows))
            names.append("_sink_events")
        if errors:
            self._con.register("_sink_errors", errors_table(errors, clock.now_ms()))
            names.append("_sink_errors")
        try:
            yield
        finally:
            for name in names:
                self._unregister(name)

    def _split_invalid_json(
        self, rows: Sequence[EventRow]
    ) -> tuple[list[EventRow], list[ErrorRow]]:
        (valid,) = self._one("SELECT list_transform($d, lambda x: json_valid(x))", {
            "d": [r.data for r in rows]
        })  # fmt: skip
        good = [r for r, ok in zip(rows, valid, strict=True) if ok]
        bad = [_invalid_json(r) for r, ok in zip(rows, valid, strict=True) if not ok]
        return good, bad

    def derive(self) -> int:
        """Fold the events stored since the last call into the derived tables."""
        lo, hi = self._state("derived_through"), self._seq
        if hi <= lo:
            return 0
        folded = 0
        with self._transaction():
            for statement in _statements("derive.sql"):
                params = {"lo": lo, "hi": hi} if "$lo" in statement else None
                result = self._con.execute(statement, params)
                if statement.startswith("INSERT INTO request_facts"):
                    folded = int(result.fetchall()[0][0])
            self._set_state("derived_through", hi)
        return folded

    def publish(
        self,
        *,
        hot_hours: float | None = None,
        keep_days: int | None = None,
        until_ms: int | None = None,
    ) -> Published:
        """Derive, seal the days older than `hot_hours` (None: none; `until_ms`: see
        `seal`), drop the parts older than `keep_days` (None: keep all), checkpoint and
        atomically replace the readers' snapshot."""
        started = time.monotonic()
        folded = self.derive()
        derived = time.monotonic()
        sealed = self.seal(hot_hours, until_ms=until_ms) if hot_hours is not None else []
        expired = self.expire(keep_days) if keep_days else []
        sealing = time.monotonic()
        self._con.execute("CHECKPOINT")
        checkpointed = time.monotonic()
        copy_atomically(self.path, self.snapshot)
        done = time.monotonic()
        self._remove_unlisted_parts()
        return Published(
            self.snapshot, folded, done - started, derived - started, done - checkpointed,
            tuple(sealed), sealing - derived, tuple(expired),
        )  # fmt: skip

    # ------------------------------------------------------------------ sealing

    def seal(
        self, hot_hours: float, *, now_ms: int | None = None, until_ms: int | None = None
    ) -> list[Sealed]:
        """Move the whole UTC days ending more than `hot_hours` before the newest event
        (or now, or `until_ms`, whichever is earliest) into sealed parts, one file per day.

        `until_ms`: the oldest event the caller has read and not stored yet (the sink's
        batches in flight): a day it could still add rows to stays.
        """
        self.derive()  # a request's row is sealed whole: fold what is stored first
        (newest,) = self._one("SELECT max(time) FROM events")
        if newest is None:
            return []
        limit = clock.now_ms() if now_ms is None else now_ms
        if until_ms is not None:
            limit = min(limit, until_ms)
        # the days before `through` are sealed
        through = _day_of(min(newest, _from_ms(limit)) - timedelta(hours=hot_hours))
        if self._through is not None and through <= self._through:
            return []  # older rows (stragglers) wait for the next day to seal
        days = self._days_before(through)  # the days with rows to seal, in order
        if not days:
            return []
        folder = parts_dir(self.path)
        folder.mkdir(parents=True, exist_ok=True)
        sealed: list[Sealed] = []
        # the first part also takes whatever is older: events of days sealed before
        # (stragglers) go into the next part, never into a part already listed
        first = days[0] if self._through is None else max(days[0], self._through)
        for day in sorted({max(d, first) for d in days}):
            part = self._write_part(folder, day, None if day == first else day, day + _DAY)
            if part is not None:
                sealed.append(part)
        with self._transaction():
            self._keep_since(through)
            for part in sealed:
                self._list(part)
            self._set_state("sealed_through_ms", int(through.timestamp() * 1000))
        self._through = through
        return sealed + self._merge_months(through)

    def expire(self, keep_days: int) -> list[Sealed]:
        """Unlist the parts whose days all ended more than `keep_days` before the end of
        the last sealed day (retention); their files go `UNLISTED_GRACE_S` later."""
        if self._through is None:
            return []
        cutoff = (self._through - keep_days * _DAY).date()
        rows = self._con.execute(
            "SELECT day, until, file, events, requests FROM sealed_parts WHERE until <= $cutoff "
            "ORDER BY day",
            {"cutoff": cutoff},
        ).fetchall()
        if not rows:
            return []
        expired_before = _start_of(cutoff)
        with self._transaction():
            self._con.execute("DELETE FROM sealed_parts WHERE until <= $cutoff", {"cutoff": cutoff})
            self._set_state("expired_before_ms", int(expired_before.timestamp() * 1000))
        self._expired_before = expired_before
        folder = parts_dir(self.path)
        return [
            Sealed(day, folder / file, events, requests, (until - day).days)
            for day, until, file, events, requests in rows
        ]

    def _list(self, part: Sealed) -> None:
        self._con.execute(
            "INSERT INTO sealed_parts VALUES ($day, $until, $file, $events, $requests, now())",
            {"day": part.day, "until": part.day + part.days * _DAY, "file": part.path.name,
             "events": part.events, "requests": part.requests},
        )  # fmt: skip

    def _merge_months(self, through: datetime) -> list[Sealed]:
        """Merge the day parts of each month sealed to its end into one part, so a reader
        attaches a file per month, not per day, of an archive months old."""
        rows = self._con.execute(
            """
            SELECT date_trunc('month', day) AS month, min(day), list(file ORDER BY day),
                   sum(events), sum(requests)
            FROM sealed_parts
            WHERE until = day + 1 AND date_trunc('month', day) + INTERVAL 1 MONTH <= $through
            GROUP BY month HAVING count(*) > 1 ORDER BY month
            """,
            {"through": through.date()},
        ).fetchall()
        merged: list[Sealed] = []
        folder = parts_dir(self.path)
        for _, first, files, events, requests in rows:
            end = date(first.year + first.month // 12, first.month % 12 + 1, 1)
            final = folder / f"{first:%Y-%m}.duckdb"
            tmp = _fresh_tmp(final)
            with ExitStack() as attached:
                aliases = [
                    attached.enter_context(_attached(self._con, folder / file, f"_day{i}"))
                    for i, file in enumerate(files)
                ]
                attached.enter_context(_attached(self._con, tmp, "_part", read_only=False))
                for table in SEALED_TABLES:
                    union = " UNION ALL BY NAME ".join(
                        f"SELECT * FROM {a}.main.{table}" for a in aliases
                    )
                    self._con.execute(f"CREATE TABLE _part.main.{table} AS {union}")
            _fsync(tmp)
            os.replace(tmp, final)
            _fsync(folder)
            part = Sealed(first, final, int(events), int(requests), (end - first).days)
            with self._transaction():  # the day files go at the next publish
                self._con.execute(
                    "DELETE FROM sealed_parts WHERE day >= $first AND until <= $end",
                    {"first": first, "end": end},
                )
                self._list(part)
            merged.append(part)
        return merged

    def _days_before(self, through: datetime) -> list[datetime]:
        """The UTC days before `through` that rows of a sealed table fall in."""
        union = " UNION ".join(
            f"SELECT DISTINCT CAST(timezone('UTC', {c}) AS DATE) FROM main.{t} WHERE {c} < $through"
            for t, c in _SEALED_BY.items()
        )
        rows = self._con.execute(f"SELECT * FROM ({union}) ORDER BY 1", {"through": through})
        return [_start_of(d) for (d,) in rows.fetchall()]

    def _write_part(
        self, folder: Path, day: datetime, lo: datetime | None, hi: datetime
    ) -> Sealed | None:
        """Write the rows of [lo, hi) of each sealed table to the day's part file (fsynced,
        renamed into place); None when there are none."""
        params: dict[str, Any] = {"hi": hi} if lo is None else {"lo": lo, "hi": hi}
        where = {
            t: f"{c} < $hi" if lo is None else f"{c} >= $lo AND {c} < $hi"
            for t, c in _SEALED_BY.items()
        }
        counts = {
            t: int(self._one(f"SELECT count(*) FROM main.{t} WHERE {where[t]}", params)[0])
            for t in SEALED_TABLES
        }
        if not any(counts.values()):
            return None
        final = folder / f"{day.date().isoformat()}.duckdb"
        tmp = _fresh_tmp(final)
        with _attached(self._con, tmp, "_part", read_only=False):
            for table in SEALED_TABLES:
                self._con.execute(
                    f"CREATE TABLE _part.main.{table} AS SELECT * FROM main.{table} "
                    f"WHERE {where[table]}",
                    params,
                )
        _fsync(tmp)
        os.replace(tmp, final)
        _fsync(folder)
        return Sealed(day.date(), final, counts["events"], counts["request_facts"])

    def _keep_since(self, through: datetime) -> None:
        """Drop the sealed rows from this file (inside the caller's transaction).

        The tables with a primary key are copied, not deleted from: DuckDB's DELETE
        updates the key's index row by row (30 s per million events here), while
        building a table anew takes ~1 s per million rows kept.
        """
        creates = {
            table: next(st for st in _statements("schema.sql")
                        if st.startswith(f"CREATE TABLE IF NOT EXISTS {table} "))
            for table in ("events", "request_facts")
        }  # fmt: skip
        for table, create in creates.items():
            self._con.execute(f"ALTER TABLE {table} RENAME TO _sealing")
            self._con.execute(create)
            self._con.execute(
                f"INSERT INTO {table} BY NAME SELECT * FROM _sealing "
                f"WHERE {_SEALED_BY[table]} >= $through",
                {"through": through},
            )
            self._con.execute("DROP TABLE _sealing")
        self._con.execute(
            "DELETE FROM requests_per_minute WHERE minute < $through", {"through": through}
        )

    def _sealed_through(self) -> datetime | None:
        """The end of the last sealed day (kept apart from the parts: they may expire)."""
        ms = _state(self._con, "sealed_through_ms")
        if ms is not None:
            return _from_ms(ms)
        (day,) = self._one("SELECT max(until) FROM sealed_parts")
        return None if day is None else _start_of(day)

    def _remove_unlisted_parts(self) -> None:
        """Delete the part files no snapshot has listed for `UNLISTED_GRACE_S` (the days of
        a merged month, unsealed parts, what a crash left): a reader that attached the
        snapshot before may still be about to attach them."""
        folder = parts_dir(self.path)
        if not folder.is_dir():
            return
        listed = {file for (file,) in self._con.execute("SELECT file FROM sealed_parts").fetchall()}
        now = time.monotonic()
        unlisted: dict[str, float] = {}
        for entry in folder.iterdir():
            if entry.name in listed or not _PART_FILE.fullmatch(entry.name) or entry.is_dir():
                continue  # listed, or not a file this archive wrote: never touched
            since = self._unlisted.get(entry.name, now)
            if now - since >= UNLISTED_GRACE_S:
                entry.unlink(missing_ok=True)
            else:
                unlisted[entry.name] = since
        self._unlisted = unlisted

    def close(self) -> None:
        self._con.close()
        self._lock.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._con.begin()
        try:
            yield
        except BaseException:
            with suppress(duckdb.Error):
                self._con.rollback()
            raise
        self._con.commit()

    def _one(self, sql: str, params: dict[str, Any] | None = None) -> tuple[Any, ...]:
        (row,) = self._con.execute(sql, params).fetchall()  # fetchall: DuckDB 2 wants results done
        return tuple(row)

    def _state(self, name: str) -> int:
        return _state(self._con, name) or 0

    def _set_state(self, name: str, value: int) -> None:
        self._con.execute(_SET_STATE, {"name": name, "value": value})


def _prepare(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Create or upgrade the tables, rebuild stale derived tables, (re)create the views."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE TABLE IF NOT EXISTS sink_state (name VARCHAR PRIMARY KEY, value BIGINT)")
    if _state(con, "derived_version") != DERIVED_VERSION:
        _unseal(con, path)  # the derived tables are rebuilt from every event, sealed ones too
        con.execute("DROP TABLE IF EXISTS request_facts")
        con.execute("DROP TABLE IF EXISTS requests_per_minute")
        con.execute("INSERT OR REPLACE INTO sink_state VALUES ('derived_through', 0)")
    con.execute(_sql("schema.sql"))
    con.execute(
        "INSERT OR REPLACE INTO sink_state VALUES ('derived_version', ?)", [DERIVED_VERSION]
    )
    apply_views(con)


def _unseal(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Move every sealed part's events back into the main file, in one transaction (the
    part files go at the next publish, once no new snapshot lists them)."""
    listed = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name = 'sealed_parts'"
    ).fetchall()[0][0]
    if not listed:
        return
    files = [f for (f,) in con.execute("SELECT file FROM sealed_parts ORDER BY day").fetchall()]
    if not files:
        return
    con.begin()
    try:
        for file in files:
            with _attached(con, parts_dir(path) / file, "_unsealing"):
                con.execute("INSERT INTO events BY NAME SELECT * FROM _unsealing.main.events")
        con.execute("DELETE FROM sealed_parts")
        con.execute("DELETE FROM sink_state WHERE name = 'sealed_through_ms'")
    except BaseException:
        with suppress(duckdb.Error):
            con.rollback()
        raise
    con.commit()


def _day_of(moment: datetime) -> datetime:
    """The start (UTC) of the day `moment` falls in."""
    return _start_of(moment.astimezone(UTC).date())


def _start_of(day: date) -> datetime:
    """The start (UTC) of `day` (a UTC day, as the archive counts them)."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@contextmanager
def _attached(
    con: duckdb.DuckDBPyConnection, path: Path, alias: str, *, read_only: bool = True
) -> Iterator[str]:
    """`path` attached to `con` as `alias` for the block (read-only unless asked)."""
    con.execute(f"ATTACH ? AS {alias}{' (READ_ONLY)' if read_only else ''}", [str(path)])
    try:
        yield alias
    except BaseException:
        with suppress(duckdb.Error):  # inside an aborted transaction DETACH fails too:
            con.execute(f"DETACH {alias}")  # the error that aborted it is the one to see
        raise
    con.execute(f"DETACH {alias}")


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _fresh_tmp(final: Path) -> Path:
    """The temporary file `final` is written as, with whatever a crash left of it gone."""
    tmp = final.with_name(final.name + ".tmp")
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    return tmp


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _state(con: duckdb.DuckDBPyConnection, name: str) -> int | None:
    rows = con.execute("SELECT value FROM sink_state WHERE name = ?", [name]).fetchall()
    return int(rows[0][0]) if rows else None


def _invalid_json(row: EventRow) -> ErrorRow:
    return ErrorRow(
        topic="",
        kafka_partition=row.kafka_partition,
        kafka_offset=row.kafka_offset,
        kafka_timestamp_ms=None,
        code="malformed_json",
        reason=f"event {row.id}: data is not JSON that DuckDB accepts",
        key=row.tenant.encode(),
        value=row.data.encode(),
        headers=[("ce_id", row.id), ("ce_type", row.type)],
    )
