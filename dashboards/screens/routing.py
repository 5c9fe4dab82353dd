"""Routing: which models the router chose and by which strategy, fallbacks, retries."""

from __future__ import annotations

import streamlit as st

from turnout.dashboards import charts, fmt, queries
from turnout.dashboards.shell import Context, run_page


def render(ctx: Context) -> None:
    k = queries.routing_kpis(ctx.db, ctx.scope)
    cols = st.columns(5)
    cols[0].metric("Answered", fmt.count(k.get("answered")))
    cols[1].metric(
        "Fell back", fmt.count(k.get("fell_back")), help="Requests that tried more than one model."
    )
    cols[2].metric(
        "Answered by a fallback",
        fmt.pct(k.get("fallback_share")),
        help="Answered requests whose answer came from another model than the first one tried.",
    )
    cols[3].metric(
        "Retried", fmt.count(k.get("retried")), help="Requests that called the same model again."
    )
    cols[4].metric("Retries", fmt.count(k.get("retries")))

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
                title="Requests by the model that answered (or was tried last)",
            ),
            width="stretch",
        )

    st.subheader("Fallbacks")
    hops = queries.fallbacks(ctx.db, ctx.scope)
    if hops.empty:
        st.info("No fallbacks in this window: every request was answered by its first model.")
    else:
        left, right = st.columns([3, 2])
        left.altair_chart(charts.fallback_matrix(hops), width="stretch")
        right.dataframe(hops, hide_index=True)

    st.subheader("Retries")
    retries = queries.retries_over_time(ctx.db, ctx.scope)
    if retries.empty:
        st.info("No retries in this window.")
    else:
        st.altair_chart(
            charts.stacked_bars(
                retries,
                y="retries",
                color="model",
                bucket_s=ctx.scope.bucket_s,
                title="Retries scheduled, by model",
                y_title="retries",
                fmt=",d",
            ),
            width="stretch",
        )
    streams = queries.streams_by_model(ctx.db, ctx.scope)
    if not streams.empty:
        st.subheader("Streams")
        st.caption(
            "Streamed answers by model: time to the first token (from the attempt's start) "
            "and output tokens per second after it."
        )
        st.dataframe(
            streams,
            hide_index=True,
            column_config={
                "ttft_p50_ms": st.column_config.NumberColumn("TTFT p50 (ms)", format="%.0f"),
                "ttft_p95_ms": st.column_config.NumberColumn("TTFT p95 (ms)", format="%.0f"),
                "tokens_per_s": st.column_config.NumberColumn("tokens/s", format="%.1f"),
            },
        )
    skipped = queries.skipped_candidates(ctx.db, ctx.scope)
    if not skipped.empty:
        st.subheader("Candidates skipped")
        st.dataframe(skipped, hide_index=True)
    calls = queries.calls_by_provider(ctx.db, ctx.scope)
    if not calls.empty:
        st.subheader("Calls by provider")
        st.dataframe(
            calls, hide_index=True,
            column_config={"p50_ms": st.column_config.NumberColumn("p50", format="%.0f ms")},
        )  # fmt: skip


run_page(
    "Routing", render, applies="tenant, task type, model (first choice; either end of a fallback)"
)
