"""Two routers in one group; one is SIGKILLed mid-stream; every request gets one answer."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from service.kafka.settings import KafkaSettings, Topics
from service.upstream.simulator import SimulatorOptions, parse_scenario, start_in_thread
from tests.integration.test_router import (
    collect,
    collect_until_quiet,
    config,
    produce,
    request,
    running,
)

REPO = Path(__file__).resolve().parents[2]
SERVING = "serving partitions"


def start_router(
    name: str, settings: KafkaSettings, base_url: str, log: Path
) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "TURNOUT_KAFKA_BOOTSTRAP": settings.bootstrap,
        "TURNOUT_KAFKA_TOPIC_PREFIX": settings.topic_prefix,
        "TURNOUT_KAFKA_GROUP_ID": settings.group_id,
        "TURNOUT_UPSTREAM_BASE_URL": base_url,
    }
    with log.open("wb") as err:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "service", "router", "--health-port", "0", "--instance", name],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip


def wait_for_line(log: Path, text: str, count: int = 1, timeout_s: float = 40) -> None:
    deadline = time.monotonic() + timeout_s
    while log.read_text(errors="replace").count(text) < count:
        assert time.monotonic() < deadline, f"{log.name}: no {text!r} x{count}"
        time.sleep(0.1)


@pytest.mark.slow
async def test_killing_one_of_two_routers_loses_and_duplicates_nothing(
    kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    tenants = [f"tenant-{i}" for i in range(24)]  # spread over every partition
    ids = [f"fo-{i}" for i in range(300)]
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    with start_in_thread(SimulatorOptions(scenario=parse_scenario("latency_ms = 40\n"))) as sim:
        a = start_router("a", kafka_settings, sim.base_url, log_a)
        b = None
        try:
            await asyncio.to_thread(wait_for_line, log_a, SERVING)
            b = start_router("b", kafka_settings, sim.base_url, log_b)
            await asyncio.to_thread(wait_for_line, log_b, SERVING)
            await asyncio.to_thread(wait_for_line, log_a, SERVING, 2)
            for n, chunk in enumerate(range(0, len(ids), 20)):
                batch = list(enumerate(ids[chunk : chunk + 20], start=chunk))
                records = [(tenants[i % 24].encode(), request(rid, tenants[i % 24]), None)
                           for i, rid in batch]  # fmt: skip
                await produce(kafka_settings.bootstrap, kafka_topics.requests, records)
                if n == 5:
                    b.send_signal(signal.SIGKILL)  # mid-stream, with work in flight
                await asyncio.sleep(0.1)
            answers = await collect(kafka_settings.bootstrap, kafka_topics.responses, len(ids), 90)
            await asyncio.sleep(2)  # anything duplicated would have arrived by now
            answers = await collect(
                kafka_settings.bootstrap, kafka_topics.responses, len(answers), 30
            )
        finally:
            for proc in (a, b):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    await asyncio.to_thread(proc.wait, 30)
    per_id = Counter(r.key.decode() for r in answers)
    assert set(per_id) == set(ids)
    assert [i for i, n in per_id.items() if n > 1] == []
    assert a.returncode == 0  # SIGTERM: drained, committed and left the group


@pytest.mark.slow
async def test_a_rebalance_during_a_call_longer_than_the_drain_answers_once(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    """The old owner's call outlives its 10 s revoke drain; the new owner resumes the same
    requests. Fencing: only the owner publishes, so each request gets one answer."""
    tenants = [f"fence-{i}" for i in range(24)]  # spread over every partition
    ids = [f"fence-{i}" for i in range(24)]
    scenario = parse_scenario("latency_ms = 13000\n")
    with start_in_thread(SimulatorOptions(scenario=scenario)) as sim:
        cfg = config(kafka_settings, sim)
        async with running(cfg, "old-owner") as old:
            records = [
                (t.encode(), request(rid, t), None) for t, rid in zip(tenants, ids, strict=True)
            ]
            await produce(kafka_settings.bootstrap, kafka_topics.requests, records)
            await asyncio.sleep(1.0)  # every call is on its way upstream
            async with running(cfg, "new-owner"):
                answers = await collect(kafka_settings.bootstrap, kafka_topics.responses,
                                        len(ids), 90)  # fmt: skip
                await asyncio.sleep(3)  # a second answer would have come by now
                answers = await collect_until_quiet(
                    kafka_settings.bootstrap, kafka_topics.responses
                )
        fenced = old.fenced
    per_id = Counter(r.key.decode() for r in answers)
    assert set(per_id) == set(ids)
    assert [i for i, n in per_id.items() if n > 1] == []
    # the calls outlived the drain: their late results were dropped, not published (the
    # partitions' owner after the rebalance resumed those requests from the log)
    assert fenced > 0
