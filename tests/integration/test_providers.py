"""Several providers: a router with `[providers]`, the simulator, a closed port, a real broker."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.integration.test_router import (
    UNLIMITED,
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


def by_model(sim: RunningSimulator) -> dict[str, int]:
    """What the simulator was asked for, by the model name it was sent."""
    return dict(httpx.get(f"{sim.url}/_sim/stats").json()["by_model"])


def listed_price(sim: RunningSimulator, model: str) -> dict[str, str]:
    """The pricing the simulator's `/models` lists for `model` (OpenRouter's shape)."""
    listed = httpx.get(f"{sim.base_url}/models").json()["data"]
    return dict(next(m for m in listed if m["id"] == model)["pricing"])


def decoded(records: list[Any]) -> list[ce.Envelope]:
    return [ce.decode(r.key, r.value, r.headers) for r in records]


async def test_a_provider_whose_port_is_closed_trips_its_breakers_and_the_next_provider_answers(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    closed = free_port()  # nothing listens here: connection refused
    cfg = config(
        kafka_settings, simulator,
        providers={"down": {"base_url": f"http://127.0.0.1:{closed}/v1",
                            "models": ["down/*"], "connect_timeout_s": 1}},
        routes={"general": {"models": ["down/model", "good/model"]}},
        retry={"max_retries": 0},
        breaker={"failure_threshold": 3, "recovery_timeout_s": 60},
    )  # fmt: skip
    ids = [f"p-{i}" for i in range(12)]
    async with running(cfg):
        for rid in ids:  # one at a time: the breaker's state decides the later ones
            await produce(kafka_settings.bootstrap, kafka_topics.requests,
                          [(b"acme", request(rid, temperature=0.5), None)])  # fmt: skip
            await collect(kafka_settings.bootstrap, kafka_topics.responses, ids.index(rid) + 1)
        events = decoded(await collect_until_quiet(kafka_settings.bootstrap, kafka_topics.events))
        answers = await collect(kafka_settings.bootstrap, kafka_topics.responses, len(ids))

    bodies = [json.loads(r.value) for r in answers]
    assert {b["status"] for b in bodies} == {"ok"}
    assert {b["model"] for b in bodies} == {"good/model"}
    attempts = [e.data for e in events if isinstance(e.data, ev.AttemptStarted)]
    assert {(a.model, a.provider) for a in attempts} == {
        ("down/model", "down"),
        ("good/model", "upstream"),
    }  # every attempt names its provider
    failed = [e.data for e in events if isinstance(e.data, ev.AttemptFailed)]
    assert failed and all(f.provider == "down" and f.error_class == "connect_error"
                          for f in failed)  # fmt: skip
    opened = [e.data for e in events if isinstance(e.data, ev.BreakerOpened)]
    assert [o.model for o in opened] == ["down/model"]
    assert len(failed) == 3  # after the breaker opened, down/model was skipped, not called
    routes = [e.data for e in events if isinstance(e.data, ev.RouteDecided)]
    assert routes[0].providers == ["down", "upstream"]
    assert routes[-1].order == ["good/model"] and routes[-1].providers == ["upstream"]


async def test_strip_prefix_sends_the_bare_name_and_budgets_charge_the_configured_price(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    cfg = config(
        kafka_settings, simulator,
        providers={"local": {"base_url": simulator.base_url, "models": ["local/*"],
                             "strip_prefix": "local/",
                             "prices": {"local/llama-3.1-8b": {"prompt": "0.00001",
                                                               "completion": "0.00002"}}}},
        routes={"general": {"models": ["local/llama-3.1-8b"]}},
        tenants={"default": UNLIMITED, "acme": {**UNLIMITED, "budget_usd_per_day": 100.0}},
    )  # fmt: skip
    before = by_model(simulator).get("llama-3.1-8b", 0)
    async with running(cfg) as router:
        await produce(kafka_settings.bootstrap, kafka_topics.requests,
                      [(b"acme", request("local-1"), None)])  # fmt: skip
        (answer,) = await collect(kafka_settings.bootstrap, kafka_topics.responses, 1)
        events = decoded(await collect_until_quiet(kafka_settings.bootstrap, kafka_topics.events))
        health_providers = router.upstream.stats()
    stats = by_model(simulator)
    assert stats.get("llama-3.1-8b", 0) == before + 1  # the simulator saw the bare name
    assert "local/llama-3.1-8b" not in stats
    body = json.loads(answer.value)
    assert body["status"] == "ok" and body["model"] == "local/llama-3.1-8b"
    usage = body["usage"]
    expected = round(
        (usage["prompt_tokens"] * 0.00001 + usage["completion_tokens"] * 0.00002) * 1e6
    )
    (done,) = [e.data for e in events if isinstance(e.data, ev.RequestCompleted)]
    (charged,) = [e.data for e in events if isinstance(e.data, ev.BudgetCharged)]
    assert done.cost_micros == expected == charged.amount_micros  # not the simulator's own cost
    (ok,) = [e.data for e in events if isinstance(e.data, ev.AttemptSucceeded)]
    assert ok.provider == "local"
    assert set(health_providers) == {"upstream", "local"}
    assert health_providers["local"].succeeded == 2  # its /models, then the chat call


async def test_a_providers_own_models_listing_prices_the_models_it_serves(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    mini = listed_price(simulator, "openai/gpt-4o-mini")
    cfg = config(
        kafka_settings, simulator,
        providers={"mirror": {"base_url": simulator.base_url, "models": ["mirror/*"],
                              "strip_prefix": "mirror/"}},
        routes={"general": {"models": ["mirror/openai/gpt-4o-mini", "openai/gpt-4o"]}},
    )  # fmt: skip
    async with running(cfg) as router:
        table = dict(router.prices.table)
    price = table["mirror/openai/gpt-4o-mini"]  # the provider's listing, its prefix put back
    assert (price.prompt, price.completion) == (float(mini["prompt"]), float(mini["completion"]))
    assert "openai/gpt-4o" in table  # [upstream]'s listing prices the models it serves
