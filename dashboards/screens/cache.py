"""Cache: hits and misses, what was stored and how well it compressed, evictions,
requests that waited for an identical one (coalesced)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from turnout.dashboards import charts, fmt, queries
from turnout.dashboards.blocks import Col, Tile, table, tiles
from turnout.dashboards.shell import Context, run_page


def _tiles(k: dict[str, Any]) -> None:
    def n(name: str) -> tuple[str, str]:
        return fmt.count_short(k[name]), fmt.count(k[name])

    tiles([
        Tile("Hit ratio", fmt.pct(k["hit_ratio"]), help="Hits / (hits + misses)."),
        Tile("Hits", *n("hits")),
        Tile("Misses", *n("misses")),
        Tile("Saved by hits", fmt.usd_short(k["saved_usd"]), exact=fmt.usd(k["saved_usd"]),
             help="What the cached answers cost when they were first made."),
        Tile("Stored", *n("stored"),
             help=f"Entries stored: {fmt.bytes_(k['stored_bytes'])} in the cache (compressed), "
             f"{fmt.bytes_(k['size_bytes'])} uncompressed."),
        Tile("Compression ratio", fmt.times(k["compression_ratio"]),
             help="Uncompressed / stored bytes of the entries stored."),
        Tile("Evicted", *n("evicted"),
             help=f"Entries evicted: {fmt.bytes_(k['evicted_bytes'])} (compressed)."),
        Tile("Coalesced requests", *n("coalesced"),
             help="Requests that waited for an identical request in flight instead of "
             "calling the upstream."),
    ])  # fmt: skip


def render(ctx: Context) -> None:
    k = queries.cache_totals(ctx.db, ctx.scope)
    if not any(k.get(n) for n in ("hits", "misses", "stored", "evicted", "coalesced")):
        st.info("No cache activity in this window (is `[features] caching` on?).")
        return
    _tiles(k)
    st.altair_chart(
        charts.stacked_bars(
            queries.cache_over_time(ctx.db, ctx.scope),
            y="events",
            color="event",
            scope=ctx.scope,
            title="Cache events over time",
            y_title="events",
            fmt=",d",
        ),
        width="stretch",
    )
    detail = queries.cache_by_reason(ctx.db, ctx.scope)
    if not detail.empty:
        table(detail, {
            "event": Col("event"),
            "detail": Col("encoding / reason", help="stored: the compression; evicted: why"),
            "entries": Col("entries", fmt.count),
            "size_bytes": Col("size", fmt.bytes_, help="Uncompressed (stored entries)."),
            "stored_bytes": Col("in the cache", fmt.bytes_, help="Compressed."),
            "compression_ratio": Col("compression", fmt.times),
        })  # fmt: skip


run_page("Cache", render, applies="tenant; task type (not for evictions); model: not applied")
