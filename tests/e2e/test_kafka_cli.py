"""`turnout broker` and `turnout topics ensure` as a user runs them: real processes.

Each test runs the command line in a subprocess and checks what a user sees:
the output, the one-line errors and the exit codes; and that a stopped or
orphaned broker leaves no process and no open port behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from aiokafka.structs import TopicPartition

from turnout.service.kafka.local import free_port, port_is_open
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.kafka.topics import ensure_topic, existing_topics

REPO = Path(__file__).resolve().parents[2]


def turnout(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "turnout", *args],
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
    assert first.stdout.splitlines()[:5] == [
        f"created  {prefix}.requests    12 partitions",
        f"created  {prefix}.events      12 partitions",
        f"created  {prefix}.responses   12 partitions",
        f"created  {prefix}.dlq          3 partitions",
        f"created  {prefix}.snapshots    1 partition",
    ]
    assert (second.returncode, second.stderr) == (0, "")
    assert second.stdout.count("exists ") == 5
    assert second.stdout.splitlines()[-1] == (
        f"Nothing to do: all 5 topics exist on {kafka_settings.bootstrap}."
    )


async def test_topics_ensure_reports_a_partition_count_it_cannot_fix_with_exit_1(
    kafka_settings: KafkaSettings,
):
    await ensure_topic(kafka_settings, kafka_settings.topics.dlq, 5)  # Turnout wants 3
    env = {
        "TURNOUT_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
        "TURNOUT_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
    }
    result = await asyncio.to_thread(run, "topics", "ensure", env=env)

    assert result.returncode == 1
    assert [kafka_settings.topics.dlq, "5", "partitions"] in [
        line.split()[1:] for line in result.stdout.splitlines()
    ]
    assert (
        f"error: topic {kafka_settings.topics.dlq} has 5 partitions, Turnout expects 3"
        in result.stderr
    )


def test_topics_ensure_without_a_broker_fails_with_one_line():
    bootstrap = f"127.0.0.1:{free_port()}"
    result = run("topics", "ensure", env={"TURNOUT_KAFKA_BOOTSTRAP": bootstrap})

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"turnout: error: cannot reach Kafka at {bootstrap}: start one with `turnout broker` "
        "or set TURNOUT_KAFKA_BOOTSTRAP\n"
    )


def kafka_jvms(data: Path) -> list[int]:
    """Pids of the JVMs that run a broker on `data`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"kafka.Kafka" in cmdline and any(str(data).encode() in arg for arg in cmdline):
            pids.append(int(proc.name))
    return [pid for pid in pids if alive(pid)]


def start_broker(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    return turnout("broker", "--port", str(port), *args, env=env), port


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_kafka_broker_serves_topics_and_a_signal_stops_the_jvm(
    stop_signal: signal.Signals, tmp_path: Path
):
    data = tmp_path / "kafka"
    proc, port = start_broker("--data", str(data), "--engine", "kafka")
    with proc:
        try:
            out = read_until(proc, "export TURNOUT_KAFKA_BOOTSTRAP", timeout_s=60)
            topics = await existing_topics(KafkaSettings(bootstrap=f"127.0.0.1:{port}"))
            assert len(kafka_jvms(data)) == 1
        finally:
            proc.send_signal(stop_signal)
        code = proc.wait(timeout=40)

    assert f"Kafka broker ready at 127.0.0.1:{port} (Apache Kafka 4.1.1, data in {data})" in out
    assert f"export TURNOUT_KAFKA_BOOTSTRAP=127.0.0.1:{port}" in out
    assert topics == {
        "turnout.requests": 12,
        "turnout.events": 12,
        "turnout.responses": 12,
        "turnout.dlq": 3,
        "turnout.snapshots": 1,
    }
    assert code == 0
    assert not port_is_open("127.0.0.1", port)
    assert kafka_jvms(data) == []


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_tansu_broker_serves_topics_and_stops_on_a_signal(stop_signal: signal.Signals):
    proc, port = start_broker("--engine", "tansu")
    with proc:
        try:
            out = read_until(proc, "export TURNOUT_KAFKA_BOOTSTRAP")
            topics = await existing_topics(KafkaSettings(bootstrap=f"127.0.0.1:{port}"))
        finally:
            proc.send_signal(stop_signal)
        code = proc.wait(timeout=10)

    assert f"Kafka broker ready at 127.0.0.1:{port} (embedded Tansu, memory-only" in out
    assert len(topics) == 5 and code == 0
    assert not port_is_open("127.0.0.1", port)


async def produce_and_commit(bootstrap: str, count: int) -> None:
    """`count` keyed records with a plain client; a group reads them all and commits."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sends = [
            await producer.send("turnout.requests", f"r{i}".encode(), key=f"k{i % 40}".encode())
            for i in range(count)
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        "turnout.requests", bootstrap_servers=bootstrap, group_id="durable",
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    try:
        seen = 0
        while seen < count:
            batch = await consumer.getmany(timeout_ms=1000)
            seen += sum(len(records) for records in batch.values())
        await consumer.commit()
    finally:
        await consumer.stop()


async def read_back(bootstrap: str, *, offsets_kept: bool) -> tuple[list[bytes], int]:
    """Every record of turnout.requests, and the sum of group `durable`'s committed offsets.

    A restarted broker loads __consumer_offsets in the background; until it has, OffsetFetch
    answers COORDINATOR_LOAD_IN_PROGRESS at the top level, which aiokafka's admin client turns
    into an empty answer. With `offsets_kept`, an empty answer is asked again for up to 20 s.
    """
    partitions = [TopicPartition("turnout.requests", p) for p in range(12)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(partitions)
        values: list[bytes] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=1000)
            values += [r.value for records in batch.values() for r in records]
    finally:
        await consumer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for _ in range(200):  # a fresh broker creates __consumer_offsets on first use
            try:
                committed = await admin.list_consumer_group_offsets("durable")
                if committed or not offsets_kept:
                    break
            except GroupCoordinatorNotAvailableError:
                pass
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    return values, sum(meta.offset for meta in committed.values())


@contextlib.contextmanager
def running_broker(*args: str) -> Iterator[str]:
    """`turnout broker ARGS` on a free port until the block ends (then SIGTERM, exit 0)."""
    proc, port = start_broker(*args)
    with proc:
        try:
            read_until(proc, "export TURNOUT_KAFKA_BOOTSTRAP", timeout_s=60)
            yield f"127.0.0.1:{port}"
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=40)
    assert code == 0


async def test_a_restarted_kafka_broker_keeps_records_topics_and_offsets_and_fresh_wipes_them(
    tmp_path: Path,
):
    data = str(tmp_path / "kafka")

    with running_broker("--data", data) as bootstrap:
        await produce_and_commit(bootstrap, 1000)
    with running_broker("--data", data) as bootstrap:
        topics = await existing_topics(KafkaSettings(bootstrap=bootstrap))
        values, committed = await read_back(bootstrap, offsets_kept=True)
    with running_broker("--data", data, "--fresh") as bootstrap:
        fresh_values, fresh_committed = await read_back(bootstrap, offsets_kept=False)

    assert {n: c for n, c in topics.items() if n.startswith("turnout.")} == {
        "turnout.requests": 12,
        "turnout.events": 12,
        "turnout.responses": 12,
        "turnout.dlq": 3,
        "turnout.snapshots": 1,
    }
    assert sorted(values) == sorted(f"r{i}".encode() for i in range(1000))
    assert committed == 1000
    assert (fresh_values, fresh_committed) == ([], 0)


async def test_kcat_produces_to_and_consumes_from_the_kafka_broker(
    kafka_engine: str, kafka_settings: KafkaSettings
):
    """Debian's kcat (librdkafka 2.0) cannot even talk to Tansu; Apache Kafka serves it."""
    assert shutil.which("kcat"), "kcat is missing: `make test` installs it (apt-get install kcat)"
    if kafka_engine == "tansu":
        pytest.fail("this check needs Apache Kafka (Java >= 17), and the suite runs on Tansu")
    topic = f"{kafka_settings.topic_prefix}.kcat"
    await ensure_topic(kafka_settings, topic, 1)
    lines = "".join(f"line {i}\n" for i in range(50))
    produced = await asyncio.to_thread(
        subprocess.run,
        ["kcat", "-b", kafka_settings.bootstrap, "-t", topic, "-P"],
        input=lines, text=True, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    consumed = await asyncio.to_thread(
        subprocess.run,
        ["kcat", "-b", kafka_settings.bootstrap, "-t", topic, "-C", "-o", "beginning", "-e", "-q"],
        text=True, capture_output=True, timeout=30, check=False,
    )  # fmt: skip

    assert produced.returncode == 0, produced.stderr
    assert (consumed.returncode, consumed.stdout) == (0, lines)


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


def test_asking_for_kafka_without_java_fails_with_one_line_and_auto_falls_back_to_tansu(
    tmp_path: Path,
):
    no_java = {"JAVA_HOME": str(tmp_path / "no-java")}
    asked = run("broker", "--engine", "kafka", "--prepare", env=no_java)
    auto = run("broker", "--prepare", env=no_java)

    assert asked.returncode == 1
    assert asked.stderr.startswith("turnout: error: Apache Kafka needs Java >= 17 and none was")
    assert asked.stderr.count("\n") == 1
    assert auto.returncode == 0
    assert "warning: running Tansu, not Apache Kafka: no Java found" in auto.stderr


def test_a_data_dir_that_is_not_the_brokers_is_never_used_or_wiped(tmp_path: Path):
    (tmp_path / "precious.txt").write_text("keep me")
    result = run(
        "broker", "--engine", "kafka", "--port", "0", "--data", str(tmp_path), "--fresh", env={}
    )

    assert result.returncode == 1
    assert "it was not made by `turnout broker`" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("engine", ["kafka", "tansu"])
def test_the_broker_dies_with_a_killed_parent(engine: str, tmp_path: Path):
    script = (
        "from turnout.service.kafka.broker import local_broker\n"
        f"b = local_broker({engine!r}, data_dir={str(tmp_path / 'kafka')!r}).start()\n"
        "print(b.pid, b.port, flush=True)\n"
        "import time; time.sleep(120)\n"
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
    deadline = time.monotonic() + 10
    while (alive(pid) or port_is_open("127.0.0.1", port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    assert not port_is_open("127.0.0.1", port)
