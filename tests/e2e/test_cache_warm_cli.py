"""`turnout cache warm FILE` as a user runs it, against a router in this test process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.test_router import config, of_type, read_events, running, sim_calls
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.upstream.simulator import SimulatorOptions, start_in_thread

REPO = Path(__file__).resolve().parents[2]


async def warm(settings: KafkaSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TURNOUT_KAFKA_BOOTSTRAP": settings.bootstrap,
           "TURNOUT_KAFKA_TOPIC_PREFIX": settings.topic_prefix}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout", "cache", "warm", *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


def lines(*prompts: str, tenant: str = "acme") -> str:
    return "\n".join(
        json.dumps(
            {
                "tenant": tenant,
                "messages": [{"role": "user", "content": p}],
                "max_tokens": 16,
                "temperature": 0.7,
            }
        )
        for p in prompts
    )


async def test_warming_stores_then_hits_and_reports_each(
    kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    file = tmp_path / "warm.jsonl"
    file.write_text(lines("alpha", "beta", "gamma") + "\n\n")
    with start_in_thread(SimulatorOptions()) as sim:
        async with running(config(kafka_settings, sim)):
            first = await warm(kafka_settings, str(file))
            calls = sim_calls(sim)
            second = await warm(kafka_settings, str(file))
            again = sim_calls(sim)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert calls == 3 and again == calls  # the second run cost nothing
    assert totals(first.stdout) == ["3", "0", "3", "3", "0"]  # requests hits misses stored failed
    assert totals(second.stdout) == ["3", "3", "0", "0", "0"]
    events = await read_events(kafka_settings.bootstrap, kafka_topics.events,
                               lambda es: len(of_type(es, "cache.warmed")) >= 2)  # fmt: skip
    warmed = [e.data for e in of_type(events, "cache.warmed")]
    assert [(w.tenant, w.requests, w.hits, w.stored) for w in warmed] == [
        ("acme", 3, 0, 3),
        ("acme", 3, 3, 0),
    ]


def totals(stdout: str) -> list[str]:
    """The `all` row of the summary table."""
    row = next(line for line in stdout.splitlines() if line.strip("│┃ ").startswith("all"))
    return [cell.strip() for cell in row.strip().strip("│").split("│")][1:]


async def test_unreadable_lines_are_named_and_exit_1(
    kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    file = tmp_path / "warm.jsonl"
    file.write_text("not json\n" + json.dumps({"messages": []}) + "\n")
    done = await warm(kafka_settings, str(file))
    assert done.returncode == 1
    assert "line 1: not JSON" in done.stderr and "no request to send" in done.stderr
