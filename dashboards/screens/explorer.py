"""Request explorer: one request's events as a timeline, with timings and payloads."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from turnout.dashboards import charts, fmt, queries
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


def _summary(ctx: Context, request_id: str) -> None:
    s = queries.request_summary(ctx.db, request_id)
    if not s:
        return
    cols = st.columns(5)
    cols[0].metric("Outcome", str(s["outcome"]), help=s.get("error_code") or None)
    cols[1].metric("Attempts", fmt.count(s["attempts"]))
    cols[2].metric("Latency", fmt.ms(s["latency_ms"]))
    cols[3].metric("Tokens", fmt.count(s["total_tokens"]))
    cols[4].metric("Cost", fmt.usd(s["cost_usd"]))
    tried = " → ".join(s["models_tried"]) if s.get("models_tried") is not None else ""
    facts = [
        f"tenant **{s['tenant']}**",
        f"task type **{s['task_type'] or fmt.NONE}**",
        f"answered by **{s['final_model'] or fmt.NONE}**",
        f"models tried: {tried or fmt.NONE}",
    ]
    if s.get("error_code"):
        facts.append(f"error code `{s['error_code']}`")
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
    st.subheader(f"Request `{request_id}`")
    _summary(ctx, request_id)
    st.altair_chart(charts.waterfall(trail), width="stretch")
    st.dataframe(
        trail[["seq", "offset_ms", "delta_ms", "event", "time", "source", "trace_id", "id"]],
        hide_index=True,
        column_config={
            "offset_ms": st.column_config.NumberColumn("at (ms)", format="%.1f"),
            "delta_ms": st.column_config.NumberColumn("+ms", format="%.1f"),
        },
    )
    st.caption("Payloads (the event data as stored):")
    for row in trail.itertuples():
        with st.expander(f"{row.seq:02d} · +{row.offset_ms:,.1f} ms · {row.event}"):
            st.json(json.loads(row.data) if row.data else {}, expanded=True)


run_page("Request explorer", render, applies="tenant, task type, model (the recent list only)")
