"""The Streamlit dashboards on real DuckDB archives, through Streamlit's AppTest.

Each test runs the app as `turnout dashboard` does (dashboards/app.py, the
archive path from TURNOUT_DUCKDB_PATH) against an archive the sink's own code
wrote from a synthetic workload, and reads what a user would see: metrics,
messages, tables. Expected numbers come from the workload's stories, not
from SQL. Also here: `turnout dashboard`'s refusals, and properties of the
pure window and formatting code.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as hs
from streamlit.testing.v1 import AppTest

from turnout.analytics.alerts.rules import load_rules
from turnout.analytics.archive import Archive
from turnout.analytics.rows import EventRow, KafkaPosition, record_row
from turnout.analytics.synthetic import ALL_KINDS, MODELS, REQUESTLESS, Story, envelopes, workload
from turnout.dashboards import fmt
from turnout.dashboards.cli import APP
from turnout.dashboards.scope import (
    BUCKETS_S,
    MAX_BUCKETS,
    MIN_BUCKETS,
    RANGES,
    bucket_seconds,
    make_scope,
    window,
)
from turnout.service.core import events as ev
from turnout.service.wire.cloudevents import encode

TITLES = {
    "overview": "Overview",
    "routing": "Routing",
    "reliability": "Reliability",
    "tenants": "Tenants",
    "cache": "Cache",
    "alerts": "Alerts",
    "explorer": "Request explorer",
    "whatif": "What-if",
}
PAGES = tuple(TITLES)
CHARTED = tuple(p for p in PAGES if p != "whatif")  # what-if charts once run: test_whatif_page
STORIES = workload(140, kinds=ALL_KINDS, task_types=("general", "code"))  # 10 of each kind
STEP_MS = 200.0  # about 2.5 minutes of traffic: three one-minute buckets


def _rows(stories: list[Story], *, step_ms: float = STEP_MS) -> list[EventRow]:
    out = []
    for i, env in enumerate(envelopes(stories, step_ms=step_ms)):
        row = record_row(*encode(env), KafkaPosition("turnout.events", i % 12, i))
        assert isinstance(row, EventRow)
        out.append(row)
    return out


ROWS = _rows(STORIES)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seeded") / "turnout.duckdb"
    with Archive.open(path) as archive:
        archive.load_batch(ROWS)
        archive.publish()
    return path


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("empty") / "turnout.duckdb"
    with Archive.open(path) as archive:
        archive.publish()
    return path


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[AppTest]:
    """The app, not yet run; point it at an archive with TURNOUT_DUCKDB_PATH."""
    monkeypatch.chdir(tmp_path)  # no ./turnout.toml
    for key in ("TURNOUT_DASHBOARD_CONFIG", "TURNOUT_DASHBOARD_RULES"):
        monkeypatch.delenv(key, raising=False)
    yield AppTest.from_file(str(APP), default_timeout=30)


def open_page(app: AppTest, archive: Path, page: str) -> AppTest:
    os.environ["TURNOUT_DUCKDB_PATH"] = str(archive)
    app.run()
    if page != "overview":
        app.switch_page(f"screens/{page}.py").run()
    return app


def metrics(app: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in app.metric}


def charts(app: AppTest) -> int:
    return len(app.get("vega_lite_chart"))


def assert_clean(app: AppTest) -> None:
    assert not app.exception, app.exception[0].message
    assert not app.error, app.error[0].value


@pytest.fixture(autouse=True)
def _restore_env() -> Iterator[None]:
    saved = os.environ.get("TURNOUT_DUCKDB_PATH")
    yield
    if saved is None:
        os.environ.pop("TURNOUT_DUCKDB_PATH", None)
    else:
        os.environ["TURNOUT_DUCKDB_PATH"] = saved


def number(text: str) -> int:
    """A count as a table shows it (1,234) as a number."""
    return int(text.replace(",", ""))


def kinds(**where: str) -> Counter[str]:
    """How many requests of each kind match `where` (tenant=...)."""
    return Counter(
        s.kind
        for s in STORIES
        if s.kind not in REQUESTLESS and all(getattr(s, k) == v for k, v in where.items())
    )


# --- every page -------------------------------------------------------------


def test_overview_shows_the_workloads_numbers(app: AppTest, seeded: Path) -> None:
    open_page(app, seeded, "overview")

    assert_clean(app)
    n = kinds()
    unanswered = ("failed", "rejected", "budget_rejected", "deadlettered", "in_flight")
    failed, completed = n["failed"], n.total() - sum(n[k] for k in unanswered)
    shown = metrics(app)
    assert shown["Requests"] == f"{n.total():,}"
    assert shown["Error rate"] == f"{failed / (completed + failed) * 100:.1f}%"
    assert shown["Cache hit ratio"] == f"{n['cached'] / completed * 100:.1f}%"
    assert shown["p50 latency"] == "105 ms"  # one attempt: 100 ms per attempt + 5
    assert charts(app) == 5


@pytest.mark.parametrize("page", CHARTED)
def test_every_page_renders_on_a_seeded_archive(app: AppTest, seeded: Path, page: str) -> None:
    open_page(app, seeded, page)

    assert_clean(app)
    assert not app.warning, app.warning[0].value
    assert app.title[0].value == TITLES[page]
    assert charts(app) >= 1
    assert "events in the archive" in " ".join(c.value for c in app.caption)


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("archive", ["missing", "empty"])
def test_every_page_has_a_friendly_empty_state(
    app: AppTest, empty: Path, tmp_path: Path, page: str, archive: str
) -> None:
    path = empty if archive == "empty" else tmp_path / "nowhere" / "turnout.duckdb"

    open_page(app, path, page)

    assert_clean(app)
    assert [i.value for i in app.info] and "start `turnout sink`" in app.info[0].value
    assert charts(app) == 0


def test_routing_counts_fallbacks_and_retries(app: AppTest, seeded: Path) -> None:
    open_page(app, seeded, "routing")

    n = kinds()
    shown = metrics(app)
    assert shown["Fell back"] == str(n["fallback"] + n["failed"])  # failed tried two models
    assert shown["Retries"] == str(n["retried"])
    hops = app.dataframe[0].value
    assert hops[["from_model", "to_model"]].values.tolist() == [[MODELS[0], MODELS[1]]]
    taken = sum(isinstance(e, ev.FallbackTaken) for s in STORIES for e in s.events)
    assert hops["fallbacks"].tolist() == [f"{taken:,}"]
    calls = app.dataframe[-1].value  # the last table: upstream calls by provider and model
    finished = (ev.AttemptSucceeded, ev.AttemptFailed)
    assert set(calls["provider"]) == {"upstream"}  # written without [providers]
    made = sum(isinstance(e, finished) for s in STORIES for e in s.events)
    assert sum(number(c) for c in calls["calls"]) == made


def test_reliability_shows_every_breaker_transition(app: AppTest, seeded: Path) -> None:
    open_page(app, seeded, "reliability")

    breaker_events = [r for r in ROWS if r.type.startswith("turnout.breaker.")]
    assert metrics(app)["Transitions in the window"] == str(len(breaker_events))
    states = app.dataframe[0].value
    assert set(states["state"]) == {"closed"}  # every synthetic episode closes again
    # the reason is the closing transition's own, not an older one's
    assert states["reason"].str.endswith("probe call(s) succeeded").all(), states["reason"]
    outcomes = app.dataframe[1].value
    failed = sum(map(number, outcomes.loc[outcomes["result"] == "http_503", "attempts"]))
    assert failed == sum(isinstance(e, ev.AttemptFailed) for s in STORIES for e in s.events)
    assert set(outcomes["provider"]) == {"upstream"}  # written without [providers]


def test_tenants_show_rate_limits_and_budgets(app: AppTest, seeded: Path) -> None:
    open_page(app, seeded, "tenants")

    assert_clean(app)
    top, budget = app.dataframe[0].value, app.dataframe[1].value
    assert sorted(top["tenant"]) == ["t0", "t1", "t2"]
    assert sum(map(number, top["requests"])) == kinds().total()
    charged = Counter(
        e.tenant for s in STORIES for e in s.events if isinstance(e, ev.BudgetCharged)
    )
    spent = dict(zip(budget["tenant"], budget["spent_usd"], strict=True))
    assert spent == {t: fmt.usd(n * 210 / 1e6) for t, n in charged.items()}  # $0.0042
    assert set(budget["limit_usd"]) == {"$50.00"}  # what the router reported


def test_cache_shows_hits_compression_and_evictions(app: AppTest, seeded: Path) -> None:
    open_page(app, seeded, "cache")

    n = Counter(s.kind for s in STORIES)
    shown = metrics(app)
    assert shown["Hits"] == str(n["cached"])
    assert shown["Misses"] == str(n["cache_miss"])
    assert shown["Compression ratio"] == "2.8x"  # 812 bytes stored as 290
    assert shown["Evicted"] == str(n["evicted"])
    evicted = next(m for m in app.metric if m.label == "Evicted")
    assert fmt.bytes_(n["evicted"] * 290) in evicted.proto.help  # the size, in the tooltip
    assert shown["Coalesced requests"] == str(n["coalesced"])


def test_alerts_show_what_fires_and_every_rule(app: AppTest, seeded: Path) -> None:
    open_page(app, seeded, "alerts")

    assert_clean(app)
    firing = {s.tenant for s in STORIES if s.kind == "alert_firing"}
    assert app.subheader[0].value == f"Firing now: {len(firing)}"
    labels = app.dataframe[0].value["labels"]  # tenant=t0, period=day
    assert sorted(dict(kv.split("=") for kv in x.split(", "))["tenant"] for x in labels) == sorted(
        firing
    )
    rules = load_rules()
    assert len(app.expander) == len(rules)
    assert [c.value for c in app.code] == [r.sql.strip() for r in rules]


# --- filters, range, explorer -----------------------------------------------


def test_a_tenant_filter_changes_the_numbers_on_every_page(app: AppTest, seeded: Path) -> None:
    open_page(app, seeded, "overview")
    assert metrics(app)["Requests"] == str(kinds().total())

    app.multiselect(key="f_tenants").set_value(["t1"]).run()

    assert_clean(app)
    assert metrics(app)["Requests"] == str(kinds(tenant="t1").total())
    app.switch_page("screens/tenants.py").run()  # the filter is shared by every page
    assert app.dataframe[0].value["tenant"].tolist() == ["t1"]
    assert "tenants: t1" in " ".join(c.value for c in app.caption)


def test_task_type_and_model_filters(app: AppTest, seeded: Path) -> None:
    open_page(app, seeded, "routing")

    app.multiselect(key="f_task_types").set_value(["code"]).run()
    code = [
        s
        for s in STORIES
        if any(isinstance(e, ev.RequestAccepted) and e.task_type == "code" for e in s.events)
    ]
    retried = sum(s.kind == "retried" for s in code)
    assert metrics(app)["Retries"] == str(retried)

    app.multiselect(key="f_task_types").set_value([])
    app.multiselect(key="f_models").set_value([MODELS[1]]).run()
    app.switch_page("screens/overview.py").run()
    answered_by_second = sum(s.kind in ("fallback", "failed") for s in STORIES)
    assert metrics(app)["Requests"] == str(answered_by_second)


def test_a_window_ending_now_on_an_old_archive_says_so(app: AppTest, seeded: Path) -> None:
    open_page(app, seeded, "overview")

    app.radio(key="f_anchor").set_value("now")
    app.selectbox(key="f_range").set_value("Last 15 min").run()

    assert_clean(app)
    assert "Nothing in this window" in app.warning[0].value
    assert not app.metric


def test_the_explorer_shows_a_pasted_request_in_order(app: AppTest, seeded: Path) -> None:
    story = next(s for s in STORIES if s.kind == "fallback")
    open_page(app, seeded, "explorer")

    app.text_input(key="explorer_paste").input(story.request_id or "").run()

    assert_clean(app)
    assert story.request_id and story.request_id in app.subheader[0].value
    assert ":green-badge[completed]" in app.subheader[0].value
    trail = app.dataframe[0].value
    assert trail["event"].tolist() == [e.TYPE.removeprefix("turnout.") for e in story.events]
    assert trail["time"].tolist() == sorted(trail["time"])  # 00:00:01.400, ...
    assert metrics(app)["Attempts"] == "2"
    assert f"answered by **{MODELS[1]}**" in app.markdown[0].value
    assert f"models tried: {MODELS[0]} → {MODELS[1]}" in app.markdown[0].value
    assert len(app.expander) == len(story.events)  # a payload each
    assert app.json[0].value and json.loads(app.json[0].value)["request_id"] == story.request_id


def test_the_explorer_shows_a_request_from_a_sealed_day(app: AppTest, tmp_path: Path) -> None:
    """Days older than `hot_hours` live in part files: the dashboards read them too."""
    path = tmp_path / "turnout.duckdb"
    rows = _rows(STORIES, step_ms=3 * 86_400_000 / len(ROWS))  # the same log over three days
    with Archive.open(path) as archive:
        archive.load_batch(rows)
        assert archive.publish(hot_hours=24).sealed  # the first day is in a part
    story = next(s for s in STORIES if s.kind == "fallback")
    first = min(r.time_ms for r in rows if r.request_id == story.request_id)
    assert first < rows[0].time_ms + 86_400_000  # on the sealed day
    open_page(app, path, "explorer")

    app.text_input(key="explorer_paste").input(story.request_id or "").run()

    assert_clean(app)
    assert ":green-badge[completed]" in app.subheader[0].value
    trail = app.dataframe[0].value
    assert trail["event"].tolist() == [e.TYPE.removeprefix("turnout.") for e in story.events]
    assert metrics(app)["Attempts"] == "2"


def test_the_explorer_names_a_single_model_tried_whole(app: AppTest, seeded: Path) -> None:
    story = next(s for s in STORIES if s.kind == "ok")  # one attempt, one model
    open_page(app, seeded, "explorer")
    app.text_input(key="explorer_paste").input(story.request_id or "").run()
    assert_clean(app)
    facts = app.markdown[0].value
    assert f"models tried: {MODELS[0]}" in facts and " → " not in facts  # not o → p → e …


def test_the_explorer_lists_recent_requests_to_pick_from(app: AppTest, seeded: Path) -> None:
    open_page(app, seeded, "explorer")
    recent = app.selectbox(key="explorer_recent")
    pick = [s.request_id for s in STORIES if s.kind == "retried"][-1] or ""
    assert any(o.startswith(f"{pick} · completed · ") for o in recent.options)

    recent.set_value(pick).run()

    assert pick in app.subheader[0].value
    assert metrics(app)["Attempts"] == "2"


def test_the_explorer_opens_on_the_newest_finished_request_not_one_in_flight(
    app: AppTest, tmp_path: Path
) -> None:
    flying = next(s for s in STORIES if s.kind == "in_flight")
    done = [s for s in STORIES if s.kind in ("ok", "retried")]
    later = 1_767_225_600_000 + 3_600_000  # the request in flight arrives an hour later
    envs = [*envelopes(done, step_ms=STEP_MS), *envelopes([flying], t0_ms=later, seed=1)]
    rows = []
    for i, env in enumerate(envs):
        row = record_row(*encode(env), KafkaPosition("turnout.events", i % 12, i))
        assert isinstance(row, EventRow)
        rows.append(row)
    path = tmp_path / "turnout.duckdb"
    with Archive.open(path) as archive:
        archive.load_batch(rows)
        archive.publish()
    open_page(app, path, "explorer")
    app.selectbox(key="f_range").set_value("Last 6 h").run()
    recent = app.selectbox(key="explorer_recent")
    assert recent.options[0].startswith(f"{flying.request_id} · in_flight")  # listed first...
    assert recent.value != flying.request_id  # ...but not opened
    assert recent.value in {d.request_id for d in done}


def test_the_explorer_opens_a_request_from_a_link(app: AppTest, seeded: Path) -> None:
    story = next(s for s in STORIES if s.kind == "cached")
    app.query_params["request"] = story.request_id or ""  # .../explorer?request=ID

    open_page(app, seeded, "explorer")

    assert_clean(app)
    assert story.request_id and story.request_id in app.subheader[0].value
    assert app.dataframe[0].value["event"].tolist()[-1] == "request.completed"


def test_the_explorer_says_when_a_request_is_unknown(app: AppTest, seeded: Path) -> None:
    open_page(app, seeded, "explorer")

    app.text_input(key="explorer_paste").input("no-such-request").run()

    assert_clean(app)
    assert "No events of request `no-such-request`" in app.warning[0].value


# --- `turnout dashboard` refuses what cannot work -----------------------------


def dashboard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnout", "dashboard", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )  # fmt: skip


def test_a_bad_config_or_rules_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[retry]\nmax_retries = 'many'\n")

    for args in (["--config", str(bad)], ["--rules", str(tmp_path / "missing.toml")]):
        proc = dashboard(*args, "--port", "0", cwd=tmp_path)

        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith("turnout: error:"), proc.stderr
        assert args[1] in proc.stderr or "max_retries" in proc.stderr
        assert "dashboard:" not in proc.stdout  # nothing started


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        proc = dashboard("--port", str(port), cwd=tmp_path)

    assert proc.returncode == 1
    assert f"127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr


# --- the pure parts -----------------------------------------------------------

_T0 = datetime(2026, 1, 1, tzinfo=UTC)
_times = hs.integers(0, 10**9).map(lambda s: _T0 + timedelta(seconds=s))


@given(
    oldest=_times, length=hs.integers(0, 10**8), now=_times,
    range_s=hs.sampled_from([None, 900, 3600, 21_600, 86_400]),
    anchor=hs.sampled_from(["newest", "now"]),
)  # fmt: skip
def test_a_window_ends_at_its_anchor_and_spans_its_range(
    oldest: datetime, length: int, now: datetime, range_s: int | None, anchor: str
) -> None:
    newest = oldest + timedelta(seconds=length)

    w = window(range_s, oldest=oldest, newest=newest, now=now, anchor=anchor)

    assert w.end == (newest if anchor == "newest" else now)
    first = min(oldest, w.end)  # never before the archive's first event
    if range_s is None:
        assert w.start == first
    else:
        assert w.start == max(w.end - timedelta(seconds=range_s), first)
    assert w.seconds >= 1
    scope = make_scope(w, tenants=["b", "a", "b"])
    assert scope.tenants == ("a", "b")
    assert w.seconds / scope.bucket_s <= MAX_BUCKETS or scope.bucket_s == BUCKETS_S[-1]


@given(hs.floats(1, 10**9))
def test_a_bucket_is_the_narrowest_that_fits_and_a_window_gets_30_to_120(span_s: float) -> None:
    width = bucket_seconds(span_s)

    assert width in BUCKETS_S
    assert span_s / width <= MAX_BUCKETS or width == BUCKETS_S[-1]
    assert all(span_s / b > MAX_BUCKETS for b in BUCKETS_S if b < width)
    if 30 <= span_s <= 120 * 86_400:  # from half a minute to four months
        assert MIN_BUCKETS <= span_s / width <= MAX_BUCKETS


def test_the_time_ranges_get_buckets_for_their_size() -> None:
    widths = {label: bucket_seconds(s) for label, s in RANGES.items() if s}

    assert widths == {
        "Last 5 min": 5,  # 60 points
        "Last 15 min": 10,  # 90
        "Last hour": 30,  # 120
        "Last 6 h": 300,  # 72
        "Last 24 h": 900,  # 96
    }


@given(hs.one_of(hs.none(), hs.just(float("nan")), hs.floats(-1e12, 1e12)))
def test_numbers_never_print_as_nan_or_none(value: float | None) -> None:
    for f in (fmt.count, fmt.count_short, fmt.rate, fmt.ms, fmt.pct, fmt.usd, fmt.usd_short,
              fmt.bytes_, fmt.sig, fmt.times):  # fmt: skip
        text = f(value)
        assert "nan" not in text.lower() and "none" not in text.lower()
        assert (text == fmt.NONE) == (value is None or value != value)


@given(hs.integers(0, 10**10))
def test_rule_durations_read_back_as_written(ms_: int) -> None:
    from turnout.analytics.alerts.rules import parse_duration

    assert parse_duration(fmt.duration(ms_)) == ms_


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded archive's traffic plus four streamed answers by tenant t1."""
    from turnout.analytics.synthetic import STREAM_TTFT_MS, story

    assert STREAM_TTFT_MS == 120.0
    extra = [story("streamed", f"stream-{i}", "t1") for i in range(4)]
    path = tmp_path_factory.mktemp("streamed") / "turnout.duckdb"
    with Archive.open(path) as archive:
        archive.load_batch(_rows([*STORIES, *extra]))
        archive.publish()
    return path


def test_routing_shows_time_to_first_token_and_tokens_per_second_by_model(
    app: AppTest, streamed: Path, seeded: Path
) -> None:
    open_page(app, streamed, "routing")
    assert_clean(app)
    (table,) = [d.value for d in app.dataframe if "ttft_p50_ms" in d.value.columns]
    (row,) = table.to_dict("records")
    assert row["model"] == MODELS[0] and row["streams"] == "4"
    assert row["ttft_p50_ms"] == row["ttft_p95_ms"] == "120 ms"
    assert row["tokens_per_s"] == "20/s"  # 40 tokens in the 2 s after the first
    open_page(app, seeded, "routing")  # no stream in the window: no table
    assert not [d for d in app.dataframe if "ttft_p50_ms" in d.value.columns]
