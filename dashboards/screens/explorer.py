"""Request explorer: one request's events as a timeline, with timings and payloads."""

from __future__ import annotations

import json
from functools import partial
from typing import Any, Final

import pandas as pd
import streamlit as st

from turnout.dashboards import charts, fmt, queries
from turnout.dashboards.blocks import Col, Tile, table, tiles
from turnout.dashboards.shell import Context, run_page

_PICKED = "explorer_picked"


def _label(recent: pd.DataFrame) -> dict[str, str]:
    return {
        r.request_id: f"{r.request_id} · {r.outcome} · {r.tenant} · "
        f"{fmt.NONE if pd.isna(r.model) else r.model}"
        for r in recent.itertuples()
    }


def _choose(ctx: Context) -> str | None:
    recent = queries.recent_requests(ctx.db, ctx.scope)
    labels = _label(recent)
    picked = st.session_state.get(_PICKED)
    options = list(labels)
    if picked and picked not in labels:
        options.insert(0, picked)  # keep the choice when newer requests push it off the list
    left, right = st.columns([3, 2])
    choice = left.selectbox(
        "Recent requests (newest first)",
        options,
        key="explorer_recent",
        index=options.index(picked) if picked in options else _first_finished(recent, options),
        format_func=lambda rid: labels.get(rid, rid),
        placeholder="no requests in this window",
    )
    if choice is not None:
        st.session_state[_PICKED] = choice
    pasted = right.text_input("…or paste a request id", key="explorer_paste").strip()
    linked = st.query_params.get("request")
    if pasted or linked:
        st.caption(
            "Showing the "
            + ("pasted request id" if pasted else "request in the link")
            + "; clear the box (or the link) to show the one picked in the list."
        )
    return pasted or linked or choice


def _first_finished(recent: pd.DataFrame, options: list[str]) -> int | None:
    """The list opens on the newest request that has finished (one in flight has little
    to show yet), else on the newest."""
    if not options:
        return None
    done = recent.loc[recent["outcome"] != "in_flight", "request_id"].tolist()
    return options.index(done[0]) if done and done[0] in options else 0


_BADGES: Final = {
    "completed": "green",
    "failed": "red",
    "rejected": "orange",
    "deadlettered": "violet",
}


def _heading(request_id: str, outcome: str | None) -> None:
    badge = f" :{_BADGES.get(outcome or '', 'gray')}-badge[{outcome}]" if outcome else ""
    st.subheader(f"Request `{request_id}`{badge}")


def _summary(s: dict[str, Any], trace: str | None) -> None:
    cost, tokens = s["cost_usd"], s["total_tokens"]
    split = f"{fmt.count(s['prompt_tokens'])} in, {fmt.count(s['completion_tokens'])} out."
    tiles([
        Tile("Attempts", fmt.count(s["attempts"])),
        Tile("Latency", fmt.ms(s["latency_ms"])),
        Tile("Tokens", fmt.count_short(tokens), exact=fmt.count(tokens),
             help=split if tokens is not None else None),
        Tile("Cost", fmt.usd_short(cost), exact=fmt.usd(cost)),
    ])  # fmt: skip
    tried = " → ".join(s["models_tried"]) if s.get("models_tried") is not None else ""
    facts = [
        f"tenant **{s['tenant']}**",
        f"task type **{s['task_type'] or fmt.NONE}**",
        f"answered by **{s['final_model'] or fmt.NONE}**",
        f"models tried: {tried or fmt.NONE}",
    ]
    if s.get("error_code"):
        facts.append(f"error code `{s['error_code']}`")
    if trace:
        facts.append(f"trace `{trace}`")
    st.markdown(" · ".join(facts))


def render(ctx: Context) -> None:
    request_id = _choose(ctx)
    if not request_id:
        st.info("Pick a request from the list, or paste a request id.")
        return
    trail = queries.request_trail(ctx.db, request_id)
    if trail.empty:
        st.warning(f"No events of request `{request_id}` in the archive.")
        return
    summary = queries.request_summary(ctx.db, request_id)
    _heading(request_id, summary.get("outcome"))
    traces = trail["trace_id"].dropna().unique().tolist()
    if summary:
        _summary(summary, traces[0] if len(traces) == 1 else None)
    st.altair_chart(charts.waterfall(trail), width="stretch")
    table(trail, {
        "seq": Col("#", fmt.count),
        "offset_ms": Col("at", fmt.ms, help="Since the request's first event."),
        "delta_ms": Col("after the previous", fmt.ms),
        "event": Col("event"),
        "time": Col("time (UTC)", partial(fmt.when, millis=True), align="left"),
        "source": Col("written by"),
    })  # fmt: skip
    st.caption("Payloads (the event data as stored):")
    for row in trail.itertuples():
        with st.expander(f"{row.seq:02d} · +{fmt.ms(row.offset_ms)} · {row.event}"):
            trace = f" · trace `{row.trace_id}`" if row.trace_id else ""
            st.caption(f"event id `{row.id}`{trace}")
            st.json(json.loads(row.data) if row.data else {}, expanded=True)


run_page("Request explorer", render, applies="tenant, task type, model (the recent list only)")
