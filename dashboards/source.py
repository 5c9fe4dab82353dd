"""The dashboards' one way into the archive: read-only, the published snapshot, cached.

Every query goes through `Db`, a callable `(sql, params) -> DataFrame`:

- connections come from `turnout.analytics.snapshot.open_reader` (the published
  snapshot, read-only; the main file while none exists), one per snapshot
  file version (`SourceKey`: path, inode, mtime, size), shared by all browser
  sessions; each query runs on its own cursor, so sessions never share one
  DuckDB connection at the same time;
- a query's result is cached for `RESULT_TTL_S` under (snapshot version,
  SQL, parameters): a page that reruns on the same snapshot costs nothing,
  and a new snapshot (the sink publishes about once a second) is a new key;
- parameters are named (`$tenants`); those the SQL does not mention are left
  out, so callers may pass one dict for all their queries.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import duckdb
import pandas as pd
import streamlit as st

from turnout.analytics.snapshot import open_reader, reader_cursor, snapshot_path

__all__ = ["RESULT_TTL_S", "Db", "SourceKey", "source_key"]

RESULT_TTL_S: Final = 30
_PARAM: Final = re.compile(r"\$([A-Za-z_]\w*)")

SourceKey = tuple[str, int, int, int]
"""(archive path, inode, mtime ns, size) of the file readers open."""


def source_key(path: str | os.PathLike[str]) -> SourceKey | None:
    """The version of the file readers of the archive at `path` open; None: no archive."""
    main = Path(path).resolve()
    for candidate in (snapshot_path(main), main):
        try:
            st_ = candidate.stat()
        except FileNotFoundError:
            continue
        return (str(main), st_.st_ino, st_.st_mtime_ns, st_.st_size)
    return None


@st.cache_resource(max_entries=4, show_spinner=False)
def _connection(key: SourceKey) -> duckdb.DuckDBPyConnection:
    return open_reader(key[0])


@st.cache_data(ttl=RESULT_TTL_S, max_entries=2000, show_spinner=False)
def _frame(key: SourceKey, sql: str, params: dict[str, Any]) -> pd.DataFrame:
    cur = reader_cursor(_connection(key))
    try:
        return cur.execute(sql, params).df()
    finally:
        cur.close()


@dataclass(frozen=True, slots=True)
class Db:
    """Runs read-only queries on one version of the archive's snapshot."""

    key: SourceKey

    def __call__(self, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
        wanted = set(_PARAM.findall(sql))
        used = {k: v for k, v in (params or {}).items() if k in wanted}
        return _frame(self.key, sql, used)
