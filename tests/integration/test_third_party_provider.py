"""A provider no one here wrote: the LiteLLM proxy (mock responses), as `[providers.litellm]`.

`make litellm` installs it once into its own venv (~/.cache/turnout/litellm-<version>);
`make test` passes its path in TURNOUT_TEST_LITELLM.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_router import (
    collect,
    collect_until_quiet,
    config,
    produce,
    request,
    running,
    simulator,
)
from turnout.service.core import events as ev
from turnout.service.kafka.broker import free_port
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.upstream.simulator import RunningSimulator
from turnout.service.wire import cloudevents as ce

__all__ = ["simulator"]  # the fixture, shared with test_router.py

VERSION = "1.72.0"
ANSWER = "Hello from the LiteLLM proxy's mock"
PROXY_CONFIG = f"""
model_list:
  - model_name: mock-gpt
    litellm_params:
      model: openai/mock-gpt
      mock_response: "{ANSWER}"
"""


def litellm_binary() -> Path:
    given = os.environ.get("TURNOUT_TEST_LITELLM")
    path = Path(given) if given else Path.home() / f".cache/turnout/litellm-{VERSION}/bin/litellm"
    assert path.is_file(), f"no LiteLLM proxy at {path}: run `make litellm` first"
    return path


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The LiteLLM proxy on a free port; its OpenAI-compatible base URL."""
    work = tmp_path_factory.mktemp("litellm")
    (work / "config.yaml").write_text(PROXY_CONFIG)
    port = free_port()
    log = (work / "litellm.log").open("w")
    proc = subprocess.Popen(
        [str(litellm_binary()), "--config", str(work / "config.yaml"), "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=work, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (work / "litellm.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the LiteLLM proxy did not start in 90 s"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def test_a_third_party_openai_compatible_server_answers_plain_and_streamed_requests(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator, proxy: str
) -> None:
    cfg = config(
        kafka_settings, simulator,
        providers={"litellm": {"base_url": proxy, "models": ["litellm/*"],
                               "strip_prefix": "litellm/",
                               "prices": {"litellm/mock-gpt": {"prompt": "0.000001",
                                                             "completion": "0.000002"}}}},
        routes={"general": {"models": ["litellm/mock-gpt", "openai/gpt-4o-mini"]}},
    )  # fmt: skip
    async with running(cfg):
        await produce(kafka_settings.bootstrap, kafka_topics.requests, [
            (b"acme", request("ll-plain", temperature=0.5), None),
            (b"acme", request("ll-stream", temperature=0.5, stream=True), None),
        ])  # fmt: skip
        await collect(kafka_settings.bootstrap, kafka_topics.responses, 2)
        records = await collect_until_quiet(kafka_settings.bootstrap, kafka_topics.responses)
        logged = await collect_until_quiet(kafka_settings.bootstrap, kafka_topics.events)
    events = [ce.decode(r.key, r.value, r.headers) for r in logged]

    bodies = [json.loads(r.value) for r in records]
    plain = next(b for b in bodies if b.get("request_id") == "ll-plain" and "status" in b)
    assert plain["status"] == "ok" and plain["model"] == "litellm/mock-gpt"
    assert plain["response"]["choices"][0]["message"]["content"] == ANSWER
    last = next(b for b in bodies if b.get("request_id") == "ll-stream" and "status" in b)
    assert last["status"] == "ok" and last["model"] == "litellm/mock-gpt"
    deltas = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for b in bodies if b.get("request_id") == "ll-stream" and "chunk" in b
        for c in [b["chunk"]] if c.get("choices")
    )  # fmt: skip
    assert deltas == ANSWER, bodies
    done = [e.data for e in events if isinstance(e.data, ev.RequestCompleted)]
    assert {d.request_id for d in done} == {"ll-plain", "ll-stream"}
    for d in done:  # budgets charge the configured price of the provider that served
        expected = round(d.usage.prompt_tokens * 1 + d.usage.completion_tokens * 2)
        assert d.cost_micros == expected and d.usage.total_tokens > 0
    attempts = [e.data for e in events if isinstance(e.data, ev.AttemptSucceeded)]
    assert {a.provider for a in attempts} == {"litellm"}


async def test_a_model_priced_nowhere_is_charged_the_tenants_default_price_and_said_once(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator, proxy: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    cfg = config(
        kafka_settings, simulator,
        providers={"litellm": {"base_url": proxy, "models": ["litellm/*"],
                               "strip_prefix": "litellm/"}},
        routes={"general": {"models": ["litellm/mock-gpt"]}},
    )  # fmt: skip
    per_mtok = cfg.tenant("acme").default_price_per_mtok
    with caplog.at_level("WARNING", logger="turnout.router"):
        async with running(cfg):
            await produce(kafka_settings.bootstrap, kafka_topics.requests, [
                (b"acme", request(f"unpriced-{i}", temperature=0.5), None) for i in range(2)
            ])  # fmt: skip
            await collect(kafka_settings.bootstrap, kafka_topics.responses, 2)
            logged = await collect_until_quiet(kafka_settings.bootstrap, kafka_topics.events)
    done = [e.data for e in (ce.decode(r.key, r.value, r.headers) for r in logged)
            if isinstance(e.data, ev.RequestCompleted)]  # fmt: skip
    assert len(done) == 2
    for d in done:  # LiteLLM's mock lists no prices and reports no cost
        assert d.cost_micros == round(d.usage.total_tokens * per_mtok) > 0
    said = [r for r in caplog.records if "no price for litellm/mock-gpt" in r.getMessage()]
    assert len(said) == 1 and "provider litellm" in said[0].getMessage()
