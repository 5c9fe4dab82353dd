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
- `publish` = derive + CHECKPOINT + a new snapshot for readers.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import duckdb
import pyarrow as pa

from turnout.analytics.records import RecordBatch
from turnout.analytics.rows import ErrorRow, EventRow, decode_records, errors_table, events_table
from turnout.analytics.snapshot import copy_atomically, open_error, open_reader, snapshot_path
from turnout.service.clock import clock
from turnout.service.errors import TurnoutError

__all__ = [
    "DERIVED_VERSION",
    "ROW_GROUP_ROWS",
    "Archive",
    "LoadResult",
    "Published",
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
    SELECT {_EVENT_COLUMNS}, $seq FROM _staged WHERE ok
"""
_INSERT_NEW_STAGED = f"""
    INSERT INTO events ({_EVENT_COLUMNS}, batch_seq)
    SELECT {_EVENT_COLUMNS}, $seq FROM _staged AS b
    WHERE ok AND NOT EXISTS (SELECT 1 FROM events AS e WHERE e.id = b.id)
    QUALIFY row_number() OVER (PARTITION BY b.id ORDER BY b.kafka_partition, b.kafka_offset) = 1
"""
_REFUSED = "SELECT i FROM _staged WHERE NOT ok ORDER BY i"
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
            _prepare(con)
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
        try:
            return self._load(rows, errors, dedupe=False)
        except duckdb.ConstraintException:  # a redelivery: some ids are stored already
            return self._load(rows, errors, dedupe=True)
        except (duckdb.ConversionException, duckdb.InvalidInputException):
            good, bad = self._split_invalid_json(rows)
            return self._load(good, [*errors, *bad], dedupe=True)

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
            return self._load_records(batch, dedupe=False)
        except duckdb.ConstraintException:  # a redelivery: some ids are stored already
            return self._load_records(batch, dedupe=True)
        except (duckdb.ConversionException, duckdb.InvalidInputException):
            return self.load_batch(*decode_records([*batch.records, *batch.refused]))

    def _load_records(self, batch: RecordBatch, *, dedupe: bool) -> LoadResult:
        seq = self._seq + 1
        with self._registered_table("_records", batch.table), self._transaction():
            self._con.execute(_sql("stage.sql"))
            insert = _INSERT_NEW_STAGED if dedupe else _INSERT_STAGED
            inserted = int(self._one(insert, {"seq": seq})[0])
            refused: list[tuple[int]] = []
            if dedupe or inserted < len(batch.records):  # a second pass only when needed
                refused = self._con.execute(_REFUSED).fetchall()
            rows, errors = decode_records([*batch.refused, *(batch.records[i] for (i,) in refused)])
            inserted += self._insert_rows(rows, errors, seq, dedupe=True)
            self._set_state("batch_seq", seq)
            self._con.execute("DROP VIEW _staged")
        self._seq = seq
        events = len(batch.records) - len(refused) + len(rows)
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

    def publish(self) -> Published:
        """Derive, checkpoint and atomically replace the readers' snapshot."""
        started = time.monotonic()
        folded = self.derive()
        derived = time.monotonic()
        self._con.execute("CHECKPOINT")
        checkpointed = time.monotonic()
        copy_atomically(self.path, self.snapshot)
        done = time.monotonic()
        return Published(
            self.snapshot, folded, done - started, derived - started, done - checkpointed
        )

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


def _prepare(con: duckdb.DuckDBPyConnection) -> None:
    """Create or upgrade the tables, rebuild stale derived tables, (re)create the views."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE TABLE IF NOT EXISTS sink_state (name VARCHAR PRIMARY KEY, value BIGINT)")
    if _state(con, "derived_version") != DERIVED_VERSION:
        con.execute("DROP TABLE IF EXISTS request_facts")
        con.execute("DROP TABLE IF EXISTS requests_per_minute")
        con.execute("INSERT OR REPLACE INTO sink_state VALUES ('derived_through', 0)")
    con.execute(_sql("schema.sql"))
    con.execute(
        "INSERT OR REPLACE INTO sink_state VALUES ('derived_version', ?)", [DERIVED_VERSION]
    )
    apply_views(con)


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
