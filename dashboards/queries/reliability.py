"""The Reliability page: circuit breakers, attempt outcomes, the retry budget."""

from __future__ import annotations

import pandas as pd

from turnout.dashboards.queries._base import BUCKET, EVENTS_IN, Run, any_of, task_of_request
from turnout.dashboards.scope import Scope

__all__ = ["attempt_outcomes", "breaker_states", "breaker_timeline", "retry_budget"]


def breaker_timeline(run: Run, scope: Scope) -> pd.DataFrame:
    """Breaker states as spans clipped to the window: model, state, start, end.

    A breaker's state at the window's start is its last transition before it;
    a model without transitions is closed throughout and has no rows.
    """
    sql = f"""
        WITH t AS (
            SELECT model, state, time AS since,
                   lead(time) OVER (PARTITION BY model ORDER BY time) AS until
            FROM breaker_transitions
            WHERE time <= $end AND {any_of("models", "model")}
        )
        SELECT model, state, greatest(since, $start) AS start,
               coalesce(least(until, $end), $end) AS "end"
        FROM t
        WHERE coalesce(until, $end) >= $start
        ORDER BY model, start
    """
    return run(sql, scope.params())


def breaker_states(run: Run, scope: Scope) -> pd.DataFrame:
    """Each model's breaker at the window's end: model, state, since, reason, transitions
    (in the window)."""
    sql = f"""
        WITH b AS (
            SELECT model, arg_max(state, time) AS state, max(time) AS since,
                   -- the reason of the latest transition itself (arg_max would skip a
                   -- closed breaker's NULL and show an older "a probe call failed")
                   arg_max(coalesce(reason, CASE state
                       WHEN 'closed' THEN coalesce(successes, 0) || ' probe call(s) succeeded'
                       ELSE 'recovery timeout elapsed' END), time) AS reason,
                   count(*) FILTER (WHERE time >= $start) AS transitions
            FROM breaker_transitions
            WHERE time <= $end AND {any_of("models", "model")}
            GROUP BY model
        )
        SELECT * FROM b ORDER BY state = 'closed', model
    """
    return run(sql, scope.params())


def attempt_outcomes(run: Run, scope: Scope) -> pd.DataFrame:
    """Finished upstream attempts: model, provider, result (ok or the error class),
    attempts, p95_ms (`provider` is `upstream` for events written without [providers])."""
    sql = f"""
        WITH a AS (
            SELECT tenant, request_id, type,
                   json_transform(data, '{{"model": "VARCHAR", "error_class": "VARCHAR",
                                          "latency_ms": "DOUBLE", "provider": "VARCHAR"}}') AS d
            FROM events
            WHERE type IN ('turnout.attempt.succeeded', 'turnout.attempt.failed')
              AND {EVENTS_IN}
        )
        SELECT d.model AS model, coalesce(d.provider, 'upstream') AS provider,
               CASE WHEN type = 'turnout.attempt.succeeded' THEN 'ok'
                    ELSE coalesce(d.error_class, 'error') END AS result,
               count(*) AS attempts,
               quantile_cont(d.latency_ms, 0.95) AS p95_ms
        FROM a
        WHERE {any_of("tenants", "tenant")} AND {any_of("models", "d.model")}
          AND {task_of_request()}
        GROUP BY ALL
        ORDER BY model, result
    """
    return run(sql, scope.params())


def retry_budget(
    run: Run, scope: Scope, *, ratio: float, minimum: int, window_s: int
) -> pd.DataFrame:
    """Per bucket: time, requests, retries, window_retries, budget, use (window_retries /
    budget).

    The router allows retries up to `max(minimum, ratio x requests)` in any
    `window_s`. A bucket narrower than that is judged as the router judges it:
    `window_retries` and the budget count the `window_s` ending with the bucket
    (events before the window's start included). A bucket as wide or wider gets
    the budget in proportion: `max(minimum x bucket / window_s, ratio x requests)`.
    """
    sql = f"""
        WITH b AS (
            SELECT {BUCKET.format("time")} AS time,
                   count(*) FILTER (WHERE type = 'turnout.request.accepted') AS requests,
                   count(*) FILTER (WHERE type = 'turnout.retry.scheduled') AS retries
            FROM events
            WHERE type IN ('turnout.request.accepted', 'turnout.retry.scheduled')
              AND time >= $start - to_seconds($window_s) AND time <= $end
              AND {any_of("tenants", "tenant")} AND {task_of_request()}
            GROUP BY 1
        ),
        w AS (
            SELECT time, requests, retries,
                   sum(requests) OVER recent AS window_requests,
                   sum(retries) OVER recent AS window_retries
            FROM b
            WINDOW recent AS (
                ORDER BY time
                RANGE BETWEEN to_seconds(greatest($window_s - $bucket_s, 0)) PRECEDING
                          AND CURRENT ROW)
        ),
        g AS (
            SELECT time, requests, retries, window_retries,
                   CASE WHEN $bucket_s >= $window_s
                        THEN greatest($minimum * $bucket_s / $window_s, $ratio * requests)
                        ELSE greatest($minimum, $ratio * window_requests) END AS budget
            FROM w
            WHERE time >= {BUCKET.format("$start")}
        )
        SELECT *, window_retries / budget AS use
        FROM g
        ORDER BY time
    """
    params = {**scope.params(), "ratio": ratio, "minimum": minimum, "window_s": window_s}
    return run(sql, params)
