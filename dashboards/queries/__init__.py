"""Every query the dashboards run: parameterised, read-only, one function per question.

One module per page (`overview`, `routing`, `reliability`, `tenants`,
`cache`, `alerts`, `explorer`) and the shared fragments in `_base`; every
function is re-exported here, so pages call `queries.<name>`.

Each function takes `run` (`source.Db`: `(sql, params) -> DataFrame`) and a
`scope.Scope` and returns a DataFrame (or one row as a dict). No SQL lives
anywhere else in the dashboards, and no value is ever pasted into SQL text:
filters are `$parameters` (an empty list means "all").

Rules, for speed on a large archive:
- request numbers read the sink's derived tables: `requests_per_minute` for
  counts, cost and the time series in buckets of whole minutes, `requests`
  (over `request_facts`) where a number needs single requests (latency
  percentiles, the recent list, buckets under a minute: windows up to two
  hours). Both count a request in the minute it finished (`minute`), so
  their windows are whole minutes; a series under a minute places each
  request at the moment it finished, inside the window;
- other numbers read `events` directly, narrowed by `type` and `time` first
  (DuckDB skips whole row groups by their time range) and only then decoding
  `data`. The `attempts`, `budget_ledger` and `alerts` views group or window
  over every event of their types before a time filter could apply; they are
  used where that set is small (alerts) or the question needs it (budgets);
- the task-type filter reaches event queries through `request_facts`.
"""

from __future__ import annotations

from turnout.dashboards.queries._base import Run
from turnout.dashboards.queries.alerts import alert_episodes, alert_history, alerts_firing
from turnout.dashboards.queries.cache import cache_by_reason, cache_over_time, cache_totals
from turnout.dashboards.queries.explorer import recent_requests, request_summary, request_trail
from turnout.dashboards.queries.overview import (
    archive_facts,
    filter_options,
    overview_kpis,
    overview_series,
    requests_by_outcome,
)
from turnout.dashboards.queries.reliability import (
    attempt_outcomes,
    breaker_states,
    breaker_timeline,
    retry_budget,
)
from turnout.dashboards.queries.routing import (
    answered_by_model,
    calls_by_provider,
    decisions,
    fallbacks,
    retries_over_time,
    routing_kpis,
    skipped_candidates,
    streams_by_model,
)
from turnout.dashboards.queries.tenants import (
    budget_status,
    ratelimit_by_tenant,
    ratelimit_over_time,
    top_tenants,
)

__all__ = [
    "Run",
    "alert_episodes",
    "alert_history",
    "alerts_firing",
    "answered_by_model",
    "archive_facts",
    "attempt_outcomes",
    "breaker_states",
    "breaker_timeline",
    "budget_status",
    "cache_by_reason",
    "cache_over_time",
    "cache_totals",
    "calls_by_provider",
    "decisions",
    "fallbacks",
    "filter_options",
    "overview_kpis",
    "overview_series",
    "ratelimit_by_tenant",
    "ratelimit_over_time",
    "recent_requests",
    "request_summary",
    "request_trail",
    "requests_by_outcome",
    "retries_over_time",
    "retry_budget",
    "routing_kpis",
    "skipped_candidates",
    "streams_by_model",
    "top_tenants",
]
