"""The Tenants page: the busiest tenants, rate-limit refusals, budgets."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from turnout.dashboards.queries._base import BUCKET, EVENTS_IN, RPM_WHERE, Run, any_of
from turnout.dashboards.scope import Scope

__all__ = ["budget_status", "ratelimit_by_tenant", "ratelimit_over_time", "top_tenants"]


def top_tenants(run: Run, scope: Scope, *, limit: int = 20) -> pd.DataFrame:
    """The busiest tenants: tenant, requests, completed, failed, rejected, tokens, cost_usd."""
    sql = f"""
        SELECT tenant, sum(requests)::BIGINT AS requests,
               coalesce(sum(requests) FILTER (WHERE outcome = 'completed'), 0)::BIGINT
                   AS completed,
               coalesce(sum(requests) FILTER (WHERE outcome = 'failed'), 0)::BIGINT AS failed,
               coalesce(sum(requests) FILTER (WHERE outcome = 'rejected'), 0)::BIGINT AS rejected,
               sum(total_tokens)::BIGINT AS tokens, sum(cost_usd) AS cost_usd
        FROM requests_per_minute
        WHERE {RPM_WHERE}
        GROUP BY tenant
        ORDER BY requests DESC, tenant
        LIMIT $limit
    """
    return run(sql, {**scope.params(), "limit": limit})


def ratelimit_by_tenant(run: Run, scope: Scope) -> pd.DataFrame:
    """Rate-limit refusals: tenant, limit_name (the config key that refused), rejections."""
    sql = f"""
        SELECT tenant, data ->> '$.limit' AS limit_name, count(*) AS rejections
        FROM events
        WHERE type = 'turnout.ratelimit.exceeded' AND {EVENTS_IN}
          AND {any_of("tenants", "tenant")}
        GROUP BY ALL
        ORDER BY rejections DESC, tenant
    """
    return run(sql, scope.params())


def ratelimit_over_time(run: Run, scope: Scope) -> pd.DataFrame:
    """Rate-limit refusals per bucket: time, tenant, rejections."""
    sql = f"""
        SELECT {BUCKET.format("time")} AS time, tenant, count(*) AS rejections
        FROM events
        WHERE type = 'turnout.ratelimit.exceeded' AND {EVENTS_IN}
          AND {any_of("tenants", "tenant")}
        GROUP BY ALL
        ORDER BY time, tenant
    """
    return run(sql, scope.params())


def budget_status(
    run: Run,
    scope: Scope,
    *,
    period: str,
    configured_limit: Callable[[str], float | None],
) -> pd.DataFrame:
    """Budget use in the day or month (`period`) the window ends in, per tenant:
    tenant, spent_usd, reserved_usd (open reservations), limit_usd, limit_source
    (`enforced`: the limit the router last reported; `config`: this dashboard's
    config), used (spent + reserved over limit), warnings, refused."""
    if period not in ("day", "month"):
        raise ValueError(f"period must be day or month, not {period!r}")
    sql = f"""
        SELECT tenant,
               sum(spent_delta_micros) / 1e6 AS spent_usd,
               greatest(sum(reserved_delta_micros), 0) / 1e6 AS reserved_usd,
               arg_max(limit_micros, time) FILTER (WHERE entry = 'exceeded') / 1e6
                   AS enforced_limit_usd,
               count(*) FILTER (WHERE entry = 'exceeded' AND level = 'soft') AS warnings,
               count(*) FILTER (WHERE entry = 'exceeded' AND level = 'hard') AS refused
        FROM budget_ledger
        WHERE {any_of("tenants", "tenant")}
          AND (CASE WHEN entry = 'exceeded'
                    THEN period = $period AND strftime(time, $fmt) = $key
                    ELSE coalesce(CASE $period WHEN 'day' THEN day ELSE month END, '') = $key
               END)
        GROUP BY tenant
        ORDER BY spent_usd DESC, tenant
    """
    fmt = "%Y-%m-%d" if period == "day" else "%Y-%m"
    key = scope.window.end.strftime(fmt)
    df = run(sql, {**scope.params(), "period": period, "fmt": fmt, "key": key})
    configured = df["tenant"].map(configured_limit).astype("Float64")
    enforced = df["enforced_limit_usd"].astype("Float64")
    df["limit_usd"] = enforced.fillna(configured)
    df["limit_source"] = enforced.notna().map({True: "enforced", False: "config"})
    df["used"] = (df["spent_usd"] + df["reserved_usd"]) / df["limit_usd"]
    return df.drop(columns=["enforced_limit_usd"])
