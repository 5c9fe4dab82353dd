"""The library client against a real router and simulator on the test's Kafka."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.test_router import config, running, simulator
from turnout.service.client import AsyncTurnout, Turnout, build_request
from turnout.service.errors import TurnoutError
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.kafka.topics import existing_topics
from turnout.service.upstream.simulator.server import RunningSimulator

__all__ = ["simulator"]  # the fixture, re-exported for pytest


async def test_route_returns_an_ok_response_with_usage_on_the_clients_reply_topic(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    cfg = config(kafka_settings, simulator)
    async with running(cfg), AsyncTurnout(kafka_settings) as client:
        doc = await client.route("hello", tenant="acme", max_tokens=16, timeout_s=30)
        topics = await existing_topics(kafka_settings)
    assert doc["status"] == "ok"
    assert doc["tenant"] == "acme"
    assert doc["usage"]["total_tokens"] > 0
    assert doc["response"]["choices"][0]["message"]["content"]
    assert client.reply_topic == f"{kafka_settings.topic_prefix}.replies.{client.client_id}"
    assert topics[client.reply_topic] == 1


async def test_concurrent_calls_through_one_client_each_get_their_own_response(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    ids = [f"c-{i}" for i in range(20)]
    cfg = config(kafka_settings, simulator)
    async with running(cfg), AsyncTurnout(kafka_settings) as client:
        docs = await asyncio.gather(*(
            client.route(f"question {rid}", tenant=["a", "b", "c"][i % 3], request_id=rid,
                         timeout_s=60)
            for i, rid in enumerate(ids)
        ))  # fmt: skip
    assert [d["request_id"] for d in docs] == ids
    assert all(d["status"] == "ok" for d in docs)


async def test_the_sync_client_routes_from_its_own_thread(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    async with running(config(kafka_settings, simulator)):

        def call() -> dict:
            with Turnout(kafka_settings) as client:
                return client.route(
                    [{"role": "user", "content": "hi"}], tenant="sync", timeout_s=30
                )

        doc = await asyncio.to_thread(call)
    assert doc["status"] == "ok" and doc["tenant"] == "sync"


async def test_a_pinned_model_answers(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    cfg = config(kafka_settings, simulator, routes={"general": {"models": ["x/first", "x/second"]}})
    async with running(cfg), AsyncTurnout(kafka_settings) as client:
        doc = await client.route("hi", model="x/pinned", timeout_s=30)
    assert doc["status"] == "ok"
    assert doc["model"] == "x/pinned"


async def test_submit_then_wait_finds_a_response_that_came_first(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    cfg = config(kafka_settings, simulator)
    async with running(cfg), AsyncTurnout(kafka_settings) as client:
        rid = await client.submit("later", tenant="acme")
        await asyncio.sleep(1.0)
        doc = await client.wait(rid, timeout_s=30)
    assert doc["request_id"] == rid and doc["status"] == "ok"


async def test_no_router_means_a_quick_timeout_error(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    async with AsyncTurnout(kafka_settings) as client:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="no response to request"):
            await client.route("anyone?", timeout_s=0.5)
        assert time.monotonic() - started < 3


async def test_a_missing_intake_topic_is_refused_not_auto_created(
    kafka_settings: KafkaSettings,
) -> None:
    with pytest.raises(TurnoutError, match="topics ensure"):
        async with AsyncTurnout(kafka_settings):
            pass
    assert kafka_settings.topics.requests not in await existing_topics(kafka_settings)


async def test_close_can_delete_the_reply_topic(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    client = AsyncTurnout(kafka_settings)
    await client.start()
    await client.close(delete_reply_topic=True)
    # Kafka answers DeleteTopics before every broker's metadata drops the topic
    for _ in range(100):
        if client.reply_topic not in await existing_topics(kafka_settings):
            break
        await asyncio.sleep(0.1)
    assert client.reply_topic not in await existing_topics(kafka_settings)


def test_a_request_document_has_the_contracts_shape() -> None:
    body = build_request("hi", request_id="r1", tenant="t", model="m/x", reply_to="p.replies.c",
                         max_tokens=5, temperature=None)  # fmt: skip
    assert body == {"request_id": "r1", "tenant": "t", "task_type": "general", "model": "m/x",
                    "reply_to": "p.replies.c", "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
