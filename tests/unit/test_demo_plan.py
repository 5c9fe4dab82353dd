"""`turnout demo`'s plan and files: real commands, consistent files, honest progress lines."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from turnout.analytics.alerts.rules import load_rules
from turnout.service.cli import build_parser
from turnout.service.demo import (
    DEMO_FILES,
    ArchiveView,
    DemoPaths,
    Plan,
    Ports,
    child_env,
    fresh_data_dir,
    pick_port,
    plan_children,
    progress_lines,
)
from turnout.service.errors import TurnoutError
from turnout.service.runtime.config import load_config
from turnout.service.traffic import DEFAULT_MIX
from turnout.service.upstream.simulator.cli import load_scenario

PORTS = Ports(kafka=9092, simulator=8089, routers=(8080, 8081), dashboard=8501)
PATHS = DemoPaths(data=Path("data/demo"))
DASHBOARD_FLAGS = {"--port", "--duckdb", "--config", "--rules"}


def names(plan: Plan) -> list[str]:
    return [c.name for c in plan.children]


def test_every_part_runs_a_real_turnout_command_with_real_options() -> None:
    plan = plan_children(PORTS, PATHS, openrouter=False, rate=5, dashboard_flags=DASHBOARD_FLAGS)
    parser = build_parser()
    for child in plan.children:
        args = parser.parse_args(list(child.argv))  # exits (fails the test) on a bad option
        assert args.command == child.argv[0]


def test_parts_start_in_stages_broker_first_traffic_last() -> None:
    plan = plan_children(PORTS, PATHS, openrouter=False, rate=5, dashboard_flags=DASHBOARD_FLAGS)
    assert names(plan) == ["broker", "simulator", "simulator-2", "router-1", "router-2", "sink",
                           "gateway", "alerts", "dashboard", "traffic"]  # fmt: skip
    stages = [c.stage for c in plan.children]
    assert stages == sorted(stages)
    stage = {c.name: c.stage for c in plan.children}
    assert stage["broker"] < stage["simulator"] < stage["router-1"] == stage["router-2"]
    assert stage["simulator-2"] == stage["simulator"]
    assert stage["router-1"] < stage["alerts"] < stage["traffic"]


def test_two_routers_with_their_own_health_ports_and_instance_names() -> None:
    plan = plan_children(PORTS, PATHS, openrouter=False, rate=5, dashboard_flags=None)
    routers = [c for c in plan.children if c.name.startswith("router")]
    assert [c.ready_url for c in routers] == ["http://127.0.0.1:8080/readyz",
                                              "http://127.0.0.1:8081/readyz"]  # fmt: skip
    instances = {c.argv[c.argv.index("--instance") + 1] for c in routers}
    assert len(instances) == 2


def test_the_dashboard_is_started_only_when_this_version_has_one() -> None:
    plan = plan_children(PORTS, PATHS, openrouter=False, rate=5, dashboard_flags=None)
    assert "dashboard" not in names(plan)
    plan = plan_children(PORTS, PATHS, openrouter=False, rate=5, dashboard_flags={"--port"})
    (dash,) = [c for c in plan.children if c.name == "dashboard"]
    assert dash.argv == ("dashboard", "--port", "8501")  # no option it does not know


def test_openrouter_mode_runs_no_simulator_and_caps_the_traffic() -> None:
    plan = plan_children(PORTS, PATHS, openrouter=True, rate=0.2, dashboard_flags=None)
    assert "simulator" not in names(plan) and "simulator-2" not in names(plan)
    (traffic,) = [c for c in plan.children if c.name == "traffic"]
    assert traffic.argv[traffic.argv.index("--rate") + 1] == "0.2"
    assert traffic.argv[traffic.argv.index("--max-tokens") + 1] == "16"


def test_children_find_kafka_the_archive_and_the_upstream_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TURNOUT_UPSTREAM_BASE_URL", "https://my.proxy/api/v1")
    sim = child_env(PORTS, PATHS, openrouter=False)
    assert sim["TURNOUT_KAFKA_BOOTSTRAP"] == "127.0.0.1:9092"
    assert sim["TURNOUT_DUCKDB_PATH"] == str(PATHS.archive)
    assert sim["TURNOUT_UPSTREAM_BASE_URL"] == "http://127.0.0.1:8089/api/v1"
    assert sim["TURNOUT_PROVIDERS_BACKUP_BASE_URL"] == "http://127.0.0.1:8090/api/v1"
    assert child_env(PORTS, PATHS, openrouter=True)["TURNOUT_UPSTREAM_BASE_URL"] == (
        "https://my.proxy/api/v1"  # a user's own upstream is kept
    )


def test_a_taken_default_port_is_replaced_and_said_but_a_given_one_is_kept() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        port, note = pick_port(busy, None, what="Kafka")
        assert port != busy and note == f"port {busy} is taken: Kafka uses {port} instead"
        assert pick_port(busy, busy, what="Kafka") == (busy, None)
        any_port, note = pick_port(busy, 0, what="Kafka")  # 0 asks for a free port
        assert any_port not in (0, busy) and note is None


def test_the_data_directory_is_fresh_each_run_but_a_foreign_one_is_left_alone(
    tmp_path: Path,
) -> None:
    data = tmp_path / "demo"
    fresh_data_dir(data)
    (data / "turnout.duckdb").write_text("old run")
    fresh_data_dir(data)
    assert sorted(p.name for p in data.iterdir()) == [".turnout-demo", "logs"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(TurnoutError, match="was not made by `turnout demo`"):
        fresh_data_dir(mine)
    assert (mine / "thesis.tex").read_text() == "precious"


def test_the_demo_files_are_valid_and_agree_with_the_traffic() -> None:
    cfg = load_config(DEMO_FILES / "turnout.toml", env={})
    for mix in DEFAULT_MIX:  # an unknown task type would be dead-lettered, not routed
        assert set(mix.task_types) <= set(cfg.routes), mix.tenant
    assert {c.strategy for c in cfg.routes.values()} >= {"priority", "weighted"}
    initech, penny = cfg.tenant("initech"), cfg.tenant("penny")
    assert initech.requests_per_minute is not None and initech.requests_per_minute <= 30
    assert penny.budget_usd_per_day is not None and penny.budget_usd_per_day < 0.05
    scenario = load_scenario(str(DEMO_FILES / "scenario.toml"))
    outage = scenario.rules[0]
    assert outage.model == cfg.routes["general"].models[0] and outage.outcome == 503
    assert (outage.from_s, outage.to_s) == (20, 50)  # as the demo's table says
    assert outage.to_s - outage.from_s >= cfg.breaker.recovery_timeout_s
    rules = load_rules(DEMO_FILES / "alerts.toml")
    assert {r.name for r in rules} >= {"breaker_open", "rate_limited", "budget_near_limit"}
    assert all(r.every_ms <= 10_000 and r.for_ms <= 15_000 for r in rules)  # within a minute


def test_progress_shows_traffic_by_status_and_the_alerts_with_their_labels() -> None:
    stats = {"sent": 10, "answered": 9, "status": {"ok": 7, "rejected": 2},
             "codes": {"rate_limited": 2}, "cached": 3}  # fmt: skip
    archive = ArchiveView(events=1234, alerts=[
        ("breaker_open", '{"model":"openai/gpt-4o-mini"}', "fired"),
        ("rate_limited", '{"tenant":"initech"}', "resolved"),
    ])  # fmt: skip
    assert progress_lines(stats, archive, 75.0) == [
        "[1:15] traffic: 10 sent, 9 answered: ok 7, rejected 2 (rate_limited 2); 3 from cache",
        "        archive: 1,234 events; alerts: breaker_open{model=openai/gpt-4o-mini} firing, "
        "rate_limited{tenant=initech} resolved",
    ]
    assert progress_lines(None, ArchiveView(), 3.0) == [
        "[0:03] traffic: starting",
        "        archive: waiting for the sink's first snapshot",
    ]
