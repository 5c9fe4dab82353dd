"""Feature switches: every switch turned off really means off.

Each test turns one switch off (in config, or in the environment for the
`turnout router` process) and provokes the behaviour the switch governs; it
then checks that the behaviour, and the events that would record it, are gone.
Where the same run also shows the neighbouring features still at work (the
breaker, retry and fallback trio), it checks that too, so a run that never
provoked anything cannot pass. The switched-on behaviour is shown in
test_cache.py, test_tenants.py and test_router.py.

Levels: the router's decisions and its shell through a running `Router`;
health checks, tracing and metrics through the `turnout router` process (the
composition root decides what to start); `Telemetry.from_env` directly for
each tracing/metrics combination.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.metrics import NoOpCounter, NoOpHistogram

from tests.integration.test_cache import Answers, ask
from tests.integration.test_router import (
    UNLIMITED,
    collect,
    config,
    of_type,
    produce,
    read_events,
    request,
    running,
    sim_calls,
)
from tests.integration.test_router_failover import REPO, SERVING, wait_for_line
from tests.integration.test_telemetry import Collector
from turnout.service.kafka.broker import free_port
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.telemetry import Telemetry
from turnout.service.upstream.simulator import SimulatorOptions, parse_scenario, start_in_thread
from turnout.service.upstream.simulator.server import RunningSimulator

TERMINALS = ("request.completed", "request.failed", "request.rejected")


@pytest.fixture
def simulator() -> Iterator[RunningSimulator]:
    with start_in_thread(SimulatorOptions()) as sim:
        yield sim


def off(switch: str) -> dict[str, Any]:
    return {"features": {switch: False}}


def finished(count: int) -> Callable[[list[Any]], bool]:
    return lambda es: sum(len(of_type(es, t)) for t in TERMINALS) >= count


async def test_caching_off_sends_a_repeat_upstream_and_writes_no_cache_events(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    answers = Answers(kafka_settings, kafka_topics)
    async with running(config(kafka_settings, simulator, **off("caching"))):
        await answers.send(("acme", ask("one")))
        got = await answers.send(("acme", ask("two")))
        envs = await read_events(kafka_settings.bootstrap, kafka_topics.events, finished(2))
    assert sim_calls(simulator) == 2
    assert got["two"]["status"] == "ok" and got["two"]["cached"] is False
    assert "saved" not in got["two"]
    assert [e.type for e in envs if e.type.startswith("turnout.cache.")] == []
    assert [e.data.cacheable for e in of_type(envs, "request.accepted")] == [False, False]


async def test_compression_off_stores_answers_as_they_are_and_they_still_hit(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    answers = Answers(kafka_settings, kafka_topics)
    async with running(config(kafka_settings, simulator, **off("cache_compression"))):
        first = await answers.send(("acme", ask("one")))
        got = await answers.send(("acme", ask("two")))
        envs = await read_events(kafka_settings.bootstrap, kafka_topics.events, finished(2))
    (stored,) = of_type(envs, "cache.stored")
    assert stored.data.encoding == "none"
    assert stored.data.stored_bytes == stored.data.size_bytes == len(stored.data.body)
    assert json.loads(stored.data.body) == first["one"]["response"]
    assert got["two"]["cached"] is True and sim_calls(simulator) == 1


async def test_coalescing_off_sends_every_concurrent_identical_request_upstream(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    ids = [f"nc-{i}" for i in range(10)]
    with start_in_thread(SimulatorOptions(scenario=parse_scenario("latency_ms = 300\n"))) as sim:
        answers = Answers(kafka_settings, kafka_topics)
        async with running(config(kafka_settings, sim, **off("request_coalescing"))):
            got = await answers.send(*[("acme", ask(rid)) for rid in ids])
            envs = await read_events(kafka_settings.bootstrap, kafka_topics.events, finished(10))
        calls = sim_calls(sim)
    assert calls == len(ids)
    assert all(b["status"] == "ok" and not b["coalesced"] for b in got.values())
    assert of_type(envs, "request.coalesced") == []
    assert len(of_type(envs, "cache.stored")) == 1  # caching itself stays on: one entry


async def test_rate_limiting_off_admits_past_a_one_per_minute_limit(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    tenants = {"default": UNLIMITED, "acme": {"requests_per_minute": 1, "burst": 1}}
    answers = Answers(kafka_settings, kafka_topics)
    cfg = config(kafka_settings, simulator, tenants=tenants, **off("rate_limiting"))
    async with running(cfg):
        got = await answers.send(*[("acme", request(f"rl-{i}")) for i in range(5)])
        envs = await read_events(kafka_settings.bootstrap, kafka_topics.events, finished(5))
    assert [b["status"] for b in got.values()] == ["ok"] * 5
    assert of_type(envs, "ratelimit.exceeded") == [] and of_type(envs, "request.rejected") == []


async def test_budgets_off_spends_past_a_tiny_budget(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    tenants = {"default": UNLIMITED, "acme": {"budget_usd_per_day": 0.000001}}
    answers = Answers(kafka_settings, kafka_topics)
    cfg = config(kafka_settings, simulator, tenants=tenants, **off("budgets"))
    async with running(cfg):
        got = await answers.send(*[("acme", request(f"bu-{i}")) for i in range(5)])
        envs = await read_events(kafka_settings.bootstrap, kafka_topics.events, finished(5))
    assert [b["status"] for b in got.values()] == ["ok"] * 5
    assert sum(b["cost_usd"] for b in got.values()) > 0.000001  # spent past the limit
    assert [e.type for e in envs if e.type.startswith("turnout.budget.")] == []


@pytest.mark.parametrize("batching", [True, False], ids=["on", "off"])
async def test_batching_off_reads_intake_one_record_at_a_time(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator, batching: bool
) -> None:
    records: list[tuple[bytes | None, bytes, int | None]] = [
        (b"acme", request(f"ba-{i}"), None) for i in range(50)
    ]
    await produce(kafka_settings.bootstrap, kafka_topics.requests, records)  # all waiting
    cfg = config(kafka_settings, simulator, features={"batching": batching})
    async with running(cfg) as router:
        got = await collect(kafka_settings.bootstrap, kafka_topics.responses, 50)
        stats = router.intake_stats
    assert len({r.key for r in got}) == 50
    assert stats.records == 50
    assert stats.largest == 1 if not batching else stats.largest > 1


FAILING = '[[rule]]\nmodel = "bad/*"\noutcome = 503\nretry_after_s = 0\n'
EVIDENCE: dict[str, Callable[[list[Any]], list[Any]]] = {
    "circuit_breaker": lambda es: [e for e in es if e.type.startswith("turnout.breaker.")],
    "retries": lambda es: of_type(es, "retry.scheduled"),
    "fallbacks": lambda es: of_type(es, "fallback.taken"),
}


@pytest.mark.parametrize("switch", list(EVIDENCE))
async def test_breaker_retries_and_fallbacks_each_off_really_off(
    kafka_settings: KafkaSettings, kafka_topics: Topics, switch: str
) -> None:
    # bad/model always answers 503: with everything on, the first requests retry it
    # once, fall back to good/model, and the third failure opens its breaker.
    with start_in_thread(SimulatorOptions(scenario=parse_scenario(FAILING))) as sim:
        cfg = config(
            kafka_settings, sim,
            routes={"general": {"models": ["bad/model", "good/model"]}},
            retry={"max_retries": 1, "base_delay_ms": 10, "max_delay_ms": 50},
            breaker={"failure_threshold": 3, "recovery_timeout_s": 60},
            **off(switch),
        )  # fmt: skip
        answers = Answers(kafka_settings, kafka_topics)
        async with running(cfg):
            for i in range(6):  # one at a time, so each sees the previous outcomes
                got = await answers.send(("acme", request(f"f-{i}")))
            envs = await read_events(kafka_settings.bootstrap, kafka_topics.events, finished(6))
    assert EVIDENCE[switch](envs) == []
    for other, evidence in EVIDENCE.items():
        if other != switch:
            assert evidence(envs), f"{other} is on but left no event"
    tried_bad = {e.subject for e in of_type(envs, "attempt.started") if e.data.model == "bad/model"}
    if switch == "circuit_breaker":  # never skipped: every request tried bad/model first
        assert tried_bad == set(got)
    if switch == "fallbacks":  # a request that tried bad/model got its error, not good's answer
        assert tried_bad and {got[rid]["status"] for rid in tried_bad} == {"error"}
    else:
        assert all(b["status"] == "ok" for b in got.values())


def start_router(
    settings: KafkaSettings, base_url: str, log: Path, *, port: int, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """`turnout router --health-port PORT` as a user runs it, with `env` added."""
    kafka = {
        "TURNOUT_KAFKA_BOOTSTRAP": settings.bootstrap,
        "TURNOUT_KAFKA_TOPIC_PREFIX": settings.topic_prefix,
        "TURNOUT_KAFKA_GROUP_ID": settings.group_id,
        "TURNOUT_UPSTREAM_BASE_URL": base_url,
    }
    inherited = {k: v for k, v in os.environ.items() if k != "OTEL_SDK_DISABLED"}
    full = inherited | env | kafka
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "turnout", "router", "--health-port", str(port),
             "--instance", "switches"],
            cwd=REPO, env=full, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def listening(port: int) -> bool:
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"http://127.0.0.1:{port}/livez")).status_code == 200
    except httpx.ConnectError:
        return False


@pytest.mark.parametrize("on", [True, False], ids=["on", "off"])
async def test_router_process_starts_no_health_server_tracer_or_meter_when_switched_off(
    kafka_settings: KafkaSettings,
    kafka_topics: Topics,
    simulator: RunningSimulator,
    tmp_path: Path,
    on: bool,
) -> None:
    collector = Collector()  # OTLP endpoint set either way: only the switches differ
    await collector.start()
    value = "true" if on else "false"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
           "TURNOUT_FEATURES_HEALTH_CHECKS": value, "TURNOUT_FEATURES_TRACING": value,
           "TURNOUT_FEATURES_METRICS": value}  # fmt: skip
    port, log = free_port(), tmp_path / "router.log"
    proc = start_router(kafka_settings, simulator.base_url, log, port=port, env=env)
    try:
        await asyncio.to_thread(wait_for_line, log, SERVING)
        await produce(kafka_settings.bootstrap, kafka_topics.requests,
                      [(b"acme", request("sw-1"), None)])  # fmt: skip
        (answer,) = await collect(kafka_settings.bootstrap, kafka_topics.responses, 1)
        health = await listening(port)
        proc.send_signal(signal.SIGTERM)  # telemetry flushes whatever it holds on exit
        await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait, 30)
        assert collector.runner is not None
        await collector.runner.cleanup()
    output = log.read_text(errors="replace")
    assert proc.returncode == 0, output[-2000:]
    assert json.loads(answer.value)["status"] == "ok"
    assert health is on
    exported = {path for path, _, _ in collector.posts}
    assert exported == ({"/v1/traces", "/v1/metrics"} if on else set())
    assert ("health checks are off" in output) is not on


@pytest.mark.parametrize(("tracing", "metrics"), [(False, False), (False, True), (True, False)])
async def test_telemetry_installs_no_provider_for_a_switch_that_is_off(
    tracing: bool, metrics: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = Collector()
    await collector.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    telemetry = Telemetry.from_env(tracing=tracing, metrics=metrics, instance="switches")
    try:
        assert telemetry.tracing is tracing and telemetry.metrics is metrics
        span = telemetry.tracer.start_span("probe")
        assert span.is_recording() is tracing
        span.end()
        assert isinstance(telemetry.requests, NoOpCounter) is not metrics
        assert isinstance(telemetry.duration, NoOpHistogram) is not metrics
        telemetry.requests.add(1, {"outcome": "completed"})  # something to export, if on
    finally:
        await asyncio.to_thread(telemetry.shutdown)
        assert collector.runner is not None
        await collector.runner.cleanup()
    exported = {path for path, _, _ in collector.posts}
    assert exported == {p for p, on in (("/v1/traces", tracing), ("/v1/metrics", metrics)) if on}
