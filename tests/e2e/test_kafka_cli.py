"""`turnout broker` and `turnout topics ensure` as a user runs them: real processes.

Each test runs the command line in a subprocess and checks what a user sees:
the output, the one-line errors and the exit codes; and that a stopped or
orphaned broker leaves no process and no open port behind.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from service.kafka.broker import free_port, port_is_open
from service.kafka.settings import KafkaSettings
from service.kafka.topics import existing_topics

REPO = Path(__file__).resolve().parents[2]


def turnout(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "service", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    with turnout(*args, env=env) as proc:
        out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def read_until(proc: subprocess.Popen[str], text: str, timeout_s: float = 20.0) -> str:
    """Stdout of `proc` up to the first line containing `text`."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in proc.stdout or ()], daemon=True
    ).start()
    seen = ""
    deadline = time.monotonic() + timeout_s
    while text not in seen:
        try:
            seen += lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {text!r} in output: {seen!r}") from None
    return seen


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie is dead, only not yet reaped


def test_topics_ensure_creates_then_says_nothing_to_do(kafka_settings: KafkaSettings):
    env = {
        "TURNOUT_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
        "TURNOUT_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
    }
    first = run("topics", "ensure", env=env)
    second = run("topics", "ensure", env=env)

    prefix = kafka_settings.topic_prefix
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[:4] == [
        f"created  {prefix}.requests    12 partitions",
        f"created  {prefix}.events      12 partitions",
        f"created  {prefix}.responses   12 partitions",
        f"created  {prefix}.dlq          3 partitions",
    ]
    assert (second.returncode, second.stderr) == (0, "")
    assert second.stdout.count("exists ") == 4
    assert second.stdout.splitlines()[-1] == (
        f"Nothing to do: all 4 topics exist on {kafka_settings.bootstrap}."
    )


def test_topics_ensure_without_a_broker_fails_with_one_line():
    bootstrap = f"127.0.0.1:{free_port()}"
    result = run("topics", "ensure", env={"TURNOUT_KAFKA_BOOTSTRAP": bootstrap})

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"turnout: error: cannot reach Kafka at {bootstrap}: start one with `turnout broker` "
        "or set TURNOUT_KAFKA_BOOTSTRAP\n"
    )


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_broker_command_serves_topics_and_stops_on_a_signal(stop_signal: signal.Signals):
    port = free_port()
    with turnout("broker", "--port", str(port)) as proc:
        try:
            out = read_until(proc, "export TURNOUT_KAFKA_BOOTSTRAP")
            topics = await existing_topics(KafkaSettings(bootstrap=f"127.0.0.1:{port}"))
        finally:
            proc.send_signal(stop_signal)
        code = proc.wait(timeout=10)

    assert (
        f"Kafka broker ready at 127.0.0.1:{port} "
        "(embedded Tansu, memory-only: data is lost when it stops)"
    ) in out
    assert f"export TURNOUT_KAFKA_BOOTSTRAP=127.0.0.1:{port}" in out
    assert topics == {
        "turnout.requests": 12,
        "turnout.events": 12,
        "turnout.responses": 12,
        "turnout.dlq": 3,
    }
    assert code == 0
    assert not port_is_open("127.0.0.1", port)


def test_broker_command_on_a_taken_port_fails_with_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("broker", "--port", str(port), env={})

    assert result.returncode == 1
    assert result.stderr == (
        f"turnout: error: port {port} on 127.0.0.1 is already in use: stop what listens "
        "there or pick another port with --port\n"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_broker_dies_with_a_killed_parent():
    script = (
        "from service.kafka.broker import EmbeddedBroker\n"
        "b = EmbeddedBroker().start()\n"
        "print(b.pid, b.port, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    ) as parent:
        assert parent.stdout is not None
        pid, port = map(int, parent.stdout.readline().split())
        assert alive(pid) and port_is_open("127.0.0.1", port)
        parent.kill()

    # A killed multi-threaded process shows as a zombie leader while its other
    # threads are still being torn down, so wait for the socket to close too.
    deadline = time.monotonic() + 5
    while (alive(pid) or port_is_open("127.0.0.1", port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    assert not port_is_open("127.0.0.1", port)
