"""A broker restart mid-run. Apache Kafka keeps its data: the fault suite's `broker_kill`
round (tests/faults) shows nothing lost or doubled. Tansu keeps nothing: the router must
notice the lost log, say so, create its topics again and go on serving."""

from __future__ import annotations

import asyncio

import msgspec

from service.health import _details
from service.kafka.local import free_port
from service.kafka.settings import KafkaSettings
from service.kafka.tansu import TansuBroker
from service.kafka.topics import ensure_topics, existing_topics
from service.upstream.simulator import SimulatorOptions, start_in_thread
from tests.integration.test_router import collect, config, produce, request, running, until


async def test_a_router_on_a_restarted_tansu_says_the_history_is_lost_and_keeps_serving() -> None:
    port = free_port()
    settings = KafkaSettings.from_env().replace(
        bootstrap=f"127.0.0.1:{port}", topic_prefix="lost", group_id="lost-router",
        session_timeout_ms=6_000, heartbeat_interval_ms=1_000, fetch_max_wait_ms=20,
    )  # fmt: skip
    topics = settings.topics
    broker = TansuBroker(port).start()
    try:
        await ensure_topics(settings)
        with start_in_thread(SimulatorOptions()) as sim:
            async with running(config(settings, sim), "on-tansu") as router:
                await produce(
                    settings.bootstrap, topics.requests, [(b"acme", request("before"), None)]
                )
                before = await collect(settings.bootstrap, topics.responses, 1, 30)
                assert router.history_lost is None

                broker.kill()  # memory-only: every topic, record and offset is gone
                broker = TansuBroker(port).start()
                await until(lambda: router.history_lost is not None, 40)
                present = await existing_topics(settings)
                await asyncio.sleep(1.0)  # the group finds its coordinator again
                await produce(
                    settings.bootstrap, topics.requests, [(b"acme", request("after"), None)]
                )
                after = await collect(settings.bootstrap, topics.responses, 1, 60)
                details = _details(router)
    finally:
        broker.stop()

    assert [msgspec.json.decode(r.value)["request_id"] for r in before] == ["before"]
    lost = details["broker_history_lost"]
    assert set(lost["missing_topics"]) == set(topics.as_dict().values())
    assert set(topics.as_dict().values()) <= set(present)  # created again
    assert [msgspec.json.decode(r.value)["request_id"] for r in after] == ["after"]
    assert msgspec.json.decode(after[0].value)["status"] == "ok"
