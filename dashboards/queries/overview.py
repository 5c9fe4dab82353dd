"""The archive's extent, the sidebar's filter choices, and the Overview page's numbers."""

from __future__ import annotations

from typing import Any, NamedTuple

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


class _Grain(NamedTuple):
    rows: str  # SQL: request rows to bucket (time, outcome, requests, cached, cost_usd)
    at: str  # SQL: a `requests` row's time at this grain
    within: str  # SQL: `requests` rows inside the window at this grain
    covered: str  # SQL: the seconds of bucket `time` the rows cover (at least 1)


def _covering(first: str) -> str:
    """The seconds of bucket `time` from `first` to the window's end: a rate in the
    window's first or last bucket is over the part of it with data, not diluted."""
    return (
        f"greatest(epoch(least(time + to_seconds($bucket_s), $end) - greatest(time, {first})), 1)"
    )


def _grain(scope: Scope) -> _Grain:
    """Where the series read requests from: buckets of whole minutes read the
    per-minute rollup (a request counts in its minute); narrower ones read each
    request at the moment it finished (else started), inside the window."""
    if scope.bucket_s % 60 == 0:
        rows = f"""
            SELECT minute AS time, outcome, requests, cached, cost_usd
            FROM requests_per_minute
            WHERE {RPM_WHERE}
        """
        return _Grain(rows, "minute", REQ_WHERE, _covering("date_trunc('minute', $start)"))
    at = "coalesce(finished_at, started_at)"
    within = f"{REQ_WHERE} AND {at} >= $start AND {at} <= $end"
    rows = f"""
        SELECT {at} AS time, outcome, 1 AS requests, cached::INTEGER AS cached,
               coalesce(cost_usd, 0) AS cost_usd
        FROM requests
        WHERE {within}
    """
    return _Grain(rows, at, within, _covering("$start"))


def overview_series(run: Run, scope: Scope) -> pd.DataFrame:
    """Per bucket: time, requests_per_s, error_rate, cache_hit_ratio, cost_usd, p50/p95/p99_ms."""
    grain = _grain(scope)
    sql = f"""
        WITH f AS ({grain.rows}),
        r AS (
            SELECT
                {BUCKET.format("time")} AS time,
                sum(requests) AS requests,
                sum(requests) FILTER (WHERE outcome = 'failed') AS failed,
                sum(requests) FILTER (WHERE outcome IN ('completed', 'failed')) AS finished,
                sum(requests) FILTER (WHERE outcome = 'completed') AS completed,
                sum(cached) FILTER (WHERE outcome = 'completed') AS cached,
                sum(cost_usd) AS cost_usd
            FROM f
            GROUP BY 1
        ),
        l AS (
            SELECT
                {BUCKET.format(grain.at)} AS time,
                quantile_cont(latency_ms, 0.5) AS p50_ms,
                quantile_cont(latency_ms, 0.95) AS p95_ms,
                quantile_cont(latency_ms, 0.99) AS p99_ms
            FROM requests
            WHERE outcome = 'completed' AND {grain.within}
            GROUP BY 1
        )
        SELECT
            r.time,
            r.requests / {grain.covered} AS requests_per_s,
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
    grain = _grain(scope)
    sql = f"""
        WITH f AS ({grain.rows}),
        b AS (
            SELECT {BUCKET.format("time")} AS time, outcome, sum(requests) AS requests
            FROM f
            GROUP BY ALL
        )
        SELECT time, outcome, requests / {grain.covered} AS requests_per_s
        FROM b
        ORDER BY time, outcome
    """
    return run(sql, scope.params())
