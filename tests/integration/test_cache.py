"""The response cache and request coalescing through a running router.

Rules these tests hold the router to (issue 4, "Must show"):
- The cache key covers every parameter that can change the answer: two
  requests differing in one provider parameter never share an entry.
- A hit answers with `cached: true`, costs nothing (usage and cost_usd zero)
  and reports what it saved (the original usage and cost under `saved`).
- Tenants never share entries unless `[cache] scope = "shared"`.
- The cache is a fold of the events topic: a new router instance (a restart)
  answers from entries stored before it started.
- Identical cacheable requests in flight together share one upstream call;
  the followers answer `coalesced: true` and get `turnout.request.coalesced`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_router import (
    collect,
    config,
    of_type,
    produce,
    read_events,
    running,
    sim_calls,
)
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.runtime.router import home_partition
from turnout.service.upstream.simulator import SimulatorOptions, parse_scenario, start_in_thread
from turnout.service.upstream.simulator.server import RunningSimulator

QUESTION = "What is the capital of France?"
ZERO = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


@pytest.fixture
def simulator() -> Iterator[RunningSimulator]:
    with start_in_thread(SimulatorOptions()) as sim:
        yield sim


def ask(rid: str, tenant: str = "acme", **extra: Any) -> bytes:
    """The same deterministic question every time (temperature 0), under a new id."""
    doc = {"request_id": rid, "tenant": tenant, "temperature": 0,
           "messages": [{"role": "user", "content": QUESTION}]} | extra  # fmt: skip
    return json.dumps(doc).encode()


class Answers:
    """Sends requests one step at a time and reads every response so far, by id."""

    def __init__(self, settings: KafkaSettings, topics: Topics) -> None:
        self.bootstrap = settings.bootstrap
        self.topics = topics
        self.sent = 0

    async def send(self, *records: tuple[str, bytes]) -> dict[str, Any]:
        """Produce (tenant, value) records and wait for their responses; all so far, by id."""
        batch: list[tuple[bytes | None, bytes, int | None]] = [
            (tenant.encode(), value, None) for tenant, value in records
        ]
        await produce(self.bootstrap, self.topics.requests, batch)
        self.sent += len(records)
        found = await collect(self.bootstrap, self.topics.responses, self.sent, 30)
        return {r.key.decode(): json.loads(r.value) for r in found}


def twin_of(tenant: str) -> str:
    """Another tenant whose home partition is `tenant`'s (so both share one cache index)."""
    home = home_partition(tenant)
    return next(t for t in (f"tenant-{i}" for i in itertools.count()) if home_partition(t) == home)


async def test_one_differing_provider_parameter_means_another_entry_and_a_repeat_is_a_hit(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    answers = Answers(kafka_settings, kafka_topics)
    async with running(config(kafka_settings, simulator)):
        await answers.send(
            ("acme", ask("first", provider={"order": ["openai"]})),
            ("acme", ask("other-provider", provider={"order": ["anthropic"]})),
            ("acme", ask("other-top-p", provider={"order": ["openai"]}, top_p=0.5)),
        )
        calls = sim_calls(simulator)
        got = await answers.send(("acme", ask("again", provider={"order": ["openai"]})))
        envs = await read_events(
            kafka_settings.bootstrap, kafka_topics.events,
            lambda es: len(of_type(es, "request.completed")) == 4,
        )  # fmt: skip
    assert calls == 3  # no entry shared across a differing parameter
    assert sim_calls(simulator) == 3  # the repeat cost no upstream call
    first, again = got["first"], got["again"]
    assert [got[r]["cached"] for r in ("first", "other-provider", "other-top-p")] == [False] * 3
    assert again["status"] == "ok" and again["cached"] is True and again["coalesced"] is False
    assert again["response"] == first["response"]
    assert again["usage"] == ZERO and again["cost_usd"] == 0
    assert again["saved"] == {"usage": first["usage"], "cost_usd": first["cost_usd"]}
    assert first["usage"]["total_tokens"] > 0 and first["cost_usd"] > 0
    stored = of_type(envs, "cache.stored")
    assert len({e.data.cache_key for e in stored}) == 3
    assert {e.data.encoding for e in stored} == {"zstd"}  # compression on by default
    (hit,) = of_type(envs, "cache.hit")
    assert hit.data.request_id == "again"
    assert hit.data.cache_key == next(e.data.cache_key for e in stored if e.subject == "first")


@pytest.mark.parametrize("scope", ["default", "shared"])
async def test_tenants_share_entries_only_with_shared_scope(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator, scope: str
) -> None:
    # The cache index is kept per partition (it is folded from that partition's
    # events), so shared scope shares entries among tenants of one home partition.
    # Both tenants here live on the same partition: with tenant scope they still
    # share nothing, though they read and write the same index.
    twin = twin_of("acme")
    answers = Answers(kafka_settings, kafka_topics)
    extra = {"cache": {"scope": "shared"}} if scope == "shared" else {}  # default: "tenant"
    async with running(config(kafka_settings, simulator, **extra)):
        await answers.send(("acme", ask("acme-1")))
        got = await answers.send((twin, ask("twin-1", tenant=twin)))
        again = await answers.send(("acme", ask("acme-2")))
    assert got["acme-1"]["cached"] is False
    assert again["acme-2"]["cached"] is True  # the tenant's own entry serves it either way
    if scope == "default":
        assert got["twin-1"]["cached"] is False
        assert sim_calls(simulator) == 2
    else:
        assert got["twin-1"]["cached"] is True and got["twin-1"]["tenant"] == twin
        assert got["twin-1"]["response"] == got["acme-1"]["response"]
        assert sim_calls(simulator) == 1


async def test_an_answer_cached_before_a_restart_is_a_hit_after_it(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    cfg = config(kafka_settings, simulator)
    answers = Answers(kafka_settings, kafka_topics)
    async with running(cfg, "before"):
        before = await answers.send(("acme", ask("before")))
    assert sim_calls(simulator) == 1
    async with running(cfg, "after") as router:
        assert router.state.cache_index("acme").snapshot()["entries"] == 1  # rebuilt from events
        after = await answers.send(("acme", ask("after")))
    assert sim_calls(simulator) == 1
    assert after["after"]["cached"] is True
    assert after["after"]["response"] == before["before"]["response"]
    assert after["after"]["saved"]["usage"] == before["before"]["usage"]


async def test_50_identical_concurrent_requests_make_one_upstream_call(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    ids = [f"co-{i:02d}" for i in range(50)]
    with start_in_thread(SimulatorOptions(scenario=parse_scenario("latency_ms = 300\n"))) as sim:
        answers = Answers(kafka_settings, kafka_topics)
        async with running(config(kafka_settings, sim)):
            got = await answers.send(*[("acme", ask(rid)) for rid in ids])
            envs = await read_events(
                kafka_settings.bootstrap, kafka_topics.events,
                lambda es: len(of_type(es, "request.completed")) == 50,
            )  # fmt: skip
        calls = sim_calls(sim)
    assert calls == 1
    assert sorted(got) == ids and all(b["status"] == "ok" for b in got.values())
    (leader,) = [b for b in got.values() if not b["coalesced"]]
    followers = [b for b in got.values() if b["coalesced"]]
    assert len(followers) == 49
    assert leader["usage"]["total_tokens"] > 0 and leader["cached"] is False
    for b in followers:
        assert b["response"] == leader["response"] and b["usage"] == ZERO
        assert b["saved"] == {"usage": leader["usage"], "cost_usd": leader["cost_usd"]}
    coalesced = of_type(envs, "request.coalesced")
    assert sorted(e.data.request_id for e in coalesced) == sorted(
        b["request_id"] for b in followers
    )
    assert {e.data.leader_request_id for e in coalesced} == {leader["request_id"]}
