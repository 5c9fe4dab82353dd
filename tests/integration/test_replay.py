"""`turnout replay` on a real log: router + simulator + broker + sink, then the CLI."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import duckdb
import httpx
from rich.console import Console

from tests.integration.test_router import collect, config, produce, request, running
from tests.integration.test_sink import FAST, archived, wait_for
from turnout.analytics.archive import snapshot_path
from turnout.analytics.sink import Reporter, run_sink
from turnout.service.core.config import Config
from turnout.service.health import start_health
from turnout.service.kafka.broker import free_port
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.upstream.simulator import SimulatorOptions, parse_scenario, start_in_thread

REPO = Path(__file__).resolve().parents[2]
BAD_MODEL_FAILS = '[[rule]]\nmodel = "bad/*"\noutcome = 503\nretry_after_s = 0\n'
ROUTING = {"request", "route", "attempt", "retry", "breaker", "fallback"}  # not cache, budget
TERMINALS = (
    "SELECT count(*) FROM events WHERE type IN "
    "('turnout.request.completed', 'turnout.request.failed', 'turnout.request.rejected')"
)


async def replay(settings: KafkaSettings, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, while this test's router keeps running."""
    env = {**os.environ, "TURNOUT_KAFKA_BOOTSTRAP": settings.bootstrap,
           "TURNOUT_KAFKA_TOPIC_PREFIX": settings.topic_prefix}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout", "replay", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


@asynccontextmanager
async def sinking(settings: KafkaSettings, path: Path) -> AsyncIterator[None]:
    stop = asyncio.Event()
    reporter = Reporter(Console(file=io.StringIO()), interval_s=60)
    task = asyncio.create_task(run_sink(settings, path, stop=stop, options=FAST, reporter=reporter))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def archived_terminals(path: Path, count: int) -> None:
    await wait_for(lambda: archived(path, TERMINALS) >= count, 30, f"{count} terminals archived")


def failing_config(settings: KafkaSettings, sim: Any, **extra: Any) -> Config:
    return config(
        settings, sim,
        routes={"general": {"models": ["bad/model", "good/model"]},
                "direct": {"models": ["good/model"]}},
        **extra,
    )  # fmt: skip


async def test_the_trail_of_a_retried_request_that_fell_back_shows_every_step_in_order(
    kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    path = tmp_path / "turnout.duckdb"
    with start_in_thread(SimulatorOptions(scenario=parse_scenario(BAD_MODEL_FAILS))) as sim:
        cfg = failing_config(
            kafka_settings, sim,
            retry={"max_retries": 1, "base_delay_ms": 20},
            breaker={"failure_threshold": 2, "recovery_timeout_s": 60},
        )  # fmt: skip
        async with running(cfg), sinking(kafka_settings, path):
            for rid in ("first", "second"):
                await produce(kafka_settings.bootstrap, kafka_topics.requests,
                              [(b"acme", request(rid), None)])  # fmt: skip
                await collect(kafka_settings.bootstrap, kafka_topics.responses, 1)
            await archived_terminals(path, 2)
        first = await replay(kafka_settings, "trail", "first", "--duckdb", str(path),
                             "--format", "json")  # fmt: skip
        from_topic = await replay(kafka_settings, "trail", "first", "--source", "kafka",
                                  "--format", "json")  # fmt: skip
        table = await replay(kafka_settings, "trail", "first", "--duckdb", str(path))
        second = await replay(kafka_settings, "trail", "second", "--duckdb", str(path))
        state = await replay(kafka_settings, "state", "--at", "now", "--duckdb", str(path),
                             "--format", "json")  # fmt: skip

    assert first.returncode == 0, first.stderr
    steps = [(s["type"].removeprefix("turnout."), s["model"], s["global"])
             for s in json.loads(first.stdout) if s["type"].split(".")[1] in ROUTING]  # fmt: skip
    assert steps == [
        ("request.accepted", None, False),
        ("route.decided", None, False),
        ("attempt.started", "bad/model", False),
        ("attempt.failed", "bad/model", False),
        ("retry.scheduled", "bad/model", False),
        ("attempt.started", "bad/model", False),
        ("attempt.failed", "bad/model", False),
        ("breaker.opened", "bad/model", True),
        ("fallback.taken", "good/model", False),
        ("attempt.started", "good/model", False),
        ("attempt.succeeded", "good/model", False),
        ("request.completed", "good/model", False),
    ]
    assert from_topic.returncode == 0, from_topic.stderr
    assert [s["id"] for s in json.loads(from_topic.stdout)] == [
        s["id"] for s in json.loads(first.stdout)
    ]  # the topic itself tells the same story as the archive
    assert "⚙ breaker.opened" in table.stdout and "bad/model → good/model" in table.stdout
    assert "2 consecutive failures" in table.stdout and "(HTTP 503)" in table.stdout
    assert "skipped bad/model (breaker_open)" in second.stdout
    assert json.loads(state.stdout)["state"]["breakers"]["bad/model"]["status"] == "open"


async def test_verify_passes_after_a_mixed_workload_and_fails_when_the_archive_is_tampered(
    kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    path, saved = tmp_path / "turnout.duckdb", tmp_path / "state.json"
    tenants = ["acme", "globex", "initech", "umbrella", "hooli"]
    records = [
        (t.encode(), request(f"{t}-{i}", t, task_type=("general", "direct")[i % 2]), None)
        for i in range(8)
        for t in tenants
    ]
    with start_in_thread(SimulatorOptions(scenario=parse_scenario(BAD_MODEL_FAILS))) as sim:
        cfg = failing_config(
            kafka_settings, sim,
            retry={"max_retries": 0}, breaker={"failure_threshold": 3, "recovery_timeout_s": 60},
        )  # fmt: skip
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        async with running(cfg) as router, sinking(kafka_settings, path):
            health = await start_health(router, port)
            try:
                await produce(kafka_settings.bootstrap, kafka_topics.requests, records)
                await collect(kafka_settings.bootstrap, kafka_topics.responses, len(records))
                await archived_terminals(path, len(records))
                from_archive = await replay(kafka_settings, "verify", "--health", url,
                                            "--duckdb", str(path))  # fmt: skip
                from_topic = await replay(kafka_settings, "verify", "--health", url,
                                          "--source", "kafka")  # fmt: skip
                async with httpx.AsyncClient() as http:
                    saved.write_bytes((await http.get(f"{url}/state")).content)
            finally:
                await health.cleanup()

    assert from_archive.returncode == 0, from_archive.stdout + from_archive.stderr
    assert from_topic.returncode == 0, from_topic.stdout + from_topic.stderr
    assert f"{len(records)} finished, 0 in flight" in from_archive.stdout
    live = json.loads(saved.read_bytes())
    assert live["state"]["breakers"]["bad/model"]["status"] == "open"

    original = tmp_path / "original.duckdb"
    shutil.copy(snapshot_path(path), original)
    for tamper, where in [
        ("DELETE FROM events WHERE id = (SELECT min(id) FROM events "
         "WHERE type = 'turnout.request.completed')", "finished_outcomes.by_outcome.completed"),
        ("DELETE FROM events WHERE type = 'turnout.breaker.opened'", "breakers.bad/model.status"),
    ]:  # fmt: skip
        shutil.copy(original, snapshot_path(path))
        with duckdb.connect(str(snapshot_path(path))) as con:
            con.execute(tamper)
        done = await replay(kafka_settings, "verify", "--snapshot", str(saved),
                            "--duckdb", str(path))  # fmt: skip
        assert done.returncode == 1, done.stdout
        assert where in done.stdout and "differ from the log" in done.stderr
