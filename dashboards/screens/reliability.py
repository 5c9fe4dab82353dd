"""Reliability: circuit breakers per model, attempt outcomes, the retry budget."""

from __future__ import annotations

import streamlit as st

from turnout.dashboards import charts, fmt, queries
from turnout.dashboards.blocks import Col, Tile, table, tiles
from turnout.dashboards.shell import Context, run_page


def _breakers(ctx: Context) -> None:
    st.subheader("Circuit breakers")
    states = queries.breaker_states(ctx.db, ctx.scope)
    if states.empty:
        st.info("No breaker transitions: every breaker has stayed closed.")
        return
    not_closed = states[states["state"] != "closed"]
    transitions = states["transitions"].sum()
    tiles([
        Tile("Models with a breaker open", fmt.count(len(not_closed)),
             help="Open or half-open at the end of the window."),
        Tile("Transitions in the window", fmt.count_short(transitions),
             exact=fmt.count(transitions)),
        Tile("Models seen by a breaker", fmt.count(len(states))),
    ])  # fmt: skip
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
    table(states, {
        "model": Col("model"),
        "state": Col("state"),
        "since": Col("since (UTC)", fmt.when, align="left"),
        "reason": Col("why (the latest transition)"),
        "transitions": Col("transitions", fmt.count, help="In the window."),
    })  # fmt: skip


def _attempts(ctx: Context) -> None:
    st.subheader("Attempt outcomes")
    outcomes = queries.attempt_outcomes(ctx.db, ctx.scope)
    if outcomes.empty:
        st.info("No upstream attempts in this window.")
        return
    st.altair_chart(
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
    table(outcomes, {
        "model": Col("model"),
        "provider": Col("provider"),
        "result": Col("result"),
        "attempts": Col("attempts", fmt.count),
        "p95_ms": Col("latency, p95", fmt.ms),
    })  # fmt: skip


def _retry_budget(ctx: Context) -> None:
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
    retries, requests = use["retries"].sum(), use["requests"].sum()
    tiles([
        Tile("Peak budget use", fmt.pct(use["use"].max()),
             help="Retries / allowed retries at the busiest moment (over the budget's window, "
             "or a bucket when it is wider)."),
        Tile("Retries", fmt.count_short(retries), exact=fmt.count(retries)),
        Tile("Requests", fmt.count_short(requests), exact=fmt.count(requests)),
    ])  # fmt: skip
    window = fmt.span(max(retry.retry_budget_window_s, ctx.scope.bucket_s))
    st.altair_chart(
        charts.lines(
            use,
            {"window_retries": "retries", "budget": "allowed"},
            scope=ctx.scope,
            title=f"Retries in {window} and the retries the budget allows",
            y_title=f"retries in {window}",
            fmt=",.3~r",
        ),
        width="stretch",
    )
    st.caption(
        f"Budget from this dashboard's config: retries up to max({retry.retry_budget_min}, "
        f"{retry.retry_budget_ratio:g} x requests) per {retry.retry_budget_window_s} s."
    )


def render(ctx: Context) -> None:
    _breakers(ctx)
    _attempts(ctx)
    _retry_budget(ctx)


run_page("Reliability", render, applies="model; tenant and task type for attempts and retries")
