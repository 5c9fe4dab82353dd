"""Overview: how requests went in the window, as KPIs and over time."""

from __future__ import annotations

import streamlit as st

from turnout.dashboards import charts, fmt, queries
from turnout.dashboards.shell import Context, run_page

_LATENCY = {"p50_ms": "p50", "p95_ms": "p95", "p99_ms": "p99"}


def render(ctx: Context) -> None:
    k = queries.overview_kpis(ctx.db, ctx.scope)
    if not k.get("requests"):
        st.info("No requests in this window: widen the time range or clear the filters.")
        return
    series = queries.overview_series(ctx.db, ctx.scope)
    spark = {c: series[c].fillna(0).tolist() for c in series.columns if c != "time"}
    cols = iter(st.columns(8))
    next(cols).metric(
        "Requests",
        fmt.count(k["requests"]),
        help="Requests that finished (or started, if still in flight) in the window.",
    )
    next(cols).metric(
        "Requests/s", fmt.rate(k["requests_per_s"]), chart_data=spark["requests_per_s"]
    )
    next(cols).metric(
        "p50 latency",
        fmt.ms(k["p50_ms"]),
        chart_data=spark["p50_ms"],
        help="End-to-end latency of answered requests, cache hits included.",
    )
    next(cols).metric("p95 latency", fmt.ms(k["p95_ms"]), chart_data=spark["p95_ms"])
    next(cols).metric("p99 latency", fmt.ms(k["p99_ms"]), chart_data=spark["p99_ms"])
    next(cols).metric(
        "Error rate",
        fmt.pct(k["error_rate"]),
        chart_data=spark["error_rate"],
        help="Failed / (completed + failed). Rejected and dead-lettered requests "
        f"are the client's doing and not counted ({fmt.count(k['rejected'])} "
        "rejected).",
    )
    next(cols).metric(
        "Cache hit ratio",
        fmt.pct(k["cache_hit_ratio"]),
        chart_data=spark["cache_hit_ratio"],
        help="Answered requests served from the cache.",
    )
    next(cols).metric(
        "Cost",
        fmt.usd(k["cost_usd"]),
        chart_data=spark["cost_usd"],
        help="Upstream cost of the answered requests.",
    )

    left, right = st.columns(2)
    outcomes = queries.requests_by_outcome(ctx.db, ctx.scope)
    left.altair_chart(
        charts.stacked_bars(
            outcomes,
            y="requests_per_s",
            color="outcome",
            bucket_s=ctx.scope.bucket_s,
            title="Requests/s by outcome",
            y_title="requests/s",
            colors=charts.OUTCOME_COLORS,
        ),
        width="stretch",
    )
    right.altair_chart(
        charts.lines(
            series, _LATENCY, title="Latency of answered requests", y_title="ms", fmt=",.0f"
        ),
        width="stretch",
    )
    a, b, c = st.columns(3)
    a.altair_chart(
        charts.lines(
            series, {"error_rate": "error rate"}, title="Error rate", y_title="", fmt=".1%"
        ),
        width="stretch",
    )
    b.altair_chart(
        charts.lines(
            series, {"cache_hit_ratio": "hit ratio"}, title="Cache hit ratio", y_title="", fmt=".1%"
        ),
        width="stretch",
    )
    c.altair_chart(
        charts.lines(
            series, {"cost_usd": "cost"}, title="Cost per bucket", y_title="US$", fmt="$,.4f"
        ),
        width="stretch",
    )
    st.caption(
        f"Buckets of {fmt.duration(ctx.scope.bucket_s * 1000)}; a request counts in "
        "the minute it finished."
    )


run_page("Overview", render, applies="tenant, task type, model (the model that answered)")
