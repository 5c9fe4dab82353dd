"""`turnout replay whatif` as a user runs it, on a DuckDB archive written by the archive code.

The archive holds what a single router writes for a workload (the router's own
core in virtual time: `turnout.analytics.whatif.virtual`), so the command reads a log
with the shape, ids and order a real one has.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_replay_cli import replay, write_archive
from tests.unit.test_whatif import Workload, base_raw, recording
from turnout.analytics.replay.source import Recorded
from turnout.service.core import events as ev
from turnout.service.core.config import parse_config
from turnout.service.wire.cloudevents import Envelope, wrap

TENANTS = """
[tenants.acme]
requests_per_minute = {rpm}
burst = 30
budget_usd_per_day = 0.1
"""
ROUTES = """
[routes.general]
models = [{models}]
"""
REST = """
[breaker]
failure_threshold = 3
recovery_timeout_s = 5

[retry]
max_retries = 2
base_delay_ms = 50
"""


def toml(path: Path, *, rpm: int = 120, models: str = "alpha/one, beta/two, gamma/three") -> str:
    quoted = ", ".join(f'"{m.strip()}"' for m in models.split(","))
    path.write_text(TENANTS.format(rpm=rpm) + ROUTES.format(models=quoted) + REST)
    return str(path)


def envelope(rec: Recorded) -> Envelope:
    return wrap(rec.data, id=rec.id, time_ms=rec.time_ms, source=rec.source)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Recorded]]:
    path = tmp_path_factory.mktemp("whatif") / "turnout.duckdb"
    log = recording(Workload(n=1200), parse_config(base_raw(), {}))
    write_archive(path, [envelope(r) for r in log])
    return path, log


def whatif(archive: Path, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    return replay("whatif", "--config", config, "--duckdb", str(archive), *args)


def test_the_config_in_force_changes_nothing_and_says_so(
    archive: tuple[Path, list[Recorded]], tmp_path: Path
) -> None:
    path, _ = archive
    same = toml(tmp_path / "same.toml")
    done = whatif(path, same, "--format", "json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["requests"] == 1200 and doc["changed"] == 0
    assert doc["recorded"] == doc["whatif"]
    assert doc["outcomes_modelled_calls"] == 0 and doc["outcomes_recorded_calls"] > 500
    table = whatif(path, same)
    assert table.returncode == 0, table.stderr
    assert "1,200 requests arrived" in table.stdout and "0 changed" in table.stdout
    assert "Recorded vs what-if" in table.stdout and "breaker open alpha/one" in table.stdout


def test_a_lower_rate_limit_lists_each_newly_refused_request_with_its_reason(
    archive: tuple[Path, list[Recorded]], tmp_path: Path
) -> None:
    path, _ = archive
    done = whatif(path, toml(tmp_path / "low.toml", rpm=40), "--diff", "--format", "json",
                  "--tenant", "acme")  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    refused = [d for d in doc["diff"] if d["whatif"]["outcome"] == "rate_limited"]
    assert len(refused) == doc["whatif"]["outcomes"]["rate_limited"] - doc["recorded"][
        "outcomes"
    ].get("rate_limited", 0)
    assert any("requests_per_minute = 40 reached" in d["reason"] for d in refused)
    assert all("reached for tenant 'acme'" in d["reason"] for d in refused)
    assert {d["tenant"] for d in doc["diff"]} == {"acme"}
    table = whatif(path, toml(tmp_path / "low.toml", rpm=40), "--diff", "--tenant", "acme")
    assert "Changed requests" in table.stdout and refused[0]["request_id"] in table.stdout


def test_a_model_the_recording_never_called_needs_an_assumption(
    archive: tuple[Path, list[Recorded]], tmp_path: Path
) -> None:
    path, _ = archive
    new = toml(tmp_path / "new.toml", models="delta/new, beta/two")
    refused = whatif(path, new)
    assert refused.returncode == 1
    assert "delta/new" in refused.stderr and "--assume delta/new=latency_ms:" in refused.stderr
    assumed = whatif(path, new, "--assume", "delta/new=latency_ms:300,900,0.05",
                     "--format", "json")  # fmt: skip
    assert assumed.returncode == 0, assumed.stderr
    doc = json.loads(assumed.stdout)
    assert doc["whatif"]["calls"]["delta/new"] > 100 and doc["outcomes_modelled_calls"] > 100
    bad = whatif(path, new, "--assume", "delta/new=fast")
    assert bad.returncode == 2 and "MODEL=latency_ms:P50,P99,ERROR_RATE" in bad.stderr
    # an assumption for a model the recording called is not silently dropped
    recorded = whatif(path, new, "--assume", "delta/new=latency_ms:300,900,0.05",
                      "--assume", "beta/two=latency_ms:10,20,0")  # fmt: skip
    assert recorded.returncode == 0, recorded.stderr
    assert "--assume beta/two: the recording has calls of beta/two" in recorded.stderr
    assert "delta/new:" not in recorded.stderr


def test_the_trail_shows_a_requests_recorded_and_what_if_decisions(
    archive: tuple[Path, list[Recorded]], tmp_path: Path
) -> None:
    path, log = archive
    fell_back = next(r.data.request_id for r in log if isinstance(r.data, ev.FallbackTaken))
    done = whatif(path, toml(tmp_path / "x.toml", models="beta/two, gamma/three"),
                  "--trail", fell_back)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if fell_back in line or "│" in line]
    recorded = [line for line in lines if "recorded" in line and "fallback" in line]
    whatif_lines = [line for line in lines if "what-if" in line and "attempt.started" in line]
    assert recorded, done.stdout
    assert whatif_lines and all("alpha/one" not in line for line in whatif_lines)
    unknown = whatif(path, toml(tmp_path / "x.toml"), "--trail", "no-such-request")
    assert unknown.returncode == 1  # as `turnout replay trail` for an unknown id
    assert "request no-such-request did not arrive in the window" in unknown.stderr


def test_a_window_with_no_requests_is_an_error_that_says_so(
    archive: tuple[Path, list[Recorded]], tmp_path: Path
) -> None:
    path, _ = archive
    done = whatif(path, toml(tmp_path / "w.toml"), "--from", "2001-01-01", "--to", "2001-01-02")
    assert done.returncode == 1 and "no requests arrived in the window" in done.stderr
    backwards = whatif(path, toml(tmp_path / "w.toml"), "--from", "now", "--to", "-1h")
    assert backwards.returncode == 2 and "--from is after --to" in backwards.stderr
