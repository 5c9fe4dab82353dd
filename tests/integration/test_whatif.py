"""What-if replay of a real router's log: router + simulator + broker + sink, then re-decide.

The must-show of `turnout replay whatif`: under the config that was in force, a
recorded run of 5,000 requests with an outage, rate limiting and a budget stop is
re-decided exactly (outcome, model, attempts and cost of every request), read
from the DuckDB archive and from the events topic itself.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from tests.integration.test_replay import sinking
from tests.integration.test_router import UNLIMITED, config, produce, running
from tests.integration.test_sink import archived, wait_for
from turnout.analytics.archive import open_reader
from turnout.analytics.replay.source import ArchiveStream, Query, from_kafka
from turnout.analytics.whatif.engine import WhatIf
from turnout.analytics.whatif.outcomes import OutcomeModel
from turnout.analytics.whatif.report import Verdict, outcome_of
from turnout.service.clock import clock
from turnout.service.core import events as ev
from turnout.service.core.config import Config
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.upstream.simulator import SimulatorOptions, parse_scenario, start_in_thread

REQUESTS = 5000
# bad/model is down for its first 2 s, then answers; every model is a little slow
SCENARIO = """
latency_ms = { median = 25, p99 = 120 }

[[rule]]
model = "bad/*"
to_s = 2
outcome = 503
retry_after_s = 0

[[rule]]
model = "*"
outcome = 500
rate = 0.02

[prices."bad/model"]
prompt = "0.000004"
completion = "0.000012"

[prices."good/model"]
prompt = "0.000001"
completion = "0.000003"
"""
ALL_TERMINALS = (
    "SELECT count(*) FROM events WHERE type IN ('turnout.request.completed', "
    "'turnout.request.failed', 'turnout.request.rejected', 'turnout.request.cancelled')"
)


def workload() -> list[tuple[bytes, bytes, None]]:
    rng = random.Random(13)
    records = []
    for i in range(REQUESTS):
        tenant = rng.choice(["acme", "globex", "initech", "hooli"])
        body: dict[str, Any] = {
            "request_id": f"w-{i:05d}", "tenant": tenant,
            "temperature": 0 if rng.random() < 0.3 else 0.7, "max_tokens": 64,
            "messages": [{"role": "user", "content": f"question {rng.randint(0, 300)}"}],
        }  # fmt: skip
        records.append((tenant.encode(), json.dumps(body).encode(), None))
    return records


def recorded_config(settings: KafkaSettings, sim: Any) -> Config:
    return config(
        settings, sim,
        routes={"general": {"models": ["bad/model", "good/model"]}},
        retry={"max_retries": 1, "base_delay_ms": 20},
        breaker={"failure_threshold": 5, "recovery_timeout_s": 1},
        tenants={
            "default": UNLIMITED,
            "acme": {**UNLIMITED, "requests_per_minute": 600, "burst": 200},  # rate limited
            "globex": {**UNLIMITED, "budget_usd_per_day": 0.05},  # stops on its budget
        },
    )  # fmt: skip


async def send_hostile(bootstrap: str, topic: str) -> None:
    """Three records no replay can read: not JSON, no headers at all, a type not UTF-8."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value, headers in [
            (b"{not json", [("ce_type", b"turnout.request.completed")]),
            (b"{}", None),
            (b"{}", [("ce_type", b"\xff")]),
        ]:
            await producer.send_and_wait(topic, value, key=b"acme", headers=headers)
    finally:
        await producer.stop()


def run(cfg: Config, records: Any) -> tuple[WhatIf, list[Verdict]]:
    changed: list[Verdict] = []
    engine = WhatIf(cfg, iter(records), OutcomeModel(), recorded_cfg=cfg, on_verdict=changed.append)
    engine.run()
    return engine, changed


async def test_the_config_in_force_reproduces_a_real_routers_decisions_on_every_request(
    kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    path = tmp_path / "turnout.duckdb"
    with start_in_thread(SimulatorOptions(scenario=parse_scenario(SCENARIO))) as sim:
        cfg = recorded_config(kafka_settings, sim)
        async with running(cfg), sinking(kafka_settings, path):
            await produce(kafka_settings.bootstrap, kafka_topics.requests, workload())
            await wait_for(lambda: archived(path, ALL_TERMINALS) >= REQUESTS, 240,
                           f"{REQUESTS} terminals archived")  # fmt: skip
        await send_hostile(kafka_settings.bootstrap, kafka_topics.events)
        (loaded,) = await from_kafka(
            kafka_settings, [Query()], instance="whatif-test", new_id=clock.new_id,
            now_ms=clock.now_ms, timeout_s=120,
        )  # fmt: skip

    con = open_reader(path)
    try:
        from_archive, changed = run(cfg, ArchiveStream(con, Query()))
    finally:
        con.close()
    outcomes = from_archive.recorded.outcomes
    # the run has what the claim is about
    assert from_archive.stats.requests == REQUESTS
    assert outcomes["rate_limited"] > 100 and outcomes["budget_exceeded"] > 50
    assert outcomes["cached"] + outcomes["coalesced"] > 50 and outcomes["ok"] > 2000
    assert from_archive.recorded.breaker_open_ms["bad/model"] > 0
    assert from_archive.recorded.fallbacks["bad/model"] > 0 and from_archive.recorded.retries > 0
    assert any(isinstance(r.data, ev.PricesUpdated) for r in loaded.events)
    # ...and every request of it comes out as recorded
    assert [(v.request_id, outcome_of(v.recorded), outcome_of(v.whatif), v.reason)
            for v in changed] == []  # fmt: skip
    assert from_archive.stats.calls_modelled == 0
    assert from_archive.recorded.as_json() == from_archive.whatif.as_json()

    assert loaded.unreadable == 3  # each counted, none read: the headerless one too
    from_topic, changed_topic = run(cfg, loaded.events)  # the topic itself says the same
    assert changed_topic == [] and from_topic.stats.requests == REQUESTS
    assert from_topic.whatif.as_json() == from_archive.whatif.as_json()
