"""Reliability: circuit breakers per model, attempt outcomes, the retry budget."""

from __future__ import annotations

import streamlit as st

from turnout.dashboards import charts, fmt, queries
from turnout.dashboards.shell import Context, run_page


def render(ctx: Context) -> None:
    st.subheader("Circuit breakers")
    states = queries.breaker_states(ctx.db, ctx.scope)
    if states.empty:
        st.info("No breaker transitions: every breaker has stayed closed.")
    else:
        not_closed = states[states["state"] != "closed"]
        cols = st.columns(3)
        cols[0].metric(
            "Models with a breaker open",
            fmt.count(len(not_closed)),
            help="Open or half-open at the end of the window.",
        )
        cols[1].metric("Transitions in the window", fmt.count(states["transitions"].sum()))
        cols[2].metric("Models seen by a breaker", fmt.count(len(states)))
        timeline = queries.breaker_timeline(ctx.db, ctx.scope)
        if not timeline.empty:
            st.altair_chart(
                charts.spans(
                    timeline,
                    row="model",
                    color="state",
                    colors=charts.STATE_COLORS,
                    title="Breaker state per model (models without a transition stayed closed)",
                ),
                width="stretch",
            )
        st.dataframe(states, hide_index=True)

    st.subheader("Attempt outcomes")
    outcomes = queries.attempt_outcomes(ctx.db, ctx.scope)
    if outcomes.empty:
        st.info("No upstream attempts in this window.")
    else:
        left, right = st.columns([3, 2])
        left.altair_chart(
            charts.bars(
                outcomes,
                category="model",
                value="attempts",
                color="result",
                colors=charts.OUTCOME_COLORS,
                title="Attempts by model and result (error class)",
            ),
            width="stretch",
        )
        right.dataframe(
            outcomes, hide_index=True,
            column_config={"p95_ms": st.column_config.NumberColumn("p95", format="%.0f ms")},
        )  # fmt: skip

    st.subheader("Retry budget")
    retry = ctx.settings.config.retry
    use = queries.retry_budget(
        ctx.db,
        ctx.scope,
        ratio=retry.retry_budget_ratio,
        minimum=retry.retry_budget_min,
        window_s=retry.retry_budget_window_s,
    )
    if use.empty:
        st.info("No requests or retries in this window.")
        return
    cols = st.columns(3)
    cols[0].metric(
        "Peak budget use",
        fmt.pct(use["use"].max()),
        help="Retries / allowed retries in the busiest bucket.",
    )
    cols[1].metric("Retries", fmt.count(use["retries"].sum()))
    cols[2].metric("Requests", fmt.count(use["requests"].sum()))
    st.altair_chart(
        charts.lines(
            use,
            {"retries": "retries", "budget": "allowed"},
            title="Retries and the retries the budget allows, per bucket",
            y_title="retries",
            fmt=",.0f",
        ),
        width="stretch",
    )
    st.caption(
        f"Budget from this dashboard's config: retries up to max({retry.retry_budget_min}, "
        f"{retry.retry_budget_ratio:g} x requests) per {retry.retry_budget_window_s} s."
    )


run_page("Reliability", render, applies="model; tenant and task type for attempts and retries")
