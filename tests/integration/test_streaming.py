"""Streaming end to end, and the HTTP gateway, with the official openai SDK as the client.

Real parts only: the embedded broker, a router, the simulator over loopback HTTP and
`turnout gateway` on a free port; the SDK is the one users run (no code of ours).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import openai
import pytest

from tests.integration.test_router import (
    UNLIMITED,
    collect_until_quiet,
    config,
    of_type,
    read_events,
    running,
    until,
)
from turnout.service.client import AsyncTurnout, StreamFailed
from turnout.service.clock import SystemClock
from turnout.service.core.config import Config
from turnout.service.gateway import RunningGateway, start_in_thread
from turnout.service.gateway.keys import create_key
from turnout.service.kafka.consumer import Reader, TopicPartition
from turnout.service.kafka.producer import BatchedProducer
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.runtime.streaming import Relay
from turnout.service.upstream.simulator import SimulatorOptions, parse_scenario
from turnout.service.upstream.simulator import start_in_thread as start_simulator
from turnout.service.upstream.simulator.server import RunningSimulator
from turnout.service.wire.stream import SEQ_HEADER, STREAM_HEADER, delta_chars

SCENARIO = """
[[rule]]
model = "broken/*"
outcome = "midstream_error"

[[rule]]
model = "down/*"
outcome = 503
retry_after_s = 0

[[rule]]
model = "slow/*"
chunk_ms = 100

[[rule]]
model = "stall/*"
latency_ms = 3000

[prices."slow/model"]
prompt = "0.000001"
completion = "0.00001"

[prices."broken/model"]
prompt = "0.000001"
completion = "0.00001"
"""
KEY, KEY_LINE = create_key("acme")
POOR_KEY, POOR_LINE = create_key("poor")
SLOW_KEY, SLOW_LINE = create_key("slow")
# a tenant id may hold ":": "acme" + key "b:c" once made the same request id as "acme:b" + "c"
COLON_KEY, COLON_LINE = create_key("acme:b")
PROMPT = [{"role": "user", "content": "Tell me about event sourcing in a few words"}]


def _keys() -> dict[str, str]:
    lines = (KEY_LINE, POOR_LINE, SLOW_LINE, COLON_LINE)
    return dict(tuple(part.strip().strip('"') for part in line.split("=")) for line in lines)  # type: ignore[misc]


@pytest.fixture
def simulator() -> Iterator[RunningSimulator]:
    with start_simulator(SimulatorOptions(scenario=parse_scenario(SCENARIO))) as sim:
        yield sim


def gateway_config(settings: KafkaSettings, sim: RunningSimulator) -> Config:
    return config(
        settings, sim,
        routes={
            "general": {"models": ["openai/gpt-4o-mini", "anthropic/claude-3.5-haiku"]},
            "flaky": {"models": ["down/model", "good/model"]},
            "broken": {"models": ["broken/model", "good/model"]},
            "slow": {"models": ["slow/model"]},
            "single": {"models": ["openai/gpt-4o-mini"]},
            "stalling": {"models": ["stall/model", "good/model"]},
        },
        retry={"max_retries": 0},
        breaker={"failure_threshold": 50},
        tenants={
            "default": UNLIMITED,
            "poor": UNLIMITED | {"budget_usd_per_day": 0.000001},
            "slow": UNLIMITED | {"burst": 1, "requests_per_minute": 1},
            # a cent a day, and no max_tokens given reserves 20 completion tokens
            "capped": UNLIMITED | {"budget_usd_per_day": 0.01, "default_max_tokens": 20},
        },
        gateway={"port": 0, "timeout_s": 30, "keys": _keys()},
    )  # fmt: skip


_CLIENTS: list[openai.AsyncOpenAI] = []


@asynccontextmanager
async def stack(
    settings: KafkaSettings, sim: RunningSimulator, *, timeout_s: float | None = None
) -> AsyncIterator[tuple[Config, RunningGateway]]:
    cfg = gateway_config(settings, sim)
    if timeout_s is not None:
        cfg = msgspec.structs.replace(
            cfg, gateway=msgspec.structs.replace(cfg.gateway, timeout_s=timeout_s)
        )
    async with running(cfg):
        gateway = await asyncio.to_thread(start_in_thread, cfg, port=0)
        try:
            yield cfg, gateway
        finally:
            while _CLIENTS:
                await _CLIENTS.pop().close()
            await asyncio.to_thread(gateway.stop)


def sdk(gateway: RunningGateway, key: str = KEY, **kw: Any) -> openai.AsyncOpenAI:
    """An SDK client, closed when the stack stops."""
    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=key, **kw)
    _CLIENTS.append(client)
    return client


def direct(sim: RunningSimulator, model: str, prompt: Any = PROMPT) -> dict[str, Any]:
    """The simulator's own answer to `prompt` (it answers the same prompt the same way)."""
    body = {"model": model, "messages": prompt, "temperature": 0}
    return httpx.post(f"{sim.base_url}/chat/completions", json=body, timeout=10).json()


async def test_the_openai_sdk_gets_plain_streamed_and_raw_answers_through_the_gateway(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    expected = direct(simulator, "openai/gpt-4o-mini")
    async with stack(kafka_settings, simulator) as (_, gateway):
        client = sdk(gateway)
        plain = await client.chat.completions.create(
            model="turnout/general",
            messages=PROMPT,
            temperature=0,  # type: ignore[arg-type]
        )
        assert plain.choices[0].message.content == expected["choices"][0]["message"]["content"]
        assert plain.usage is not None and plain.usage.total_tokens > 0

        raw = await client.chat.completions.with_raw_response.create(
            model="openai/gpt-4o-mini",
            messages=PROMPT,
            temperature=0,  # type: ignore[arg-type]
        )
        assert raw.headers["x-turnout-model"] == "openai/gpt-4o-mini"
        assert raw.headers["x-request-id"] and raw.headers["x-turnout-cache"] in ("miss", "hit")

        stream = await client.chat.completions.create(
            model="turnout/general", messages=PROMPT, temperature=0, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )  # fmt: skip
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
        assert text == expected["choices"][0]["message"]["content"]
        assert usage is not None
        assert usage.completion_tokens == expected["usage"]["completion_tokens"]

        with openai.OpenAI(base_url=gateway.base_url, api_key=KEY) as sync:
            answer = await asyncio.to_thread(
                sync.chat.completions.create, model="turnout/general", messages=PROMPT
            )
        assert answer.choices[0].message.content


async def test_refusals_are_the_errors_the_sdk_acts_on_and_a_budget_refusal_is_not_retried(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    async with stack(kafka_settings, simulator) as (_, gateway):
        with pytest.raises(openai.AuthenticationError):
            await sdk(gateway, "tk-not-a-key").chat.completions.create(
                model="turnout/general",
                messages=PROMPT,  # type: ignore[arg-type]
            )
        slow = sdk(gateway, SLOW_KEY, max_retries=0)
        await slow.chat.completions.create(model="turnout/general", messages=PROMPT)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as limited:
            await slow.chat.completions.create(model="turnout/general", messages=PROMPT)  # type: ignore[arg-type]
        assert int(limited.value.response.headers["retry-after-ms"]) > 0
        assert limited.value.response.headers["retry-after"]
        told = limited.value.response.headers  # an error is an answer: it says what was tried
        assert (told["x-turnout-attempts"], told["x-turnout-cache"]) == ("0", "miss")
        assert "x-turnout-model" in told and told["x-request-id"]

        before = gateway.app.requests
        poor = sdk(gateway, POOR_KEY, max_retries=3)
        with pytest.raises(openai.APIStatusError) as refused:
            await poor.chat.completions.create(model="turnout/general", messages=PROMPT)  # type: ignore[arg-type]
        assert refused.value.status_code == 402
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert gateway.app.requests == before + 1  # the SDK did not try again
        with pytest.raises(openai.APIStatusError) as streamed:  # also when streamed
            await poor.chat.completions.create(
                model="turnout/general",
                messages=PROMPT,
                stream=True,  # type: ignore[arg-type]
            )
        assert streamed.value.status_code == 402

        with pytest.raises(openai.BadRequestError, match="no route"):
            await sdk(gateway).chat.completions.create(model="turnout/nope", messages=PROMPT)  # type: ignore[arg-type]
        models = await sdk(gateway).models.list()
        ids = {m.id for m in models.data}
        assert {"turnout/general", "turnout/flaky", "openai/gpt-4o-mini", "good/model"} <= ids


async def test_a_stream_that_fails_after_its_first_token_raises_in_the_sdk_and_counts(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """LiteLLM #40404 / Portkey #1797: a stream cut after its first token must not end
    as if it succeeded. Here the SDK raises, the events say so, the breaker counts it."""
    async with stack(kafka_settings, simulator) as (_, gateway):
        stream = await sdk(gateway).chat.completions.create(
            model="turnout/broken", messages=PROMPT, stream=True,  # type: ignore[arg-type]
            extra_headers={"Idempotency-Key": "cut-1"},
        )  # fmt: skip
        text = ""
        with pytest.raises(openai.APIError, match=r"midstream_error"):
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
        assert text  # some tokens came, then the error: never a silent success
        rid = "idem:acme/cut-1"
        envs = await read_events(
            kafka_settings.bootstrap, kafka_settings.topics.events,
            lambda es: any(e.type == "turnout.request.failed" and e.subject == rid for e in es),
        )  # fmt: skip
        mine = [e for e in envs if e.subject == rid]
        failed = of_type(mine, "request.failed")[0].data
        assert failed.code == "upstream_stream_error" and failed.partial is True
        assert failed.model == "broken/model" and failed.usage.completion_tokens > 0
        assert failed.cost_micros > 0  # what was streamed is charged
        attempt = of_type(mine, "attempt.failed")
        assert [a.data.breaker_failure for a in attempt] == [True]
        assert not of_type(mine, "fallback.taken")  # no second model after the first token
        assert len(of_type(mine, "stream.first_token")) == 1
        (cut,) = of_type(mine, "stream.cut")  # counted by why in the archive: upstream
        assert (cut.data.why, cut.data.completion_tokens) == (
            "upstream",
            failed.usage.completion_tokens,
        )


async def test_a_model_that_fails_before_its_first_token_falls_back_unseen(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    expected = direct(simulator, "good/model")
    async with stack(kafka_settings, simulator) as (_, gateway):
        raw = await sdk(gateway).chat.completions.with_raw_response.create(
            model="turnout/flaky",
            messages=PROMPT,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
        )
        assert raw.headers["x-turnout-model"] == "good/model"
        text = ""
        async for chunk in raw.parse():
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        assert text == expected["choices"][0]["message"]["content"]


async def test_a_stream_over_kafka_alone_is_chunks_in_order_then_the_assembled_answer(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    expected = direct(simulator, "openai/gpt-4o-mini")
    cfg = gateway_config(kafka_settings, simulator)
    cfg = msgspec.structs.replace(
        cfg, streaming=msgspec.structs.replace(cfg.streaming, flush_tokens=2)
    )
    async with running(cfg), AsyncTurnout(kafka_settings) as turnout:
        stream = await turnout.stream(PROMPT, tenant="acme", temperature=0)
        chunks = [c async for c in stream]
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        last = stream.response
        assert last is not None and last["status"] == "ok"
        answer = last["response"]
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"]["content"] == text
        assert text == expected["choices"][0]["message"]["content"]
        assert last["usage"] == {k: expected["usage"][k] for k in last["usage"]}
        assert last["stream"]["chunks"] == len(chunks) > 1 and last["stream"]["ttft_ms"] > 0

        records = await collect_until_quiet(kafka_settings.bootstrap, turnout.reply_topic, 1.0)
        kinds = [dict(r.headers).get(STREAM_HEADER) for r in records]
        assert kinds == [b"chunk"] * len(chunks) + [b"end"]
        seqs = [int(dict(r.headers)[SEQ_HEADER]) for r in records[:-1]]
        assert seqs == list(range(1, len(chunks) + 1))
        assert [json.loads(r.value)["seq"] for r in records[:-1]] == seqs

        broken = await turnout.stream(PROMPT, tenant="acme", task_type="broken")
        with pytest.raises(StreamFailed) as failed:
            async for _ in broken:
                pass
        assert failed.value.response["partial"] is True
        assert failed.value.response["error"]["code"] == "upstream_stream_error"


async def test_the_assembled_answer_is_all_of_what_was_streamed_with_its_end_and_usage(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """With the default coalescing the last deltas, the finish reason and the usage-only
    chunk are still waiting to be published when the upstream's stream ends: the answer
    (the last record, what an Idempotency-Key resend and the cache give back) was built
    before they were, so it lost its end, said `finish_reason: null` and charged an
    estimate though the upstream had reported usage."""
    expected = direct(simulator, "openai/gpt-4o-mini")
    cfg = gateway_config(kafka_settings, simulator)
    async with running(cfg), AsyncTurnout(kafka_settings) as turnout:
        stream = await turnout.stream(PROMPT, tenant="acme", temperature=0, task_type="single")
        chunks = [c async for c in stream]
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        last = stream.response
        assert last is not None and last["status"] == "ok", last
        choice = last["response"]["choices"][0]
        assert choice["message"]["content"] == text == expected["choices"][0]["message"]["content"]
        assert choice["finish_reason"] == "stop"
        assert last["usage"] == {k: expected["usage"][k] for k in last["usage"]}
        assert last["response"]["usage"]["total_tokens"] == expected["usage"]["total_tokens"]
        assert not last["stream"].get("usage_estimated")


def sim_total(sim: RunningSimulator) -> int:
    return int(httpx.get(f"{sim.url}/_sim/stats").json()["total"])


def sim_streams(sim: RunningSimulator) -> dict[str, int]:
    return dict(httpx.get(f"{sim.url}/_sim/stats").json()["streams"])


async def test_a_client_that_disconnects_mid_stream_cancels_the_request_and_the_upstream(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    async with stack(kafka_settings, simulator) as (_, gateway):
        body = {"model": "turnout/slow", "messages": PROMPT, "stream": True}
        headers = {"authorization": f"Bearer {KEY}", "idempotency-key": "gone-1"}
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream("POST", f"{gateway.base_url}/chat/completions", json=body,
                        headers=headers) as response,
        ):  # fmt: skip
            assert response.status_code == 200
            lines = response.aiter_lines()
            while not (await anext(lines)).startswith("data: {"):
                pass  # the first chunk came: now go away
        rid = "idem:acme/gone-1"
        envs = await read_events(
            kafka_settings.bootstrap, kafka_settings.topics.events,
            lambda es: any(e.type == "turnout.request.cancelled" and e.subject == rid for e in es),
        )  # fmt: skip
        mine = [e for e in envs if e.subject == rid]
        (cancelled,) = of_type(mine, "request.cancelled")
        assert cancelled.data.reason == "client disconnected"
        assert cancelled.data.usage.completion_tokens > 0 and cancelled.data.cost_micros > 0
        (cut,) = of_type(mine, "stream.cut")
        assert cut.data.why == "cancel"
        charged = sum(e.data.amount_micros for e in of_type(mine, "budget.charged"))
        assert charged == cancelled.data.cost_micros  # what was streamed is charged
        for _ in range(50):  # the simulator stopped generating: its stream was aborted
            if sim_streams(simulator)["aborted"] == 1:
                break
            await asyncio.sleep(0.1)
        assert sim_streams(simulator) | {"chunks": 0} == {
            "completed": 0, "errored": 0, "aborted": 1, "chunks": 0,
        }  # fmt: skip


async def test_a_plain_request_no_one_waits_for_is_cancelled_unless_it_has_a_key(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """The gateway gives up at its timeout (1 s here; the upstream takes 3): the openai
    SDK retries a 504 as a new request, and each went on to its end upstream, three
    answers paid for and none read. Now each is cancelled as its 504 goes out. With an
    Idempotency-Key it runs on, and the retry with that key gets its answer (a 500 from
    a cancelled shared wait once, for as long as the request ran)."""
    async with stack(kafka_settings, simulator, timeout_s=1) as (_, gateway):
        with pytest.raises(openai.InternalServerError) as timed_out:
            await sdk(gateway, max_retries=2).chat.completions.create(
                model="turnout/stalling", messages=PROMPT,  # type: ignore[arg-type]
            )  # fmt: skip
        assert timed_out.value.status_code == 504
        envs = await read_events(
            kafka_settings.bootstrap, kafka_settings.topics.events,
            lambda es: len(of_type(es, "request.cancelled")) >= 3,
        )  # fmt: skip
        cancelled = of_type(envs, "request.cancelled")
        assert len(cancelled) == 3 and not of_type(envs, "request.completed")
        assert {c.data.reason for c in cancelled} == {"no answer within the gateway's timeout"}
        assert sum(e.data.amount_micros for e in of_type(envs, "budget.charged")) == 0
        with pytest.raises(openai.InternalServerError):  # a stream with no first token in time
            await sdk(gateway, max_retries=0).chat.completions.create(
                model="turnout/stalling", messages=PROMPT, stream=True,  # type: ignore[arg-type]
            )  # fmt: skip
        envs = await read_events(
            kafka_settings.bootstrap, kafka_settings.topics.events,
            lambda es: len(of_type(es, "request.cancelled")) >= 4,
        )  # fmt: skip
        assert not of_type(envs, "request.completed")

        keyed = sdk(gateway, max_retries=0)
        idem = {"Idempotency-Key": "slow-but-wanted"}
        with pytest.raises(openai.InternalServerError):
            await keyed.chat.completions.create(
                model="turnout/stalling", messages=PROMPT, extra_headers=idem,  # type: ignore[arg-type]
            )  # fmt: skip
        await asyncio.sleep(3)  # the request runs on and ends
        again = await keyed.chat.completions.with_raw_response.create(
            model="turnout/stalling", messages=PROMPT, extra_headers=idem,  # type: ignore[arg-type]
        )  # fmt: skip
        assert again.status_code == 200 and again.parse().choices[0].message.content
        assert again.headers["x-request-id"] == "idem:acme/slow-but-wanted"

        # a keyed stream runs on past its 504 too, and its retry reads it from the start
        # (cancelled, the retry read back a cancelled stream: a 502)
        streamed = {"Idempotency-Key": "stream-wanted"}
        with pytest.raises(openai.InternalServerError):
            await keyed.chat.completions.create(
                model="turnout/stalling", messages=PROMPT, stream=True,  # type: ignore[arg-type]
                extra_headers=streamed,
            )  # fmt: skip
        await asyncio.sleep(3)
        retry = await keyed.chat.completions.create(
            model="turnout/stalling", messages=PROMPT, stream=True,  # type: ignore[arg-type]
            extra_headers=streamed,
        )  # fmt: skip
        text = "".join([c.choices[0].delta.content or "" async for c in retry if c.choices])
        assert text == again.parse().choices[0].message.content  # the same question's answer


def keyed(idempotency_key: str) -> httpx.AsyncClient:
    """An HTTP client of tenant acme sending every call with one Idempotency-Key."""
    headers = {"authorization": f"Bearer {KEY}", "idempotency-key": idempotency_key}
    return httpx.AsyncClient(timeout=60, headers=headers)


async def test_a_plain_call_with_the_key_of_a_running_stream_gets_its_whole_answer(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """A plain call with the Idempotency-Key of a stream in flight waits for the same
    request; its last record went to the stream's listener only, so the plain call got
    a 504 after the gateway's whole timeout although the answer had come."""
    async with stack(kafka_settings, simulator) as (_, gateway), keyed("shared-1") as http:
        url = f"{gateway.base_url}/chat/completions"
        body = {"model": "turnout/slow", "messages": PROMPT}
        streamed = asyncio.create_task(http.post(url, json={**body, "stream": True}))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        plain = await http.post(url, json=body)
        assert plain.status_code == 200, plain.text
        assert time.monotonic() - started < 15  # the gateway's timeout is 30 s
        events = sse_events((await streamed).text)
        text = "".join(
            json.loads(data)["choices"][0]["delta"].get("content") or ""
            for _, data in events[:-1] if json.loads(data)["choices"]
        )  # fmt: skip
        assert plain.json()["choices"][0]["message"]["content"] == text


async def test_a_body_that_never_arrives_whole_is_a_408_not_a_connection_held_open(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """A client that sent fewer bytes than its Content-Length held its connection (and
    the gateway's handler) for as long as it liked: over 90 s in the review."""
    async with stack(kafka_settings, simulator, timeout_s=2) as (_, gateway):
        host, port = gateway.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nAuthorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        started = time.monotonic()
        head = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        assert head.startswith(b"HTTP/1.1 408"), head
        assert time.monotonic() - started < 5


async def test_a_stream_sent_again_with_its_idempotency_key_gets_it_from_the_first_chunk(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """An SDK's retry of a stream still running joined it where it was (14 of its 16
    chunks in the review that found it): no opening words, yet `stop` and `[DONE]` as
    if whole. It is relayed from the first chunk now, while it runs and after it ended."""
    async with stack(kafka_settings, simulator) as (_, gateway), keyed("again-1") as http:
        url = f"{gateway.base_url}/chat/completions"
        body = {"model": "turnout/slow", "messages": PROMPT, "stream": True}
        first = asyncio.create_task(http.post(url, json=body))
        await asyncio.sleep(0.4)  # a few of its ~11 chunks (one each 100 ms) are out
        second = await http.post(url, json=body)
        whole = sse_events((await first).text)
        assert whole[-1] == (None, "[DONE]") and len(whole) > 8
        assert sse_events(second.text) == whole
        assert sse_events((await http.post(url, json=body)).text) == whole  # after its end


async def test_a_cancel_of_a_request_others_wait_on_is_ignored_and_all_are_answered(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """B asks what A asks while A's call runs, so B waits on A's answer (coalesced). A's
    cancel (its client went away, or the gateway gave up) aborted A's call, and the core
    then ignored the cancel (A has a follower): A stayed in flight with no call, B and
    every later copy of the question waited for ever. Now the call runs on for B."""
    cfg = gateway_config(kafka_settings, simulator)
    async with running(cfg), AsyncTurnout(kafka_settings) as turnout:
        ask = {"tenant": "acme", "task_type": "stalling", "temperature": 0, "timeout_s": 20}
        leader = asyncio.create_task(turnout.route(PROMPT, request_id="lead-1", **ask))
        await asyncio.sleep(0.5)
        follower = asyncio.create_task(turnout.route(PROMPT, request_id="follow-1", **ask))
        await asyncio.sleep(0.5)
        await turnout.cancel("lead-1", tenant="acme")
        answers = await asyncio.gather(leader, follower)
        assert [a["status"] for a in answers] == ["ok", "ok"], answers
        assert answers[1]["coalesced"] is True


async def test_a_cancel_record_stops_a_stream_over_kafka_and_another_tenant_cannot(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    cfg = gateway_config(kafka_settings, simulator)
    async with running(cfg), AsyncTurnout(kafka_settings) as turnout:
        stream = await turnout.stream(PROMPT, tenant="acme", task_type="slow")
        chunks = aiter(stream)
        await anext(chunks)
        await turnout.cancel(stream.request_id, tenant="mallory")  # not theirs: ignored
        await asyncio.sleep(0.3)
        await turnout.cancel(stream.request_id, tenant="acme")
        with pytest.raises(StreamFailed) as stopped:
            async for _ in chunks:
                pass
        assert stopped.value.response["status"] == "cancelled"
        assert stopped.value.response["cost_usd"] > 0
        assert stopped.value.response["stream"]["chunks"] >= 2  # it ran on after mallory's


async def test_a_stream_is_cut_at_what_its_budget_reserved_and_spend_stays_within_it(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """LiteLLM #41610 / Envoy AI Gateway #2394: the request that crosses the limit
    completes anyway. Here a stream longer than its reservation pays for is cut there."""
    whole = direct(simulator, "openai/gpt-4o-mini")["choices"][0]["message"]["content"]
    assert len(whole) > 120  # longer than the 20 tokens (~80 characters) reserved
    cfg = gateway_config(kafka_settings, simulator)
    async with running(cfg), AsyncTurnout(kafka_settings) as turnout:
        # one candidate: the reservation is this model's worst case (with several, the
        # priciest one's, and a cheaper model's stream may run longer within it)
        stream = await turnout.stream(PROMPT, tenant="capped", task_type="single", temperature=0)
        chunks = [c async for c in stream]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        last = stream.response
        assert last is not None and last["status"] == "ok"
        assert whole.startswith(text) and 0 < len(text) <= 20 * 4
        assert last["response"]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert last["usage_estimated"] is True
        envs = await read_events(
            kafka_settings.bootstrap, kafka_settings.topics.events,
            lambda es: any(e.type == "turnout.request.completed" for e in es),
        )  # fmt: skip
        (cut,) = of_type(envs, "stream.cut")
        assert cut.data.why == "budget" and cut.data.completion_tokens <= 20
        (reserved,) = of_type(envs, "budget.reserved")
        charged = sum(e.data.amount_micros for e in of_type(envs, "budget.charged"))
        assert 0 < charged <= reserved.data.amount_micros <= 10_000  # within the cent


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(id, data) of each event of an SSE body."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        out.append((fields.get("id"), fields["data"]))
    return out


async def test_last_event_id_resumes_exactly_after_that_chunk(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    async with (
        stack(kafka_settings, simulator) as (_, gateway),
        httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {KEY}"}) as http,
    ):
        body = {"model": "turnout/slow", "messages": PROMPT, "stream": True}
        first = await http.post(f"{gateway.base_url}/chat/completions", json=body)
        events = sse_events(first.text)
        assert events[-1] == (None, "[DONE]") and len(events) > 4
        ids = [int(i) for i, _ in events[:-1] if i is not None]
        assert ids == list(range(1, len(ids) + 1))
        rid = first.headers["x-request-id"]
        url = f"{gateway.base_url}/chat/completions/{rid}/stream"
        again = await http.get(url, headers={"last-event-id": "2"})
        assert again.status_code == 200
        assert sse_events(again.text) == events[2:]  # chunk 3 on, byte for byte, then [DONE]
        assert sse_events((await http.get(url, headers={"last-event-id": str(ids[-1])})).text) == [
            (None, "[DONE]")
        ]
        other = await http.get(url, headers={"authorization": f"Bearer {POOR_KEY}"})
        assert other.status_code == 404  # another tenant's stream is not found
        odd = await http.get(url, headers={"last-event-id": b"\xb2"})  # latin-1 "²"
        assert odd.status_code == 400  # a digit to str.isdigit, not to int(): once a 503


async def test_a_streamed_answer_is_cached_as_its_chunks_and_a_hit_replays_them(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """LiteLLM #11145: a cached stream replays as one lump. Here it replays the chunks."""
    cfg = gateway_config(kafka_settings, simulator)
    cfg = msgspec.structs.replace(
        cfg, streaming=msgspec.structs.replace(cfg.streaming, flush_tokens=2)
    )
    async with running(cfg), AsyncTurnout(kafka_settings) as turnout:
        first = await turnout.stream(PROMPT, tenant="acme", temperature=0)
        original = [c async for c in first]
        plain = await turnout.route(PROMPT, tenant="acme", temperature=0)
        again = await turnout.stream(PROMPT, tenant="acme", temperature=0)
        replayed = [c async for c in again]
        assert first.response is not None and again.response is not None
        assert first.response["cached"] is False and len(original) > 1
        assert plain["cached"] is False  # a whole answer is cached apart from a stream's
        assert again.response["cached"] is True and again.response["cost_usd"] == 0
        assert replayed == original  # the same chunks, in the same order
        assert again.response["response"] == first.response["response"]
        assert again.attempt == 0 and again.model == first.model
        broken = await turnout.stream(PROMPT, tenant="acme", task_type="broken", temperature=0)
        with pytest.raises(StreamFailed):
            async for _ in broken:
                pass
        retry = await turnout.stream(PROMPT, tenant="acme", task_type="broken", temperature=0)
        with pytest.raises(StreamFailed):  # a failed stream was not cached: it fails again
            async for _ in retry:
                pass


async def test_a_router_that_dies_mid_stream_before_its_first_token_is_logged_streams_it_once(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """The first chunk goes out before its first-token event is acked. Here that event
    never reaches the log and the router dies mid-stream: the next owner finds the
    stream's chunks on the reply topic and ends it partial; it never streams it again
    from seq 1 (a client would see two answers spliced into one). What was streamed
    (the upstream bills it) is charged to the tenant, estimated from those chunks, as
    for any stream cut short: it used to be released, as if nothing had been spent."""
    from turnout.service.runtime.router import StateDiverged

    cfg = gateway_config(kafka_settings, simulator)
    async with AsyncTurnout(kafka_settings) as turnout:
        async with running(cfg, "first") as first:

            async def unrecorded(call: Any, ttft_ms: float) -> bool:
                return True  # the gate opens, but no first-token event is written

            first._first_token = unrecorded  # type: ignore[method-assign]
            stream = await turnout.stream(PROMPT, tenant="acme", task_type="slow")
            records = stream.raw()
            seq, chunk = await anext(records)
            seqs, chars = [seq], delta_chars(json.loads(chunk))
            first._fail_fatally(StateDiverged("injected: the router dies mid-stream"))
        async with running(cfg, "next") as nxt:
            with pytest.raises(StreamFailed) as ended:
                async for seq, chunk in records:
                    seqs.append(seq)
                    chars += delta_chars(json.loads(chunk))
            await until(lambda: "acme" in nxt.state.budgets and not nxt.state.inflight, 30)
            spent = nxt.state.budgets["acme"].spent
    rid = stream.request_id
    envs = await read_events(
        kafka_settings.bootstrap, kafka_settings.topics.events,
        lambda es: any(e.type == "turnout.request.failed" and e.data.request_id == rid
                       for e in es),
    )  # fmt: skip
    charged = [e.data.amount_micros for e in envs if e.type == "turnout.budget.charged"
               and e.data.request_id == rid]  # fmt: skip
    response = ended.value.response
    assert seqs == list(range(1, len(seqs) + 1))  # never from 1 again
    assert response["partial"] is True
    assert response["error"]["code"] == "upstream_stream_error"
    assert sim_streams(simulator)["completed"] == 0  # nobody streamed it again to the end
    assert chars > 0 and response["usage"]["completion_tokens"] == -(-chars // 4)
    assert response["cost_usd"] > 0
    assert charged == [round(response["cost_usd"] * 1_000_000)]
    assert set(spent.values()) == {charged[0]}


async def test_a_first_token_the_log_refuses_stops_the_router_and_the_stream_runs_once(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """The first-token event is folded and handed to the producer in one step; if the
    producer refuses it, the router's state no longer matches the log: it stops
    (`StateDiverged`), as for any event it cannot publish, before any chunk went out.
    The next owner streams the request from its start, once."""
    from turnout.service.core import events as ev
    from turnout.service.runtime.router import StateDiverged

    cfg = gateway_config(kafka_settings, simulator)
    async with AsyncTurnout(kafka_settings) as turnout:
        async with running(cfg, "first") as first:
            real_enqueue = first._enqueue_events

            def enqueue(events: Any, *args: Any, **kwargs: Any) -> Any:
                if any(isinstance(e, ev.StreamFirstToken) for e in events):
                    raise ValueError("injected: the events producer refused a record")
                return real_enqueue(events, *args, **kwargs)

            first._enqueue_events = enqueue  # type: ignore[method-assign]
            stream = await turnout.stream(PROMPT, tenant="acme", task_type="slow")
            await asyncio.wait_for(first._stop.wait(), 30)  # type: ignore[union-attr]
        assert isinstance(first.fatal, StateDiverged)
        records = stream.raw()
        async with running(cfg, "next"):
            seqs = [seq async for seq, _ in records]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 1  # one stream, from 1
    assert stream.response is not None and stream.response["status"] == "ok"


async def test_no_first_token_in_time_is_a_failed_attempt_and_falls_back(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """A model that sends only keep-alives for 3 s, with ttft_timeout_s = 0.5: the attempt
    fails `timeout` (counted by the breaker), the next model answers, the client sees
    only its tokens."""
    cfg = gateway_config(kafka_settings, simulator)
    cfg = msgspec.structs.replace(
        cfg, streaming=msgspec.structs.replace(cfg.streaming, ttft_timeout_s=0.5)
    )
    async with running(cfg), AsyncTurnout(kafka_settings) as turnout:
        stream = await turnout.stream(PROMPT, tenant="acme", task_type="stalling", temperature=0)
        text = "".join([c["choices"][0]["delta"].get("content") or "" async for c in stream
                        if c["choices"]])  # fmt: skip
        assert stream.response is not None and stream.response["model"] == "good/model"
        assert text == direct(simulator, "good/model")["choices"][0]["message"]["content"]
        envs = await read_events(
            kafka_settings.bootstrap, kafka_settings.topics.events,
            lambda es: any(e.type == "turnout.request.completed" for e in es),
        )  # fmt: skip
        (failed,) = of_type(envs, "attempt.failed")
        assert failed.data.model == "stall/model" and failed.data.error_class == "timeout"
        assert failed.data.breaker_failure and "first token" in failed.data.message
        assert stream.response["latency_ms"] < 2500  # it did not wait the 3 s out


async def test_the_sync_client_streams_from_its_own_thread(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    from turnout.service.client import Turnout

    async with running(gateway_config(kafka_settings, simulator)):

        def call() -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
            with Turnout(kafka_settings) as client:
                stream = client.stream(PROMPT, tenant="acme", temperature=0)
                return list(stream), stream.response

        chunks, last = await asyncio.to_thread(call)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    expected = direct(simulator, "openai/gpt-4o-mini")
    assert text == expected["choices"][0]["message"]["content"]
    # like the async stream's, the last record: what it cost, and the upstream's usage
    assert last is not None and last["status"] == "ok" and last["cost_usd"] > 0
    assert last["usage"]["completion_tokens"] == expected["usage"]["completion_tokens"]


async def test_an_sdk_retry_with_the_same_idempotency_key_is_answered_once(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    async with stack(kafka_settings, simulator) as (_, gateway):
        before = sim_total(simulator)
        client = sdk(gateway)
        answers = [
            await client.chat.completions.with_raw_response.create(
                model="turnout/general", messages=PROMPT,  # type: ignore[arg-type]
                extra_headers={"Idempotency-Key": "same-1"},
            )
            for _ in range(3)
        ]  # fmt: skip
        after = sim_total(simulator)
    assert after - before == 1  # one upstream call for three sends
    bodies = {a.parse().choices[0].message.content for a in answers}
    assert len(bodies) == 1
    assert {a.headers["x-request-id"] for a in answers} == {"idem:acme/same-1"}


async def test_an_sdk_retry_through_another_gateway_is_answered_once(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """Two gateways side by side, each reading only its own replies. An SDK's retry that
    reaches the other one, with the same Idempotency-Key, after the first call finished
    or while it still runs, gets the one answer, and the upstream is called once: the
    answer once went only to the first gateway's reply topic, and the retry waited out
    its timeout."""
    async with stack(kafka_settings, simulator) as (cfg, first_gw):
        second_gw = await asyncio.to_thread(start_in_thread, cfg, port=0)
        try:
            one, two = sdk(first_gw, max_retries=0), sdk(second_gw, max_retries=0, timeout=20)
            before = sim_total(simulator)
            done = await one.chat.completions.create(
                model="turnout/general", messages=PROMPT,  # type: ignore[arg-type]
                extra_headers={"Idempotency-Key": "retry-1"},
            )  # fmt: skip
            again = await two.chat.completions.create(
                model="turnout/general", messages=PROMPT,  # type: ignore[arg-type]
                extra_headers={"Idempotency-Key": "retry-1"},
            )  # fmt: skip
            assert again.choices[0].message.content == done.choices[0].message.content
            slow = {"model": "turnout/stalling", "messages": PROMPT,
                    "extra_headers": {"Idempotency-Key": "retry-2"}}  # fmt: skip
            running = asyncio.create_task(one.chat.completions.create(**slow))  # 3 s upstream
            await asyncio.sleep(0.5)
            assert not running.done()
            meanwhile = await two.chat.completions.create(**slow)
            assert (
                meanwhile.choices[0].message.content == (await running).choices[0].message.content
            )
            assert sim_total(simulator) - before == 2  # one call for each key
        finally:
            await asyncio.to_thread(second_gw.stop)


async def test_a_caller_cannot_name_another_tenant_or_request_id_in_the_body(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """The body's own `tenant` and `request_id` once replaced the gateway's: tenant
    `poor`, with its own key, posted `{"tenant": "acme", "request_id":
    "idem:acme/order-42"}` and was handed acme's answer (and could spend acme's budget).
    Fields the gateway sets are refused in the body (400), and acme's answer stays
    acme's."""
    async with stack(kafka_settings, simulator) as (_, gateway):
        await sdk(gateway).chat.completions.create(
            model="turnout/general", messages=PROMPT,  # type: ignore[arg-type]
            extra_headers={"Idempotency-Key": "order-42"},
        )  # fmt: skip
        calls = sim_total(simulator)
        poor = sdk(gateway, POOR_KEY, max_retries=0)
        for extra in ({"tenant": "acme", "request_id": "idem:acme/order-42"},
                      {"task_type": "general"}, {"reply_to": "somewhere.else"}):  # fmt: skip
            with pytest.raises(openai.BadRequestError) as refused:
                await poor.chat.completions.create(
                    model="turnout/general", messages=PROMPT,  # type: ignore[arg-type]
                    extra_body=extra,
                )  # fmt: skip
            assert refused.value.code == "invalid_request"
            assert "the gateway sets it" in str(refused.value)
        assert sim_total(simulator) == calls


async def test_two_tenants_idempotency_keys_never_make_one_request(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """Tenant `acme` with key `b:c` and tenant `acme:b` with key `c`: two requests, each
    answered with its own completion (they once shared `idem:acme:b:c`, and the second
    tenant was handed the first one's answer)."""
    asks = {"acme": ("b:c", "Name a colour"), "acme:b": ("c", "Name a fruit")}
    async with stack(kafka_settings, simulator) as (_, gateway):
        before = sim_total(simulator)
        answers = {}
        for tenant, (idem, prompt) in asks.items():
            client = sdk(gateway, KEY if tenant == "acme" else COLON_KEY)
            answers[tenant] = await client.chat.completions.with_raw_response.create(
                model="openai/gpt-4o-mini", temperature=0,
                messages=[{"role": "user", "content": prompt}],
                extra_headers={"Idempotency-Key": idem},
            )  # fmt: skip
        after = sim_total(simulator)
    assert after - before == 2
    ids = {tenant: a.headers["x-request-id"] for tenant, a in answers.items()}
    assert ids == {"acme": "idem:acme/b:c", "acme:b": "idem:acme:b/c"}
    for tenant, (_, prompt) in asks.items():
        own = direct(simulator, "openai/gpt-4o-mini", [{"role": "user", "content": prompt}])
        got = answers[tenant].parse().choices[0].message.content
        assert got == own["choices"][0]["message"]["content"]


async def test_identical_concurrent_streams_share_one_upstream_stream(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """The second of two identical cacheable streams joins the first while it runs: it
    gets the chunks published before it came, then the rest live; one upstream stream."""
    cfg = gateway_config(kafka_settings, simulator)
    async with running(cfg), AsyncTurnout(kafka_settings) as turnout:
        first = await turnout.stream(PROMPT, tenant="acme", task_type="slow", temperature=0)
        first_chunks = aiter(first)
        head = [await anext(first_chunks)]  # the leader is streaming: now the second asks
        second = await turnout.stream(PROMPT, tenant="acme", task_type="slow", temperature=0)
        theirs = [c async for c in second]
        mine = head + [c async for c in first_chunks]
    assert first.response is not None and second.response is not None
    assert second.response["coalesced"] is True and second.response["cost_usd"] == 0
    assert first.response["coalesced"] is False and first.response["cost_usd"] > 0
    # its chunk records say so from the first (the gateway's x-turnout-cache: coalesced)
    assert (second.coalesced, first.coalesced) == (True, False)
    assert theirs == mine and len(mine) > 2  # every chunk, in order, also the early ones
    assert second.response["response"] == first.response["response"]
    streams = sim_streams(simulator)
    assert (streams["completed"], streams["aborted"]) == (1, 0)  # one upstream stream


async def test_a_body_too_large_for_a_kafka_record_is_413_and_never_retried_by_the_sdk(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """Just under `[gateway] max_body_bytes` (1,000,000) but over what an intake record
    holds once the gateway adds its fields: once a 503 `not_ready` from the refused
    produce (which SDKs retry, sending the megabyte again); now a 413 at once, as for a
    body over the setting, read no further than the limit."""
    async with stack(kafka_settings, simulator) as (_, gateway):
        before = gateway.app.requests
        client = sdk(gateway, max_retries=2)
        for size in (999_800, 3_000_000):
            big = [{"role": "user", "content": "x" * size}]
            with pytest.raises(openai.APIStatusError) as refused:
                await client.chat.completions.create(model="turnout/general", messages=big)  # type: ignore[arg-type]
            assert refused.value.status_code == 413
            assert refused.value.code == "request_too_large"
        assert gateway.app.requests == before  # refused before a request was made
        ok = await client.chat.completions.create(model="turnout/general", messages=PROMPT)  # type: ignore[arg-type]
        assert ok.choices[0].message.content
        # under the limit as sent, over a record once re-encoded (1e9 -> 1000000000.0)
        grows = (
            b'{"model": "turnout/general", "messages": [{"role": "user", "content": "hi"}],'
            b' "metadata": {"xs": [' + b",".join([b"1e9"] * 200_000) + b"]}}"
        )
        assert len(grows) < 990_000
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.post(
                f"{gateway.base_url}/chat/completions", content=grows,
                headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
            )  # fmt: skip
        assert answer.status_code == 413  # a 503 once, which SDKs retry
        assert answer.json()["error"]["code"] == "request_too_large"


async def test_bodies_the_router_refuses_are_a_400_at_once_not_a_504_after_the_timeout(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """The router refused these, and answered on the default responses topic instead of
    the gateway's, so each client waited the gateway's whole timeout (120 s by default,
    three times over with the SDK's retries) for a 504 "is a router running?". A body
    with a `cancel` key went on as a cancel record; one nested 5,000 deep was a 500."""
    bodies: list[Any] = [
        {"messages": [{"content": "no role"}]},
        {"messages": [{"role": 7, "content": "x"}]},
        {"messages": ["not an object"]},
        {"messages": PROMPT, "max_tokens": 0},
        {"messages": PROMPT, "max_tokens": "10"},
        {"messages": PROMPT, "max_completion_tokens": -1},
        {"messages": PROMPT, "cache": "yes"},
        {"messages": PROMPT, "metadata": [1]},
        {"messages": PROMPT, "cancel": "zzz"},
    ]
    deep = b'{"messages": [{"role": "user", "content": "x"}], "x": ' + b"[" * 5000 + b"]" * 5000
    async with (
        stack(kafka_settings, simulator) as (_, gateway),
        httpx.AsyncClient(timeout=60, headers={"authorization": f"Bearer {KEY}"}) as http,
    ):
        url = f"{gateway.base_url}/chat/completions"
        for body in [*bodies, deep]:
            started = time.monotonic()
            if isinstance(body, bytes):
                answer = await http.post(url, content=body + b"}")
            else:
                answer = await http.post(url, json={"model": "turnout/general", **body})
            assert answer.status_code == 400, (body, answer.status_code, answer.text)
            assert answer.json()["error"]["type"] == "invalid_request_error"
            assert time.monotonic() - started < 10, body  # the gateway waits 30 s here


async def test_a_stream_refused_before_it_was_sent_is_sent_when_its_key_comes_again(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """A stream the gateway refused before handing it to Kafka (413 here; a 503 while
    Kafka is down) was remembered as served: the retry with its key was read back from a
    reply topic that never had it, and waited for the gateway's timeout."""
    grows = (
        b'{"model": "turnout/general", "stream": true, "messages": [{"role": "user", '
        b'"content": "hi"}], "metadata": {"xs": [' + b",".join([b"1e9"] * 200_000) + b"]}}"
    )
    async with stack(kafka_settings, simulator) as (_, gateway), keyed("grown-1") as http:
        url = f"{gateway.base_url}/chat/completions"
        refused = await http.post(url, content=grows, headers={"content-type": "application/json"})
        assert refused.status_code == 413
        started = time.monotonic()
        body = {"model": "turnout/general", "messages": PROMPT, "stream": True}
        retry = await http.post(url, json=body)
        assert retry.status_code == 200 and sse_events(retry.text)[-1] == (None, "[DONE]")
        assert time.monotonic() - started < 15  # the gateway's timeout is 30 s


async def test_through_the_gateway_a_stream_sharing_anothers_says_coalesced(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """`x-turnout-cache` tells a streamed answer that joined an identical one in flight
    (`coalesced`) from one that called the upstream itself (`miss`): a coalesced stream
    was once labelled `miss`."""
    async with stack(kafka_settings, simulator) as (_, gateway):
        body = {"model": "turnout/slow", "messages": PROMPT, "stream": True, "temperature": 0}
        url, auth = f"{gateway.base_url}/chat/completions", {"authorization": f"Bearer {KEY}"}
        async with (
            httpx.AsyncClient(timeout=30, headers=auth) as http,
            http.stream("POST", url, json=body) as first,
        ):
            lines = first.aiter_lines()
            while not (await anext(lines)).startswith("data: {"):
                pass  # the leader streams: now the same request again
            async with http.stream("POST", url, json=body) as second:
                told = second.headers
                rest = [line async for line in second.aiter_lines()]
            async for _ in lines:
                pass
        assert first.headers["x-turnout-cache"] == "miss"
        assert told["x-turnout-cache"] == "coalesced"
        assert told["x-turnout-model"] == first.headers["x-turnout-model"] == "slow/model"
        assert rest[-2:] == ["data: [DONE]", ""]


# -- the relay on one producer (responses and chunks share it) --------------------------


def _token(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


async def _gate_open(_ttft_ms: float) -> bool:
    return True


def _relay(producer: BatchedProducer, topic: str, partition: int, request_id: str) -> Relay:
    return Relay(
        producer=producer, topic=topic, partition=partition, request_id=request_id,
        model="m", attempt=1, first_token=_gate_open, flush_ms=25, flush_tokens=1,
        clock=SystemClock(),
    )  # fmt: skip


async def test_a_follower_whose_catch_up_cannot_be_delivered_fails_alone(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    """A coalesced request joining a stream is sent the records published so far, acked
    before it counts as a follower: if they cannot be delivered its join fails (its
    failure, raised to its caller), and the leader's stream goes on, whole and in order."""
    topic = kafka_topics.responses
    async with BatchedProducer(kafka_settings.replace(linger_ms=5)) as producer:
        relay = _relay(producer, topic, 0, "leader")
        await relay.chunk(_token("Hello"))
        with pytest.raises(Exception):  # noqa: B017 - aiokafka's own error, whatever it is
            await asyncio.wait_for(relay.follow("follower", topic, 999), 30)
        assert "follower" not in relay.followers
        await relay.chunk(_token(" world"))
        assert await asyncio.wait_for(relay.finish(), 30) == 2
    settings = kafka_settings
    async with Reader(settings, [TopicPartition(topic, 0)]) as reader:
        got = await reader.read_until(lambda r: dict(r.headers)[SEQ_HEADER] == b"2")
    assert [(r.key, dict(r.headers)[SEQ_HEADER]) for r in got] == [
        (b"leader", b"1"), (b"leader", b"2"),
    ]  # fmt: skip


async def test_no_chunk_goes_out_once_the_first_is_known_lost(
    kafka_settings: KafkaSettings, kafka_topics: Topics
):
    """A reader must never see a stream's seq 2 without its seq 1: once the first chunk's
    delivery has failed, the next chunk raises that failure instead of going out."""
    topic = kafka_topics.responses
    async with BatchedProducer(kafka_settings.replace(linger_ms=5)) as producer:
        relay = _relay(producer, topic, 999, "lost")  # a partition the topic lacks
        await relay.chunk(_token("Hello"))  # seq 1: sent, its delivery fails
        probe = producer.enqueue(topic, b"probe", partition=999, urgent=True)
        with pytest.raises(Exception):  # noqa: B017 - aiokafka's own error, whatever it is
            await asyncio.wait_for(probe, 30)  # after seq 1's batch: its failure is known
        with pytest.raises(Exception):  # noqa: B017
            await relay.chunk(_token(" world"))
        assert relay.seq == 2  # counted, never sent
