"""A broker restart mid-run. Apache Kafka keeps its data: the fault suite's `broker_kill`
round (tests/faults) shows nothing lost or doubled. Tansu keeps nothing: the router must
notice the lost log, say so, and serve again with its topics made as they must be."""

from __future__ import annotations

import asyncio

import msgspec

from service.health import _details
from service.kafka.local import free_port
from service.kafka.settings import KafkaSettings
from service.kafka.tansu import TansuBroker
from service.kafka.topics import ensure_topics, existing_topics, topic_specs
from service.runtime.router import BrokerHistoryLost
from service.upstream.simulator import SimulatorOptions, start_in_thread
from tests.integration.test_router import collect, config, produce, request, running, until


async def test_a_router_on_a_restarted_tansu_says_the_history_is_lost_and_serves_again() -> None:
    port = free_port()
    settings = KafkaSettings.from_env().replace(
        bootstrap=f"127.0.0.1:{port}", topic_prefix="lost", group_id="lost-router",
        session_timeout_ms=6_000, heartbeat_interval_ms=1_000, fetch_max_wait_ms=20,
    )  # fmt: skip
    topics = settings.topics
    expected = {t.name: t.partitions for t in topic_specs(settings)}
    broker = TansuBroker(port).start()
    try:
        await ensure_topics(settings)
        await asyncio.sleep(2.0)  # Tansu answers UnknownError to produces just after a create
        with start_in_thread(SimulatorOptions()) as sim:
            cfg = config(settings, sim)
            async with running(cfg, "first") as first:
                await produce(
                    settings.bootstrap, topics.requests, [(b"acme", request("before"), None)]
                )
                before = await collect(settings.bootstrap, topics.responses, 1, 30)
                assert first.history_lost is None

                broker.kill()  # memory-only: every topic, record and offset is gone
                broker = TansuBroker(port).start()
                await until(lambda: first.history_lost is not None, 40)
                details = _details(first)
                # its own consumer auto-created the requests topic with Tansu's 4 partitions
                # meanwhile, so it stops rather than serve a wrong layout...
                await until(lambda: first.fatal is not None, 20)
            # ...and its restart (a supervisor's job) makes the topics right, then serves
            async with running(cfg, "restarted"):
                present = await existing_topics(settings)
                await asyncio.sleep(2.0)  # made again just now: Tansu settles first
                await produce(
                    settings.bootstrap, topics.requests, [(b"acme", request("after"), None)]
                )
                after = await collect(settings.bootstrap, topics.responses, 1, 60)
    finally:
        broker.stop()

    assert [msgspec.json.decode(r.value)["request_id"] for r in before] == ["before"]
    lost = details["broker_history_lost"]
    assert set(lost["missing_topics"] + lost["wrong_topics"]) == set(expected)
    assert isinstance(first.fatal, BrokerHistoryLost)
    assert {t: present.get(t) for t in expected} == expected  # made again, as they must be
    assert [msgspec.json.decode(r.value)["status"] for r in after] == ["ok"]
