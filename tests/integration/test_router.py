"""The router end to end: a plain Kafka client, the embedded broker, the simulator."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import NewTopic

from turnout.service.core.config import Config, parse_config
from turnout.service.errors import TurnoutError
from turnout.service.kafka.broker import free_port
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.kafka.topics import admin_client
from turnout.service.runtime.router import Router, home_partition
from turnout.service.upstream.simulator import SimulatorOptions, parse_scenario, start_in_thread
from turnout.service.upstream.simulator.server import RunningSimulator
from turnout.service.wire import cloudevents as ce


@pytest.fixture
def simulator() -> Iterator[RunningSimulator]:
    with start_in_thread(SimulatorOptions()) as sim:
        yield sim


UNLIMITED: dict[str, Any] = {
    "requests_per_minute": 10**9, "requests_per_hour": 10**9, "requests_per_day": 10**9,
    "burst": 10**9, "tokens_per_minute": 10**12, "budget_usd_per_day": 10.0**6,
    "budget_usd_per_month": 10.0**7,
}  # fmt: skip
"""Tenant limits no test here reaches (test_tenants.py tests the limits themselves)."""


def config(settings: KafkaSettings, sim: RunningSimulator, **extra: Any) -> Config:
    raw = {
        "kafka": {"bootstrap": settings.bootstrap, "topic_prefix": settings.topic_prefix,
                  "group_id": settings.group_id},
        "upstream": {"base_url": sim.base_url},
        "tenants": {"default": UNLIMITED},
    } | extra  # fmt: skip
    return parse_config(raw, {})


@asynccontextmanager
async def running(cfg: Config, instance: str = "r1") -> AsyncIterator[Router]:
    router = Router(cfg, instance=instance)
    stop = asyncio.Event()
    task = asyncio.create_task(router.run(stop))
    try:
        await asyncio.wait_for(router.ready.wait(), 30)
        yield router
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def request(rid: str, tenant: str = "acme", **extra: Any) -> bytes:
    body = {"request_id": rid, "tenant": tenant, "temperature": 0,
            "messages": [{"role": "user", "content": f"question {rid}"}]} | extra  # fmt: skip
    return json.dumps(body).encode()


async def produce(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes | None, bytes, int | None]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=k, partition=p) for k, v, p in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def collect(bootstrap: str, topic: str, count: int, timeout_s: float = 60) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, fetch_max_wait_ms=20)  # fmt: skip
    await consumer.start()
    out: list[Any] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(out) < count:
                batch = await consumer.getmany(timeout_ms=200)
                out.extend(r for records in batch.values() for r in records)
    finally:
        await consumer.stop()
    return out


TERMINALS = {f"turnout.request.{t}" for t in ("completed", "failed", "rejected", "deadlettered")}


async def collect_until_quiet(bootstrap: str, topic: str, quiet_s: float = 2.0) -> list[Any]:
    """Every record of `topic` once none has arrived for `quiet_s`."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, fetch_max_wait_ms=20)  # fmt: skip
    await consumer.start()
    out: list[Any] = []
    try:
        while batch := await consumer.getmany(timeout_ms=int(quiet_s * 1000)):
            out.extend(r for records in batch.values() for r in records)
    finally:
        await consumer.stop()
    return out


def sim_calls(sim: RunningSimulator) -> int:
    stats = httpx.get(f"{sim.url}/_sim/stats").json()
    return int(sum(stats["by_model"].values()))


@pytest.mark.tansu
async def test_every_request_gets_one_response_and_a_repeat_costs_no_upstream_call(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    ids = [f"req-{i}" for i in range(1000)]
    tenants = ["acme", "globex", "initech", "umbrella"]
    records = [
        (tenants[i % 4].encode(), request(rid, tenants[i % 4]), None) for i, rid in enumerate(ids)
    ]
    async with running(config(kafka_settings, simulator)):
        await produce(kafka_settings.bootstrap, kafka_topics.requests, records)
        first = await collect(kafka_settings.bootstrap, kafka_topics.responses, len(ids))
        calls = sim_calls(simulator)
        await produce(kafka_settings.bootstrap, kafka_topics.requests, records)
        both = await collect(kafka_settings.bootstrap, kafka_topics.responses, 2 * len(ids))
    bodies = [json.loads(r.value) for r in first]
    assert sorted(b["request_id"] for b in bodies) == sorted(ids)
    assert all(b["status"] == "ok" and b["usage"]["total_tokens"] > 0 for b in bodies)
    assert calls == len(ids)
    assert sim_calls(simulator) == calls  # the repeat was answered from state
    by_id: dict[str, set[bytes]] = {}
    for r in both:
        by_id.setdefault(r.key.decode(), set()).add(r.value)
    assert all(len(values) == 1 for values in by_id.values())  # the same answer twice


@pytest.mark.tansu
async def test_malformed_records_go_to_the_dlq_and_the_router_keeps_serving(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    bad = [
        (b"acme", b"not json", None),
        (b"acme", json.dumps({"messages": "hi"}).encode(), None),
        (b"acme", json.dumps({"messages": []}).encode(), None),
        (b"acme", request("unknown-task", task_type="poetry"), None),
        (
            b"acme",
            b'{"messages": [{"role": "user", "content": "' + b"x" * 1_000_001 + b'"}]}',
            None,
        ),
    ]
    async with running(config(kafka_settings, simulator)):
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_settings.bootstrap, max_request_size=2_000_000
        )
        await producer.start()
        for key, value, _ in bad:
            await producer.send_and_wait(kafka_topics.requests, value, key=key)
        await producer.stop()
        await produce(
            kafka_settings.bootstrap, kafka_topics.requests, [(b"acme", request("good-1"), None)]
        )
        dlq = await collect(kafka_settings.bootstrap, kafka_topics.dlq, len(bad))
        answers = await collect(kafka_settings.bootstrap, kafka_topics.responses, 3)
    codes = sorted(dict(r.headers)["turnout-error"].decode() for r in dlq)
    assert codes == sorted(["malformed_json", "schema_violation", "empty_messages",
                            "unknown_task_type", "record_too_large"])  # fmt: skip
    assert all(dict(r.headers)["turnout-error-detail"] for r in dlq)
    kept = {r.value for r in dlq if "turnout-error-truncated-from" not in dict(r.headers)}
    assert kept == {v for _, v, _ in bad[:4]}  # original bytes kept
    (huge,) = [r for r in dlq if "turnout-error-truncated-from" in dict(r.headers)]
    assert bad[4][1].startswith(huge.value)
    # the two that name a request (an explicit or a positional id) are also answered
    statuses = {b["request_id"]: (b["status"], b.get("error", {}).get("code"))
                for b in (json.loads(r.value) for r in answers)}  # fmt: skip
    assert statuses.pop("good-1") == ("ok", None)
    assert statuses.pop("unknown-task") == ("rejected", "invalid_request")
    ((positional, answer),) = statuses.items()
    assert positional.startswith(f"{kafka_topics.requests}-") and answer[1] == "invalid_request"


@pytest.mark.tansu
@pytest.mark.parametrize("reply_to", ["events", "dlq", "bad topic name!", "x" * 250])
async def test_a_reply_to_that_is_illegal_or_internal_is_rejected_and_the_event_log_stays_clean(
    reply_to: str, kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    internal = {"events": kafka_topics.events, "dlq": kafka_topics.dlq}
    target = internal.get(reply_to, reply_to)
    hostile = [
        (b"acme", request("hostile-1", reply_to=target), None),
        (b"acme", request("hostile-2", tenant="a" * 129), None),
        (b"acme", request("hostile-3", tenant="acme corp; drop"), None),
        # a bad tenant is checked first: its unchecked reply_to once got the rejection
        (b"acme", request("hostile-4", tenant="acme corp", reply_to=target), None),
    ]
    async with running(config(kafka_settings, simulator)):
        await produce(kafka_settings.bootstrap, kafka_topics.requests, hostile)
        await produce(kafka_settings.bootstrap, kafka_topics.requests,
                      [(b"acme", request("good-1"), None)])  # fmt: skip
        answers = await collect(kafka_settings.bootstrap, kafka_topics.responses, 5)
        dlq = await collect(kafka_settings.bootstrap, kafka_topics.dlq, 4)
        events = await collect_until_quiet(kafka_settings.bootstrap, kafka_topics.events)
    bodies = {b["request_id"]: b for b in (json.loads(r.value) for r in answers)}
    hostiles = ("hostile-1", "hostile-2", "hostile-3", "hostile-4")
    assert sorted(bodies) == ["good-1", *hostiles]
    for rid in hostiles:
        assert bodies[rid]["status"] == "rejected"
        assert bodies[rid]["error"]["code"] == "invalid_request"
    assert sorted(dict(r.headers)["turnout-error"].decode() for r in dlq) == [
        "invalid_reply_to", "invalid_tenant", "invalid_tenant", "invalid_tenant",
    ]  # fmt: skip
    # every record in the events topic is a CloudEvent: nothing was written there as a reply
    assert all(dict(r.headers).get("ce_type") for r in events)
    terminals: dict[str, list[str]] = {}
    for r in events:
        env = ce.decode(r.key, r.value, r.headers)
        if env.type in TERMINALS:
            terminals.setdefault(env.subject or "", []).append(env.type)
    for rid in hostiles:
        assert terminals[rid] == ["turnout.request.deadlettered"]
    assert terminals["good-1"] == ["turnout.request.completed"]


async def test_a_reply_topic_that_does_not_exist_is_answered_on_the_responses_topic(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """A legal `reply_to` naming no topic (auto-creation is off): its response once failed
    the request's publish after 30 s and stopped the router, and again after each
    restart, as the record came back (a poison record any client could send). Now the
    response goes to the responses topic, with a warning, and the router serves on."""
    async with running(config(kafka_settings, simulator)) as router:
        await produce(kafka_settings.bootstrap, kafka_topics.requests, [
            (b"acme", request("lost-1", reply_to=f"{kafka_topics.requests}.nobody"), None),
            (b"acme", request("fine-1"), None),
        ])  # fmt: skip
        answers = await collect(kafka_settings.bootstrap, kafka_topics.responses, 2, 20)
        await produce(kafka_settings.bootstrap, kafka_topics.requests,
                      [(b"acme", request("fine-2"), None)])  # fmt: skip
        answers = await collect(kafka_settings.bootstrap, kafka_topics.responses, 3, 20)
        assert router.fatal is None
    bodies = {b["request_id"]: b for b in (json.loads(r.value) for r in answers)}
    assert sorted(bodies) == ["fine-1", "fine-2", "lost-1"]
    assert bodies["lost-1"]["status"] == "ok"


async def test_a_reply_topic_deleted_after_it_was_used_is_no_poison_either(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """A gateway that stops deletes its reply topic; an answer due there later (its
    request was in flight) fails at the broker, after the producer's retries: it goes to
    the responses topic, and the router does not stop."""
    mine = f"{kafka_topics.requests}.gateway-1"
    async with admin_client(kafka_settings) as admin:
        await admin.create_topics([NewTopic(mine, 1, 1)])
    async with running(config(kafka_settings, simulator)) as router:
        await produce(kafka_settings.bootstrap, kafka_topics.requests,
                      [(b"acme", request("used-1", reply_to=mine), None)])  # fmt: skip
        (first,) = await collect(kafka_settings.bootstrap, mine, 1, 20)
        async with admin_client(kafka_settings) as admin:
            await admin.delete_topics([mine])
        await produce(kafka_settings.bootstrap, kafka_topics.requests,
                      [(b"acme", request("used-2", reply_to=mine), None)])  # fmt: skip
        (late,) = await collect(kafka_settings.bootstrap, kafka_topics.responses, 1, 90)
        assert router.fatal is None
    assert json.loads(first.value)["request_id"] == "used-1"
    assert json.loads(late.value)["request_id"] == "used-2"


async def test_a_request_id_another_tenant_holds_is_dead_lettered_not_answered_with_theirs(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """Tenant `rival` sends the id of tenant `acme`'s request, answered or in flight: it
    is no resend of that request (which would hand `acme`'s answer out again, to the
    `reply_to` of `acme`'s record), and it cannot run under that id; it goes to the DLQ
    with `request_id_taken`, and `acme`'s request keeps its one answer."""
    async with running(config(kafka_settings, simulator)):
        await produce(kafka_settings.bootstrap, kafka_topics.requests,
                      [(b"acme", request("taken-1"), None)])  # fmt: skip
        (first,) = await collect(kafka_settings.bootstrap, kafka_topics.responses, 1)
        calls = sim_calls(simulator)
        await produce(kafka_settings.bootstrap, kafka_topics.requests, [
            (b"rival", request("taken-1", tenant="rival"), None),
            # a broken record naming that id is dead-lettered unanswered too: its
            # rejection would have been a second answer to acme's request
            (b"rival", request("taken-1", tenant="rival", messages=[]), None),
            (b"rival", request("rival-1", tenant="rival"), None),
        ])  # fmt: skip
        dlq = await collect(kafka_settings.bootstrap, kafka_topics.dlq, 2)
        await collect(kafka_settings.bootstrap, kafka_topics.responses, 2)  # rival-1's is out
        answers = await collect_until_quiet(kafka_settings.bootstrap, kafka_topics.responses)
    codes = sorted((r.key, dict(r.headers)["turnout-error"]) for r in dlq)
    assert codes == [(b"rival", b"empty_messages"), (b"rival", b"request_id_taken")]
    bodies = [json.loads(r.value) for r in answers]
    assert sorted(b["request_id"] for b in bodies) == ["rival-1", "taken-1"]  # one each
    assert [b["tenant"] for b in bodies if b["request_id"] == "taken-1"] == ["acme"]
    assert sim_calls(simulator) == calls + 1  # rival-1 only
    assert json.loads(first.value)["status"] == "ok"


async def test_a_record_off_its_tenants_home_partition_is_forwarded_and_answered(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    wrong = (home_partition("acme") + 1) % 12
    async with running(config(kafka_settings, simulator)):
        await produce(kafka_settings.bootstrap, kafka_topics.requests,
                      [(None, request("keyless-1"), wrong)])  # fmt: skip
        (answer,) = await collect(kafka_settings.bootstrap, kafka_topics.responses, 1)
        home = await collect(kafka_settings.bootstrap, kafka_topics.requests, 2)
    assert json.loads(answer.value)["request_id"] == "keyless-1"
    assert sorted((r.partition, r.key) for r in home) == sorted(
        [(wrong, None), (home_partition("acme"), b"acme")]
    )


async def test_state_is_rebuilt_from_events_after_a_restart(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    cfg = config(kafka_settings, simulator)
    async with running(cfg, "first"):
        await produce(
            kafka_settings.bootstrap, kafka_topics.requests, [(b"acme", request("once"), None)]
        )
        await collect(kafka_settings.bootstrap, kafka_topics.responses, 1)
    calls = sim_calls(simulator)
    async with running(cfg, "second") as router:
        assert "once" in router.state.finished
        await produce(
            kafka_settings.bootstrap, kafka_topics.requests, [(b"acme", request("once"), None)]
        )
        answers = await collect(kafka_settings.bootstrap, kafka_topics.responses, 2)
    assert sim_calls(simulator) == calls
    assert answers[0].value == answers[1].value


async def read_events(bootstrap: str, topic: str, done: Any, timeout_s: float = 60) -> list[Any]:
    """Decoded events of `topic` from the beginning until `done(events)` holds."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, fetch_max_wait_ms=20)  # fmt: skip
    await consumer.start()
    out: list[Any] = []
    try:
        async with asyncio.timeout(timeout_s):
            while not done(out):
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    out.extend(ce.decode(r.key, r.value, r.headers) for r in records)
    finally:
        await consumer.stop()
    return sorted(out, key=lambda e: (e.time_ms, e.id))


def of_type(envs: list[Any], suffix: str) -> list[Any]:
    return [e for e in envs if e.type == f"turnout.{suffix}"]


async def test_a_failing_model_trips_its_breaker_traffic_falls_back_and_it_recovers(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    scenario = parse_scenario(
        '[[rule]]\nmodel = "bad/*"\nfrom_s = 0\nto_s = 3\noutcome = 503\nretry_after_s = 0\n'
    )
    with start_in_thread(SimulatorOptions(scenario=scenario)) as sim:
        cfg = config(
            kafka_settings, sim,
            routes={"general": {"models": ["bad/model", "good/model"]}},
            retry={"max_retries": 0},
            breaker={"failure_threshold": 3, "recovery_timeout_s": 1, "success_threshold": 2},
        )  # fmt: skip
        async with running(cfg):
            await asyncio.to_thread(httpx.post, f"{sim.url}/_sim/reset?restart=1")
            for i in range(40):  # one request every 100 ms, across the failure and after it
                await produce(kafka_settings.bootstrap, kafka_topics.requests,
                              [(b"acme", request(f"b{i}"), None)])  # fmt: skip
                await asyncio.sleep(0.1)
            envs = await read_events(
                kafka_settings.bootstrap, kafka_topics.events,
                lambda es: len(of_type(es, "request.completed")) == 40,
            )  # fmt: skip
    transitions = [e.type.rsplit(".", 1)[1] for e in envs if e.type.startswith("turnout.breaker.")]
    assert transitions[:3] == ["opened", "half_opened", "opened"] or transitions[:1] == ["opened"]
    assert transitions[-2:] == ["half_opened", "closed"]
    for before, after in itertools.pairwise(transitions):
        assert (before, after) in {("opened", "half_opened"), ("half_opened", "opened"),
                                   ("half_opened", "closed"), ("closed", "opened")}  # fmt: skip
    assert of_type(envs, "fallback.taken")
    skipped = [e for e in of_type(envs, "route.decided") if e.data.skipped]
    assert skipped and skipped[0].data.skipped[0].reason == "breaker_open"
    assert all(e.data.model == "good/model" for e in of_type(envs, "request.completed")[:5])
    assert of_type(envs, "request.completed")[-1].data.model == "bad/model"  # recovered


async def test_a_429_with_retry_after_is_retried_no_sooner_than_it_says(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    scenario = parse_scenario(
        '[[rule]]\nmodel = "*"\nfrom_s = 0\nto_s = 1\noutcome = 429\nretry_after_s = 3\n'
    )
    with start_in_thread(SimulatorOptions(scenario=scenario)) as sim:
        cfg = config(kafka_settings, sim, routes={"general": {"models": ["only/model"]}})
        async with running(cfg):
            await asyncio.to_thread(httpx.post, f"{sim.url}/_sim/reset?restart=1")
            await produce(kafka_settings.bootstrap, kafka_topics.requests,
                          [(b"acme", request("limited"), None)])  # fmt: skip
            envs = await read_events(
                kafka_settings.bootstrap, kafka_topics.events,
                lambda es: bool(of_type(es, "request.completed")),
            )  # fmt: skip
    started = of_type(envs, "attempt.started")
    assert [e.data.attempt for e in started] == [1, 2]
    assert of_type(envs, "retry.scheduled")[0].data.delay_ms >= 3000
    assert started[1].time_ms - started[0].time_ms >= 3000
    assert of_type(envs, "request.completed")[0].data.attempts == 2


async def test_health_endpoints_say_alive_ready_and_what_is_in_force(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    from turnout.service.health import start_health
    from turnout.service.kafka.broker import free_port

    cfg = config(kafka_settings, simulator)
    router = Router(cfg, instance="health")
    port = free_port()
    health = await start_health(router, port)
    stop = asyncio.Event()
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/livez")).status_code == 200
            not_ready = await http.get("/readyz")
            assert not_ready.status_code == 503 and not_ready.json()["status"] == "not ready"
            task = asyncio.create_task(router.run(stop))
            await asyncio.wait_for(router.ready.wait(), 30)
            assert (await http.get("/readyz")).status_code == 200
            details = (await http.get("/healthz")).json()
            stop.set()
            await asyncio.wait_for(task, 60)
    finally:
        await health.cleanup()
    assert details["partitions"] == list(range(12))
    assert details["features"]["circuit_breaker"] is True
    assert details["broker"] == kafka_settings.bootstrap
    assert details["consumer_lag"]["total"] == 0  # nothing sent: nothing behind
    assert details["rebuild"]["from_snapshot"] == {}  # a new log: folded from its start
    assert sorted(details["snapshots"]["partitions"]) == sorted(str(p) for p in range(12))
    assert len(details["config_hash"]) == 64
    assert "api_key" not in json.dumps(details).lower().replace("api_key_env", "")


async def test_a_breaker_one_router_opens_is_open_for_the_other_router_too(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    scenario = parse_scenario('[[rule]]\nmodel = "bad/*"\noutcome = 503\nretry_after_s = 0\n')
    with start_in_thread(SimulatorOptions(scenario=scenario)) as sim:
        cfg = config(
            kafka_settings, sim,
            routes={"general": {"models": ["bad/model", "good/model"]}},
            retry={"max_retries": 0},
            breaker={"failure_threshold": 3, "recovery_timeout_s": 60},
        )  # fmt: skip
        async with running(cfg, "one") as one, running(cfg, "two") as two:
            await asyncio.wait_for(one.ready.wait(), 30)  # re-ready after the second joined
            owner, other = (one, two) if one.consumer.assignment and any(
                tp.partition == home_partition("acme") for tp in one.consumer.assignment
            ) else (two, one)  # fmt: skip
            records = [(b"acme", request(f"t{i}"), None) for i in range(3)]
            await produce(kafka_settings.bootstrap, kafka_topics.requests, records)
            await collect(kafka_settings.bootstrap, kafka_topics.responses, 3)
            async with asyncio.timeout(10):  # the other router learns from the _system tail
                while other.state.breakers.get("bad/model") is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert owner.state.breakers["bad/model"].status == "open"
            assert other.state.breakers["bad/model"].status == "open"
            assert not any(
                tp.partition == home_partition("acme") for tp in other.consumer.assignment
            )


async def test_an_upstream_that_never_answers_its_price_table_does_not_hold_the_start(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    """Budgets need /models prices, but a start waits for them only a few seconds."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, read nothing, answer nothing

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    kafka = {"bootstrap": kafka_settings.bootstrap, "topic_prefix": kafka_settings.topic_prefix,
             "group_id": kafka_settings.group_id}  # fmt: skip
    upstream = {"base_url": f"http://127.0.0.1:{port}/api/v1", "timeout_s": 120}
    raw = {"kafka": kafka, "upstream": upstream}
    router = Router(parse_config(raw, {}), instance="no-prices")
    stop = asyncio.Event()
    task = asyncio.create_task(router.run(stop))
    try:
        await asyncio.wait_for(router.ready.wait(), 30)  # not the upstream's 120 s
        assert router.prices.table == {}
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_router_that_cannot_reach_kafka_says_so_and_leaves_no_client_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """All four Kafka clients are made up front: a failed start must close each one."""
    raw = {"kafka": {"bootstrap": f"127.0.0.1:{free_port()}"},
           "upstream": {"base_url": "http://127.0.0.1:9/api/v1"}}  # fmt: skip
    router = Router(parse_config(raw, {}), instance="no-kafka")

    with pytest.raises(TurnoutError, match="cannot reach Kafka"):
        await router.run(asyncio.Event())
    del router
    gc.collect()

    assert [r.getMessage() for r in caplog.records if "Unclosed" in r.getMessage()] == []


async def until(condition: Any, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 (a condition on plain state, polled)
            await asyncio.sleep(0.05)


async def test_a_failing_commit_loop_is_restarted_and_readyz_says_so_meanwhile(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """Fault injection: the broker refuses commits for a while (as during a coordinator
    move); the loop must not die silently, and readiness must say which part fails."""
    from turnout.service.errors import TurnoutError
    from turnout.service.health import start_health
    from turnout.service.kafka.broker import free_port

    router = Router(config(kafka_settings, simulator), instance="supervised")
    port = free_port()
    health = await start_health(router, port)
    stop = asyncio.Event()
    refusing = True
    real_commit = router.consumer.commit

    async def commit(offsets: Any = None) -> None:
        if refusing:
            raise TurnoutError("injected: the coordinator refuses commits")
        await real_commit(offsets)

    router.consumer.commit = commit  # type: ignore[method-assign]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            task = asyncio.create_task(router.run(stop))
            await asyncio.wait_for(router.ready.wait(), 30)
            await produce(kafka_settings.bootstrap, kafka_topics.requests,
                          [(b"acme", request("sup-1"), None)])  # fmt: skip
            await collect(kafka_settings.bootstrap, kafka_topics.responses, 1)
            await until(lambda: router.faults.get("commits", {}).get("restarts", 0) >= 2)
            failing = await http.get("/readyz")
            details = (await http.get("/healthz")).json()
            refusing = False
            await until(lambda: not router.faults)
            recovered = await http.get("/readyz")
            stop.set()
            await asyncio.wait_for(task, 60)
    finally:
        await health.cleanup()
    assert failing.status_code == 503 and failing.json()["failing"] == ["commits"]
    assert details["status"] == "degraded"
    assert "injected" in details["faults"]["commits"]["error"]
    assert details["faults"]["commits"]["since_ms"] > 0
    assert recovered.status_code == 200
    group = AIOKafkaConsumer(
        bootstrap_servers=kafka_settings.bootstrap, group_id=kafka_settings.group_id,
        enable_auto_commit=False,
    )  # fmt: skip
    await group.start()
    try:
        tp = TopicPartition(kafka_topics.requests, home_partition("acme"))
        assert await group.committed(tp) == 1  # committed once the loop worked again
    finally:
        await group.stop()


async def test_an_answer_too_large_for_a_record_fails_the_request_once_and_cleanly(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    scenario = parse_scenario('[[rule]]\nmodel = "a/huge"\noutcome = "oversized"\n')
    with start_in_thread(SimulatorOptions(scenario=scenario)) as sim:
        cfg = config(kafka_settings, sim, routes={"general": {"models": ["a/huge"]}})
        async with running(cfg, "oversized") as router:
            await produce(kafka_settings.bootstrap, kafka_topics.requests,
                          [(b"acme", request("big-1"), None)])  # fmt: skip
            answers = await collect(kafka_settings.bootstrap, kafka_topics.responses, 1)
            await until(lambda: router.offsets.in_progress() == 0, 10)  # its offset is done
            in_flight = dict(router.state.inflight)
        events = await read_events(
            kafka_settings.bootstrap, kafka_topics.events,
            lambda es: any(e.type.startswith("turnout.request.failed") for e in es),
        )  # fmt: skip
    (answer,) = [msgspec.json.decode(a.value) for a in answers]
    assert (answer["status"], answer["error"]["code"]) == ("error", "response_too_large")
    assert "bytes; a Kafka record holds at most" in answer["error"]["message"]
    terminals = [e for e in events if e.type in TERMINALS and e.data.request_id == "big-1"]
    assert [e.type for e in terminals] == ["turnout.request.failed"]
    (attempt,) = of_type(events, "attempt.failed")
    assert (attempt.data.error_class, attempt.data.breaker_failure) == ("response_too_large", False)
    assert in_flight == {}  # nothing left holding a slot or a reservation


async def test_a_request_task_that_fails_ends_its_request_with_internal_error(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """Fault injection: a bug in the call path (here: the upstream client raises). The
    request must not stay in flight for ever, holding a slot and its partition's commits."""
    async with running(config(kafka_settings, simulator), "buggy") as router:
        real_call = router.upstream.call

        async def call(model: str, body: dict[str, Any]) -> Any:
            if "bug" in json.dumps(body):
                raise RuntimeError("injected bug")
            return await real_call(model, body)

        router.upstream.call = call  # type: ignore[method-assign]
        await produce(kafka_settings.bootstrap, kafka_topics.requests,
                      [(b"acme", request("bug-1"), None),
                       (b"acme", request("fine-1"), None)])  # fmt: skip
        answers = await collect(kafka_settings.bootstrap, kafka_topics.responses, 2)
        await until(lambda: router.offsets.in_progress() == 0, 10)
        left = dict(router.state.inflight)
    by_id = {a.key.decode(): msgspec.json.decode(a.value) for a in answers}
    assert (by_id["bug-1"]["status"], by_id["bug-1"]["error"]["code"]) == (
        "error", "internal_error")  # fmt: skip
    assert "RuntimeError" in by_id["bug-1"]["error"]["message"]
    assert by_id["fine-1"]["status"] == "ok"  # the router kept serving
    assert left == {} and router.fatal is None
