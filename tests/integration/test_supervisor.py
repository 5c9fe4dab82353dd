"""The demo's supervisor on real processes: start order, readiness, failures, and no orphans."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from turnout.service.procs import Child, Supervisor, is_alive, proc_info

# A child that prints "ready", then on SIGTERM writes its name to `order` and exits.
POLITE = """
import signal, sys, time
name, order = sys.argv[1], sys.argv[2]
def bye(*_):
    with open(order, "a") as fh:
        fh.write(name + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""

# A child that ignores SIGTERM.
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""

# A child that leaves a grandchild in a session of its own, which ignores SIGTERM too.
PARENT_OF_STRAY = """
import subprocess, sys, time
stray = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", stray], start_new_session=True)
print("ready", child.pid, flush=True)
while True:
    time.sleep(0.05)
"""


def supervisor(tmp_path: Path) -> Supervisor:
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    return Supervisor((sys.executable,), env=dict(os.environ), logs=logs)


def child(name: str, code: str, *args: str, **kw: object) -> Child:
    return Child(name=name, argv=("-c", code, *args), ready_text="ready", **kw)  # type: ignore[arg-type]


def test_parts_stop_in_reverse_start_order_and_none_is_left(tmp_path: Path) -> None:
    order = tmp_path / "order"
    sup = supervisor(tmp_path)
    names = ("broker", "router", "traffic")
    kids = [child(n, POLITE, n, str(order), stage=i) for i, n in enumerate(names)]
    for kid in kids:
        sup.start(kid)
        assert sup.wait_ready([kid], threading.Event()) is None
    pids = [(r.pid, r.start) for r in sup.running]
    assert sup.first_exited() is None
    assert sup.stop_all() == 3
    assert order.read_text().split() == ["traffic", "router", "broker"]
    assert not any(is_alive(pid, start) for pid, start in pids)
    assert sup.left_behind() == []


def test_a_part_that_ignores_sigterm_is_killed_after_its_stop_timeout(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    kid = child("stubborn", STUBBORN, stop_timeout_s=0.5)
    run = sup.start(kid)
    assert sup.wait_ready([kid], threading.Event()) is None
    began = time.monotonic()
    sup.stop_all()
    assert time.monotonic() - began < 5
    assert not is_alive(run.pid, run.start)


def test_a_grandchild_in_its_own_session_is_found_and_stopped_too(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    kid = child("parent", PARENT_OF_STRAY)
    run = sup.start(kid)
    assert sup.wait_ready([kid], threading.Event()) is None
    stray_pid = int(run.log.read_text().split()[1])
    stray = proc_info(stray_pid)
    assert stray is not None and stray.pgid != run.pid  # out of the child's process group
    sup.write_pids(tmp_path / "pids.json")
    recorded = {p["pid"] for p in sup.processes()}
    assert {run.pid, stray_pid} <= recorded
    sup.stop_all()
    assert not is_alive(stray_pid, stray.start)
    assert str(stray_pid) in (tmp_path / "pids.json").read_text()


def test_a_part_that_exits_while_starting_is_named_with_its_exit_code_and_log(
    tmp_path: Path,
) -> None:
    sup = supervisor(tmp_path)
    kid = child("simulator", "import sys; print('cannot listen on 127.0.0.1:8089'); sys.exit(3)")
    sup.start(kid)
    failure = sup.wait_ready([kid], threading.Event())
    assert failure is not None
    assert str(failure) == (
        f"simulator exited while starting (exit code 3); the last lines of {failure.log}:"
    )
    assert failure.tail == ("cannot listen on 127.0.0.1:8089",)
    sup.stop_all()


def test_a_part_that_never_gets_ready_fails_after_its_start_timeout(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    kid = Child(name="slow", argv=("-c", "import time; time.sleep(60)"), ready_text="ready",
                start_timeout_s=0.5)  # fmt: skip
    run = sup.start(kid)
    failure = sup.wait_ready([kid], threading.Event())
    assert failure is not None and failure.what == "was not ready within 0.5 s"
    assert failure.tail == ("(no output)",)
    sup.stop_all()
    assert not is_alive(run.pid, run.start)


def test_a_part_that_stops_while_the_demo_runs_is_reported(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    kid = child("sink", "import time; print('ready', flush=True); time.sleep(0.3)")
    sup.start(kid)
    assert sup.wait_ready([kid], threading.Event()) is None
    deadline = time.monotonic() + 10
    while (failure := sup.first_exited()) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert failure is not None and failure.what == "stopped unexpectedly (exit code 0)"
    sup.stop_all()
