"""Alerts: what is firing, what fired in the window, and the rules' SQL."""

from __future__ import annotations

from typing import Final

import streamlit as st

from turnout.analytics.alerts.rules import Rule, load_rules
from turnout.dashboards import charts, fmt, queries
from turnout.dashboards.blocks import Col, table
from turnout.dashboards.shell import Context, run_page
from turnout.service.core.config import ConfigError


def _value(value: float) -> str:
    """An alert's value or threshold (a ratio, ms, a count: the rule says), 4 digits."""
    return fmt.sig(value, 4)


_ALERT: Final = {
    "rule": Col("rule"),
    "severity": Col("severity"),
    "labels": Col("labels", fmt.labels, align="left"),
    "value": Col("value", _value),
    "op": Col("test"),
    "threshold": Col("threshold", _value),
}


def _firing(ctx: Context) -> set[str]:
    firing = queries.alerts_firing(ctx.db, ctx.scope)
    st.subheader(f"Firing now: {len(firing)}")
    if firing.empty:
        st.success("No alert is firing.", icon=":material/check_circle:")
    else:
        table(firing, {**_ALERT, "since": Col("firing since (UTC)", fmt.when, align="left")})
    return set(firing["rule"])


def _history(ctx: Context) -> None:
    st.subheader("History")
    episodes = queries.alert_episodes(ctx.db, ctx.scope)
    if episodes.empty:
        st.info("No alert fired in this window.")
        return
    named = episodes["rule"] + " " + episodes["labels"].map(fmt.labels)  # error_rate model=x
    st.altair_chart(
        charts.spans(
            episodes.assign(alert=named),
            row="alert",
            color="severity",
            colors=charts.SEVERITY_COLORS,
            title="Alert episodes (from fired to resolved)",
            tooltip=["firing:N"],
        ),
        width="stretch",
    )
    history = queries.alert_history(ctx.db, ctx.scope)
    when = Col("time (UTC)", fmt.when, align="left")
    table(history, {"time": when, "state": Col("state"), **_ALERT})


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
