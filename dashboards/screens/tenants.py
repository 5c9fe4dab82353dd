"""Tenants: the busiest tenants, rate-limit refusals, budget spend against the limit."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from turnout.dashboards import charts, fmt, queries
from turnout.dashboards.blocks import Col, table
from turnout.dashboards.shell import Context, run_page


def _budget_limit(ctx: Context, period: str) -> Callable[[str], float | None]:
    def limit(tenant: str) -> float | None:
        limits = ctx.settings.config.tenant(tenant)
        return limits.budget_usd_per_day if period == "day" else limits.budget_usd_per_month

    return limit


def _top(ctx: Context) -> None:
    st.subheader("Top tenants")
    top = queries.top_tenants(ctx.db, ctx.scope)
    if top.empty:
        st.info("No requests in this window.")
        return
    st.altair_chart(
        charts.outcome_bars(
            top.head(10),
            category="tenant",
            outcomes=["completed", "failed", "rejected"],
            title="Requests per tenant (top 10)",
        ),
        width="stretch",
    )
    table(top, {
        "tenant": Col("tenant"),
        "requests": Col("requests", fmt.count),
        "completed": Col("completed", fmt.count),
        "failed": Col("failed", fmt.count),
        "rejected": Col("rejected", fmt.count),
        "tokens": Col("tokens", fmt.count),
        "cost_usd": Col("cost", fmt.usd),
    })  # fmt: skip


def _rate_limits(ctx: Context) -> None:
    st.subheader("Rate-limit rejections")
    limited = queries.ratelimit_by_tenant(ctx.db, ctx.scope)
    if limited.empty:
        st.info("No request was refused by a rate limit in this window.")
        return
    left, right = st.columns(2)
    left.altair_chart(
        charts.bars(
            limited,
            category="tenant",
            value="rejections",
            color="limit_name",
            title="Refusals per tenant, by the limit that refused",
        ),
        width="stretch",
    )
    right.altair_chart(
        charts.stacked_bars(
            queries.ratelimit_over_time(ctx.db, ctx.scope),
            y="rejections",
            color="tenant",
            scope=ctx.scope,
            title="Refusals over time",
            y_title="refusals",
            fmt=",d",
        ),
        width="stretch",
    )


def _budgets(ctx: Context) -> None:
    st.subheader("Budgets")
    period = st.radio(
        "Budget period",
        ["day", "month"],
        horizontal=True,
        key="tenants_period",
        format_func={"day": "Day", "month": "Month"}.__getitem__,
    )
    budget = queries.budget_status(
        ctx.db, ctx.scope, period=str(period), configured_limit=_budget_limit(ctx, str(period))
    )
    when = ctx.scope.window.end.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")
    if budget.empty:
        st.info(f"No budget movements in {when} (UTC).")
        return
    soft = ctx.settings.config.tenant("default").budget_soft_percent / 100
    st.altair_chart(
        charts.budget(
            budget,
            title=f"Spent and reserved, as a share of the limit, {when} (UTC)",
            soft_share=soft,
        ),
        width="stretch",
    )
    table(budget, {
        "tenant": Col("tenant"),
        "spent_usd": Col("spent", fmt.usd),
        "reserved_usd": Col("reserved (open)", fmt.usd),
        "limit_usd": Col("limit", fmt.usd),
        "used": Col("used", config=st.column_config.ProgressColumn(
            "used", format="percent", min_value=0, max_value=1)),
        "limit_source": Col("limit from"),
        "warnings": Col("soft-limit warnings", fmt.count),
        "refused": Col("refused", fmt.count),
    })  # fmt: skip
    st.caption(
        "The limit is the one the router reported when a tenant passed its soft limit "
        "(`enforced`), else the one in this dashboard's config; the dashed line is the soft "
        "limit (`budget_soft_percent`). Reservations are held for requests in flight; a "
        "charge or a release settles them."
    )


def render(ctx: Context) -> None:
    _top(ctx)
    _rate_limits(ctx)
    _budgets(ctx)


run_page("Tenants", render, applies="tenant; task type and model for the top tenants")
