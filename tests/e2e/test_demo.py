"""`turnout demo` as a user runs it: one command, every part, Ctrl-C, nothing left behind.

The demo runs as a subprocess in a temporary directory (its data in
`data/demo/` there) on free ports. The test reads what a user would look at:
the printed lines, the dashboard URL, the archive through `turnout sql`; then
it presses Ctrl-C (SIGINT) and checks, by the pids the demo recorded in
`data/demo/pids.json` and /proc alone, that no process survives.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from turnout.service.cli import build_parser
from turnout.service.kafka.broker import free_port

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    drop = ("OPENROUTER_API_KEY", "TURNOUT_KAFKA_BOOTSTRAP", "TURNOUT_DUCKDB_PATH",
            "TURNOUT_UPSTREAM_BASE_URL", "TURNOUT_KAFKA_TOPIC_PREFIX")  # fmt: skip
    return {k: v for k, v in os.environ.items() if k not in drop}


def _has_command(name: str) -> bool:
    sub = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    return name in (sub.choices or {})


class Output:
    """A child's stdout, collected line by line in the background."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.text = ""
        self._lines: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                self._lines.put(line)
        self._lines.put("")  # end of output

    def until(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while text not in self.text:
            try:
                self.text += self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout_s} s in:\n{self.text}") from None
        return self.text

    def rest(self) -> str:
        """Everything, once the process has closed its output."""
        self._thread.join(timeout=10)
        while not self._lines.empty():
            self.text += self._lines.get()
        return self.text


def _running(pid: int, start: int) -> bool:
    """Process `pid` with start time `start` (field 22 of /proc/PID/stat) runs, not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]) == start and fields[0] not in ("Z", "X")


def _survivors(pids_file: Path) -> list[dict[str, object]]:
    doc = json.loads(pids_file.read_text())
    return [p for p in doc["processes"] if _running(int(p["pid"]), int(p["start"]))]


def _sql(cwd: Path, query: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "turnout", "sql", query, "--format", "json",
         "--duckdb", "data/demo/turnout.duckdb"],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:  # no snapshot yet: nothing to see so far
        return []
    rows: list[dict[str, object]] = json.loads(done.stdout or "[]")
    return rows


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    pids = tmp_path / "data" / "demo" / "pids.json"
    if pids.exists():  # a failed test must not leave the demo's processes behind either
        for p in _survivors(pids):
            os.kill(int(p["pid"]), signal.SIGKILL)  # type: ignore[call-overload]


def test_demo_starts_everything_fills_the_archive_and_ctrl_c_leaves_no_process(
    demo_dir: Path,
) -> None:
    kafka, dashboard = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "turnout", "demo", "--duration", "85",
         "--kafka-port", str(kafka), "--dashboard-port", str(dashboard)],
        cwd=demo_dir, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = Output(proc)
    try:
        shown = out.until("turnout demo: ready", 75)
        assert f"TURNOUT_KAFKA_BOOTSTRAP=127.0.0.1:{kafka}" in shown
        assert 'submit "hello" --wait' in shown
        for part in ("broker", "simulator", "router-1", "router-2", "sink", "alerts", "traffic"):
            assert f"data/demo/logs/{part}.log" in shown, part
        if _has_command("dashboard"):
            assert f"http://127.0.0.1:{dashboard}" in shown
            with urllib.request.urlopen(f"http://127.0.0.1:{dashboard}/", timeout=10) as page:
                assert page.status == 200

        outcomes: dict[object, object] = {}
        alerts: list[dict[str, object]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = _sql(demo_dir, "SELECT outcome, count(*) AS n FROM requests GROUP BY outcome")
            outcomes = {r["outcome"]: r["n"] for r in rows}
            alerts = _sql(demo_dir, "SELECT rule, state FROM alerts WHERE state = 'fired'")
            if outcomes.get("completed") and outcomes.get("rejected") and alerts:
                break
            time.sleep(3)
        assert outcomes.get("completed"), outcomes
        assert outcomes.get("rejected"), f"no rate-limited or over-budget request: {outcomes}"
        assert alerts, "no alert fired within a minute of traffic"

        pids_file = demo_dir / "data" / "demo" / "pids.json"
        recorded = json.loads(pids_file.read_text())["processes"]
        assert len(recorded) >= 8  # 7 parts + the broker (JVM or Tansu) below `turnout broker`
        children = [p for p in recorded if p["child"]]
        assert len(children) >= 7
        assert all(_running(int(p["pid"]), int(p["start"])) for p in children)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        code = proc.wait(timeout=60)
    text = out.rest()
    assert code == 0, text
    assert "none left behind" in text, text
    assert _survivors(demo_dir / "data" / "demo" / "pids.json") == []


def test_a_part_that_fails_to_start_is_named_with_its_log_and_nothing_is_left(
    demo_dir: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "turnout", "demo", "--no-dashboard",
             "--kafka-port", str(free_port()), "--sim-port", str(port)],
            cwd=demo_dir, env=_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "turnout: error: simulator exited while starting (exit code 1)" in done.stderr
    assert "data/demo/logs/simulator.log" in done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr  # the log's last line
    pids = demo_dir / "data" / "demo" / "pids.json"
    names = {p["name"] for p in json.loads(pids.read_text())["processes"]}
    assert {"broker", "simulator"} <= names
    assert _survivors(pids) == []
