"""Readers of the archive: the published snapshot, never a half-written batch.

DuckDB lets one process open a database file read-write, and a read-only
open fails ("Could not set lock on file") while that writer holds it; read-
only openers would in turn lock the writer out. So the archive is two files:

- `turnout.duckdb`, the main file: opened read-write by its one writer, the
  sink (`turnout.analytics.archive.Archive`), for as long as it runs;
- `turnout.snapshot.duckdb`, the snapshot (`snapshot_path`): what every
  reader opens (`open_reader`: `turnout sql`, alert rules, dashboards,
  replay). After a CHECKPOINT, when the main file alone holds every committed
  batch, the sink copies it to a temporary file and renames that over the
  snapshot (`copy_atomically`). The rename is atomic: a reader opens the old
  snapshot or the new one, never a half-written batch, and one that has the
  old one open keeps reading it (POSIX) until it reconnects.

Sealed parts: so that a snapshot copies a bounded file however old the archive,
the sink moves whole UTC days of events older than `[duckdb] hot_hours` out of
the main file into read-only part files, `turnout.parts/<day>.duckdb`
(`parts_dir`; `Archive.seal`), listed in the main file's `sealed_parts` table.
A part never changes once listed. A reader attaches the parts its snapshot
lists and sees `events`, `request_facts` and `requests_per_minute` as the union
of the snapshot's rows and the parts' (temporary views, `reader_cursor`), so
every query, view and rule reads the whole archive as one.

Costs: readers lag the log by the publish interval (about a second; the sink
waits longer when a publish takes long: copying a 2 GB, 10M-event archive
took about 2 s on ext4, next to nothing where copy_file_range makes a reflink,
on btrfs or XFS; with sealing the copy is of the last `hot_hours` and a day at
most), and the snapshot doubles the main file's disk use. Without a snapshot
(an archive never published) readers open the main file read-only, which
works while no writer holds it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb

from turnout.service.errors import TurnoutError

__all__ = [
    "SEALED_TABLES",
    "copy_atomically",
    "open_error",
    "open_reader",
    "part_alias",
    "parts_dir",
    "reader_cursor",
    "snapshot_path",
]

SEALED_TABLES = ("events", "request_facts", "requests_per_minute")
"""The tables whose old rows move to sealed parts (readers see each as one union)."""


def snapshot_path(path: str | os.PathLike[str]) -> Path:
    """Where readers find the published snapshot of the archive at `path`."""
    p = Path(path)
    return p.with_name(f"{p.stem}.snapshot{p.suffix or '.duckdb'}")


def parts_dir(path: str | os.PathLike[str]) -> Path:
    """Where the sealed parts of the archive at `path` live."""
    p = Path(path)
    return p.with_name(f"{p.stem}.parts")


def part_alias(file: str) -> str:
    """The name a reader attaches the part `file` (`2026-01-02.duckdb`) as."""
    return "part_" + file.removesuffix(".duckdb").replace("-", "")


def copy_atomically(source: Path, target: Path) -> None:
    """Copy `source` to `target` so that readers see the old file or the whole new one.

    Not fsynced: it guards against torn reads, not power cuts; a snapshot lost
    to one is published again when the sink starts.
    """
    tmp = target.with_name(target.name + ".tmp")
    with open(source, "rb") as src, open(tmp, "wb") as dst:
        _copy_fd(src.fileno(), dst.fileno(), os.fstat(src.fileno()).st_size)
    os.replace(tmp, target)  # no fsync: a snapshot lost to a power cut is made again


def _copy_fd(src: int, dst: int, size: int) -> None:
    """In-kernel copy (a reflink on btrfs/XFS), else a plain one."""
    copied = 0
    try:
        while copied < size:
            n = os.copy_file_range(src, dst, size - copied)
            if n == 0:
                break
            copied += n
    except (AttributeError, OSError):
        os.lseek(src, copied, os.SEEK_SET)
        os.lseek(dst, copied, os.SEEK_SET)
        with open(src, "rb", closefd=False) as s, open(dst, "wb", closefd=False) as d:
            shutil.copyfileobj(s, d, 1 << 20)


def open_reader(path: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """A read-only connection on the latest published snapshot of the archive at `path`.

    Falls back to the main file (read-only) when no snapshot exists. The
    connection sees one snapshot for its whole life: reopen to see newer data.
    """
    for attempt in range(3):
        try:
            return _open_reader(Path(path))
        except _Replaced:
            if attempt == 2:
                raise TurnoutError(
                    f"the archive {path} changed three times while it was being opened: try again"
                ) from None
    raise AssertionError("unreachable")


class _Replaced(Exception):
    """The snapshot was replaced while a reader attached the parts it listed."""


def _open_reader(main: Path) -> duckdb.DuckDBPyConnection:
    target = snapshot_path(main)
    if not target.exists():
        if not main.exists():
            raise TurnoutError(
                f"no archive at {main}: start `turnout sink` to create it "
                "(or point --duckdb / TURNOUT_DUCKDB_PATH at an existing one)"
            )
        target = main
    # Attached to a fresh in-memory database, not `connect(target)`: DuckDB caches
    # one instance per path and process, which would hand a reader the snapshot
    # another connection of this process already has open, however old.
    con = duckdb.connect(":memory:")
    try:
        inode = target.stat().st_ino
        con.execute("ATTACH ? AS archive (READ_ONLY)", [str(target)])
    except duckdb.Error as err:
        con.close()
        raise open_error(target, err, writing=False) from None
    except BaseException:  # also FileNotFoundError: gone between exists() and stat()
        con.close()
        raise
    try:
        _attach_parts(con, main)
        _use(con)
    except TurnoutError:
        try:  # compared while the old snapshot is still open: its inode is not reused
            replaced = target.stat().st_ino != inode  # a newer snapshot lists other parts
        except FileNotFoundError:
            replaced = True
        con.close()
        if replaced:
            raise _Replaced from None
        raise
    except BaseException:
        con.close()
        raise
    return con


def reader_cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """A cursor of a reader connection that sees what the connection sees.

    A cursor shares the connection's attached files but not its temporary views,
    so the union over sealed parts is made again on it.
    """
    cur = con.cursor()
    try:
        _use(cur)
    except BaseException:
        cur.close()
        raise
    return cur


def _sealed(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The part files the attached archive lists (none before sealing existed)."""
    known = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = 'archive' "
        "AND schema_name = 'main' AND table_name = 'sealed_parts'"
    ).fetchall()[0][0]
    if not known:
        return []
    rows = con.execute("SELECT file FROM archive.main.sealed_parts ORDER BY day").fetchall()
    return [str(file) for (file,) in rows]


def _attach_parts(con: duckdb.DuckDBPyConnection, main: Path) -> None:
    folder = parts_dir(main)
    for file in _sealed(con):
        path = folder / file
        if not path.exists():
            raise TurnoutError(
                f"the archive {main} lists the sealed part {path}, which is missing: "
                "restore it from a backup (the archive reads nothing without it)"
            )
        try:
            con.execute(f"ATTACH ? AS {part_alias(file)} (READ_ONLY)", [str(path)])
        except duckdb.Error as err:
            raise open_error(path, err, writing=False) from None


def _use(con: duckdb.DuckDBPyConnection) -> None:
    """Make `archive` the default database, and each sealed table the union of its parts."""
    con.execute("USE archive")
    con.execute("SET TimeZone = 'UTC'")
    parts = [part_alias(file) for file in _sealed(con)]
    if not parts:
        return
    for table in SEALED_TABLES:
        # BY NAME: a part sealed by an older version may lack a newer column (NULL there)
        union = " UNION ALL BY NAME ".join(
            f"SELECT * FROM {db}.main.{table}" for db in ("archive", *parts)
        )
        # temporary views come first in DuckDB's search path, also for the archive's views
        con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS {union}")


def open_error(path: Path, err: duckdb.Error, *, writing: bool) -> TurnoutError:
    text = str(err)
    if "lock" not in text.lower() and "already attached" not in text:
        return TurnoutError(f"cannot open the archive {path}: {text.splitlines()[0]}")
    if writing:
        return TurnoutError(
            f"the archive {path} is open in another process (one `turnout sink` per archive): "
            "stop that one, or give this one another --duckdb path"
        )
    return TurnoutError(
        f"the archive {path} is being written and has no snapshot yet: wait until "
        "`turnout sink` has published one (about a second), then try again"
    )
