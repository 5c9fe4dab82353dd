"""`turnout sql`: run one read-only query on the archive; print a table, CSV or JSON.

The query runs on a read-only connection to the archive's published snapshot
(`turnout.analytics.archive.open_reader`), so it works while `turnout sink` writes,
and never sees half a batch. A statement that would change the archive
(DROP, INSERT, CREATE TABLE, ...) fails with one line and changes nothing.

Formats: `table` (rich, on stdout; at most `TABLE_ROW_LIMIT` rows, with a note
when there are more), `csv` (a header line, then one line per row; NULL is
empty), `json` (one array of objects; JSON columns are embedded as JSON).
Times print in UTC.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, TextIO

import duckdb
import msgspec
from rich.console import Console
from rich.table import Table

from turnout.analytics.archive import open_reader
from turnout.service.errors import TurnoutError
from turnout.service.runtime.config import load_config

__all__ = [
    "TABLE_ROW_LIMIT",
    "Result",
    "cli_main",
    "query",
    "run",
    "write_csv",
    "write_json",
    "write_table",
]

TABLE_ROW_LIMIT = 1000
_FETCH = 10_000
_READ_ONLY = re.compile(r'statement of type "(?P<kind>\w+)"')
_JSON = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Result:
    """A query's column names and types, and its rows (fetched lazily, in order)."""

    columns: list[str]
    types: list[str]
    rows: Iterator[tuple[Any, ...]]


def query(con: duckdb.DuckDBPyConnection, sql: str) -> Result:
    """Run `sql` on `con`; DuckDB's errors come out as one-line TurnoutErrors."""
    try:
        cur = con.execute(sql)
    except duckdb.Error as err:
        raise _query_error(err) from None
    description = cur.description or []
    return Result(
        columns=[d[0] for d in description],
        types=[str(d[1]) for d in description],
        rows=_fetch(cur),
    )


def _fetch(cur: duckdb.DuckDBPyConnection) -> Iterator[tuple[Any, ...]]:
    try:
        while chunk := cur.fetchmany(_FETCH):
            yield from chunk
    except duckdb.Error as err:
        raise _query_error(err) from None


def _query_error(err: duckdb.Error) -> TurnoutError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    match = _READ_ONLY.search(first)
    if match:
        return TurnoutError(
            f"the archive is read-only here: `turnout sql` runs queries, not "
            f"{match['kind']} statements (nothing was changed)"
        )
    return TurnoutError(f"query failed: {first}")


# --- output -----------------------------------------------------------------


def _text(value: Any) -> str:
    """A value as CSV and table cells show it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list | dict | tuple):
        return _JSON.encode(value).decode()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def write_table(result: Result, out: TextIO, *, limit: int = TABLE_ROW_LIMIT) -> None:
    """A rich table of at most `limit` rows, then a line saying how many there were."""
    console = Console(file=out, width=None if out.isatty() else 10_000, highlight=False)
    table = Table(*result.columns, show_lines=False, header_style="bold")
    shown = total = 0
    for row in result.rows:
        total += 1
        if shown < limit:
            table.add_row(*("[dim]NULL[/dim]" if v is None else _cell(v) for v in row))
            shown += 1
    if result.columns:
        console.print(table)
    more = f" (first {shown} shown: use --format csv for all)" if total > shown else ""
    console.print(f"{total} row{'s' if total != 1 else ''}{more}", style="dim")


def _cell(value: Any) -> str:
    return _text(value).replace("[", r"\[")


def write_csv(result: Result, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.columns)
    for row in result.rows:
        writer.writerow(["" if v is None else _text(v) for v in row])


def write_json(result: Result, out: TextIO) -> None:
    """One JSON array, one object per line."""
    json_cols = {i for i, t in enumerate(result.types) if t == "JSON"}
    sep = "[\n"
    for row in result.rows:
        values = [
            msgspec.Raw(v.encode()) if i in json_cols and v is not None else v
            for i, v in enumerate(row)
        ]
        out.write(sep + _JSON.encode(dict(zip(result.columns, values, strict=True))).decode())
        sep = ",\n"
    out.write("[]\n" if sep == "[\n" else "\n]\n")


_WRITERS = {"table": write_table, "csv": write_csv, "json": write_json}


# --- command line -----------------------------------------------------------


def _query_text(args: argparse.Namespace) -> str | None:
    """The query from the argument, or --file (`-` is stdin); None when usage is wrong."""
    if (args.query is None) == (args.file is None):
        return None
    if args.query is not None:
        text: str = args.query
    elif args.file == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except OSError as err:
            raise TurnoutError(f"cannot read the query file {args.file}: {err.strerror}") from None
    return text if text.strip() else None


def run(sql: str, path: str | Path, fmt: str, out: TextIO) -> None:
    """Run `sql` on the archive at `path` and write the result to `out` as `fmt`."""
    con = open_reader(path)
    try:
        _WRITERS[fmt](query(con, sql), out)
    finally:
        con.close()


def cli_main(args: argparse.Namespace) -> int:
    """`turnout sql QUERY | --file F [--format table|csv|json] [--duckdb PATH]`."""
    sql = _query_text(args)
    if sql is None:
        print("turnout sql: error: give one query, as an argument or with --file", file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    run(sql, args.duckdb or cfg.duckdb.path, args.format, sys.stdout)
    return 0
