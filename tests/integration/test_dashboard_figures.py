"""How the dashboards' figures read, through Streamlit's AppTest on real DuckDB archives.

A person reads a tile's value, a table's cells and a chart's points; these
tests read the same things from the page: KPI tiles short enough to fit (the
browser test measures them in Chromium), every table figure with its unit and
a sensible precision, and time charts whose buckets follow the window (a
five-minute window is no longer five points).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as hs
from streamlit.testing.v1 import AppTest

from tests.integration.test_dashboards import (
    STORIES,
    _rows,
    app,  # noqa: F401  (a fixture)
    assert_clean,
    metrics,
    open_page,
    seeded,  # noqa: F401  (a fixture)
)
from turnout.analytics.archive import Archive
from turnout.analytics.synthetic import ALL_KINDS, Story, story, workload
from turnout.dashboards import fmt
from turnout.service.core import events as ev

# --- archives ---------------------------------------------------------------

BIG_COST_MICROS = 123_456_789  # $123.46 a request
BIG_LATENCY_MS = 23_456.7
BIG_USAGE = ev.Usage(prompt_tokens=1_000_000, completion_tokens=234_567, total_tokens=1_234_567)


def inflate(stories: list[Story]) -> list[Story]:
    """The stories with large figures: dear, slow requests with many tokens."""

    def big(e: ev.Event) -> ev.Event:
        if isinstance(e, ev.RequestCompleted) and not (e.cached or e.coalesced):
            return msgspec.structs.replace(
                e, cost_micros=BIG_COST_MICROS, latency_ms=BIG_LATENCY_MS, usage=BIG_USAGE
            )
        if isinstance(e, ev.AttemptSucceeded):
            return msgspec.structs.replace(
                e, cost_micros=BIG_COST_MICROS, latency_ms=BIG_LATENCY_MS, usage=BIG_USAGE
            )
        if isinstance(e, ev.BudgetCharged):
            return msgspec.structs.replace(e, amount_micros=BIG_COST_MICROS)
        return e

    return [Story(s.request_id, s.tenant, s.kind, tuple(big(e) for e in s.events)) for s in stories]


def write(path: Path, stories: list[Story], *, step_ms: float = 200.0) -> Path:
    with Archive.open(path) as archive:
        archive.load_batch(_rows(stories, step_ms=step_ms))
        archive.publish()
    return path


LARGE_STORIES = inflate(workload(1400, kinds=ALL_KINDS, task_types=("general", "code")))


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 1,300 requests, each costing $123.46, taking 23 s and using 1.2M tokens."""
    return write(tmp_path_factory.mktemp("large") / "turnout.duckdb", LARGE_STORIES, step_ms=20)


FIVE_MIN_STORIES = workload(300, kinds=ALL_KINDS, task_types=("general", "code"))


@pytest.fixture(scope="module")
def five_minutes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five minutes of traffic, every kind of story throughout it."""
    rows = _rows(FIVE_MIN_STORIES)
    assert 290_000 <= rows[-1].time_ms - rows[0].time_ms <= 330_000
    return write(tmp_path_factory.mktemp("five") / "turnout.duckdb", FIVE_MIN_STORIES)


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded traffic plus streamed answers and skipped candidates: every table shows."""
    extra = [story("streamed", f"stream-{i}", "t1") for i in range(4)]
    extra += [story(k, f"{k}-{i}", "t2") for k in ("skipped_open", "skipped_price") for i in (0, 1)]
    return write(tmp_path_factory.mktemp("everything") / "turnout.duckdb", [*STORIES, *extra])


# --- reading a page as a person does ----------------------------------------

MISSING = {"None", "none", "nan", "NaN", "NaT", "<NA>", "null"}
UNITS = (
    "ms", "s", "min", "h", "d", "%", "x", "/s", "/min", "/h", "B", "KiB", "MiB", "GiB", "k", "M",
)  # fmt: skip
FIGURE = re.compile(  # 1,234 · $0.000123 · 219.8 ms · 12.3% · 2.8x · 1.5 MiB · 20/s
    r"^[<>]?[-\u2212]?\$?(?P<int>0|[1-9][\d,]*)(?:\.(?P<frac>\d+))?"
    rf"(?:\s?(?:{'|'.join(re.escape(u) for u in UNITS)}))?$"
)


def _default_number(value: float | int) -> str:
    """What the table grid shows for a number without a format: up to four decimals."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    digits = 4 if abs(value) >= 1e-4 else abs(int(f"{value:e}".split("e")[1]))
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def _cell(value: Any, config: dict[str, Any]) -> str:
    """One cell's text as the grid draws it (a printf format is applied as printf does)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "None"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    form = config.get("type_config", {}).get("format")
    if form == "percent":  # Intl.NumberFormat's percent: grouped, at most two decimals
        return f"{value * 100:,.2f}".rstrip("0").rstrip(".") + "%"
    if form and "%" in form:
        return form % value
    return _default_number(value)


def shown(element: Any) -> pd.DataFrame:
    """A table on the page as text: its visible headers and each cell as drawn."""
    config: dict[str, Any] = json.loads(element.proto.columns or "{}")
    df = element.value
    out = {}
    for column in df.columns:
        c = config.get(str(column), {})
        if c.get("hidden"):
            continue
        header = c.get("label") or str(column)
        out[header] = [_cell(_plain(v), c) for v in df[column].tolist()]
    return pd.DataFrame(out)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def badly_formatted(text: str) -> str | None:
    """Why `text` reads badly as a table figure, or None (also for text that is no figure)."""
    if text.strip() in MISSING:
        return "a missing value shown as code"
    m = FIGURE.match(text.strip())
    if not m:
        return None
    whole, frac = m["int"], m["frac"] or ""
    if "," not in whole and len(whole) > 3:
        return "no thousands separators"
    if int(whole.replace(",", "")) >= 1 and len(frac) > 2:
        return "more than two decimals"
    if int(whole.replace(",", "")) == 0 and len(frac.lstrip("0")) > 3:
        return "more than three significant digits"
    return None


def table_problems(page: AppTest) -> list[str]:
    problems = []
    for i, element in enumerate(page.dataframe):
        table = shown(element)
        for header in table.columns:
            if "_" in header:
                problems.append(f"table {i}: header {header!r} is a column name")
            for text in table[header]:
                why = badly_formatted(text)
                if why:
                    problems.append(f"table {i}, {header}: {text!r}: {why}")
    return problems


# --- tables -------------------------------------------------------------------

TABLES = {  # page -> how many tables it shows on the `everything` archive
    "routing": 4,
    "reliability": 2,
    "tenants": 2,
    "cache": 1,
    "alerts": 2,
    "explorer": 1,
}


@pytest.mark.parametrize("page", TABLES)
def test_every_table_shows_figures_with_their_unit_and_few_digits(
    app: AppTest,  # noqa: F811
    everything: Path,
    page: str,
) -> None:
    open_page(app, everything, page)

    assert_clean(app)
    assert len(app.dataframe) == TABLES[page]
    problems = table_problems(app)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", ["tenants", "routing", "reliability", "cache"])
def test_large_figures_in_tables_read_whole(app: AppTest, large: Path, page: str) -> None:  # noqa: F811
    open_page(app, large, page)

    assert_clean(app)
    problems = table_problems(app)
    assert not problems, "\n".join(problems)


def test_tenant_spend_is_money_with_cents(app: AppTest, large: Path) -> None:  # noqa: F811
    open_page(app, large, "tenants")

    budget = shown(app.dataframe[1])
    assert all(re.fullmatch(r"\$\d{1,3}(,\d{3})*\.\d\d", s) for s in budget["spent"]), budget
    top = shown(app.dataframe[0])
    assert all(re.fullmatch(r"\d{1,3}(,\d{3})*", s) for s in top["requests"]), top


# --- KPI tiles ----------------------------------------------------------------

TILE_PAGES = ("overview", "routing", "reliability", "cache", "explorer")
MAX_TILE_CHARS = 9  # a quarter of the page holds ten at 1280 px (the browser test measures)


@pytest.mark.parametrize("page", TILE_PAGES)
def test_kpi_tiles_are_short_and_whole(app: AppTest, large: Path, page: str) -> None:  # noqa: F811
    open_page(app, large, page)
    if page == "explorer":  # one dear, slow request with many tokens
        ok = next(s for s in LARGE_STORIES if s.kind == "ok")
        app.text_input(key="explorer_paste").input(ok.request_id or "").run()
        assert metrics(app) == {
            "Attempts": "1", "Latency": "23.5 s", "Tokens": "1.23M", "Cost": "$123.46"
        }  # fmt: skip

    assert_clean(app)
    assert app.metric
    for m in app.metric:
        assert len(m.value) <= MAX_TILE_CHARS and "…" not in m.value, (m.label, m.value)


def test_large_kpis_are_abbreviated_with_the_exact_value_in_the_tooltip(
    app: AppTest,  # noqa: F811
    large: Path,
) -> None:
    open_page(app, large, "overview")

    shown_ = metrics(app)
    cost = next(m for m in app.metric if m.label == "Cost")
    assert re.fullmatch(r"\$\d+(\.\d)?k", shown_["Cost"]), shown_["Cost"]
    assert re.search(r"\$\d{1,3}(,\d{3})+\.\d\d", cost.proto.help), cost.proto.help
    assert shown_["p50 latency"] == "23.5 s"


# --- buckets that follow the window ---------------------------------------------

TIME_CHARTS = {"overview": 5, "routing": 1, "reliability": 1, "tenants": 1, "cache": 1}


def _x_fields(spec: Any) -> Iterator[str]:
    if isinstance(spec, dict):
        x = spec.get("encoding", {}).get("x")
        if isinstance(x, dict) and "field" in x:
            yield x["field"]
        for value in spec.values():
            yield from _x_fields(value)
    elif isinstance(spec, list):
        for value in spec:
            yield from _x_fields(value)


def time_charts(page: AppTest) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """The page's charts over time (x is `time`) with the data they draw."""
    out = []
    for chart in page.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        if "time" not in set(_x_fields(spec)):
            continue
        frames = [
            pa.ipc.open_stream(d.data.data).read_all().to_pandas() for d in chart.proto.datasets
        ]
        if chart.proto.data.data:
            frames.append(pa.ipc.open_stream(chart.proto.data.data).read_all().to_pandas())
        out.append((spec, pd.concat(frames)))
    return out


@pytest.mark.parametrize("page", TIME_CHARTS)
def test_a_five_minute_window_has_at_least_ten_points_per_time_chart(
    app: AppTest,  # noqa: F811
    five_minutes: Path,
    page: str,
) -> None:
    open_page(app, five_minutes, page)
    app.selectbox(key="f_range").set_value("Last 15 min").run()

    assert_clean(app)
    charts = time_charts(app)
    assert len(charts) == TIME_CHARTS[page]
    for spec, data in charts:
        title = spec.get("title")
        assert data["time"].nunique() >= 10, (title, sorted(data["time"].unique()))
        assert "per 5 s" in json.dumps(spec), f"{title}: the bucket is not named"


def test_the_retry_budget_is_judged_over_the_routers_window_not_the_bucket(
    app: AppTest,  # noqa: F811
    five_minutes: Path,
) -> None:
    """The router allows max(10, 0.2 x requests) retries in any 60 s; the synthetic traffic
    retries at most 6 times in a minute, so it never went over its budget, however narrow
    the chart's buckets (5 s here: judged per bucket, 4 retries in 5 s read as 480%)."""
    open_page(app, five_minutes, "reliability")
    app.selectbox(key="f_range").set_value("Last 15 min").run()

    assert_clean(app)
    peak = metrics(app)["Peak budget use"]
    assert 0 < float(peak.rstrip("%")) <= 100, peak


def test_alert_episodes_are_named_in_words_and_drawn_even_when_they_last_no_time(
    app: AppTest,  # noqa: F811
    seeded: Path,  # noqa: F811
) -> None:
    """The synthetic error_rate alerts fire and resolve within a second: a bar from start
    to end would have no width."""
    open_page(app, seeded, "alerts")

    assert_clean(app)
    (chart,) = [c for c in app.get("vega_lite_chart") if "Alert episodes" in c.proto.spec]
    blobs = [d.data.data for d in chart.proto.datasets] + [chart.proto.data.data]
    data = pd.concat([pa.ipc.open_stream(b).read_all().to_pandas() for b in blobs if b])
    assert "error_rate model=openai/gpt-4o-mini" in set(data["alert"]), set(data["alert"])
    assert not data["alert"].str.contains("{").any()  # no JSON
    timeline = data["end"].max() - data["start"].min()
    assert ((data["end"] - data["start"]) >= timeline / 400).all()  # a few pixels at least


def chart_data(chart: Any) -> pd.DataFrame:
    blobs = [d.data.data for d in chart.proto.datasets] + [chart.proto.data.data]
    return pd.concat([pa.ipc.open_stream(b).read_all().to_pandas() for b in blobs if b])


def test_a_chart_of_one_series_has_no_legend(app: AppTest, five_minutes: Path) -> None:  # noqa: F811
    open_page(app, five_minutes, "overview")

    assert_clean(app)
    for chart in app.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        if spec.get("title") in ("Error rate", "Cache hit ratio") or "Cost per" in str(
            spec.get("title")
        ):
            assert spec["encoding"]["color"].get("legend", "shown") is None, spec["title"]


STEADY = workload(1199, kinds=("deadlettered",))  # one event each: a request every 250 ms


@pytest.fixture(scope="module")
def steady(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 4 requests a second for 302 s: the window's last 5 s bucket holds 2 s of them."""
    rows = _rows(STEADY, step_ms=250)
    assert rows[-1].time_ms - rows[0].time_ms == 302_000
    return write(tmp_path_factory.mktemp("steady") / "turnout.duckdb", STEADY, step_ms=250)


def test_a_rate_in_the_windows_last_bucket_is_over_the_time_it_covers(
    app: AppTest,  # noqa: F811
    steady: Path,
) -> None:
    """About 4 requests/s throughout: the last bucket, two seconds of five, still reads
    about 4/s (over the whole bucket it would read 1.8/s, a drop that never happened)."""
    open_page(app, steady, "overview")
    app.selectbox(key="f_range").set_value("Last 15 min").run()

    assert_clean(app)
    (chart,) = [c for c in app.get("vega_lite_chart") if "Requests/s by outcome" in c.proto.spec]
    per_bucket = chart_data(chart).groupby("time")["requests_per_s"].sum().sort_index()
    assert len(per_bucket) >= 60
    assert per_bucket.between(3, 5.5).all(), per_bucket[~per_bucket.between(3, 5.5)]


# --- the formatting rules themselves -------------------------------------------

TILE_FORMATS = {  # a tile's formatter -> the values it meets
    fmt.count_short: hs.integers(-(10**14), 10**15),
    fmt.usd_short: hs.integers(0, 10**18).map(lambda micros: micros / 1e6),  # money: micros
    fmt.ms: hs.floats(0, 1e10),
    fmt.pct: hs.floats(0, 99.99),  # up to 9,999%
    fmt.rate: hs.floats(0, 99_999),
    fmt.times: hs.floats(0, 9_999),
}


@pytest.mark.parametrize("show", TILE_FORMATS, ids=lambda f: f.__name__)
@given(data=hs.data())
def test_a_tile_value_is_at_most_nine_characters(show: Any, data: hs.DataObject) -> None:
    value = data.draw(TILE_FORMATS[show])

    assert len(show(value)) <= MAX_TILE_CHARS, show(value)


@given(hs.floats(-1e15, 1e15).filter(lambda v: v != 0), hs.integers(2, 4))
def test_sig_keeps_its_digits_and_never_rounds_the_whole_part_away(v: float, n: int) -> None:
    text = fmt.sig(v, n)

    shown = float(text.replace(",", ""))
    magnitude = math.floor(math.log10(abs(v)))
    assert abs(shown - v) <= 0.5 * 10 ** max(magnitude - n + 1, 0) * 1.000001
    assert not ("." in text and text.endswith("0"))  # no trailing zeros
    if n <= 3:  # what tables show: 1,234 · 219.8 · 0.000123
        assert badly_formatted(text) is None, text


@given(hs.floats(0, 1e9))
def test_money_has_cents_from_a_dollar_and_three_digits_below(v: float) -> None:
    text = fmt.usd(v)

    if v >= 1:
        assert re.fullmatch(r"\$\d{1,3}(,\d{3})*\.\d\d", text), text
    elif v >= 0.0000005:  # half a micro-dollar, the unit money is counted in
        assert re.fullmatch(r"\$0\.0*[1-9]\d{0,2}", text) or text == "$1.00", text
    elif v > 0:
        assert text == "<$0.000001"


@pytest.mark.parametrize("page", TIME_CHARTS)
def test_a_time_axis_spans_the_whole_window_however_little_data_it_has(
    app: AppTest,  # noqa: F811
    five_minutes: Path,
    page: str,
) -> None:
    """A chart of a few retries in the window's first seconds still shows the whole window
    (an axis zoomed to the data reads as if they happened throughout)."""
    rows = _rows(FIVE_MIN_STORIES)
    window = (rows[0].time_ms, rows[-1].time_ms)  # the archive is shorter than 15 min
    open_page(app, five_minutes, page)
    app.selectbox(key="f_range").set_value("Last 15 min").run()

    for spec, _ in time_charts(app):
        domain = _x_domain(spec)
        assert domain and domain[0] <= window[0] and domain[1] >= window[1], (
            spec.get("title"),
            domain,
            window,
        )


def _x_domain(spec: Any) -> list[float] | None:
    """The time axis's domain (epoch ms) of a chart or of its first layer that has one."""
    if isinstance(spec, dict):
        x = spec.get("encoding", {}).get("x", {})
        if isinstance(x, dict) and "domain" in x.get("scale", {}):
            return [float(v) for v in x["scale"]["domain"]]
        for value in spec.values():
            found = _x_domain(value)
            if found:
                return found
    elif isinstance(spec, list):
        for value in spec:
            found = _x_domain(value)
            if found:
                return found
    return None


def test_the_timeline_of_a_request_that_took_no_time_has_a_readable_axis(
    app: AppTest,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A cache hit's events can share one millisecond: the axis must not be a single
    "0.000000" tick, so it spans at least a millisecond and prints whole numbers."""
    hit = next(s for s in STORIES if s.kind == "cached")
    archive = write(tmp_path / "turnout.duckdb", [hit], step_ms=0)
    open_page(app, archive, "explorer")
    app.text_input(key="explorer_paste").input(hit.request_id or "").run()

    assert_clean(app)
    (chart,) = [c for c in app.get("vega_lite_chart") if "Timeline" in c.proto.spec]
    spec = json.loads(chart.proto.spec)
    x = next(layer["encoding"]["x"] for layer in spec["layer"])
    assert x["axis"]["format"] == ",~f"
    assert x["scale"]["domainMin"] == 0 and x["scale"]["domainMax"] >= 1
