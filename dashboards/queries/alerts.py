"""The Alerts page: what fires now, episodes and alert events."""

from __future__ import annotations

import pandas as pd

from turnout.dashboards.queries._base import Run
from turnout.dashboards.scope import Scope

__all__ = ["alert_episodes", "alert_history", "alerts_firing"]


def alerts_firing(run: Run, scope: Scope) -> pd.DataFrame:
    """Alerts whose latest event by the window's end is `fired`: rule, severity, labels,
    value, threshold, op, since."""
    sql = """
        WITH latest AS (
            SELECT rule, labels::VARCHAR AS labels,
                   arg_max(state, time) AS state, arg_max(severity, time) AS severity,
                   arg_max(value, time) AS value, arg_max(threshold, time) AS threshold,
                   arg_max(op, time) AS op, arg_max(fired_at, time) AS since
            FROM alerts
            WHERE time <= $end
            GROUP BY rule, labels::VARCHAR
        )
        SELECT rule, severity, labels, value, op, threshold, since
        FROM latest
        WHERE state = 'fired'
        ORDER BY since, rule, labels
    """
    return run(sql, scope.params())


def alert_history(run: Run, scope: Scope, *, limit: int = 500) -> pd.DataFrame:
    """Alert events in the window, newest first: time, state, rule, severity, labels,
    value, op, threshold."""
    sql = """
        SELECT time, state, rule, severity, labels::VARCHAR AS labels, value, op, threshold
        FROM alerts
        WHERE time >= $start AND time <= $end
        ORDER BY time DESC
        LIMIT $limit
    """
    return run(sql, {**scope.params(), "limit": limit})


def alert_episodes(run: Run, scope: Scope) -> pd.DataFrame:
    """Episodes that overlap the window, clipped to it: alert (rule + labels), rule,
    labels (JSON text), severity, start, end, firing (not resolved by the window's end)."""
    sql = """
        WITH a AS (
            SELECT rule, labels::VARCHAR AS labels, severity, state, time,
                   lead(time) OVER w AS next_time, lead(state) OVER w AS next_state
            FROM alerts
            WHERE time <= $end
            WINDOW w AS (PARTITION BY rule, labels::VARCHAR ORDER BY time)
        )
        SELECT rule || ' ' || labels AS alert, rule, labels, severity,
               greatest(time, $start) AS start,
               CASE WHEN next_state = 'resolved' THEN next_time ELSE $end END AS "end",
               next_state IS NULL AS firing
        FROM a
        WHERE state = 'fired' AND (next_state IS NULL OR next_state = 'resolved')
          AND coalesce(next_time, $end) >= $start
        ORDER BY start
    """
    return run(sql, scope.params())
