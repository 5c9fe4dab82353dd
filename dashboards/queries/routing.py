"""The Routing page: route decisions, the models that answered, fallbacks, retries."""

from __future__ import annotations

from typing import Any

import pandas as pd

from turnout.dashboards.queries._base import (
    BUCKET,
    EVENTS_IN,
    REQ_WHERE,
    RPM_WHERE,
    Run,
    any_of,
    one_row,
    task_of_request,
)
from turnout.dashboards.scope import Scope

__all__ = [
    "answered_by_model",
    "calls_by_provider",
    "decisions",
    "fallbacks",
    "retries_over_time",
    "routing_kpis",
    "skipped_candidates",
    "streams_by_model",
]


def routing_kpis(run: Run, scope: Scope) -> dict[str, Any]:
    """answered, fell_back (requests answered by another model than the first tried),
    fallbacks, retried (requests with a retry), retries, fallback_share, retried_share."""
    sql = f"""
        SELECT
            count(*) FILTER (WHERE outcome = 'completed') AS answered,
            count(*) FILTER (WHERE fallbacks > 0) AS fell_back,
            coalesce(sum(fallbacks), 0) AS fallbacks,
            count(*) FILTER (WHERE retries > 0) AS retried,
            coalesce(sum(retries), 0) AS retries,
            count(*) FILTER (WHERE outcome = 'completed' AND fallbacks > 0)
                / nullif(count(*) FILTER (WHERE outcome = 'completed'), 0) AS fallback_share,
            count(*) FILTER (WHERE retries > 0)
                / nullif(count(*) FILTER (WHERE attempts > 0), 0) AS retried_share
        FROM requests
        WHERE {REQ_WHERE}
    """
    return one_row(run(sql, scope.params()))


def decisions(run: Run, scope: Scope) -> pd.DataFrame:
    """Route decisions: strategy, task_type, model (first choice), decisions."""
    sql = f"""
        WITH d AS (
            SELECT tenant, data ->> '$.strategy' AS strategy,
                   data ->> '$.task_type' AS task_type, data ->> '$.order[0]' AS model
            FROM events
            WHERE type = 'turnout.route.decided' AND {EVENTS_IN}
        )
        SELECT strategy, task_type, model, count(*) AS decisions
        FROM d
        WHERE {any_of("tenants", "tenant")} AND {any_of("task_types", "task_type")}
          AND {any_of("models", "model")}
        GROUP BY ALL
        ORDER BY decisions DESC, strategy, model
    """
    return run(sql, scope.params())


def skipped_candidates(run: Run, scope: Scope) -> pd.DataFrame:
    """Candidates a route decision left out: model, reason, times."""
    sql = f"""
        WITH d AS (
            SELECT tenant, data ->> '$.task_type' AS task_type,
                   unnest(from_json(data -> '$.skipped',
                                    '[{{"model": "VARCHAR", "reason": "VARCHAR"}}]')) AS s
            FROM events
            WHERE type = 'turnout.route.decided' AND {EVENTS_IN}
              AND json_array_length(data -> '$.skipped') > 0
        )
        SELECT s.model AS model, s.reason AS reason, count(*) AS times
        FROM d
        WHERE {any_of("tenants", "tenant")} AND {any_of("task_types", "task_type")}
          AND {any_of("models", "s.model")}
        GROUP BY ALL
        ORDER BY times DESC
    """
    return run(sql, scope.params())


def answered_by_model(run: Run, scope: Scope) -> pd.DataFrame:
    """Finished requests per final model: model, outcome, requests."""
    sql = f"""
        SELECT model, outcome, sum(requests)::BIGINT AS requests
        FROM requests_per_minute
        WHERE {RPM_WHERE} AND model IS NOT NULL
        GROUP BY ALL
        ORDER BY model, outcome
    """
    return run(sql, scope.params())


def calls_by_provider(run: Run, scope: Scope) -> pd.DataFrame:
    """Upstream calls per provider and model: calls, ok, failed, p50_ms (`provider` is
    `upstream` for events written without [providers])."""
    sql = f"""
        WITH a AS (
            SELECT tenant, request_id, type,
                   json_transform(data, '{{"model": "VARCHAR", "provider": "VARCHAR",
                                          "latency_ms": "DOUBLE"}}') AS d
            FROM events
            WHERE type IN ('turnout.attempt.succeeded', 'turnout.attempt.failed')
              AND {EVENTS_IN}
        )
        SELECT coalesce(d.provider, 'upstream') AS provider, d.model AS model,
               count(*) AS calls,
               count(*) FILTER (WHERE type = 'turnout.attempt.succeeded') AS ok,
               count(*) FILTER (WHERE type = 'turnout.attempt.failed') AS failed,
               quantile_cont(d.latency_ms, 0.5) AS p50_ms
        FROM a
        WHERE {any_of("tenants", "tenant")} AND {any_of("models", "d.model")}
          AND {task_of_request()}
        GROUP BY ALL
        ORDER BY provider, model
    """
    return run(sql, scope.params())


def fallbacks(run: Run, scope: Scope) -> pd.DataFrame:
    """Fallbacks taken: from_model, to_model, reason, fallbacks (a model filter
    matches either end)."""
    sql = f"""
        WITH f AS (
            SELECT tenant, request_id, data ->> '$.from_model' AS from_model,
                   data ->> '$.to_model' AS to_model, data ->> '$.reason' AS reason
            FROM events
            WHERE type = 'turnout.fallback.taken' AND {EVENTS_IN}
        )
        SELECT from_model, to_model, reason, count(*) AS fallbacks
        FROM f
        WHERE {any_of("tenants", "tenant")} AND {task_of_request()}
          AND ({any_of("models", "from_model")} OR {any_of("models", "to_model")})
        GROUP BY ALL
        ORDER BY fallbacks DESC
    """
    return run(sql, scope.params())


def retries_over_time(run: Run, scope: Scope) -> pd.DataFrame:
    """Retries scheduled per bucket and model: time, model, retries."""
    sql = f"""
        WITH r AS (
            SELECT time, tenant, request_id, data ->> '$.model' AS model
            FROM events
            WHERE type = 'turnout.retry.scheduled' AND {EVENTS_IN}
        )
        SELECT {BUCKET.format("time")} AS time, model, count(*) AS retries
        FROM r
        WHERE {any_of("tenants", "tenant")} AND {any_of("models", "model")} AND {task_of_request()}
        GROUP BY ALL
        ORDER BY time, model
    """
    return run(sql, scope.params())


def streams_by_model(run: Run, scope: Scope) -> pd.DataFrame:
    """Streamed attempts by model: streams, time to first token p50/p95 (ms), and output
    tokens per second after the first token (median) of the ones that finished."""
    sql = f"""
        WITH f AS (
            SELECT request_id, tenant, (data ->> '$.attempt')::INTEGER AS attempt,
                   data ->> '$.model' AS model, (data ->> '$.ttft_ms')::DOUBLE AS ttft_ms
            FROM events
            WHERE type = 'turnout.stream.first_token' AND {EVENTS_IN}
        ), s AS (
            SELECT request_id, (data ->> '$.attempt')::INTEGER AS attempt,
                   (data ->> '$.latency_ms')::DOUBLE AS latency_ms,
                   (data ->> '$.usage.completion_tokens')::BIGINT AS tokens
            FROM events
            WHERE type = 'turnout.attempt.succeeded' AND {EVENTS_IN}
        )
        SELECT f.model, count(*) AS streams,
               quantile_cont(f.ttft_ms, 0.5) AS ttft_p50_ms,
               quantile_cont(f.ttft_ms, 0.95) AS ttft_p95_ms,
               median(s.tokens / nullif((s.latency_ms - f.ttft_ms) / 1000, 0)) AS tokens_per_s
        FROM f LEFT JOIN s USING (request_id, attempt)
        WHERE {any_of("tenants", "f.tenant")} AND {any_of("models", "f.model")}
          AND {task_of_request("f.request_id")}
        GROUP BY ALL
        ORDER BY streams DESC, f.model
    """
    return run(sql, scope.params())
