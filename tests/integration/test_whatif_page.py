"""The dashboard's What-if page, through Streamlit's AppTest, on a real DuckDB archive.

The archive holds a single router's log of the what-if workload (the router's own
core in virtual time), written by the archive code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.e2e.test_replay_cli import write_archive
from tests.e2e.test_whatif_cli import ROUTES, TENANTS, envelope
from tests.integration.test_dashboard_figures import MAX_TILE_CHARS, table_problems
from tests.unit.test_whatif import Workload, base_raw, recording
from turnout.dashboards.cli import APP
from turnout.service.core.config import parse_config


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("whatif-page") / "turnout.duckdb"
    log = recording(Workload(n=600), parse_config(base_raw(), {}))
    write_archive(path, [envelope(r) for r in log])
    return path


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, archive: Path) -> Iterator[AppTest]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TURNOUT_DUCKDB_PATH", str(archive))
    for key in ("TURNOUT_DASHBOARD_CONFIG", "TURNOUT_DASHBOARD_RULES"):
        monkeypatch.delenv(key, raising=False)
    app = AppTest.from_file(str(APP), default_timeout=60)
    app.run()
    app.switch_page("screens/whatif.py").run()
    assert not app.exception
    yield app
    os.environ.pop("TURNOUT_DUCKDB_PATH", None)


def config_text(rpm: int, models: str = '"alpha/one", "beta/two", "gamma/three"') -> str:
    return TENANTS.format(rpm=rpm) + ROUTES.format(models=models)


def run(app: AppTest, text: str, assume: str = "") -> AppTest:
    app.text_area[0].set_value(text)
    app.text_input(key="whatif_assume").set_value(assume)
    app.button(key="whatif_run").click().run()
    assert not app.exception, app.exception[0].message
    return app


def metrics(app: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in app.metric}


def test_a_lower_rate_limit_shows_the_table_the_chart_and_each_changed_request(
    page: AppTest,
) -> None:
    run(page, config_text(rpm=40))
    shown = metrics(page)
    assert shown["Requests re-decided"] == "600"
    assert int(shown["Changed"].replace(",", "")) > 20
    assert page.get("vega_lite_chart"), "the chart of changes over time"
    table, changed = page.dataframe[0].value, page.dataframe[1].value
    limited = table[table[""] == "  rate_limited"]
    assert int(limited["what-if"].iloc[0]) > int(limited["recorded"].iloc[0])
    assert changed["why"].str.contains("reached for tenant 'acme'").any()


def test_the_recorded_config_changes_nothing(page: AppTest) -> None:
    run(page, config_text(rpm=120) + "\n[breaker]\nfailure_threshold = 3\nrecovery_timeout_s = 5"
        "\n[retry]\nmax_retries = 2\nbase_delay_ms = 50\n")  # fmt: skip
    assert metrics(page)["Changed"] == "0"
    assert any("Nothing changed" in s.value for s in page.success)


def test_a_bad_config_is_refused_with_every_problem_and_an_unseen_model_asks_for_assumptions(
    page: AppTest,
) -> None:
    run(page, "[tenants.acme]\nrequests_per_minute = -1\n[nonsense]\nx = 1\n")
    errors = " ".join(e.value for e in page.error)
    assert "The config was refused" in errors and "[nonsense]" in errors
    assert "requests_per_minute" in errors
    run(page, config_text(rpm=120, models='"delta/new", "beta/two"'))
    assert any("delta/new=latency_ms:" in e.value for e in page.error)
    run(page, config_text(rpm=120, models='"delta/new", "beta/two"'),
        assume="delta/new=latency_ms:300,900,0.05")  # fmt: skip
    assert not page.error
    table = page.dataframe[0].value
    assert "calls delta/new" in set(table[""])


def test_the_what_if_tables_and_tiles_read_whole(page: AppTest) -> None:
    run(page, config_text(rpm=40))

    problems = table_problems(page)
    assert not problems, "\n".join(problems)
    assert all(len(m.value) <= MAX_TILE_CHARS for m in page.metric), metrics(page)
