"""`turnout simulate` over real loopback HTTP, driven by the official OpenAI client.

Each simulator here is real: uvicorn serving `SimulatorApp` on a free port in
a background thread (`start_in_thread`), or the CLI as a subprocess. The
OpenAI client runs with `max_retries=0` so every outcome surfaces as-is.

To reuse in other suites:

    with start_in_thread(SimulatorOptions(scenario=parse_scenario(text))) as sim:
        AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        httpx.get(f"{sim.url}/_sim/stats")
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from turnout.service.upstream.simulator import (
    RunningSimulator,
    SimulatorOptions,
    parse_scenario,
    start_in_thread,
)

SCENARIO = """
seed = 11
[[rule]]
model = "err/402"
outcome = 402
[[rule]]
model = "err/408"
outcome = 408
[[rule]]
model = "err/429"
outcome = 429
retry_after_s = 2
[[rule]]
model = "err/502"
outcome = 502
[[rule]]
model = "err/503"
outcome = 503
retry_after_s = 3
[[rule]]
model = "err/timeout"
outcome = "timeout"
[[rule]]
model = "err/reset"
outcome = "reset"
[[rule]]
model = "err/malformed"
outcome = "malformed"
[[rule]]
model = "err/midstream"
outcome = "midstream_error"
[[rule]]
model = "slow/*"
latency_ms = 200
[prices."priced/model"]
prompt = "0.000001"
completion = "0.000002"
"""

PROMPT = "Say hello to the router, in one sentence please."
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
DECIMAL = re.compile(r"^\d+(\.\d+)?$")


def _start(text: str = "", **options: Any) -> RunningSimulator:
    return start_in_thread(SimulatorOptions(scenario=parse_scenario(text), **options))


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSimulator]:
    with _start(SCENARIO) as running:
        yield running


@pytest.fixture
async def client(sim: RunningSimulator) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0) as c:
        yield c


@pytest.fixture
async def http(sim: RunningSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=5) as c:
        yield c


async def _sse_events(
    http: httpx.AsyncClient, body: dict[str, Any]
) -> tuple[httpx.Response, list[str]]:
    """The raw SSE lines (comments and data) of one streamed request."""
    async with http.stream("POST", "/api/v1/chat/completions", json=body) as response:
        lines = [line async for line in response.aiter_lines() if line]
    return response, lines


# ----------------------------------------------------------------------------- completions


async def test_completion_has_openrouter_fields_and_prices(client: AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini",
        messages=HELLO,
        max_tokens=200,
    )
    completion = raw.parse()
    assert completion.id.startswith("gen-") and raw.headers["x-generation-id"] == completion.id
    assert completion.object == "chat.completion" and completion.created > 1_700_000_000
    assert completion.model == "openai/gpt-4o-mini"
    assert completion.model_extra and completion.model_extra["provider"] == "OpenAI"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == -(-len(PROMPT) // 4)
    assert usage.completion_tokens == -(-len(choice.message.content) // 4) <= 200
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    cost = usage.prompt_tokens * 0.00000015 + usage.completion_tokens * 0.0000006
    assert usage.model_extra and usage.model_extra["cost"] == pytest.approx(cost)


async def test_same_request_same_answer_streamed_or_not(client: AsyncOpenAI) -> None:
    first = await client.chat.completions.create(model="any/model", messages=HELLO)
    second = await client.chat.completions.create(model="any/model", messages=HELLO)
    other = await client.chat.completions.create(model="other/model", messages=HELLO)
    assert first.id != second.id
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    stream = await client.chat.completions.create(model="any/model", messages=HELLO, stream=True)
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == first.choices[0].message.content


async def test_max_tokens_bounds_the_answer(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="openai/gpt-4o-mini",
        messages=HELLO,
        max_tokens=3,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens <= 3


def test_the_sync_client_works_too(sim: RunningSimulator) -> None:
    with openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0) as client:
        completion = client.chat.completions.create(model="a/b", messages=HELLO)
    assert completion.choices[0].message.content


# ----------------------------------------------------------------------------- streaming


async def test_streaming_assembles_content_and_ends_with_usage(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="anthropic/claude-3.5-haiku",
        messages=HELLO,
        stream=True,
    )
    content, finish, usage = [], None, None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk" and chunk.id.startswith("gen-")
        if chunk.choices:
            content.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage
    assert finish == "stop" and usage is not None
    assert usage.completion_tokens == -(-len("".join(content)) // 4)


async def test_stream_wire_format(http: httpx.AsyncClient) -> None:
    body = {"model": "openai/gpt-4o-mini", "messages": HELLO, "stream": True}
    response, lines = await _sse_events(http, body)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-generation-id"].startswith("gen-")
    assert lines[0] == ": OPENROUTER PROCESSING"
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[1:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert {c["id"] for c in chunks} == {response.headers["x-generation-id"]}


async def test_latency_holds_the_answer_and_streams_keep_alive_first(
    http: httpx.AsyncClient,
) -> None:
    started = time.perf_counter()
    response = await http.post(
        "/api/v1/chat/completions", json={"model": "slow/x", "messages": HELLO}
    )
    assert response.status_code == 200 and time.perf_counter() - started >= 0.2
    started = time.perf_counter()
    body = {"model": "slow/x", "messages": HELLO, "stream": True}
    async with http.stream("POST", "/api/v1/chat/completions", json=body) as stream:
        lines = stream.aiter_lines()
        assert await anext(lines) == ": OPENROUTER PROCESSING"
        kept_alive = time.perf_counter()
        assert (await anext(lines)) == ""
        assert (await anext(lines)).startswith("data: ")
        answered = time.perf_counter()
        async for _ in lines:
            pass
    assert answered - started >= 0.2 and answered - kept_alive >= 0.1


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("model", "status", "error", "retry_after"),
    [
        ("err/402", 402, openai.APIStatusError, None),
        ("err/408", 408, openai.APIStatusError, None),
        ("err/429", 429, openai.RateLimitError, "2"),
        ("err/502", 502, openai.InternalServerError, None),
        ("err/503", 503, openai.InternalServerError, "3"),
    ],
)
async def test_error_statuses_surface_as_the_client_expects(
    client: AsyncOpenAI,
    model: str,
    status: int,
    error: type[openai.APIStatusError],
    retry_after: str | None,
) -> None:
    with pytest.raises(error) as caught:
        await client.chat.completions.create(model=model, messages=HELLO)
    assert caught.value.status_code == status
    assert caught.value.response.headers.get("retry-after") == retry_after
    body = caught.value.response.json()
    assert body["error"]["code"] == status and body["error"]["message"]
    assert body["error"]["metadata"]["provider_name"] == "Err"


async def test_a_bad_body_is_a_400(client: AsyncOpenAI, http: httpx.AsyncClient) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="a/b", messages=[])
    assert caught.value.response.json()["error"]["code"] == 400
    response = await http.post("/api/v1/chat/completions", content=b"{nope")
    assert response.status_code == 400
    assert response.json() == {"error": {"code": 400, "message": ANY_STR}}


class _AnyStr:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)


ANY_STR: Any = _AnyStr()


async def test_timeout_hangs_until_the_client_gives_up(client: AsyncOpenAI) -> None:
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="err/timeout", messages=HELLO, timeout=0.3)
    assert 0.3 <= time.perf_counter() - started < 2


async def test_reset_drops_the_connection_without_a_response(
    client: AsyncOpenAI, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with pytest.raises(openai.APIConnectionError) as caught:
        await client.chat.completions.create(model="err/reset", messages=HELLO)
    assert not isinstance(caught.value, openai.APITimeoutError)
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        await http.post("/api/v1/chat/completions", json={"model": "err/reset", "messages": HELLO})
    assert (await http.get("/health")).status_code == 200
    assert not [r for r in caplog.records if r.name.startswith("uvicorn")]  # no 500, no error


async def test_malformed_is_a_200_with_invalid_json(
    client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    response = await http.post(
        "/api/v1/chat/completions", json={"model": "err/malformed", "messages": HELLO}
    )
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)
    with pytest.raises((json.JSONDecodeError, openai.APIResponseValidationError)):
        await client.chat.completions.create(model="err/malformed", messages=HELLO)


async def test_midstream_error_in_a_stream(client: AsyncOpenAI, http: httpx.AsyncClient) -> None:
    stream = await client.chat.completions.create(
        model="err/midstream",
        messages=HELLO,
        stream=True,
    )
    received = []
    with pytest.raises(openai.APIError, match="Provider disconnected"):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received)
    body = {"model": "err/midstream", "messages": HELLO, "stream": True}
    response, lines = await _sse_events(http, body)
    assert response.status_code == 200 and lines[-1] != "data: [DONE]"
    last = json.loads(lines[-1][6:])
    assert last["error"]["message"] and last["choices"][0]["finish_reason"] == "error"


async def test_midstream_error_without_streaming_is_a_200_error_body(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/api/v1/chat/completions", json={"model": "err/midstream", "messages": HELLO}
    )
    assert response.status_code == 200
    assert response.json()["error"]["code"] == 502


async def test_require_key() -> None:
    with _start(require_key=True) as sim:
        async with httpx.AsyncClient(base_url=sim.url) as http:
            response = await http.post(
                "/api/v1/chat/completions", json={"model": "a/b", "messages": HELLO}
            )
        assert response.status_code == 401
        assert response.json()["error"] == {"code": 401, "message": "No auth credentials found"}
        async with AsyncOpenAI(base_url=sim.base_url, api_key="nope", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError):
                await client.chat.completions.create(model="a/b", messages=HELLO)
        async with AsyncOpenAI(base_url=sim.base_url, api_key="sk-or-v1-x", max_retries=0) as ok:
            assert (await ok.chat.completions.create(model="a/b", messages=HELLO)).choices


# ----------------------------------------------------------------------------- scenarios


async def test_time_phases_503_then_recovery() -> None:
    text = '[[rule]]\nmodel = "flaky/*"\nfrom_s = 0\nto_s = 1.0\noutcome = 503\n'
    with _start(text) as sim:
        async with AsyncOpenAI(base_url=sim.base_url, api_key="sk-t", max_retries=0) as client:
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(model="flaky/m", messages=HELLO)
            assert (await client.chat.completions.create(model="steady/m", messages=HELLO)).choices
            await asyncio.sleep(max(0.0, 1.05 - sim.app.state.elapsed_s()))
            assert (await client.chat.completions.create(model="flaky/m", messages=HELLO)).choices


SEEDED = """
seed = 42
latency_ms = {median = 1, p99 = 5}
[[rule]]
outcome = 503
rate = 0.5
"""


async def _statuses(sim: RunningSimulator, n: int = 24) -> list[int]:
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        body = {"model": "seeded/m", "messages": HELLO}
        return [(await http.post("/chat/completions", json=body)).status_code for _ in range(n)]


async def test_same_seed_same_outcomes() -> None:
    with _start(SEEDED) as first, _start(SEEDED) as second:
        statuses = await _statuses(first)
        assert set(statuses) == {200, 503}
        assert await _statuses(second) == statuses
        async with httpx.AsyncClient(base_url=first.url) as http:
            assert (await http.post("/_sim/reset?restart=1")).status_code == 200
        assert await _statuses(first) == statuses
    with _start(SEEDED.replace("42", "43")) as other:
        assert await _statuses(other) != statuses


# ----------------------------------------------------------------------------- other endpoints


async def test_models_list_prices_as_decimal_strings(
    client: AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    await client.chat.completions.create(model="seen/model", messages=HELLO)
    ids = [model.id async for model in client.models.list()]
    data = {entry["id"]: entry for entry in (await http.get("/api/v1/models")).json()["data"]}
    assert list(data) == ids
    for model in ("openai/gpt-4o-mini", "anthropic/claude-3.5-haiku", "seen/model"):
        assert model in data
    assert ids[:3] == [
        "openai/gpt-4o-mini",
        "anthropic/claude-3.5-haiku",
        "meta-llama/llama-3.1-8b-instruct",
    ]
    assert data["priced/model"]["pricing"]["prompt"] == "0.000001"
    assert data["priced/model"]["pricing"]["completion"] == "0.000002"
    for entry in data.values():
        assert DECIMAL.match(entry["pricing"]["prompt"])
        assert DECIMAL.match(entry["pricing"]["completion"])
        assert entry["context_length"] > 0 and entry["name"]


async def test_generation_stats(client: AsyncOpenAI, http: httpx.AsyncClient) -> None:
    completion = await client.chat.completions.create(model="priced/model", messages=HELLO)
    response = await http.get("/api/v1/generation", params={"id": completion.id})
    assert response.status_code == 200
    data = response.json()["data"]
    assert completion.usage is not None
    assert data["id"] == completion.id and data["model"] == "priced/model"
    assert data["tokens_prompt"] == completion.usage.prompt_tokens
    assert data["tokens_completion"] == completion.usage.completion_tokens
    cost = completion.usage.prompt_tokens * 1e-6 + completion.usage.completion_tokens * 2e-6
    assert data["total_cost"] == pytest.approx(cost)
    assert data["streamed"] is False and data["finish_reason"] == "stop"
    missing = await http.get("/api/v1/generation", params={"id": "gen-nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404
    assert (await http.get("/api/v1/generation")).status_code == 400


async def test_stats_count_per_model_and_outcome_and_reset() -> None:
    with _start('[[rule]]\nmodel = "down/*"\noutcome = 503\n') as sim:
        async with httpx.AsyncClient(base_url=sim.url) as http:
            for model in ("up/a", "up/a", "down/b"):
                body = {"model": model, "messages": HELLO}
                await http.post("/api/v1/chat/completions", json=body)
            await http.post("/api/v1/chat/completions", json={"model": "up/a"})
            stats = (await http.get("/_sim/stats")).json()
            assert stats["total"] == 4
            assert stats["by_model"] == {"up/a": 2, "down/b": 1}
            assert stats["by_outcome"] == {"ok": 2, "503": 1, "400": 1}
            assert (await http.post("/_sim/reset")).status_code == 200
            stats = (await http.get("/_sim/stats")).json()
            assert (stats["total"], stats["by_model"], stats["by_outcome"]) == (0, {}, {})


async def test_health_and_unknown_routes(http: httpx.AsyncClient) -> None:
    assert (await http.get("/health")).json() == {"status": "ok"}
    missing = await http.get("/api/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404
    assert (await http.get("/api/v1/chat/completions")).status_code == 405


# ----------------------------------------------------------------------------- serving


async def test_stopping_releases_a_hanging_request() -> None:
    sim = _start('[[rule]]\noutcome = "timeout"\n')
    async with AsyncOpenAI(base_url=sim.base_url, api_key="sk-t", max_retries=0) as client:
        hanging = asyncio.ensure_future(
            client.chat.completions.create(model="a/b", messages=HELLO, timeout=30)
        )
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        await asyncio.to_thread(sim.stop)
        assert time.perf_counter() - started < 2
        with pytest.raises(openai.APIConnectionError):
            await hanging


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "turnout", "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_cli_serves_and_stops_cleanly_on_sigterm() -> None:
    process = _cli("--port", "0", "--seed", "1", "--latency-ms", "1", "--error-rate", "0")
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        match = re.fullmatch(r"simulator listening on (http://127\.0\.0\.1:\d+/api/v1)", line)
        assert match, line
        with httpx.Client(base_url=match.group(1)) as http:
            response = http.post("/chat/completions", json={"model": "a/b", "messages": HELLO})
        assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.communicate()


def test_cli_lists_every_scenario_problem(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text('seed = "x"\n[[rule]]\noutcome = "explode"\nrate = 2\n')
    process = _cli("--scenario", str(scenario), "--port", "0")
    out, err = process.communicate(timeout=20)
    assert process.returncode == 1 and out == ""
    assert err.count("\n") == 1 and "3 problems" in err
    for problem in ("seed:", "rule[0].outcome:", "rule[0].rate:"):
        assert problem in err
