"""`turnout submit` as a user runs it: a subprocess against a router in this test process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.test_router import config, running
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.upstream.simulator import SimulatorOptions, parse_scenario, start_in_thread

REPO = Path(__file__).resolve().parents[2]


async def submit(settings: KafkaSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TURNOUT_KAFKA_BOOTSTRAP": settings.bootstrap,
           "TURNOUT_KAFKA_TOPIC_PREFIX": settings.topic_prefix}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout", "submit", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def test_submit_wait_prints_an_ok_response(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    with start_in_thread(SimulatorOptions()) as sim:
        async with running(config(kafka_settings, sim)):
            done = await submit(kafka_settings, "hi", "--wait", "--tenant", "acme",
                                "--max-tokens", "8", "--timeout", "60")  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["status"] == "ok" and doc["tenant"] == "acme"
    assert doc["usage"]["total_tokens"] > 0


async def test_submit_without_wait_prints_the_request_id(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    done = await submit(kafka_settings, "hi", "--request-id", "cli-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cli-1"


async def test_a_request_every_candidate_refuses_exits_1_with_one_line(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    scenario = parse_scenario('[[rule]]\nmodel = "*"\noutcome = 400\n')
    with start_in_thread(SimulatorOptions(scenario=scenario)) as sim:
        cfg = config(kafka_settings, sim, routes={"general": {"models": ["a/one", "b/two"]}})
        async with running(cfg):
            done = await submit(kafka_settings, "hi", "--wait", "--timeout", "60")
    assert done.returncode == 1
    assert json.loads(done.stdout)["status"] == "error"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("turnout: error: request "), done.stderr


async def test_submit_wait_with_no_router_times_out_with_one_line(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    done = await submit(kafka_settings, "hi", "--wait", "--timeout", "1")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no response to request" in lines[0], done.stderr
