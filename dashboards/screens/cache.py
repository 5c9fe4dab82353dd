"""Cache: hits and misses, what was stored and how well it compressed, evictions,
requests that waited for an identical one (coalesced)."""

from __future__ import annotations

import streamlit as st

from turnout.dashboards import charts, fmt, queries
from turnout.dashboards.shell import Context, run_page


def render(ctx: Context) -> None:
    k = queries.cache_totals(ctx.db, ctx.scope)
    if not any(k.get(n) for n in ("hits", "misses", "stored", "evicted", "coalesced")):
        st.info("No cache activity in this window (is `[features] caching` on?).")
        return
    cols = st.columns(4)
    cols[0].metric("Hit ratio", fmt.pct(k["hit_ratio"]), help="Hits / (hits + misses).")
    cols[1].metric("Hits", fmt.count(k["hits"]))
    cols[2].metric("Misses", fmt.count(k["misses"]))
    cols[3].metric(
        "Saved by hits",
        fmt.usd(k["saved_usd"]),
        help="What the cached answers cost when they were first made.",
    )
    cols = st.columns(4)
    cols[0].metric(
        "Stored",
        f"{fmt.count(k['stored'])} · {fmt.bytes_(k['stored_bytes'])}",
        help="Entries stored and their size in the cache (compressed).",
    )
    cols[1].metric(
        "Compression ratio",
        f"{fmt.number(k['compression_ratio'], 1)}x",
        help="Uncompressed / stored bytes of the entries stored.",
    )
    cols[2].metric("Evicted", f"{fmt.count(k['evicted'])} · {fmt.bytes_(k['evicted_bytes'])}")
    cols[3].metric(
        "Coalesced requests",
        fmt.count(k["coalesced"]),
        help="Requests that waited for an identical request in flight instead of "
        "calling the upstream.",
    )

    over_time = queries.cache_over_time(ctx.db, ctx.scope)
    st.altair_chart(
        charts.stacked_bars(
            over_time,
            y="events",
            color="event",
            bucket_s=ctx.scope.bucket_s,
            title="Cache events over time",
            y_title="events",
            fmt=",d",
        ),
        width="stretch",
    )
    detail = queries.cache_by_reason(ctx.db, ctx.scope)
    if not detail.empty:
        st.dataframe(
            detail,
            hide_index=True,
            column_config={
                "detail": st.column_config.TextColumn(
                    "encoding / reason", help="stored: the compression; evicted: why"
                ),
                "compression_ratio": st.column_config.NumberColumn(format="%.2fx"),
            },
        )


run_page("Cache", render, applies="tenant; task type (not for evictions); model: not applied")
