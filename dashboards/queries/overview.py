"""The archive's extent, the sidebar's filter choices, and the Overview page's numbers."""

from __future__ import annotations

from typing import Any

import pandas as pd

from turnout.dashboards.queries._base import BUCKET, REQ_WHERE, RPM_WHERE, Run, one_row
from turnout.dashboards.scope import Scope

__all__ = [
    "archive_facts",
    "filter_options",
    "overview_kpis",
    "overview_series",
    "requests_by_outcome",
]


def archive_facts(run: Run) -> dict[str, Any]:
    """events (count), oldest, newest: the archive's extent."""
    return one_row(
        run("SELECT count(*) AS events, min(time) AS oldest, max(time) AS newest FROM events", {})
    )


def filter_options(run: Run) -> dict[str, list[str]]:
    """The tenants, task types and models requests name, for the sidebar filters."""
    df = run(
        """
        SELECT DISTINCT 'tenant' AS kind, tenant AS value FROM requests_per_minute
        UNION SELECT DISTINCT 'task_type', task_type FROM requests_per_minute
        UNION SELECT DISTINCT 'model', model FROM requests_per_minute
        UNION SELECT DISTINCT 'model', data ->> '$.model' FROM events
            WHERE type IN ('turnout.breaker.opened', 'turnout.attempt.failed')
              AND time >= (SELECT max(time) FROM events) - INTERVAL 1 DAY
        ORDER BY 1, 2
        """,
        {},
    )
    df = df.dropna()
    return {k: df.loc[df["kind"] == k, "value"].tolist() for k in ("tenant", "task_type", "model")}


def overview_kpis(run: Run, scope: Scope) -> dict[str, Any]:
    """requests, requests_per_s, completed, failed, rejected, error_rate,
    cache_hit_ratio, p50_ms/p95_ms/p99_ms (answered requests), cost_usd."""
    sql = f"""
        SELECT
            count(*) AS requests,
            count(*) / $seconds AS requests_per_s,
            count(*) FILTER (WHERE outcome = 'completed') AS completed,
            count(*) FILTER (WHERE outcome = 'failed') AS failed,
            count(*) FILTER (WHERE outcome = 'rejected') AS rejected,
            count(*) FILTER (WHERE outcome = 'failed')
                / nullif(count(*) FILTER (WHERE outcome IN ('completed', 'failed')), 0)
                AS error_rate,
            count(*) FILTER (WHERE outcome = 'completed' AND cached)
                / nullif(count(*) FILTER (WHERE outcome = 'completed'), 0) AS cache_hit_ratio,
            quantile_cont(latency_ms, 0.5) FILTER (WHERE outcome = 'completed') AS p50_ms,
            quantile_cont(latency_ms, 0.95) FILTER (WHERE outcome = 'completed') AS p95_ms,
            quantile_cont(latency_ms, 0.99) FILTER (WHERE outcome = 'completed') AS p99_ms,
            coalesce(sum(cost_micros), 0) / 1e6 AS cost_usd
        FROM requests
        WHERE {REQ_WHERE}
    """
    return one_row(run(sql, {**scope.params(), "seconds": scope.window.seconds}))


def overview_series(run: Run, scope: Scope) -> pd.DataFrame:
    """Per bucket: time, requests_per_s, error_rate, cache_hit_ratio, cost_usd, p50/p95/p99_ms."""
    sql = f"""
        WITH r AS (
            SELECT
                {BUCKET.format("minute")} AS time,
                sum(requests) AS requests,
                sum(requests) FILTER (WHERE outcome = 'failed') AS failed,
                sum(requests) FILTER (WHERE outcome IN ('completed', 'failed')) AS finished,
                sum(requests) FILTER (WHERE outcome = 'completed') AS completed,
                sum(cached) FILTER (WHERE outcome = 'completed') AS cached,
                sum(cost_usd) AS cost_usd
            FROM requests_per_minute
            WHERE {RPM_WHERE}
            GROUP BY 1
        ),
        l AS (
            SELECT
                {BUCKET.format("minute")} AS time,
                quantile_cont(latency_ms, 0.5) AS p50_ms,
                quantile_cont(latency_ms, 0.95) AS p95_ms,
                quantile_cont(latency_ms, 0.99) AS p99_ms
            FROM requests
            WHERE outcome = 'completed' AND {REQ_WHERE}
            GROUP BY 1
        )
        SELECT
            r.time,
            r.requests / $bucket_s AS requests_per_s,
            coalesce(r.failed, 0) / nullif(r.finished, 0) AS error_rate,
            coalesce(r.cached, 0) / nullif(r.completed, 0) AS cache_hit_ratio,
            r.cost_usd,
            l.p50_ms, l.p95_ms, l.p99_ms
        FROM r LEFT JOIN l USING (time)
        ORDER BY r.time
    """
    return run(sql, scope.params())


def requests_by_outcome(run: Run, scope: Scope) -> pd.DataFrame:
    """Per bucket and outcome: time, outcome, requests_per_s."""
    sql = f"""
        SELECT {BUCKET.format("minute")} AS time, outcome,
               sum(requests) / $bucket_s AS requests_per_s
        FROM requests_per_minute
        WHERE {RPM_WHERE}
        GROUP BY ALL
        ORDER BY time, outcome
    """
    return run(sql, scope.params())
