"""The upstream client against the real simulator over loopback.

Every outcome the simulator can act out (scenario rules keyed by model name,
written to a scenario file) must come back as the right `CallResult`, on the
aiohttp transport and on httpx's default one: the translation has to hold for
both exception families. Also: the API key is sent only when its variable is
set and never shows in reprs or stats; prices come from `/models`, and the
price cache keeps its last good table when the upstream goes away.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from turnout.service.core.config import BreakerConfig, UpstreamConfig
from turnout.service.core.outcomes import CLASSES
from turnout.service.core.pricing import Price
from turnout.service.upstream.client import (
    CallResult,
    ClientOptions,
    StreamOutcome,
    UpstreamClient,
)
from turnout.service.upstream.pricing import PriceCache, fetch_prices, parse_models
from turnout.service.upstream.simulator import RunningSimulator, SimulatorOptions, start_in_thread
from turnout.service.upstream.simulator.cli import load_scenario
from turnout.service.upstream.translate import (
    MAX_RETRY_AFTER_MS,
    Reply,
    retry_after_ms,
    translate,
)

CHAT = {"messages": [{"role": "user", "content": "Say hello to the router."}], "max_tokens": 32}
KEY_ENV = "TURNOUT_TEST_UPSTREAM_KEY"
SECRET = "sk-test-never-show-me-0123456789"

SCENARIO = """
seed = 7

[[rule]]
model = "fail/429"
outcome = 429
retry_after_s = 3

[[rule]]
model = "fail/503"
outcome = 503

[[rule]]
model = "fail/502"
outcome = 502

[[rule]]
model = "fail/400"
outcome = 400

[[rule]]
model = "fail/timeout"
outcome = "timeout"

[[rule]]
model = "fail/reset"
outcome = "reset"

[[rule]]
model = "fail/malformed"
outcome = "malformed"

[[rule]]
model = "fail/midstream"
outcome = "midstream_error"

[[rule]]
model = "slow/*"
latency_ms = 120

[prices."test/priced"]
prompt = "0.000001"
completion = "0.000002"
"""


def _start(tmp: Path, *, require_key: bool = False) -> RunningSimulator:
    path = tmp / "scenario.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    options = SimulatorOptions(scenario=load_scenario(str(path)), require_key=require_key)
    return start_in_thread(options)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSimulator]:
    with _start(tmp_path_factory.mktemp("sim")) as running:
        yield running


@pytest.fixture(scope="module")
def keyed_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSimulator]:
    with _start(tmp_path_factory.mktemp("keyed"), require_key=True) as running:
        yield running


def _transport(name: str) -> httpx.AsyncBaseTransport | None:
    return None if name == "aiohttp" else httpx.AsyncHTTPTransport()


@pytest.fixture(params=["aiohttp", "httpcore"])
async def client(
    request: pytest.FixtureRequest, sim: RunningSimulator
) -> AsyncIterator[UpstreamClient]:
    options = ClientOptions(base_url=sim.base_url, timeout_s=5.0, connect_timeout_s=1.0)
    async with UpstreamClient(options, transport=_transport(request.param), environ={}) as up:
        yield up


def _sim_stats(sim: RunningSimulator) -> dict[str, object]:
    stats: dict[str, object] = httpx.get(f"{sim.url}/_sim/stats").json()
    return stats


# --------------------------------------------------------------------------- outcomes


async def test_success_carries_response_usage_cost_and_generation_id(
    client: UpstreamClient,
) -> None:
    result = await client.call("openai/gpt-4o-mini", CHAT)

    assert result.ok and result.status == 200 and result.error_class is None
    assert result.response is not None and result.response["object"] == "chat.completion"
    assert result.response["choices"][0]["message"]["content"]
    usage = result.response["usage"]
    assert result.usage is not None
    assert result.usage.prompt_tokens == usage["prompt_tokens"] > 0
    assert result.usage.completion_tokens == usage["completion_tokens"] > 0
    assert result.usage.total_tokens == usage["total_tokens"]
    assert result.cost_usd == usage["cost"] > 0
    assert result.generation_id == result.response["id"]
    assert result.generation_id is not None and result.generation_id.startswith("gen-")
    assert 0 < result.latency_ms < 5000 and not result.slow


async def test_call_sets_the_model_and_never_streams(
    client: UpstreamClient, sim: RunningSimulator
) -> None:
    model = f"ok/override-{id(client)}"
    result = await client.call(model, {**CHAT, "model": "not/this", "stream": True})

    assert result.ok and result.response is not None
    assert result.response["model"] == model  # a JSON completion, not an SSE stream
    by_model = _sim_stats(sim)["by_model"]
    assert isinstance(by_model, dict) and by_model.get(model) == 1 and "not/this" not in by_model


@pytest.mark.parametrize(
    ("model", "status", "error_class", "retry_after"),
    [
        ("fail/429", 429, "rate_limited", 3000),
        ("fail/503", 503, "unavailable", 1000),
        ("fail/502", 502, "bad_gateway", None),
        ("fail/400", 400, "bad_request", None),
        ("fail/malformed", 200, "malformed_response", None),
        ("fail/midstream", 200, "midstream_error", None),
        ("fail/reset", None, "connection_reset", None),
    ],
)
async def test_upstream_trouble_becomes_a_classified_result(
    client: UpstreamClient,
    model: str,
    status: int | None,
    error_class: str,
    retry_after: int | None,
) -> None:
    result = await client.call(model, CHAT)

    assert not result.ok
    assert (result.status, result.error_class, result.retry_after_ms) == (
        status,
        error_class,
        retry_after,
    )
    assert result.message and result.response is None and result.usage is None
    assert result.error is CLASSES[error_class]


@pytest.mark.parametrize(
    ("model", "retryable", "breaker_failure"),
    [
        ("fail/429", True, False),  # wait and retry; the model is not broken
        ("fail/503", True, True),
        ("fail/400", False, False),  # our request is wrong: neither retry nor blame the model
        ("fail/reset", True, True),
        ("fail/midstream", True, True),
    ],
)
async def test_classification_drives_retry_and_breaker(
    client: UpstreamClient, model: str, retryable: bool, breaker_failure: bool
) -> None:
    error = (await client.call(model, CHAT)).error

    assert error is not None
    assert (error.retryable, error.breaker_failure) == (retryable, breaker_failure)


async def test_midstream_error_keeps_the_generation_id(client: UpstreamClient) -> None:
    result = await client.call("fail/midstream", CHAT)

    assert result.generation_id is not None and result.generation_id.startswith("gen-")
    assert result.message == "Provider disconnected unexpectedly"


async def test_a_hanging_upstream_times_out_at_the_call_deadline(client: UpstreamClient) -> None:
    result = await client.call("fail/timeout", CHAT, timeout_s=0.3)

    assert (result.ok, result.status, result.error_class) == (False, None, "timeout")
    assert 250 < result.latency_ms < 2000
    assert result.error is not None and result.error.code == "upstream_timeout"


async def test_a_success_slower_than_call_timeout_is_flagged_slow(sim: RunningSimulator) -> None:
    options = ClientOptions(base_url=sim.base_url, call_timeout_s=0.05)
    async with UpstreamClient(options, environ={}) as up:
        slow = await up.call("slow/model", CHAT)
        fast = await up.call("openai/gpt-4o-mini", CHAT)
        stats = up.stats()

    assert slow.ok and slow.slow and slow.latency_ms >= 100
    assert fast.ok and not fast.slow
    assert (stats.succeeded, stats.slow) == (2, 1)


# --------------------------------------------------------------------------- streamed calls


async def _streamed(
    client: UpstreamClient, model: str, *, ttft_timeout_s: float = 5.0
) -> tuple[StreamOutcome, list[dict[str, Any]]]:
    chunks: list[dict[str, Any]] = []

    async def on_chunk(chunk: dict[str, Any]) -> None:
        chunks.append(chunk)

    outcome = await client.stream(model, CHAT, on_chunk, ttft_timeout_s=ttft_timeout_s)
    return outcome, chunks


async def test_a_stream_comes_chunk_by_chunk_and_assembles_into_the_answer(
    client: UpstreamClient, sim: RunningSimulator
) -> None:
    plain = await client.call("openai/gpt-4o-mini", CHAT)
    outcome, chunks = await _streamed(client, "openai/gpt-4o-mini")

    result = outcome.result
    assert result.ok and result.status == 200 and outcome.first_token_ms is not None
    assert len(chunks) >= 4 and chunks[-1]["choices"] == [] and chunks[-1]["usage"]["cost"] > 0
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert plain.response is not None and result.response is not None
    assert text == result.response["choices"][0]["message"]["content"]
    assert text == plain.response["choices"][0]["message"]["content"]  # the same answer
    assert result.usage == plain.usage and result.cost_usd == plain.cost_usd
    assert outcome.comments >= 1  # OpenRouter's keep-alive comment, read past
    streams = _sim_stats(sim)["streams"]
    assert isinstance(streams, dict) and streams["completed"] >= 1


@pytest.mark.parametrize(
    ("model", "status", "error_class", "tokens"),
    [
        ("fail/429", 429, "rate_limited", False),
        ("fail/503", 503, "unavailable", False),
        ("fail/malformed", 200, "malformed_response", False),
        ("fail/midstream", 200, "midstream_error", True),  # after its first tokens
        ("fail/reset", None, "connection_reset", False),
    ],
)
async def test_a_troubled_stream_becomes_a_classified_result(
    client: UpstreamClient, model: str, status: int | None, error_class: str, tokens: bool
) -> None:
    outcome, chunks = await _streamed(client, model)

    result = outcome.result
    assert (result.ok, result.status, result.error_class) == (False, status, error_class)
    assert result.message and result.error is CLASSES[error_class]
    assert (outcome.first_token_ms is not None) == tokens == bool(chunks)
    if model == "fail/429":
        assert result.retry_after_ms == 3000


async def test_a_stream_without_its_first_token_in_time_is_a_timeout(
    client: UpstreamClient,
) -> None:
    outcome, chunks = await _streamed(client, "fail/timeout", ttft_timeout_s=0.3)

    result = outcome.result
    assert (result.ok, result.error_class, chunks) == (False, "timeout", [])
    assert result.message is not None and "no first token within 0.3 s" in result.message
    assert 250 < result.latency_ms < 2000


async def test_streams_share_the_pool_and_a_failed_one_leaves_nothing_in_flight(
    sim: RunningSimulator,
) -> None:
    options = ClientOptions(base_url=sim.base_url, timeout_s=5.0, connect_timeout_s=1.0)
    async with UpstreamClient(options, environ={}) as up:
        for _ in range(5):
            assert (await _streamed(up, "openai/gpt-4o-mini"))[0].result.ok
        assert not (await _streamed(up, "fail/reset"))[0].result.ok
        assert (await _streamed(up, "openai/gpt-4o-mini"))[0].result.ok
        stats = up.stats()
        h1 = up._h1
    assert (stats.calls, stats.succeeded, stats.in_flight) == (7, 6, 0)
    assert h1 is not None and h1.connects == 2  # one for the streams, one after the reset


@pytest.mark.parametrize("transport", ["aiohttp", "httpcore"])
async def test_an_unreachable_upstream_is_a_connect_error(transport: str) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = ClientOptions(base_url=f"http://127.0.0.1:{port}/api/v1", connect_timeout_s=1.0)
    async with UpstreamClient(options, transport=_transport(transport), environ={}) as up:
        result = await up.call("openai/gpt-4o-mini", CHAT)

    assert (result.ok, result.status, result.error_class) == (False, None, "connect_error")
    assert result.error is not None and result.error.retryable


# --------------------------------------------------------------------------- the API key


async def test_the_key_from_the_named_variable_is_sent(keyed_sim: RunningSimulator) -> None:
    options = ClientOptions(base_url=keyed_sim.base_url, api_key_env=KEY_ENV)
    async with UpstreamClient(options, environ={KEY_ENV: SECRET}) as up:
        result = await up.call("openai/gpt-4o-mini", CHAT)

    assert result.ok, result.message


async def test_the_key_is_read_from_os_environ_by_default(
    keyed_sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    options = ClientOptions(base_url=keyed_sim.base_url, api_key_env=KEY_ENV)
    async with UpstreamClient(options) as up:
        result = await up.call("openai/gpt-4o-mini", CHAT)

    assert result.ok, result.message


async def test_without_the_variable_no_authorization_is_sent(
    keyed_sim: RunningSimulator,
) -> None:
    options = ClientOptions(base_url=keyed_sim.base_url, api_key_env=KEY_ENV)
    async with UpstreamClient(options, environ={}) as up:
        result = await up.call("openai/gpt-4o-mini", CHAT)
        stats = up.stats()

    assert (result.status, result.error_class) == (401, "unauthorized")
    assert result.message == "No auth credentials found"
    assert result.error is not None and not result.error.retryable
    assert not stats.authorized


async def test_the_key_never_shows_in_repr_or_stats(keyed_sim: RunningSimulator) -> None:
    options = ClientOptions(base_url=keyed_sim.base_url, api_key_env=KEY_ENV)
    async with UpstreamClient(options, environ={KEY_ENV: SECRET}) as up:
        await up.call("openai/gpt-4o-mini", CHAT)
        stats = up.stats()
        shown = [repr(up), str(up), repr(stats), repr(up.options), repr(vars(up))]
        shown.append(msgspec.json.encode(stats).decode())

    assert stats.authorized
    for text in shown:
        assert SECRET not in text


# --------------------------------------------------------------------------- stats


async def test_stats_count_calls_errors_and_concurrency(
    client: UpstreamClient, request: pytest.FixtureRequest
) -> None:
    results = await asyncio.gather(*(client.call("openai/gpt-4o-mini", CHAT) for _ in range(16)))
    await client.call("fail/503", CHAT)
    await client.call("fail/503", CHAT)
    await client.call("fail/reset", CHAT)
    stats = client.stats()

    assert all(r.ok for r in results)
    assert (stats.calls, stats.succeeded, stats.in_flight) == (19, 16, 0)
    assert stats.errors == {"unavailable": 2, "connection_reset": 1}
    assert stats.peak_in_flight > 1
    # /healthz names the path chat calls take: the lean pool unless a transport was given
    given = request.node.callspec.params["client"] != "aiohttp"
    assert stats.transport == ("AsyncHTTPTransport" if given else "H1Pool")


async def test_a_cancelled_call_leaves_nothing_in_flight(client: UpstreamClient) -> None:
    task = asyncio.create_task(client.call("fail/timeout", CHAT))
    await asyncio.sleep(0.1)
    assert client.stats().in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert client.stats().in_flight == 0


def test_options_come_from_the_config_sections() -> None:
    upstream = UpstreamConfig(
        base_url="http://up.example/api/v1/", timeout_s=12, connect_timeout_s=2, pool_size=7
    )
    options = ClientOptions.from_config(upstream, BreakerConfig(call_timeout_s=4))

    assert options.base_url == "http://up.example/api/v1"
    assert (options.timeout_s, options.connect_timeout_s, options.pool_size) == (12, 2, 7)
    assert (options.call_timeout_s, options.referer, options.title) == (
        4,
        upstream.referer,
        upstream.title,
    )
    # a client made without a config behaves as one made from the default config
    assert ClientOptions() == ClientOptions.from_config(UpstreamConfig(), BreakerConfig())


# --------------------------------------------------------------------------- translation


def _translate(reply: Reply, now_ms: int = 0) -> CallResult:
    return translate(reply, latency_ms=1.0, now_ms=now_ms, slow_ms=1000.0)


def test_a_200_with_finish_reason_error_is_a_midstream_error() -> None:
    body = b'{"id": "gen-1", "choices": [{"finish_reason": "error", "message": {}}]}'
    result = _translate(Reply(status=200, content=body))

    assert (result.ok, result.error_class, result.generation_id) == (
        False,
        "midstream_error",
        "gen-1",
    )


def test_a_200_that_is_not_a_completion_is_malformed() -> None:
    for body in (b"[1, 2]", b'{"id": "x"}', b'{"choices": "no"}', b""):
        assert _translate(Reply(status=200, content=body)).error_class == "malformed_response"


def test_an_error_status_without_a_json_body_is_still_classified() -> None:
    result = _translate(Reply(status=504, content=b"<html>gateway timeout</html>"))

    assert (result.error_class, result.message) == ("gateway_timeout", "HTTP 504")


def test_retry_after_forms() -> None:
    now_ms = 1_767_225_600_000
    when = datetime.fromtimestamp((now_ms + 7_000) / 1000, tz=UTC)

    assert retry_after_ms("3", None, now_ms) == 3000
    assert retry_after_ms("1.5", None, now_ms) == 1500
    assert retry_after_ms(format_datetime(when, usegmt=True), None, now_ms) == 7000
    assert retry_after_ms(None, {"retry_after_seconds": 2}, now_ms) == 2000
    assert retry_after_ms(None, {"retry_after": "4"}, now_ms) == 4000
    assert retry_after_ms(None, {"retry_after_ms": 250}, now_ms) == 250
    assert retry_after_ms(None, {"headers": {"Retry-After": "5"}}, now_ms) == 5000
    assert retry_after_ms("soon", {"provider_name": "x"}, now_ms) is None
    assert retry_after_ms("-1", None, now_ms) is None


def test_a_retry_after_too_large_is_cut_to_an_hour_and_never_raises() -> None:
    """`1e306` raised OverflowError out of the client (the request failed internal_error,
    no retry, no fallback); a date in 2100 or an epoch time held a breaker open for
    decades, and the log, which rebuilds breakers, kept it so across restarts."""
    now_ms = 1_767_225_600_000
    far = format_datetime(datetime(2100, 1, 1, tzinfo=UTC), usegmt=True)
    for header, metadata in [
        ("1e306", None),
        (far, None),
        ("99999999999999999999", None),
        (None, {"retry_after": 1e306}),
        (None, {"retry_after_ms": 1e300}),
    ]:
        assert retry_after_ms(header, metadata, now_ms) == MAX_RETRY_AFTER_MS == 3_600_000
    body = b'{"error": {"code": 503, "message": "x", "metadata": {"retry_after": 1e306}}}'
    assert _translate(Reply(status=503, content=body)).retry_after_ms == MAX_RETRY_AFTER_MS


def test_retry_after_from_openrouter_metadata_in_an_error_body() -> None:
    body = b'{"error": {"code": 429, "message": "slow down", "metadata": {"retry_after": 6}}}'
    result = _translate(Reply(status=429, content=body))

    assert (result.error_class, result.message, result.retry_after_ms) == (
        "rate_limited",
        "slow down",
        6000,
    )


# --------------------------------------------------------------------------- prices


async def test_prices_are_fetched_from_models(client: UpstreamClient) -> None:
    prices = await fetch_prices(client)

    assert prices["test/priced"] == Price(prompt=0.000001, completion=0.000002)
    assert prices["openai/gpt-4o-mini"] == Price(prompt=0.00000015, completion=0.0000006)


def test_unusable_model_entries_are_skipped() -> None:
    listing = {
        "data": [
            {"id": "a/good", "pricing": {"prompt": "0.000001", "completion": "0.000003"}},
            {"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}},
            {"id": "b/words", "pricing": {"prompt": "free", "completion": "0"}},
            {"id": "c/missing", "pricing": {"prompt": "0.1"}},
            {"id": "d/none"},
            {"pricing": {"prompt": "0", "completion": "0"}},
            "not an object",
        ]
    }

    assert parse_models(listing) == {"a/good": Price(prompt=0.000001, completion=0.000003)}
    assert parse_models({"data": "nope"}) == {}


async def test_the_price_cache_refreshes_after_ttl_and_keeps_the_last_good_table(
    tmp_path: Path,
) -> None:
    running = _start(tmp_path)
    options = ClientOptions(base_url=running.base_url, timeout_s=2.0, connect_timeout_s=0.5)
    async with UpstreamClient(options, environ={}) as up:
        cache = PriceCache(up, ttl_s=60, retry_s=10)
        try:
            first = await cache.refresh(now_ms=0)
            assert first["test/priced"] == Price(prompt=0.000001, completion=0.000002)
            assert await cache.refresh(now_ms=59_999) is first  # not yet due: no fetch
            assert cache.stats().fetches == 1
            await cache.refresh(now_ms=60_000)  # due: fetched again
            assert cache.stats().fetches == 2 and cache.stats().failures == 0
        finally:
            running.stop()

        kept = await cache.refresh(now_ms=120_000)  # upstream gone
        again = await cache.refresh(now_ms=125_000)  # failed: next try after retry_s
        stats = cache.stats()

    assert kept == first and again == first
    assert cache.price("test/priced") == Price(prompt=0.000001, completion=0.000002)
    assert (stats.fetches, stats.failures, stats.fetched_at_ms) == (3, 1, 60_000)
    assert stats.last_error is not None and stats.last_error.startswith("GET /models")
    assert stats.next_refresh_ms == 130_000


async def test_calls_go_through_the_proxy_named_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP_PROXY is honoured (trust_env): a plain HTTP proxy sees the absolute URL, for
    `GET`s, plain calls and streams alike (the lean pool does not speak to proxies: the
    client keeps those calls on aiohttp)."""
    from aiohttp import web

    seen: list[str] = []
    chunk = {"id": "gen-p", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    last = {"id": "gen-p", "model": "m", "choices": [], "usage": usage}
    message = {"role": "assistant", "content": "hi"}
    done = {"id": "gen-p", "model": "m", "choices": [{"index": 0, "message": message}]}

    async def proxy(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.url}")
        if request.method == "GET":
            return web.json_response({"data": []})
        if not (await request.json()).get("stream"):
            return web.json_response({**done, "usage": usage})
        events = [msgspec.json.encode(c).decode() for c in (chunk, last)] + ["[DONE]"]
        body = "".join(f"data: {e}\n\n" for e in events)
        return web.Response(text=body, content_type="text/event-stream")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        options = ClientOptions(base_url="http://upstream.example/api/v1")
        async with UpstreamClient(options, environ={}) as client:
            listed = await client.get_json("/models")
            called = await client.call("m", CHAT)
            streamed, chunks = await _streamed(client, "m")
        assert listed.ok and called.ok and streamed.result.ok, streamed.result.message
        assert [c["choices"][0]["delta"]["content"] for c in chunks[:1]] == ["hi"]
        assert streamed.result.usage == called.usage
        chat = "POST http://upstream.example/api/v1/chat/completions"
        assert seen == ["GET http://upstream.example/api/v1/models", chat, chat]
    finally:
        await runner.cleanup()
