"""Traces and metrics for the router: OpenTelemetry, off (no-op) unless asked for.

Job: one `Telemetry` per process, built by the composition root
(`turnout.service.runtime.serve`) with `Telemetry.from_env`. With
`OTEL_EXPORTER_OTLP_ENDPOINT` set and `[features] tracing` / `metrics` on it
exports over OTLP/HTTP (protobuf) from SDK providers (resource
`service.name=turnout-router`, `service.instance.id=<instance>`); otherwise it
holds the API's no-op tracer and meter, and every hook returns at once.

What it records (GenAI semantic conventions where they apply):
- a span per request, `chat <task_type>` (CONSUMER), from intake to the
  terminal event, continuing the intake record's W3C `traceparent` header;
  its own traceparent goes on every event of the request (`ce_traceparent`);
- a child span per upstream attempt, `chat <model>` (CLIENT);
- `gen_ai.client.operation.duration` (s) and `gen_ai.client.token.usage`
  histograms per attempt, and a `turnout.requests` counter by outcome and task
  type (the tenant is a span attribute only: metric cardinality stays low).

Rules: the router hands over events and results as they are; nothing here
decides anything, reads state or raises into the router. Tests inject their
own providers: `Telemetry(tracer_provider=..., meter_provider=...)`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from turnout.service.core import events as ev
from turnout.service.upstream.translate import CallResult

__all__ = ["Telemetry", "gateway_tracer", "server_span"]

SERVICE_NAME: Final = "turnout-router"
SCOPE: Final = "turnout.router"
PROVIDER: Final = "openrouter"  # gen_ai.provider.name: any OpenAI-compatible upstream
TRACEPARENT: Final = "traceparent"
DURATION_BUCKETS: Final = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                           20.48, 40.96, 81.92]  # fmt: skip
CHUNK_BUCKETS: Final = [0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                        0.75, 1.0, 2.5]  # fmt: skip
TOKEN_BUCKETS: Final = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                        16777216, 67108864]  # fmt: skip

_propagator = TraceContextTextMapPropagator()


class _Request:
    """What telemetry keeps for one request between intake and its terminal event."""

    __slots__ = ("span", "task_type", "traceparent")

    def __init__(self, span: trace.Span | None, traceparent: str | None, task_type: str) -> None:
        self.span = span
        self.traceparent = traceparent
        self.task_type = task_type


class Attempt:
    """One upstream call being traced: its span (None when tracing is off)."""

    __slots__ = ("model", "span")

    def __init__(self, model: str, span: trace.Span | None) -> None:
        self.model = model
        self.span = span


class Telemetry:
    """The process's tracer and meter, and the router's hooks into them."""

    def __init__(
        self, *, tracer_provider: Any | None = None, meter_provider: Any | None = None
    ) -> None:
        self.tracing = tracer_provider is not None
        self.metrics = meter_provider is not None
        self._providers = [p for p in (tracer_provider, meter_provider) if p is not None]
        self._requests: dict[str | None, _Request] = {}
        self.tracer = (tracer_provider or trace.NoOpTracerProvider()).get_tracer(SCOPE)
        meter = (meter_provider or metrics.NoOpMeterProvider()).get_meter(SCOPE)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )  # fmt: skip
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Measures number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )  # fmt: skip
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time to receive the first chunk of a streamed answer",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )  # fmt: skip
        self.per_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_per_output_chunk", unit="s",
            description="Time per output chunk after the first of a streamed answer",
            explicit_bucket_boundaries_advisory=CHUNK_BUCKETS,
        )  # fmt: skip
        self.requests = meter.create_counter(
            "turnout.requests", unit="{request}", description="Requests finished, by outcome"
        )

    @classmethod
    def from_env(
        cls, *, tracing: bool, metrics: bool, instance: str, environ: Mapping[str, str] = os.environ
    ) -> Telemetry:
        """SDK providers exporting over OTLP/HTTP if the endpoint is set, else no-op."""
        if not environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or (
            environ.get("OTEL_SDK_DISABLED", "").lower() == "true"
        ):
            return cls()
        from opentelemetry.sdk.resources import Resource

        resource = Resource.create({"service.name": SERVICE_NAME, "service.instance.id": instance})
        return cls(
            tracer_provider=_tracer_provider(resource, _endpoint(environ, "traces"))
            if tracing
            else None,
            meter_provider=_meter_provider(resource, _endpoint(environ, "metrics"))
            if metrics
            else None,
        )

    def shutdown(self) -> None:
        """Flush what is buffered and stop exporting (blocking, bounded by the SDK)."""
        for provider in self._providers:
            provider.shutdown()
        self._providers = []

    # ------------------------------------------------------------ requests

    def start_request(self, req: Any, headers: Sequence[tuple[str, bytes]], *, topic: str) -> None:
        """A request was accepted: open its span, continuing the intake's traceparent."""
        if not (self.tracing or self.metrics) or req.request_id in self._requests:
            return
        span, traceparent = None, None
        if self.tracing:
            parent = _propagator.extract(_carrier(headers))
            span = self.tracer.start_span(
                f"chat {req.task_type}", context=parent, kind=SpanKind.CONSUMER,
                attributes=_request_attributes(req, topic),
            )  # fmt: skip
            traceparent = _traceparent(span.get_span_context())
        self._requests[req.request_id] = _Request(span, traceparent, req.task_type)

    def traceparent(self, request_id: str | None) -> str | None:
        """The W3C traceparent of the request's span, for its events; None if untraced."""
        r = self._requests.get(request_id)
        return None if r is None else r.traceparent

    def published(self, events: Iterable[Any]) -> None:
        """Events are out: a terminal one ends its request's span and counts it."""
        if not self._requests:
            return
        for event in events:
            if type(event) in _OUTCOMES:
                self._end_request(event)

    def abandon(self, request_ids: Iterable[str], reason: str) -> None:
        """Requests this process stops working on without an outcome (their partition was
        handed over, or the process stops): end their spans, marked, and count nothing
        (the router that finishes them counts them)."""
        for request_id in request_ids:
            r = self._requests.pop(request_id, None)
            if r is not None and r.span is not None:
                r.span.set_attribute("turnout.outcome", reason)
                r.span.set_status(Status(StatusCode.ERROR, reason))
                r.span.end()

    def _end_request(self, terminal: Any) -> None:
        r = self._requests.pop(terminal.request_id, None)
        if r is None:
            return
        outcome = _OUTCOMES[type(terminal)]
        self.requests.add(1, {"outcome": outcome, "turnout.task_type": r.task_type})
        if r.span is None:
            return
        r.span.set_attributes(_terminal_attributes(terminal, outcome))
        if isinstance(terminal, ev.RequestFailed):
            r.span.set_status(Status(StatusCode.ERROR, terminal.code))
        r.span.end()

    # ------------------------------------------------------------ attempts

    def start_attempt(self, request_id: str, model: str, attempt: int) -> Attempt | None:
        """An upstream call is about to start: a CLIENT span under the request's span."""
        if not (self.tracing or self.metrics):
            return None
        span = None
        r = self._requests.get(request_id)
        if r is not None and r.span is not None:
            span = self.tracer.start_span(
                f"chat {model}", context=trace.set_span_in_context(r.span), kind=SpanKind.CLIENT,
                attributes={"gen_ai.operation.name": "chat", "gen_ai.provider.name": PROVIDER,
                            "gen_ai.request.model": model, "turnout.attempt": attempt},
            )  # fmt: skip
        return Attempt(model, span)

    def streamed(
        self, attempt: Attempt | None, ttft_ms: float | None, intervals_s: Sequence[float]
    ) -> None:
        """A streamed attempt's time to its first chunk, and the time of each chunk after it."""
        if attempt is None or not self.metrics or ttft_ms is None:
            return
        attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": PROVIDER,
                 "gen_ai.request.model": attempt.model}  # fmt: skip
        self.first_chunk.record(ttft_ms / 1000, attrs)
        for interval in intervals_s:
            self.per_chunk.record(interval, attrs)
        if attempt.span is not None:
            attempt.span.set_attribute("gen_ai.response.time_to_first_chunk", ttft_ms / 1000)

    def end_attempt(self, attempt: Attempt | None, result: CallResult) -> None:
        """The call came back: end its span, record its duration and token usage."""
        if attempt is None:
            return
        attrs: dict[str, Any] = {"gen_ai.operation.name": "chat",
                                 "gen_ai.provider.name": PROVIDER,
                                 "gen_ai.request.model": attempt.model}  # fmt: skip
        response_model = (result.response or {}).get("model")
        if isinstance(response_model, str):
            attrs["gen_ai.response.model"] = response_model
        if not result.ok:
            attrs["error.type"] = result.error_class or "_OTHER"
        self.duration.record(result.latency_ms / 1000, attrs)
        if result.ok and result.usage is not None:
            self.tokens.record(result.usage.prompt_tokens, {**attrs, "gen_ai.token.type": "input"})
            self.tokens.record(
                result.usage.completion_tokens, {**attrs, "gen_ai.token.type": "output"}
            )
        if attempt.span is not None:
            _end_attempt_span(attempt.span, attrs, result)


_OUTCOMES: Final[dict[type, str]] = {
    ev.RequestCompleted: "completed",
    ev.RequestFailed: "failed",
    ev.RequestRejected: "rejected",
    ev.RequestCancelled: "cancelled",
}


def _carrier(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    return {k: v.decode("latin-1") for k, v in headers if k == TRACEPARENT and v is not None}


def _traceparent(ctx: trace.SpanContext) -> str | None:
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _request_attributes(req: Any, topic: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER,
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "turnout.request_id": req.request_id,
        "turnout.tenant": req.tenant,
        "turnout.task_type": req.task_type,
    }
    if req.model:
        attrs["gen_ai.request.model"] = req.model
    return attrs


def _terminal_attributes(terminal: Any, outcome: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {"turnout.outcome": outcome}
    if isinstance(terminal, ev.RequestCompleted):
        attrs |= {
            "gen_ai.response.model": terminal.model,
            "gen_ai.usage.input_tokens": terminal.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": terminal.usage.completion_tokens,
            "turnout.cached": terminal.cached,
            "turnout.attempts": terminal.attempts,
            "turnout.cost_micros": terminal.cost_micros,
        }
    elif isinstance(terminal, ev.RequestCancelled):
        attrs["turnout.attempts"] = terminal.attempts
        attrs["turnout.cancel_reason"] = terminal.reason
    else:
        attrs["error.type"] = terminal.code
        if isinstance(terminal, ev.RequestFailed):
            attrs["turnout.attempts"] = terminal.attempts
    return attrs


def _end_attempt_span(span: trace.Span, attrs: dict[str, Any], result: CallResult) -> None:
    if result.status is not None:
        span.set_attribute("http.response.status_code", result.status)
    if "gen_ai.response.model" in attrs:
        span.set_attribute("gen_ai.response.model", attrs["gen_ai.response.model"])
    if result.ok and result.usage is not None:
        span.set_attribute("gen_ai.usage.input_tokens", result.usage.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", result.usage.completion_tokens)
    if result.generation_id:
        span.set_attribute("gen_ai.response.id", result.generation_id)
    if not result.ok:
        span.set_attribute("error.type", attrs["error.type"])
        span.set_status(Status(StatusCode.ERROR, result.message or attrs["error.type"]))
    span.end()


def _endpoint(environ: Mapping[str, str], signal: str) -> str:
    """The OTLP/HTTP URL of one signal, from `environ` (not only the process's own),
    as the exporters derive it: the signal's own variable, else the base + /v1/<signal>."""
    own = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if own:
        return own
    return environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + f"/v1/{signal}"


def gateway_tracer(
    environ: Mapping[str, str] = os.environ, *, provider: Any | None = None, instance: str = ""
) -> tuple[trace.Tracer, Any | None]:
    """The gateway's tracer (and its provider, to shut down): `provider` when given, else
    OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, else a no-op one."""
    if (
        provider is None
        and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        and (environ.get("OTEL_SDK_DISABLED", "").lower() != "true")
    ):
        from opentelemetry.sdk.resources import Resource

        resource = Resource.create(
            {"service.name": "turnout-gateway", "service.instance.id": instance}
        )
        provider = _tracer_provider(resource, _endpoint(environ, "traces"))
    tracer = (provider or trace.NoOpTracerProvider()).get_tracer("turnout.gateway")
    return tracer, provider


def server_span(tracer: trace.Tracer, name: str, headers: Any) -> tuple[trace.Span, str | None]:
    """A SERVER span continuing the W3C `traceparent` among HTTP `headers` (bytes pairs),
    and its own traceparent to hand on (None when not traced)."""
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k == b"traceparent"}
    span = tracer.start_span(name, context=_propagator.extract(carrier), kind=SpanKind.SERVER)
    return span, _traceparent(span.get_span_context())


def _tracer_provider(resource: Any, endpoint: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def _meter_provider(resource: Any, endpoint: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint))
    return MeterProvider(resource=resource, metric_readers=[reader])
