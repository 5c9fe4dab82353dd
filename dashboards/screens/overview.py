"""Overview: how requests went in the window, as KPIs and over time."""

from __future__ import annotations

from typing import Any

import streamlit as st

from turnout.dashboards import charts, fmt, queries
from turnout.dashboards.blocks import Tile, tiles
from turnout.dashboards.shell import Context, run_page

_LATENCY = {"p50_ms": "p50", "p95_ms": "p95", "p99_ms": "p99"}


def _tiles(k: dict[str, Any], spark: dict[str, list[float]]) -> None:
    latency = "End-to-end latency of answered requests, cache hits included."
    tiles([
        Tile("Requests", fmt.count_short(k["requests"]), exact=fmt.count(k["requests"]),
             help="Requests that finished (or started, if still in flight) in the window."),
        Tile("Requests/s", fmt.rate(k["requests_per_s"]), chart=spark["requests_per_s"]),
        Tile("Error rate", fmt.pct(k["error_rate"]), chart=spark["error_rate"],
             help="Failed / (completed + failed). Rejected and dead-lettered requests are "
             f"the client's doing and not counted ({fmt.count(k['rejected'])} rejected)."),
        Tile("Cache hit ratio", fmt.pct(k["cache_hit_ratio"]), chart=spark["cache_hit_ratio"],
             help="Answered requests served from the cache."),
        *(Tile(f"{label} latency", fmt.ms(k[column]), chart=spark[column], help=latency)
          for column, label in _LATENCY.items()),
        Tile("Cost", fmt.usd_short(k["cost_usd"]), exact=fmt.usd(k["cost_usd"]),
             chart=spark["cost_usd"],
             help="What the requests were charged: answers, and streams cut short or cancelled."),
    ])  # fmt: skip


def render(ctx: Context) -> None:
    k = queries.overview_kpis(ctx.db, ctx.scope)
    if not k.get("requests"):
        st.info("No requests in this window: widen the time range or clear the filters.")
        return
    series = queries.overview_series(ctx.db, ctx.scope)
    _tiles(k, {c: series[c].fillna(0).tolist() for c in series.columns if c != "time"})

    bucket_s = ctx.scope.bucket_s
    per = fmt.span(bucket_s)
    left, right = st.columns(2)
    outcomes = queries.requests_by_outcome(ctx.db, ctx.scope)
    left.altair_chart(
        charts.stacked_bars(
            outcomes,
            y="requests_per_s",
            color="outcome",
            scope=ctx.scope,
            title="Requests/s by outcome",
            y_title="requests/s",
            colors=charts.OUTCOME_COLORS,
        ),
        width="stretch",
    )
    right.altair_chart(
        charts.lines(
            series,
            _LATENCY,
            scope=ctx.scope,
            title="Latency of answered requests",
            y_title="ms",
            fmt=",.0f",
        ),
        width="stretch",
    )
    a, b, c = st.columns(3)
    a.altair_chart(
        charts.lines(
            series,
            {"error_rate": "error rate"},
            scope=ctx.scope,
            title="Error rate",
            y_title="",
            fmt=".1%",
        ),
        width="stretch",
    )
    b.altair_chart(
        charts.lines(
            series,
            {"cache_hit_ratio": "hit ratio"},
            scope=ctx.scope,
            title="Cache hit ratio",
            y_title="",
            fmt=".1%",
        ),
        width="stretch",
    )
    c.altair_chart(
        charts.lines(
            series,
            {"cost_usd": "cost"},
            scope=ctx.scope,
            title=f"Cost per {per}",
            y_title="US$",
            fmt="$,.3~r",
        ),
        width="stretch",
    )
    st.caption(
        f"Buckets of {per} (about {ctx.scope.window.seconds / bucket_s:,.0f} in this window); "
        "a request counts in the bucket it finished in."
    )


run_page("Overview", render, applies="tenant, task type, model (the model that answered)")
