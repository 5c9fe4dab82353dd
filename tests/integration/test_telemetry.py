"""Traces and metrics: a request span continuing the caller's trace, over OTLP/HTTP too."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.integration.test_router import collect, config, of_type, read_events, request
from tests.integration.test_router_failover import SERVING, start_router, wait_for_line
from turnout.service.core.config import Config
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.runtime.router import Router
from turnout.service.telemetry import Telemetry
from turnout.service.upstream.simulator import SimulatorOptions, parse_scenario, start_in_thread
from turnout.service.upstream.simulator.server import RunningSimulator

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def simulator() -> Iterator[RunningSimulator]:
    with start_in_thread(SimulatorOptions()) as sim:
        yield sim


@asynccontextmanager
async def running(cfg: Config, telemetry: Telemetry) -> AsyncIterator[Router]:
    router = Router(cfg, instance="traced", telemetry=telemetry)
    stop = asyncio.Event()
    task = asyncio.create_task(router.run(stop))
    try:
        await asyncio.wait_for(router.ready.wait(), 30)
        yield router
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def submit(bootstrap: str, topic: str, rid: str, headers: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, request(rid), key=b"acme", headers=headers)
    finally:
        await producer.stop()


async def test_a_request_span_continues_the_callers_trace_and_its_events_carry_it(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    async with running(config(kafka_settings, simulator), telemetry):
        await submit(kafka_settings.bootstrap, kafka_topics.requests, "traced-1",
                     [("traceparent", TRACEPARENT.encode())])  # fmt: skip
        await collect(kafka_settings.bootstrap, kafka_topics.responses, 1)
        envs = await read_events(
            kafka_settings.bootstrap, kafka_topics.events,
            lambda es: bool(of_type(es, "request.completed")),
        )  # fmt: skip
    spans = exporter.get_finished_spans()
    (req,) = [s for s in spans if s.kind is SpanKind.CONSUMER]
    (attempt,) = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert req.name == "chat general"
    assert f"{req.context.trace_id:032x}" == TRACE_ID
    assert req.parent is not None and f"{req.parent.span_id:016x}" == PARENT_ID
    assert req.attributes is not None and attempt.attributes is not None
    assert req.attributes["turnout.request_id"] == "traced-1"
    assert req.attributes["turnout.tenant"] == "acme"
    assert req.attributes["turnout.outcome"] == "completed"
    assert req.attributes["turnout.cached"] is False
    assert req.attributes["gen_ai.usage.output_tokens"] > 0
    assert attempt.parent is not None and attempt.parent.span_id == req.context.span_id
    assert attempt.context.trace_id == req.context.trace_id
    model = attempt.attributes["gen_ai.request.model"]
    assert attempt.name == f"chat {model}"
    assert attempt.attributes["gen_ai.operation.name"] == "chat"
    assert attempt.attributes["gen_ai.response.model"]
    assert attempt.attributes["gen_ai.usage.input_tokens"] > 0
    assert attempt.attributes["gen_ai.usage.output_tokens"] > 0
    assert attempt.attributes["http.response.status_code"] == 200
    mine = [e for e in envs if e.subject == "traced-1"]
    assert {e.type for e in mine} >= {"turnout.request.accepted", "turnout.attempt.started",
                                      "turnout.request.completed"}  # fmt: skip
    expected = f"00-{TRACE_ID}-{req.context.span_id:016x}-01"
    assert all(e.traceparent == expected for e in mine)
    names = metric_names(reader.get_metrics_data())
    assert {"gen_ai.client.operation.duration", "gen_ai.client.token.usage",
            "turnout.requests"} <= names  # fmt: skip
    telemetry.shutdown()


def metric_names(data: Any) -> set[str]:
    return {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


class Collector:
    """A stand-in OTLP/HTTP collector on loopback: keeps every POST it is sent."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str, bytes]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.traced = asyncio.Event()  # a traces POST with a "chat ..." span came

    async def _accept(self, req: web.Request) -> web.Response:
        self.posts.append((req.path, req.content_type, await req.read()))
        if any(name.startswith("chat ") for name in self.span_names()):
            self.traced.set()
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._accept)
        app.router.add_post("/v1/metrics", self._accept)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def exports(self, path: str) -> list[Any]:
        """The protobuf export requests POSTed to `path`."""
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        kind = {"/v1/traces": ExportTraceServiceRequest, "/v1/metrics": ExportMetricsServiceRequest}
        return [kind[p].FromString(body) for p, content_type, body in self.posts
                if p == path and content_type == "application/x-protobuf"]  # fmt: skip

    def span_names(self) -> list[str]:
        return [s.name for export in self.exports("/v1/traces") for rs in export.resource_spans
                for ss in rs.scope_spans for s in ss.spans]  # fmt: skip

    def resource_attributes(self) -> dict[str, str]:
        return {a.key: a.value.string_value for export in self.exports("/v1/traces")
                for rs in export.resource_spans for a in rs.resource.attributes}  # fmt: skip


@pytest.mark.slow
async def test_the_router_process_exports_spans_over_otlp_http(
    kafka_settings: KafkaSettings,
    kafka_topics: Topics,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collector = Collector()
    await collector.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    log = tmp_path / "router.log"
    try:
        with start_in_thread(SimulatorOptions()) as sim:
            proc = start_router("otel", kafka_settings, sim.base_url, log)
            try:
                await asyncio.to_thread(wait_for_line, log, SERVING)
                await submit(kafka_settings.bootstrap, kafka_topics.requests, "otlp-1",
                             [("traceparent", TRACEPARENT.encode())])  # fmt: skip
                await collect(kafka_settings.bootstrap, kafka_topics.responses, 1)
                await asyncio.wait_for(collector.traced.wait(), 20)
            finally:
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 30)
    finally:
        assert collector.runner is not None
        await collector.runner.cleanup()
    assert proc.returncode == 0, log.read_text(errors="replace")[-2000:]
    assert {"chat general"} <= set(collector.span_names())
    resource = collector.resource_attributes()
    assert resource["service.name"] == "turnout-router"
    assert resource["service.instance.id"] == "otel"
    metrics = metric_names(collector.exports("/v1/metrics")[-1])  # flushed at shutdown
    assert {"gen_ai.client.operation.duration", "turnout.requests"} <= metrics


async def test_a_request_still_in_flight_when_the_router_stops_ends_its_span(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=MeterProvider())
    hang = parse_scenario('[[rule]]\nmodel = "*"\noutcome = "timeout"\n')  # answers never come
    with start_in_thread(SimulatorOptions(scenario=hang, hang_max_s=3)) as slow:
        router = Router(config(kafka_settings, slow), instance="stopping", telemetry=telemetry)
        router.drain_timeout_s = 0.5
        stop = asyncio.Event()
        task = asyncio.create_task(router.run(stop))
        await asyncio.wait_for(router.ready.wait(), 30)
        await submit(kafka_settings.bootstrap, kafka_topics.requests, "slow-1", [])
        async with asyncio.timeout(30):
            while "slow-1" not in router.state.inflight:  # noqa: ASYNC110 (polls state)
                await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 60)
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert span.attributes is not None and span.attributes["turnout.request_id"] == "slow-1"
    assert span.attributes["turnout.outcome"] == "stopped"
    assert span.status.description == "stopped"
    telemetry.shutdown()


async def test_a_streamed_attempt_records_its_time_to_first_chunk_and_per_chunk_times(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    async with running(config(kafka_settings, simulator), telemetry):
        producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap, acks="all")
        await producer.start()
        try:
            value = request("streamed-1", stream=True, max_tokens=200)
            await producer.send_and_wait(kafka_topics.requests, value, key=b"acme")
        finally:
            await producer.stop()
        await read_events(
            kafka_settings.bootstrap, kafka_topics.events,
            lambda es: bool(of_type(es, "request.completed")),
        )  # fmt: skip
    points = {
        m.name: m.data.data_points
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    (first,) = points["gen_ai.client.operation.time_to_first_chunk"]
    assert first.count == 1 and 0 < first.sum < 5
    assert first.attributes["gen_ai.request.model"]
    (chunks,) = points["gen_ai.client.operation.time_per_output_chunk"]
    assert chunks.count > 1  # one per chunk after the first
    telemetry.shutdown()


async def test_the_gateways_span_and_the_routers_are_one_trace(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    import httpx

    from turnout.service.gateway import start_in_thread as start_gateway

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider)
    cfg = config(kafka_settings, simulator, gateway={"port": 0})
    async with running(cfg, telemetry):
        gateway = await asyncio.to_thread(start_gateway, cfg, tracer_provider=provider)
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                answer = await http.post(
                    f"{gateway.base_url}/chat/completions",
                    json={"model": "turnout/general", "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]},
                    headers={"traceparent": TRACEPARENT},
                )  # fmt: skip
            assert answer.status_code == 200 and answer.text.endswith("data: [DONE]\n\n")
        finally:
            await asyncio.to_thread(gateway.stop)
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    (req,) = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert server.name == "POST /v1/chat/completions"
    assert f"{server.context.trace_id:032x}" == TRACE_ID  # the caller's trace
    assert req.context.trace_id == server.context.trace_id
    assert req.parent is not None and req.parent.span_id == server.context.span_id
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["turnout.stream"] is True
