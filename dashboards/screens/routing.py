"""Routing: which models the router chose and by which strategy, fallbacks, retries."""

from __future__ import annotations

import streamlit as st

from turnout.dashboards import charts, fmt, queries
from turnout.dashboards.blocks import Col, Tile, table, tiles
from turnout.dashboards.shell import Context, run_page


def _tiles(ctx: Context) -> None:
    k = queries.routing_kpis(ctx.db, ctx.scope)

    def n(name: str) -> tuple[str, str]:
        return fmt.count_short(k.get(name)), fmt.count(k.get(name))

    tiles([
        Tile("Answered", *n("answered")),
        Tile("Fell back", *n("fell_back"), help="Requests that tried more than one model."),
        Tile("Answered by a fallback", fmt.pct(k.get("fallback_share")),
             help="Answered requests whose answer came from another model than the first one "
             "tried."),
        Tile("Retried", *n("retried"), help="Requests that called the same model again."),
        Tile("Retries", *n("retries"), help="Calls to the same model again, all requests."),
    ])  # fmt: skip


def _choices(ctx: Context) -> None:
    left, right = st.columns(2)
    decided = queries.decisions(ctx.db, ctx.scope)
    if decided.empty:
        left.info("No route decisions in this window.")
    else:
        left.altair_chart(
            charts.bars(
                decided,
                category="model",
                value="decisions",
                color="strategy",
                title="Route decisions: first choice by strategy",
                tooltip=["task_type:N"],
            ),
            width="stretch",
        )
    answered = queries.answered_by_model(ctx.db, ctx.scope)
    if answered.empty:
        right.info("No finished requests in this window.")
    else:
        right.altair_chart(
            charts.bars(
                answered,
                category="model",
                value="requests",
                color="outcome",
                colors=charts.OUTCOME_COLORS,
                title="Requests by the model that answered",
            ),
            width="stretch",
        )
        right.caption("A failed request counts for the model it tried last.")


def _fallbacks(ctx: Context) -> None:
    st.subheader("Fallbacks")
    hops = queries.fallbacks(ctx.db, ctx.scope)
    if hops.empty:
        st.info("No fallbacks in this window: every request was answered by its first model.")
        return
    st.altair_chart(charts.fallback_matrix(hops), width="stretch")
    table(hops, {
        "from_model": Col("from"),
        "to_model": Col("to"),
        "reason": Col("reason"),
        "fallbacks": Col("fallbacks", fmt.count),
    })  # fmt: skip


def _retries(ctx: Context) -> None:
    st.subheader("Retries")
    retries = queries.retries_over_time(ctx.db, ctx.scope)
    if retries.empty:
        st.info("No retries in this window.")
        return
    st.altair_chart(
        charts.stacked_bars(
            retries,
            y="retries",
            color="model",
            scope=ctx.scope,
            title="Retries scheduled, by model",
            y_title="retries",
            fmt=",d",
        ),
        width="stretch",
    )


def _tables(ctx: Context) -> None:
    streams = queries.streams_by_model(ctx.db, ctx.scope)
    if not streams.empty:
        st.subheader("Streams")
        st.caption(
            "Streamed answers by model: time to the first token (from the attempt's start) "
            "and output tokens per second after it."
        )
        table(streams, {
            "model": Col("model"),
            "streams": Col("streams", fmt.count),
            "ttft_p50_ms": Col("first token, p50", fmt.ms),
            "ttft_p95_ms": Col("first token, p95", fmt.ms),
            "tokens_per_s": Col("tokens/s (median)", fmt.rate),
        })  # fmt: skip
    skipped = queries.skipped_candidates(ctx.db, ctx.scope)
    if not skipped.empty:
        st.subheader("Candidates skipped")
        table(skipped, {
            "model": Col("model"), "reason": Col("reason"), "times": Col("times", fmt.count),
        })  # fmt: skip
    calls = queries.calls_by_provider(ctx.db, ctx.scope)
    if not calls.empty:
        st.subheader("Calls by provider")
        table(calls, {
            "provider": Col("provider"),
            "model": Col("model"),
            "calls": Col("calls", fmt.count),
            "ok": Col("ok", fmt.count),
            "failed": Col("failed", fmt.count),
            "p50_ms": Col("latency, p50", fmt.ms),
        })  # fmt: skip


def render(ctx: Context) -> None:
    _tiles(ctx)
    _choices(ctx)
    _fallbacks(ctx)
    _retries(ctx)
    _tables(ctx)


run_page(
    "Routing", render, applies="tenant, task type, model (first choice; either end of a fallback)"
)
