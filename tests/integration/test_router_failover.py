"""Two routers in one group; one is SIGKILLed mid-stream; every request gets one answer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError

from tests.integration.test_router import (
    collect,
    collect_until_quiet,
    config,
    produce,
    request,
    running,
    until,
)
from turnout.service.core import events as ev
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.kafka.topics import admin_client
from turnout.service.runtime.router import Router, StateDiverged, home_partition
from turnout.service.upstream.simulator import SimulatorOptions, parse_scenario, start_in_thread
from turnout.service.upstream.simulator.server import RunningSimulator
from turnout.service.wire import cloudevents as ce

REPO = Path(__file__).resolve().parents[2]
SERVING = "serving partitions"


def start_router(
    name: str,
    settings: KafkaSettings,
    base_url: str,
    log: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    env = (
        os.environ
        | {
            "TURNOUT_KAFKA_BOOTSTRAP": settings.bootstrap,
            "TURNOUT_KAFKA_TOPIC_PREFIX": settings.topic_prefix,
            "TURNOUT_KAFKA_GROUP_ID": settings.group_id,
            "TURNOUT_UPSTREAM_BASE_URL": base_url,
        }
        | (env or {})
    )
    with log.open("ab") as err:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "turnout", "router", "--health-port", "0", "--instance", name],
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
    short = {"TURNOUT_KAFKA_SESSION_TIMEOUT_MS": "6000"}  # b never comes back: a takes over
    with start_in_thread(SimulatorOptions(scenario=parse_scenario("latency_ms = 40\n"))) as sim:
        a = start_router("a", kafka_settings, sim.base_url, log_a, short)  # when b's session
        b = None  # expires
        try:
            await asyncio.to_thread(wait_for_line, log_a, SERVING)
            b = start_router("b", kafka_settings, sim.base_url, log_b, short)
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
async def test_a_router_killed_and_restarted_under_its_name_takes_its_place_at_once(
    kafka_engine: str, kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    """A SIGKILLed router never leaves its group. Restarted under the same `--instance`
    (systemd, a StatefulSet, the fault suite's supervisor), it removes its dead
    predecessor as it starts, so the rebalance its join starts does not wait the dead
    member's whole session (120 s here) with every partition of the group unserved."""
    if kafka_engine == "tansu":
        pytest.fail("this needs Apache Kafka's DescribeGroups")
    long = {"TURNOUT_KAFKA_SESSION_TIMEOUT_MS": "120000",
            "TURNOUT_KAFKA_REBALANCE_TIMEOUT_MS": "120000"}  # fmt: skip
    tenants = [f"tenant-{i}" for i in range(24)]  # spread over every partition
    ids = [f"again-{i}" for i in range(48)]
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    with start_in_thread(SimulatorOptions()) as sim:
        a = start_router("a", kafka_settings, sim.base_url, log_a, long)
        b = None
        try:
            await asyncio.to_thread(wait_for_line, log_a, SERVING)
            b = start_router("b", kafka_settings, sim.base_url, log_b, long)
            await asyncio.to_thread(wait_for_line, log_a, SERVING, 2)
            await asyncio.to_thread(wait_for_line, log_b, SERVING)
            b.send_signal(signal.SIGKILL)
            b.wait(10)
            b = start_router("b", kafka_settings, sim.base_url, log_b, long)
            # both serve again long before the dead member's session could have expired
            await asyncio.to_thread(wait_for_line, log_b, SERVING, 2, 60)
            await asyncio.to_thread(wait_for_line, log_a, SERVING, 3, 60)
            records = [(tenants[i % 24].encode(), request(rid, tenants[i % 24]), None)
                       for i, rid in enumerate(ids)]  # fmt: skip
            await produce(kafka_settings.bootstrap, kafka_topics.requests, records)
            answers = await collect(kafka_settings.bootstrap, kafka_topics.responses, len(ids), 60)
        finally:
            for proc in (a, b):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    try:
                        await asyncio.to_thread(proc.wait, 30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    assert "removed 1 member(s)" in log_b.read_text()
    assert sorted(r.key.decode() for r in answers) == sorted(ids)


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


async def _chat_calls(sim: RunningSimulator) -> int:
    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"{sim.url}/_sim/stats")).json()
    return int(sum(stats["by_model"].values()))


async def test_a_router_that_dies_between_a_response_and_its_terminal_event_answers_once(
    kafka_engine: str, kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    """The two writes of an answer (the response, then the terminal event that records it)
    are not atomic. Here every terminal event fails after its response was delivered, so
    the first router stops (its state no longer matches the log) with its requests
    accepted, answered and not ended in the log. The next owner finds their responses on
    the reply topic and records their terminal events: no second upstream call, no second
    answer, the budget charged once."""
    if kafka_engine == "tansu":
        pytest.fail("this needs Apache Kafka's offsets_for_times and end offsets")
    ids = [f"die-{i}" for i in range(6)]
    with start_in_thread(SimulatorOptions()) as sim:
        cfg = config(kafka_settings, sim)
        async with running(cfg, "first") as first:
            real_publish = first._publish

            async def publish(events: Any, *args: Any, **kwargs: Any) -> None:
                if any(isinstance(e, ev.RequestCompleted) for e in events):
                    raise KafkaError("injected: the events producer failed")
                await real_publish(events, *args, **kwargs)

            first._publish = publish  # type: ignore[method-assign]
            records = [(b"acme", request(rid), None) for rid in ids]
            await produce(kafka_settings.bootstrap, kafka_topics.requests, records)
            await asyncio.wait_for(first._stop.wait(), 30)  # type: ignore[union-attr]
        assert isinstance(first.fatal, StateDiverged)
        delivered = await collect(kafka_settings.bootstrap, kafka_topics.responses, 1, 30)
        async with running(cfg, "next") as nxt:
            await until(lambda: not nxt.state.inflight and not nxt.offsets.in_progress(), 30)
            spent = nxt.state.budgets["acme"].spent
        answers = await collect_until_quiet(kafka_settings.bootstrap, kafka_topics.responses)
        calls = await _chat_calls(sim)
    events = await collect_until_quiet(kafka_settings.bootstrap, kafka_topics.events)
    decoded = [ce.decode(r.key, r.value, r.headers) for r in events]
    terminals = Counter(e.data.request_id for e in decoded if e.type == ev.RequestCompleted.TYPE)
    charged = sum(e.data.amount_micros for e in decoded if e.type == ev.BudgetCharged.TYPE)
    costs = {a.key.decode(): msgspec.json.decode(a.value)["cost_usd"] for a in answers}

    assert delivered  # the first router did answer before it stopped
    assert Counter(a.key.decode() for a in answers) == Counter(ids)  # once each
    assert terminals == Counter(ids)
    assert calls == len(ids)  # none called again
    assert charged == round(sum(costs.values()) * 1_000_000) > 0
    assert set(spent.values()) == {charged}  # day, month and lifetime: charged once


async def test_a_bad_record_answered_by_a_router_that_died_before_any_commit_is_answered_once(
    kafka_engine: str, kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    """Found by the fault suite's combined round: a router dead-letters a record that names
    its request (and answers it `rejected`), then dies before the `deadlettered` event is
    written and before its partition's first commit. The next owner used to skip partitions
    with no commit when it looked for such answers, and answered the record again."""
    if kafka_engine == "tansu":
        pytest.fail("this needs Apache Kafka's offsets_for_times and end offsets")
    bad = msgspec.json.encode({"request_id": "evil-1", "tenant": "no spaces allowed",
                               "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    with start_in_thread(SimulatorOptions()) as sim:
        cfg = config(kafka_settings, sim)
        async with running(cfg, "first") as first:
            real_publish = first._publish

            async def publish(events: Any, *args: Any, **kwargs: Any) -> None:
                if any(isinstance(e, ev.RequestDeadlettered) for e in events):
                    raise KafkaError("injected: the events producer failed")
                await real_publish(events, *args, **kwargs)

            first._publish = publish  # type: ignore[method-assign]
            await produce(kafka_settings.bootstrap, kafka_topics.requests, [(b"acme", bad, None)])
            await asyncio.wait_for(first._stop.wait(), 30)  # type: ignore[union-attr]
        assert isinstance(first.fatal, StateDiverged)
        tp = TopicPartition(kafka_topics.requests, home_partition("acme"))
        async with running(cfg, "next") as nxt:  # until it has handled the record again
            await until(lambda: nxt.offsets.committable().get(tp, 0) >= 1, 30)
        answers = await collect_until_quiet(kafka_settings.bootstrap, kafka_topics.responses)
        dlq = await collect_until_quiet(kafka_settings.bootstrap, kafka_topics.dlq)
    assert [a.key for a in answers] == [b"evil-1"]  # answered once, by the first router
    assert len(dlq) == 1


async def test_a_rebalance_whose_rebuild_cannot_write_to_the_log_stops_the_router_loudly(
    kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    """The combined fault round's silent routers: a rebuild that failed (its markers were
    refused) left the router waiting for that rebuild for ever, its partitions served by
    nobody. Now it stops, with the reason, and a restart (its supervisor's) rebuilds."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from tests.faults.suite import _topic_dynamic_configs

    with start_in_thread(SimulatorOptions()) as sim:
        cfg = config(kafka_settings, sim)
        first = Router(cfg, instance="first")
        stop = asyncio.Event()
        task = asyncio.create_task(first.run(stop))
        await asyncio.wait_for(first.ready.wait(), 60)
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap)
        await admin.start()
        topic = kafka_topics.events
        kept = await _topic_dynamic_configs(admin, topic)
        resource = ConfigResource(
            ConfigResourceType.TOPIC, topic, kept | {"max.message.bytes": "64"}
        )
        await admin.alter_configs([resource])  # every record, a marker too, is now refused
        try:
            log = tmp_path / "second.log"
            second = start_router("second", kafka_settings, sim.base_url, log)  # a rebalance
            try:
                done, _ = await asyncio.wait({task}, timeout=90)
                assert done, "the router hung after its rebuild failed"
                task.exception()  # it may end raising what Kafka refused with; either way
                assert isinstance(first.fatal, StateDiverged)
                assert "the rebuild after a rebalance failed" in str(first.fatal)
            finally:
                second.terminate()
                second.wait(30)
        finally:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, kept)])
            await admin.close()
            stop.set()
            if not task.done():
                task.cancel()


async def test_a_router_stopped_by_a_fault_while_every_slot_is_taken_stops_at_once(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    """Found by the fault suite's combined round (555 requests lost): a router whose
    events were refused stopped itself while its serve loop waited for an in-flight slot,
    and it waited there for ever, alive (so its supervisor never restarted it) with its
    partitions served by nobody. A stopping router never waits for a slot."""
    scenario = parse_scenario("latency_ms = 20000\n")  # every call holds its slot
    with start_in_thread(SimulatorOptions(scenario=scenario)) as sim:
        cfg = config(kafka_settings, sim, batching={"max_in_flight": 2})
        router = Router(cfg, instance="full")
        stop = asyncio.Event()
        task = asyncio.create_task(router.run(stop))
        try:
            await asyncio.wait_for(router.ready.wait(), 30)
            records = [(b"acme", request(f"full-{i}"), None) for i in range(5)]
            await produce(kafka_settings.bootstrap, kafka_topics.requests, records)
            await until(lambda: router.slots.locked() and len(router.calls) == 2, 30)
            router._fail_fatally(StateDiverged("injected: the log refused an event"))
            done, _ = await asyncio.wait({task}, timeout=10)
            assert done, "the router kept waiting for a slot after it was told to stop"
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)


async def test_a_copy_from_another_client_is_answered_by_the_next_router_if_this_one_dies(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    """An SDK's retry through a second gateway (same id, that gateway's reply topic) comes
    while the request runs. The router answers the first gateway, then dies before it
    answers the copy. The copy's record is not committed until its answer is sent, so
    the next router gets it again and answers it from the log, without a second upstream
    call. It used to be committed with the request's record, and the second gateway
    waited out its timeout."""
    first_topic = f"{kafka_topics.requests}.gw-a"
    second_topic = f"{kafka_topics.requests}.gw-b"
    async with admin_client(kafka_settings) as admin:
        await admin.create_topics([NewTopic(first_topic, 1, 1), NewTopic(second_topic, 1, 1)])
    scenario = parse_scenario("latency_ms = 1500\n")
    with start_in_thread(SimulatorOptions(scenario=scenario)) as sim:
        cfg = config(kafka_settings, sim)
        async with running(cfg, "first") as first:
            first.drain_timeout_s = 1.0
            real_respond = first._respond

            async def respond(terminal: Any) -> None:
                if terminal.reply_to == second_topic:
                    await asyncio.sleep(3600)  # the router dies before this answer is sent
                await real_respond(terminal)

            first._respond = respond  # type: ignore[method-assign]
            await produce(kafka_settings.bootstrap, kafka_topics.requests,
                          [(b"acme", request("copy-1", reply_to=first_topic), None)])  # fmt: skip
            await asyncio.sleep(0.5)  # the first record is on its way upstream
            await produce(kafka_settings.bootstrap, kafka_topics.requests,
                          [(b"acme", request("copy-1", reply_to=second_topic), None)])  # fmt: skip
            (answer,) = await collect(kafka_settings.bootstrap, first_topic, 1, 30)
            await asyncio.sleep(1.5)  # commits go on meanwhile
        for task in list(first.tasks):
            task.cancel()
        assert await collect_until_quiet(kafka_settings.bootstrap, second_topic, 0.5) == []
        async with running(cfg, "next"):
            (copy,) = await collect(kafka_settings.bootstrap, second_topic, 1, 30)
        calls = await _chat_calls(sim)
    assert json.loads(copy.value) == json.loads(answer.value)
    assert json.loads(copy.value)["request_id"] == "copy-1"
    assert calls == 1
