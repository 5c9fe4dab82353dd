"""The gateway when Kafka goes away: a quick 503 and a /readyz that says so, not a hang.

Its own Apache Kafka broker (killed and started again on the same port and data), so
the session's broker stays up for every other test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from tests.integration.test_streaming import KEY, PROMPT, SCENARIO, gateway_config
from turnout.service.gateway import start_in_thread
from turnout.service.kafka.apache import ApacheKafkaBroker
from turnout.service.kafka.consumer import Reader, TopicPartition
from turnout.service.kafka.local import free_port
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.kafka.topics import ensure_topics
from turnout.service.upstream.simulator import SimulatorOptions, parse_scenario
from turnout.service.upstream.simulator import start_in_thread as start_simulator
from turnout.service.upstream.simulator.server import RunningSimulator


@pytest.fixture
def simulator() -> Iterator[RunningSimulator]:
    with start_simulator(SimulatorOptions(scenario=parse_scenario(SCENARIO))) as sim:
        yield sim


async def ready(http: httpx.AsyncClient, url: str) -> int:
    return (await http.get(f"{url}/readyz")).status_code


async def intake_records(settings: KafkaSettings) -> list[dict[str, object]]:
    """Every record on the intake topic (requests and cancels), in order per partition."""
    out: list[dict[str, object]] = []
    topic = settings.topics.requests
    async with Reader(settings, [TopicPartition(topic, p) for p in range(12)]) as reader:
        quiet = 0
        while quiet < 5:
            got = await reader.getmany(timeout_ms=200)
            quiet = 0 if got else quiet + 1
            for records in got.values():
                for r in sorted(records, key=lambda r: r.offset):
                    out.append(json.loads(r.value))
    return out


async def test_with_kafka_down_a_request_is_a_quick_503_and_readyz_says_not_ready(
    tmp_path: Path,
    simulator: RunningSimulator,
    kafka_engine: str,
) -> None:
    """Before: both a plain and a streamed request hung past 300 s (the produce's ack had
    no deadline) and /readyz answered 200 throughout; once Kafka came back, both were
    run for clients long gone."""
    if kafka_engine == "tansu":
        pytest.fail("this test runs its own Apache Kafka (Java >= 17), and the suite has none")
    port, data = free_port(), tmp_path / "kafka"
    broker = ApacheKafkaBroker(port, data_dir=data).start()
    settings = KafkaSettings(bootstrap=broker.bootstrap, topic_prefix="gwf")
    cfg = gateway_config(settings, simulator)
    cfg = msgspec.structs.replace(cfg, gateway=msgspec.structs.replace(cfg.gateway, timeout_s=3))
    try:
        await ensure_topics(settings)
        gateway = await asyncio.to_thread(start_in_thread, cfg, port=0)
        try:
            async with httpx.AsyncClient(timeout=60) as http:
                root = gateway.url
                assert await ready(http, root) == 200
                broker.kill()
                assert await ready(http, root) == 503  # the probe asks the broker
                headers = {"authorization": f"Bearer {KEY}"}  # no key: given up, cancelled
                body = {"model": "turnout/general", "messages": PROMPT}
                for stream in (False, True):
                    started = time.monotonic()
                    url = f"{gateway.base_url}/chat/completions"
                    sent = {**body, "stream": stream}
                    answer = await http.post(url, json=sent, headers=headers)
                    assert answer.status_code == 503, answer.text
                    assert answer.json()["error"]["code"] == "not_ready"
                    assert time.monotonic() - started < 10
                broker = ApacheKafkaBroker(port, data_dir=data).start()
                for _ in range(60):
                    if await ready(http, root) == 200:
                        break
                    await asyncio.sleep(0.5)
                assert await ready(http, root) == 200
        finally:
            await asyncio.to_thread(gateway.stop)
        # whatever still reached Kafka once it was back has its cancel behind it (one
        # tenant: one partition, in order)
        sent = await intake_records(settings)
        asked = [(i, doc["request_id"]) for i, doc in enumerate(sent) if "messages" in doc]
        assert all(any(doc.get("cancel") == rid for doc in sent[i + 1 :]) for i, rid in asked)
    finally:
        broker.stop()
