"""Tenants: the busiest tenants, rate-limit refusals, budget spend against the limit."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from turnout.dashboards import charts, queries
from turnout.dashboards.shell import Context, run_page


def _budget_limit(ctx: Context, period: str) -> Callable[[str], float | None]:
    def limit(tenant: str) -> float | None:
        limits = ctx.settings.config.tenant(tenant)
        return limits.budget_usd_per_day if period == "day" else limits.budget_usd_per_month

    return limit


def render(ctx: Context) -> None:
    st.subheader("Top tenants")
    top = queries.top_tenants(ctx.db, ctx.scope)
    if top.empty:
        st.info("No requests in this window.")
    else:
        left, right = st.columns([3, 2])
        left.altair_chart(
            charts.outcome_bars(
                top.head(10),
                category="tenant",
                outcomes=["completed", "failed", "rejected"],
                title="Requests per tenant (top 10)",
            ),
            width="stretch",
        )
        right.dataframe(
            top,
            hide_index=True,
            column_config={"cost_usd": st.column_config.NumberColumn(format="$%.6f")},
        )

    st.subheader("Rate-limit rejections")
    limited = queries.ratelimit_by_tenant(ctx.db, ctx.scope)
    if limited.empty:
        st.info("No request was refused by a rate limit in this window.")
    else:
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
                bucket_s=ctx.scope.bucket_s,
                title="Refusals over time",
                y_title="refusals",
                fmt=",d",
            ),
            width="stretch",
        )

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
    st.dataframe(
        budget,
        hide_index=True,
        column_config={
            "spent_usd": st.column_config.NumberColumn("spent", format="$%.6f"),
            "reserved_usd": st.column_config.NumberColumn("reserved (open)", format="$%.6f"),
            "limit_usd": st.column_config.NumberColumn("limit", format="$%.2f"),
            "used": st.column_config.ProgressColumn(
                "used", format="percent", min_value=0, max_value=1
            ),
        },
    )
    st.caption(
        "The limit is the one the router reported when a tenant passed its soft limit "
        "(`enforced`), else the one in this dashboard's config; the dashed line is the soft "
        "limit (`budget_soft_percent`). Reservations are held for requests in flight; a "
        "charge or a release settles them."
    )


run_page("Tenants", render, applies="tenant; task type and model for the top tenants")
