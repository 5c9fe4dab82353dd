"""The Request explorer: recent requests, one request's row and its events."""

from __future__ import annotations

from typing import Any

import pandas as pd

from turnout.dashboards.queries._base import REQ_WHERE, TERMINAL, Run, one_row
from turnout.dashboards.scope import Scope

__all__ = ["recent_requests", "request_summary", "request_trail"]


def recent_requests(run: Run, scope: Scope, *, limit: int = 100) -> pd.DataFrame:
    """The newest requests in scope: request_id, started_at, tenant, task_type, model,
    outcome, attempts, latency_ms, cost_usd."""
    sql = f"""
        SELECT request_id, started_at, tenant, task_type, final_model AS model, outcome,
               attempts, latency_ms, cost_usd
        FROM requests
        WHERE {REQ_WHERE}
        ORDER BY coalesce(started_at, finished_at) DESC, request_id
        LIMIT $limit
    """
    return run(sql, {**scope.params(), "limit": limit})


def request_summary(run: Run, request_id: str) -> dict[str, Any]:
    """The `requests` row of one request ({} when there is none)."""
    return one_row(
        run("SELECT * FROM requests WHERE request_id = $request_id", {"request_id": request_id})
    )


def request_trail(run: Run, request_id: str) -> pd.DataFrame:
    """Every event of one request in log order: seq, offset_ms (since its first event),
    delta_ms (since the previous one), end_ms (an attempt's finish, for started
    attempts), event (type without `turnout.`), stage, time, source, trace_id, id, data.

    `request_id` may also be an event id (a dead-lettered record has no request id).
    """
    sql = f"""
        WITH e AS (
            SELECT id, type, time, source, trace_id, data, kafka_partition, kafka_offset,
                   TRY_CAST(data ->> '$.attempt' AS INTEGER) AS attempt
            FROM events
            WHERE request_id = $request_id OR id = $request_id
        ),
        o AS (
            SELECT *,
                   row_number() OVER (ORDER BY time, kafka_partition, kafka_offset) AS seq,
                   (epoch_us(time) - min(epoch_us(time)) OVER ()) / 1000.0 AS offset_ms
            FROM e
        )
        SELECT seq, offset_ms,
               offset_ms - lag(offset_ms, 1, 0) OVER (ORDER BY seq) AS delta_ms,
               CASE WHEN type = 'turnout.attempt.started' THEN (
                   SELECT min(f.offset_ms) FROM o AS f
                   WHERE f.attempt = o.attempt
                     AND f.type IN ('turnout.attempt.succeeded', 'turnout.attempt.failed'))
               END AS end_ms,
               replace(type, 'turnout.', '') AS event,
               split_part(type, '.', 2) AS stage,
               type IN ({TERMINAL}) AS terminal,
               time, source, trace_id, id, data
        FROM o
        ORDER BY seq
    """
    return run(sql, {"request_id": request_id})
