"""Alerts: what is firing, what fired in the window, and the rules' SQL."""

from __future__ import annotations

from typing import Final

import streamlit as st

from turnout.analytics.alerts.rules import Rule, load_rules
from turnout.dashboards import charts, fmt, queries
from turnout.dashboards.shell import Context, run_page
from turnout.service.core.config import ConfigError

_NUMBERS: Final = {  # an alert's value and threshold, to 4 significant digits (0.2198, 219.8)
    "value": st.column_config.NumberColumn(format="%.4g"),
    "threshold": st.column_config.NumberColumn(format="%.4g"),
}


def _firing(ctx: Context) -> set[str]:
    firing = queries.alerts_firing(ctx.db, ctx.scope)
    st.subheader(f"Firing now: {len(firing)}")
    if firing.empty:
        st.success("No alert is firing.", icon=":material/check_circle:")
    else:
        st.dataframe(firing, hide_index=True, column_config=_NUMBERS)
    return set(firing["rule"])


def _history(ctx: Context) -> None:
    st.subheader("History")
    episodes = queries.alert_episodes(ctx.db, ctx.scope)
    if episodes.empty:
        st.info("No alert fired in this window.")
        return
    st.altair_chart(
        charts.spans(
            episodes,
            row="alert",
            color="severity",
            colors=charts.SEVERITY_COLORS,
            title="Alert episodes (from fired to resolved)",
            tooltip=["firing:N"],
        ),
        width="stretch",
    )
    st.dataframe(queries.alert_history(ctx.db, ctx.scope), hide_index=True, column_config=_NUMBERS)


def _rule(rule: Rule, firing: bool) -> None:
    badge = " · :red[firing]" if firing else ""
    head = (
        f"**{rule.name}** · {rule.severity} · value {rule.op} {rule.threshold:g} "
        f"for {fmt.duration(rule.for_ms)}, every {fmt.duration(rule.every_ms)}{badge}"
    )
    with st.expander(head, expanded=firing):
        if rule.description:
            st.write(rule.description)
        st.code(rule.sql.strip(), language="sql")
        if rule.webhook:
            st.caption(f"Webhook: {rule.webhook}")


def render(ctx: Context) -> None:
    firing = _firing(ctx)
    _history(ctx)
    source = ctx.settings.rules_path or "the shipped default rules"
    st.subheader("Rules")
    try:
        rules = load_rules(ctx.settings.rules_path)
    except ConfigError as err:
        st.error(f"Cannot read the rules: {err}")
        return
    st.caption(
        f"{len(rules)} rules from {source} (`turnout alerts --rules FILE`; "
        "`turnout dashboard --rules FILE` shows that file here)."
    )
    for rule in rules:
        _rule(rule, rule.name in firing)


run_page("Alerts", render, applies="none (alerts carry their own labels)")
