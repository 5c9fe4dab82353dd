"""The Cache page: hits, misses, stored bytes and compression, evictions, coalescing."""

from __future__ import annotations

from typing import Any, Final

import pandas as pd

from turnout.dashboards.queries._base import (
    BUCKET,
    EVENTS_IN,
    Run,
    any_of,
    one_row,
    task_of_request,
)
from turnout.dashboards.scope import Scope

__all__ = ["cache_by_reason", "cache_over_time", "cache_totals"]


_CACHE_TYPES: Final = (
    "'turnout.cache.hit', 'turnout.cache.miss', 'turnout.cache.stored', "
    "'turnout.cache.evicted', 'turnout.request.coalesced'"
)
_CACHE_EVENTS: Final = f"""
    SELECT time, type, tenant, request_id,
           json_transform(data, '{{"size_bytes": "BIGINT", "stored_bytes": "BIGINT",
               "saved_cost_micros": "BIGINT", "reason": "VARCHAR",
               "encoding": "VARCHAR"}}') AS d
    FROM events
    WHERE type IN ({_CACHE_TYPES}) AND {EVENTS_IN} AND {any_of("tenants", "tenant")}
      AND (request_id IS NULL OR {task_of_request()})
"""


def cache_totals(run: Run, scope: Scope) -> dict[str, Any]:
    """hits, misses, hit_ratio, stored, size_bytes (uncompressed), stored_bytes,
    compression_ratio, evicted, evicted_bytes, coalesced, saved_usd."""
    sql = f"""
        WITH c AS ({_CACHE_EVENTS})
        SELECT
            count(*) FILTER (WHERE type = 'turnout.cache.hit') AS hits,
            count(*) FILTER (WHERE type = 'turnout.cache.miss') AS misses,
            count(*) FILTER (WHERE type = 'turnout.cache.hit')
                / nullif(count(*) FILTER (WHERE type IN ('turnout.cache.hit',
                                                         'turnout.cache.miss')), 0)
                AS hit_ratio,
            count(*) FILTER (WHERE type = 'turnout.cache.stored') AS stored,
            sum(d.size_bytes) FILTER (WHERE type = 'turnout.cache.stored') AS size_bytes,
            sum(d.stored_bytes) FILTER (WHERE type = 'turnout.cache.stored') AS stored_bytes,
            sum(d.size_bytes) FILTER (WHERE type = 'turnout.cache.stored')
                / nullif(sum(d.stored_bytes) FILTER (WHERE type = 'turnout.cache.stored'), 0)
                AS compression_ratio,
            count(*) FILTER (WHERE type = 'turnout.cache.evicted') AS evicted,
            sum(d.stored_bytes) FILTER (WHERE type = 'turnout.cache.evicted') AS evicted_bytes,
            count(*) FILTER (WHERE type = 'turnout.request.coalesced') AS coalesced,
            sum(d.saved_cost_micros) FILTER (WHERE type = 'turnout.cache.hit') / 1e6 AS saved_usd
        FROM c
    """
    return one_row(run(sql, scope.params()))


def cache_over_time(run: Run, scope: Scope) -> pd.DataFrame:
    """Cache events per bucket: time, event (hit, miss, stored, evicted, coalesced), events."""
    sql = f"""
        WITH c AS ({_CACHE_EVENTS})
        SELECT {BUCKET.format("time")} AS time,
               CASE type WHEN 'turnout.request.coalesced' THEN 'coalesced'
                         ELSE replace(type, 'turnout.cache.', '') END AS event,
               count(*) AS events
        FROM c
        GROUP BY ALL
        ORDER BY time, event
    """
    return run(sql, scope.params())


def cache_by_reason(run: Run, scope: Scope) -> pd.DataFrame:
    """Stored entries per encoding and evictions per reason: event, detail, entries,
    size_bytes, stored_bytes, compression_ratio (stored only)."""
    sql = f"""
        WITH c AS ({_CACHE_EVENTS})
        SELECT replace(type, 'turnout.cache.', '') AS event,
               coalesce(CASE type WHEN 'turnout.cache.stored' THEN d.encoding
                                  ELSE d.reason END, '?') AS detail,
               count(*) AS entries,
               sum(d.size_bytes) AS size_bytes,
               sum(d.stored_bytes) AS stored_bytes,
               sum(d.size_bytes) / nullif(sum(d.stored_bytes), 0) AS compression_ratio
        FROM c
        WHERE type IN ('turnout.cache.stored', 'turnout.cache.evicted')
        GROUP BY ALL
        ORDER BY event DESC, entries DESC
    """
    return run(sql, scope.params())
