"""What every query module shares: the runner type, filter fragments, row helpers.

Fragments are SQL text with `$parameters` only (see `scope.Scope.params`),
never values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import numpy as np
import pandas as pd

__all__ = [
    "BUCKET",
    "EVENTS_IN",
    "MINUTES",
    "REQ_WHERE",
    "RPM_WHERE",
    "TERMINAL",
    "Run",
    "any_of",
    "one_row",
    "plain",
    "task_of_request",
]

Run = Callable[[str, dict[str, Any]], pd.DataFrame]


def any_of(param: str, column: str) -> str:
    """True when the list parameter `param` is empty or holds `column`'s value."""
    return f"(len(${param}) = 0 OR list_contains(${param}, {column}))"


def task_of_request(column: str = "request_id") -> str:
    return (
        "(len($task_types) = 0 OR "
        f"{column} IN (SELECT request_id FROM request_facts "
        "WHERE list_contains($task_types, task_type)))"
    )


# Request tables: whole minutes; every filter on its own column.
MINUTES: Final = "minute >= date_trunc('minute', $start) AND minute <= $end"
RPM_WHERE: Final = (
    f"{MINUTES} AND {any_of('tenants', 'tenant')} AND {any_of('task_types', 'task_type')} "
    f"AND {any_of('models', 'model')}"
)
REQ_WHERE: Final = (
    f"{MINUTES} AND {any_of('tenants', 'tenant')} AND {any_of('task_types', 'task_type')} "
    f"AND {any_of('models', 'final_model')}"
)
EVENTS_IN: Final = "time >= $start AND time <= $end"
BUCKET: Final = "time_bucket(to_seconds($bucket_s), {})"

TERMINAL: Final = (
    "'turnout.request.completed', 'turnout.request.failed', "
    "'turnout.request.rejected', 'turnout.request.deadlettered', 'turnout.request.cancelled'"
)


def one_row(df: pd.DataFrame) -> dict[str, Any]:
    """The first row as plain Python values (ints stay ints); {} when there is none."""
    return {} if df.empty else {c: plain(df[c].iloc[0]) for c in df.columns}


def plain(value: Any) -> Any:
    """NaN/NA/NaT as None (unknown, not zero); numpy scalars as Python ones; a list
    column's value (an array) as a list, whatever its length (a one-element array is
    not a scalar: `.item()` would turn ['openai/gpt-4o'] into its string)."""
    if isinstance(value, np.ndarray | list | tuple):
        return [plain(v) for v in value]
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):  # lists, arrays
        return value
    return value.item() if hasattr(value, "item") and not isinstance(value, pd.Timestamp) else value
