"""Altair chart builders: one function per kind of picture the pages show.

Each takes a DataFrame whose columns `turnout.dashboards.queries` names and returns
an `alt.Chart` (no Streamlit here). Conventions, so charts read at a glance:
- time runs left to right in UTC; every mark has a tooltip with exact values;
- a chart over time names its bucket on the time axis and in the tooltip
  ("UTC, per 5 s"): the bucket follows the window (`turnout.dashboards.scope`);
- a chart of one series has no legend (its title says what it is);
- outcomes, breaker states and severities keep one colour everywhere
  (`OUTCOME_COLORS`, `STATE_COLORS`, `SEVERITY_COLORS`): green is good, red is bad;
- time series draw their points too, so a window with one bucket still shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeAlias, cast

import altair as alt
import pandas as pd

from turnout.dashboards.fmt import span, usd
from turnout.dashboards.scope import Scope

__all__ = [
    "OUTCOME_COLORS",
    "SEVERITY_COLORS",
    "STATE_COLORS",
    "Chart",
    "bars",
    "budget",
    "fallback_matrix",
    "lines",
    "outcome_bars",
    "spans",
    "stacked_bars",
    "waterfall",
]

OUTCOME_COLORS: Final = {
    "completed": "#2e7d32",
    "failed": "#c62828",
    "rejected": "#ef6c00",
    "deadlettered": "#6a1b9a",
    "in_flight": "#9e9e9e",
    "ok": "#2e7d32",
}
STATE_COLORS: Final = {"closed": "#2e7d32", "half_open": "#f9a825", "open": "#c62828"}
SEVERITY_COLORS: Final = {"info": "#1565c0", "warning": "#ef6c00", "critical": "#c62828"}
_STAGE_COLORS: Final = {
    "request": "#37474f",
    "route": "#1565c0",
    "cache": "#00838f",
    "attempt": "#2e7d32",
    "retry": "#f9a825",
    "fallback": "#ef6c00",
    "budget": "#6a1b9a",
    "ratelimit": "#c62828",
    "breaker": "#c62828",
}
_HEIGHT: Final = 300  # the whole chart (title, axes, legend): Streamlit fits it in
_ROW: Final = 26  # rows of a chart with a category axis: that many pixels each
_CATEGORY_AXIS: Final = alt.Axis(labelLimit=260)
_SPAN_LABELS: Final = 360  # an alert's rule and labels: error_rate model=meta-llama/llama-3.1-8b…
_MIN_SPAN: Final = 1 / 300  # of a timeline: the narrowest bar it draws (a few pixels)


def _value_axis(fmt: str) -> alt.Axis:
    """A quantity axis; counts (format `d`) get whole-number ticks only."""
    return alt.Axis(format=fmt, tickMinStep=1 if fmt.endswith("d") else alt.Undefined)


Chart: TypeAlias = alt.Chart | alt.LayerChart


def _chart(chart: Any) -> Chart:
    """Altair's builder methods are typed loosely; every builder here returns a chart."""
    return cast(Chart, chart)


def _scale(colors: Mapping[str, str], present: Sequence[str]) -> alt.Scale:
    """Fixed colours for the values present, in `colors`' order; unknown values get grey."""
    domain = [v for v in colors if v in present] + sorted(v for v in present if v not in colors)
    return alt.Scale(domain=domain, range=[colors.get(v, "#9e9e9e") for v in domain])


def _per(bucket_s: int) -> str:
    return f"per {span(bucket_s)}"


def _time(
    times: pd.Series,
    field: str = "time",
    title: str | None = None,
    domain: tuple[pd.Timestamp, pd.Timestamp] | None = None,
) -> alt.X:
    """A UTC time axis over `domain` (else the data): seconds, minutes or dates, as its
    span calls for."""
    if domain is None and len(times):
        domain = (times.min(), times.max())
    width = domain[1] - domain[0] if domain else pd.Timedelta(0)
    if width > pd.Timedelta(days=1):
        label = "%m-%d %H:%M"
    elif width > pd.Timedelta(minutes=10):
        label = "%H:%M"
    else:
        label = "%H:%M:%S"
    scale = alt.Scale(type="utc")  # labels in UTC too
    if domain is not None:
        scale = alt.Scale(type="utc", domain=[t.timestamp() * 1000 for t in domain])
    return alt.X(
        f"{field}:T",
        title=title,
        scale=scale,
        axis=alt.Axis(format=label, labelAngle=0, labelOverlap=True, tickCount=6),
    )


def _over(scope: Scope, starts: pd.Series, ends: pd.Series) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The time axis of a chart over `scope`'s window: all of it, and every bucket drawn
    (the first bucket may begin before the window, the last end after it)."""
    start, end = pd.Timestamp(scope.window.start), pd.Timestamp(scope.window.end)
    if len(starts):
        start, end = min(start, starts.min()), max(end, ends.max())
    return start, end


def _time_tip(field: str = "time", title: str = "time (UTC)") -> alt.Tooltip:
    """A tooltip line with the UTC text `_with_utc_text` added for `field`."""
    return alt.Tooltip(f"{field}_utc:N", title=title)


def _with_utc_text(df: pd.DataFrame, *fields: str) -> pd.DataFrame:
    """`df` with a `<field>_utc` text column per time field (browsers show local time)."""
    return df.assign(
        **{f"{f}_utc": df[f].dt.tz_convert("UTC").dt.strftime("%Y-%m-%d %H:%M:%S") for f in fields}
    )


def lines(
    df: pd.DataFrame,
    columns: Mapping[str, str],
    *,
    scope: Scope,
    title: str,
    y_title: str,
    fmt: str = ",.2f",
) -> Chart:
    """One line per column of `columns` (column -> legend label) over `time`, a point
    per bucket of `scope`, across its whole window."""
    bucket_s = scope.bucket_s
    long = df.melt(id_vars=["time"], value_vars=list(columns), var_name="series", value_name="v")
    long["series"] = long["series"].map(columns)
    long = _with_utc_text(long, "time")
    legend = alt.Undefined if len(columns) > 1 else None
    return _chart(
        alt.Chart(long, title=title, height=_HEIGHT)
        .mark_line(point=True)
        .encode(
            x=_time(
                long["time"],
                title=f"UTC, {_per(bucket_s)}",
                domain=_over(scope, long["time"], long["time"]),
            ),
            y=alt.Y("v:Q", title=y_title, axis=alt.Axis(format=fmt)),
            color=alt.Color("series:N", title=None, sort=list(columns.values()), legend=legend),
            tooltip=[
                _time_tip(title=f"{span(bucket_s)} from (UTC)"),
                alt.Tooltip("series:N"),
                alt.Tooltip("v:Q", format=fmt),
            ],
        )
    )


def stacked_bars(
    df: pd.DataFrame,
    *,
    y: str,
    color: str,
    scope: Scope,
    title: str,
    y_title: str,
    colors: Mapping[str, str] | None = None,
    fmt: str = ",.2f",
) -> Chart:
    """Bars per bucket of `scope` (each as wide as its bucket), stacked by `color`, across
    its whole window."""
    bucket_s = scope.bucket_s
    data = _with_utc_text(df.assign(end=df["time"] + pd.Timedelta(seconds=bucket_s)), "time")
    present = data[color].dropna().unique().tolist()
    scale = _scale(colors, present) if colors else alt.Undefined
    return _chart(
        alt.Chart(data, title=title, height=_HEIGHT)
        .mark_bar(opacity=0.9)
        .encode(
            x=_time(
                data["time"],
                title=f"UTC, {_per(bucket_s)}",
                domain=_over(scope, data["time"], data["end"]),
            ),
            x2="end:T",
            y=alt.Y(f"sum({y}):Q", title=y_title, stack="zero", axis=_value_axis(fmt)),
            color=alt.Color(f"{color}:N", title=None, scale=scale),
            tooltip=[
                _time_tip(title=f"{span(bucket_s)} from (UTC)"),
                alt.Tooltip(f"{color}:N"),
                alt.Tooltip(f"{y}:Q", format=fmt),
            ],
        )
    )


def bars(
    df: pd.DataFrame,
    *,
    category: str,
    value: str,
    title: str,
    color: str | None = None,
    colors: Mapping[str, str] | None = None,
    value_title: str | None = None,
    fmt: str = ",d",
    tooltip: Sequence[str] = (),
) -> Chart:
    """Horizontal bars, largest first, optionally stacked by `color`."""
    enc: dict[str, Any] = {
        "y": alt.Y(f"{category}:N", title=None, sort="-x", axis=_CATEGORY_AXIS),
        "x": alt.X(f"sum({value}):Q", title=value_title or value, axis=_value_axis(fmt)),
        "tooltip": [alt.Tooltip(f"{category}:N"), alt.Tooltip(f"{value}:Q", format=fmt)]
        + ([alt.Tooltip(f"{color}:N")] if color else [])
        + [alt.Tooltip(t) for t in tooltip],
    }
    if color:
        scale = _scale(colors, df[color].dropna().unique().tolist()) if colors else alt.Undefined
        enc["color"] = alt.Color(f"{color}:N", title=None, scale=scale)
    return _chart(alt.Chart(df, title=title, height=alt.Step(_ROW)).mark_bar().encode(**enc))


def spans(
    df: pd.DataFrame,
    *,
    row: str,
    color: str,
    colors: Mapping[str, str],
    title: str,
    tooltip: Sequence[str] = (),
) -> Chart:
    """A timeline: one row per `row`, a bar from `start` to `end` coloured by `color`.

    A span that lasted (next to) no time is drawn `_MIN_SPAN` of the timeline wide,
    so it stays visible; its tooltip says when it really began and ended.
    """
    df = _with_utc_text(df, "start", "end")
    times = pd.concat([df["start"], df["end"]])
    least = (times.max() - times.min()) * _MIN_SPAN if len(times) else pd.Timedelta(0)
    df = df.assign(end=df["end"].where(df["end"] - df["start"] >= least, df["start"] + least))
    return _chart(
        alt.Chart(df, title=title, height=alt.Step(_ROW + 8))
        .mark_bar(size=18)
        .encode(
            x=_time(times, "start"),
            x2="end:T",
            y=alt.Y(f"{row}:N", title=None, axis=alt.Axis(labelLimit=_SPAN_LABELS)),
            color=alt.Color(
                f"{color}:N", title=None, scale=_scale(colors, df[color].unique().tolist())
            ),
            tooltip=[
                alt.Tooltip(f"{row}:N"),
                alt.Tooltip(f"{color}:N"),
                _time_tip("start", "from (UTC)"),
                _time_tip("end", "to (UTC)"),
                *(alt.Tooltip(t) for t in tooltip),
            ],
        )
    )


def fallback_matrix(df: pd.DataFrame) -> Chart:
    """From-model x to-model squares, darker for more fallbacks, with the count in each."""
    base = alt.Chart(df, title="Fallbacks: from → to").encode(
        x=alt.X("to_model:N", title="to", axis=alt.Axis(labelAngle=0, labelLimit=260)),
        y=alt.Y("from_model:N", title="from", axis=_CATEGORY_AXIS),
    )
    heat = base.mark_rect().encode(
        color=alt.Color(
            "sum(fallbacks):Q",
            title="fallbacks",
            scale=alt.Scale(scheme="oranges"),
            legend=alt.Legend(format=",d", tickMinStep=1),
        ),
        tooltip=["from_model:N", "to_model:N", alt.Tooltip("sum(fallbacks):Q", title="fallbacks")],
    )
    text = base.mark_text(fontWeight="bold").encode(text="sum(fallbacks):Q")
    return _chart((heat + text).properties(height=alt.Step(2 * _ROW)))


def budget(df: pd.DataFrame, *, title: str, soft_share: float | None = None) -> Chart:
    """Per tenant: spent and reserved as shares of its limit, stacked; a black rule at
    the limit (100%) and a dashed one at the soft limit (`soft_share`)."""
    data = df.assign(
        spent=df["spent_usd"] / df["limit_usd"],
        reserved=df["reserved_usd"] / df["limit_usd"],
        **{f"{c}_text": df[c].map(usd) for c in ("spent_usd", "reserved_usd", "limit_usd")},
    )
    long = data.melt(
        id_vars=["tenant", "spent_usd_text", "reserved_usd_text", "limit_usd_text"],
        value_vars=["spent", "reserved"],
        var_name="part",
        value_name="share",
    )
    y = alt.Y("tenant:N", title=None, axis=_CATEGORY_AXIS)
    used = (
        alt.Chart(long)
        .mark_bar(size=18)
        .encode(
            y=y,
            x=alt.X(
                "share:Q",
                title="share of the limit",
                stack="zero",
                axis=alt.Axis(format="%"),
                scale=alt.Scale(domainMin=0, nice=True),
            ),
            color=alt.Color(
                "part:N",
                title=None,
                scale=alt.Scale(domain=["spent", "reserved"], range=["#1565c0", "#90caf9"]),
            ),
            tooltip=[
                "tenant:N",
                "part:N",
                alt.Tooltip("share:Q", format=".2%"),
                alt.Tooltip("spent_usd_text:N", title="spent"),
                alt.Tooltip("reserved_usd_text:N", title="reserved"),
                alt.Tooltip("limit_usd_text:N", title="limit"),
            ],
        )
    )
    lines_ = [(1.0, "solid")] + ([(soft_share, "soft")] if soft_share else [])
    marks = pd.DataFrame({"share": [v for v, _ in lines_], "kind": [k for _, k in lines_]})
    rules = (
        alt.Chart(marks)
        .mark_rule(color="black", strokeWidth=2)
        .encode(
            x="share:Q",
            strokeDash=alt.StrokeDash(
                "kind:N",
                legend=None,
                scale=alt.Scale(domain=["solid", "soft"], range=[[1, 0], [4, 4]]),
            ),
            tooltip=[alt.Tooltip("share:Q", title="limit", format=".0%")],
        )
    )
    return _chart((used + rules).properties(title=title, height=alt.Step(_ROW + 8)))


def waterfall(df: pd.DataFrame) -> Chart:
    """One request's events: a row each in log order, a dot at its offset from the
    first event, and a bar over each attempt's duration."""
    data = df.assign(label=df["seq"].astype(str).str.zfill(2) + " " + df["event"])
    order = data["label"].tolist()
    y = alt.Y("label:N", title=None, sort=order, axis=alt.Axis(labelLimit=260))
    color = alt.Color(
        "stage:N", title=None, scale=_scale(_STAGE_COLORS, data["stage"].unique().tolist())
    )
    tip = [
        alt.Tooltip("event:N"),
        alt.Tooltip("offset_ms:Q", title="at (ms)", format=",.1f"),
        alt.Tooltip("delta_ms:Q", title="after previous (ms)", format=",.1f"),
        alt.Tooltip("end_ms:Q", title="finished at (ms)", format=",.1f"),
        alt.Tooltip("source:N"),
    ]
    longest = max(data["offset_ms"].max(), data["end_ms"].fillna(0).max(), 1.0)
    x = alt.X(
        "offset_ms:Q",
        title="ms since the request's first event",
        axis=alt.Axis(format=",~f"),  # 0, 250, 1,500 (events in one ms: not 0.000000)
        scale=alt.Scale(domainMin=0, domainMax=float(longest), nice=True),
    )
    bars_ = (
        alt.Chart(data.dropna(subset=["end_ms"]))
        .mark_bar(size=14, opacity=0.6)
        .encode(x=x, x2="end_ms:Q", y=y, color=color, tooltip=tip)
    )
    dots = (
        alt.Chart(data).mark_circle(size=90, opacity=1).encode(x=x, y=y, color=color, tooltip=tip)
    )
    return _chart((bars_ + dots).properties(title="Timeline", height=alt.Step(_ROW)))


def outcome_bars(df: pd.DataFrame, *, category: str, outcomes: Sequence[str], title: str) -> Chart:
    """Horizontal bars per `category`, stacked by the outcome columns `outcomes`."""
    long = df[[category, *outcomes]].melt(
        id_vars=[category], value_vars=list(outcomes), var_name="outcome", value_name="requests"
    )
    return bars(
        long,
        category=category,
        value="requests",
        color="outcome",
        colors=OUTCOME_COLORS,
        title=title,
    )
