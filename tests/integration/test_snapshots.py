"""Snapshots on a real broker: a restart rebuilds from them, a bad one is skipped, state
outlives the events that made it, and a state larger than a record is cut into chunks."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.test_router import (
    UNLIMITED,
    collect,
    config,
    produce,
    request,
    running,
    sim_calls,
)
from turnout.service.core import events as ev
from turnout.service.core import snapshot
from turnout.service.core.config import Config
from turnout.service.core.partitioning import PARTITIONS, home_partition
from turnout.service.core.state import RouterState, evolve, remember
from turnout.service.kafka.producer import Producer
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.kafka.topics import ensure_topics
from turnout.service.runtime import snapshots
from turnout.service.upstream.simulator import SimulatorOptions, start_in_thread
from turnout.service.upstream.simulator.server import RunningSimulator
from turnout.service.wire import cloudevents as ce

REPO = Path(__file__).resolve().parents[2]
TENANTS = [f"snap-{i}" for i in range(8)]
MONEY = {"budget_usd_per_day": 10.0**6, "budget_usd_per_month": 10.0**7,
         "budget_usd_lifetime": 10.0**8}  # fmt: skip


@pytest.fixture
def simulator() -> Iterator[RunningSimulator]:
    with start_in_thread(SimulatorOptions()) as sim:
        yield sim


def snapshotting(settings: KafkaSettings, sim: RunningSimulator, **extra: Any) -> Config:
    cfg = config(settings, sim, snapshots={"every_events": 40, "every_s": 0.5}, **extra)
    return cfg


async def answered(settings: KafkaSettings, topics: Topics, ids: list[str], seen: int) -> None:
    tenants = [TENANTS[i % len(TENANTS)] for i in range(len(ids))]
    records = [(t.encode(), request(rid, t), None) for t, rid in zip(tenants, ids, strict=True)]
    await produce(settings.bootstrap, topics.requests, records)
    await collect(settings.bootstrap, topics.responses, seen + len(ids), 90)


async def fold_log(settings: KafkaSettings, topics: Topics, cfg: Config) -> RouterState:
    """The whole events topic folded from offset 0 (what a rebuild without snapshots does)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    state = RouterState()
    try:
        tps = [TopicPartition(topics.events, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    env = ce.decode(r.key, r.value, r.headers)
                    evolve(state, env.data, env.time_ms, cfg)
    finally:
        await consumer.stop()
    return state


def own(state: RouterState) -> dict[int, dict[str, object]]:
    return {p: snapshot.own_parts(state, p) for p in {home_partition(t) for t in TENANTS}}


async def read_found(settings: KafkaSettings, marker: str) -> snapshots.Found:
    producer = Producer(settings)
    await producer.start()
    try:
        return await snapshots.read_snapshots(settings, producer, instance="test", marker_id=marker)
    finally:
        await producer.stop()


async def store(
    settings: KafkaSettings, part: snapshot.PartitionState, sid: str, *, offset: int, at: int,
    writer: str = "test",
) -> list[bytes]:  # fmt: skip
    """Write `part` as snapshot `sid` the way a router does; its chunks."""
    frame = snapshot.encode(part, offset=offset, taken_at_ms=at, writer=writer)
    manifest, chunks = snapshots.pack(frame, snapshot_id=sid, partition=part.partition,
                                      offset=offset, taken_at_ms=at, writer=writer)  # fmt: skip
    producer = Producer(settings)
    await producer.start()
    try:
        await snapshots.write_snapshot(producer, settings.topics.snapshots, manifest, chunks, [])
    finally:
        await producer.stop()
    return chunks


@pytest.mark.tansu
async def test_a_restart_rebuilds_from_snapshots_and_folds_only_the_events_after_them(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    cfg = snapshotting(kafka_settings, simulator)
    ids = [f"snap-a-{i}" for i in range(240)]
    async with running(cfg, "first") as first:
        await answered(kafka_settings, kafka_topics, ids, 0)
        await asyncio.sleep(1.0)  # due by time as well
        written_while_serving = first.schedule.written if first.schedule else 0
    calls = sim_calls(simulator)
    async with running(cfg, "second") as second:
        rebuilt = second.rebuild_stats
        rebuilt_parts = own(second.state)
        # a request answered before the restart is answered again from the snapshot
        await produce(kafka_settings.bootstrap, kafka_topics.requests,
                      [(TENANTS[0].encode(), request(ids[0], TENANTS[0]), None)])  # fmt: skip
        await collect(kafka_settings.bootstrap, kafka_topics.responses, len(ids) + 1)
    whole = own(await fold_log(kafka_settings, kafka_topics, cfg))

    homes = {home_partition(t) for t in TENANTS}
    # snapshots keep coming while it serves (every 40 events): not one per partition per
    # rebuild (the events folded live were never counted toward the next snapshot, so a
    # router wrote one after its rebuild and none after; a restart then folded everything)
    assert written_while_serving > 2 * len(homes)
    assert homes <= {int(p) for p in rebuilt["from_snapshot"]}
    # the last snapshots were taken on stop: only the markers and config events came after
    events_total = 240 * 5
    assert rebuilt["events_folded"] < events_total / 10
    differing = {(p, k) for p in whole for k in whole[p] if whole[p][k] != rebuilt_parts[p][k]}
    assert differing == set()
    assert sim_calls(simulator) == calls
    assert all(ids[0] != rid for rid in second.state.inflight)


async def test_a_corrupt_newest_snapshot_is_skipped_and_the_state_is_still_the_fold(
    kafka_settings: KafkaSettings,
    kafka_topics: Topics,
    simulator: RunningSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = snapshotting(kafka_settings, simulator)
    async with running(cfg, "first"):
        await answered(kafka_settings, kafka_topics, [f"snap-b-{i}" for i in range(120)], 0)
    victim = home_partition(TENANTS[0])
    found = await read_found(kafka_settings, "look")
    newest = max(found.manifests[victim], key=lambda m: m.offset)
    producer = Producer(kafka_settings)
    await producer.start()
    try:  # its first chunk overwritten with garbage of the same length
        key = snapshots.chunk_key(victim, newest.snapshot_id, 0)
        garbage = os.urandom(len(found.chunks[key]))
        await (await producer.send(kafka_topics.snapshots, garbage, key=key.encode(), partition=0))
    finally:
        await producer.stop()
    caplog.set_level(logging.WARNING, logger="turnout.snapshots")
    async with running(cfg, "second") as second:
        parts = own(second.state)
        used = second.rebuild_stats["from_snapshot"]
    whole = own(await fold_log(kafka_settings, kafka_topics, cfg))

    assert f"events partition {victim} (offset {newest.offset}) skipped" in caplog.text
    assert "digest" in caplog.text
    assert used.get(str(victim)) != newest.offset  # an older snapshot, or the whole log
    assert parts == whole


async def test_budgets_and_duplicate_answers_outlive_the_events_that_made_them(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    """Retention deletes old events (the events topic's retention.ms lowered to 1 s, then
    the broker's own retention check): with snapshots, nothing in state goes with them."""
    cfg = snapshotting(kafka_settings, simulator, tenants={"default": MONEY})
    ids = [f"snap-c-{i}" for i in range(80)]
    async with running(cfg, "first") as first:
        await answered(kafka_settings, kafka_topics, ids, 0)
    spent = {t: dict(b.spent) for t, b in first.state.budgets.items() if t in TENANTS}
    ends = await _offsets(kafka_settings, kafka_topics.events, "latest")
    tiny = dataclasses.replace(kafka_settings, events_retention_ms=1000)
    fixed = {t.name: t.fixed for t in (await ensure_topics(tiny)).topics}
    assert fixed[kafka_topics.events] == ("retention.ms: -1 -> 1000",)
    # the test broker checks retention every second (tests/conftest.py); another, as it says
    deadline = asyncio.get_running_loop().time() + await _retention_check_s(kafka_settings) + 30
    try:
        while True:
            starts = await _offsets(kafka_settings, kafka_topics.events, "earliest")
            if all(starts[p] >= end for p, end in ends.items()):
                break
            assert asyncio.get_running_loop().time() < deadline, (starts, ends)
            await asyncio.sleep(0.5)
    finally:  # back to for ever before a router writes what it must read back
        await ensure_topics(kafka_settings)
    calls = sim_calls(simulator)
    async with running(cfg, "second") as second:
        after = {t: dict(b.spent) for t, b in second.state.budgets.items() if t in TENANTS}
        kept = ids[1] in second.state.finished  # its answer, from the snapshot (not the cache)
        await produce(kafka_settings.bootstrap, kafka_topics.requests,
                      [(TENANTS[1].encode(), request(ids[1], TENANTS[1]), None)])  # fmt: skip
        await collect(kafka_settings.bootstrap, kafka_topics.responses, len(ids) + 1)
    assert sum(ends.values()) > len(ids)  # the log had every request's events; all are gone
    assert len(spent) == len(TENANTS)
    month = {t: {k: v for k, v in periods.items() if len(k) == len("2026-12")}
             for t, periods in spent.items()}  # fmt: skip
    assert all(sum(m.values()) > 0 for m in month.values())  # each tenant spent this month
    assert after == spent
    assert kept and sim_calls(simulator) == calls  # the duplicate was answered from it


async def _retention_check_s(settings: KafkaSettings) -> float:
    """How often the broker deletes what is past retention (log.retention.check.interval.ms)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        node = (await admin.describe_cluster())["brokers"][0]["node_id"]
        (described,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(node))]
        )
        entries = {e[0]: e[1] for r in described.resources for e in r[4]}
        return int(entries.get("log.retention.check.interval.ms") or 300_000) / 1000
    finally:
        await admin.close()


async def _offsets(settings: KafkaSettings, topic: str, which: str) -> dict[int, int]:
    """The earliest or latest offset of every partition of `topic`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        got = await (consumer.beginning_offsets(tps) if which == "earliest"
                     else consumer.end_offsets(tps))  # fmt: skip
        return {tp.partition: offset for tp, offset in got.items()}
    finally:
        await consumer.stop()


async def test_a_state_larger_than_a_record_is_written_in_chunks_and_read_back_whole(
    kafka_settings: KafkaSettings, kafka_topics: Topics
) -> None:
    state = RouterState()
    for n in range(600):  # ~3 MB of incompressible answers on one partition
        big = ev.RequestCompleted(
            request_id=f"big-{n}", tenant=TENANTS[0], model="m/x", attempts=1,
            latency_ms=1.0, cost_micros=1, cached=False, coalesced=False,
            usage=ev.Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
            response={"text": os.urandom(2500).hex()},
        )  # fmt: skip
        remember(state, big, at_ms=n)
    p = home_partition(TENANTS[0])
    chunks = await store(kafka_settings, snapshot.capture(state, p), "0001", offset=7, at=1)
    found = await read_found(kafka_settings, "chunks")
    restored = snapshot.restore([found.best(p)])  # type: ignore[list-item]

    assert len(chunks) >= 3
    assert all(len(c) <= snapshots.CHUNK_BYTES for c in chunks)
    assert snapshot.own_parts(restored, p) == snapshot.own_parts(state, p)


def verify_snapshots(settings: KafkaSettings, toml: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"TURNOUT_KAFKA_BOOTSTRAP": settings.bootstrap,
                        "TURNOUT_KAFKA_TOPIC_PREFIX": settings.topic_prefix}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "turnout", "replay", "verify", "--snapshots",
         "--config", str(toml)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )  # fmt: skip


async def test_replay_verify_checks_every_snapshot_and_exits_1_on_a_tampered_one(
    kafka_settings: KafkaSettings,
    kafka_topics: Topics,
    simulator: RunningSimulator,
    tmp_path: Path,
) -> None:
    cfg = snapshotting(kafka_settings, simulator)
    config_file = tmp_path / "turnout.toml"  # what the router runs with, for the fold
    limits = "\n".join(f"{k} = {v!r}" for k, v in UNLIMITED.items())
    config_file.write_text(f"[tenants.default]\n{limits}\n")
    async with running(cfg, "first"):
        await answered(kafka_settings, kafka_topics, [f"snap-d-{i}" for i in range(120)], 0)
    good = await asyncio.to_thread(verify_snapshots, kafka_settings, config_file)

    victim = home_partition(TENANTS[0])
    found = await read_found(kafka_settings, "tamper")
    newest = max(found.manifests[victim], key=lambda m: m.offset)
    real = found.best(victim)
    assert real is not None and real.offset == newest.offset
    part = real.state
    budget = part.budgets[TENANTS[0]]
    richer = msgspec.structs.replace(
        budget,
        spent={k: v - 1 for k, v in budget.spent.items()},  # a micro-dollar forgiven
    )
    forged = msgspec.structs.replace(part, budgets={**part.budgets, TENANTS[0]: richer})
    await store(kafka_settings, forged, "forged", offset=real.offset, at=real.taken_at_ms + 1,
                writer="mallory")  # fmt: skip
    bad = await asyncio.to_thread(verify_snapshots, kafka_settings, config_file)

    assert good.returncode == 0, good.stdout + good.stderr
    checked = good.stdout.count(" ok")
    assert checked >= len({home_partition(t) for t in TENANTS})
    assert (
        f"{checked} of {checked} snapshot(s) are the fold of the events they cover" in good.stdout
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "different" in bad.stdout and "mallory" in bad.stdout
    assert f"budgets.{TENANTS[0]}.spent" in bad.stdout
    assert "1 snapshot(s) differ from the log" in bad.stderr


async def test_past_the_duplicate_window_a_resend_is_rejected_even_after_a_rebuild(
    kafka_settings: KafkaSettings, kafka_topics: Topics, simulator: RunningSimulator
) -> None:
    cfg = snapshotting(kafka_settings, simulator, router={"dedupe_window_s": 1})
    tenant = TENANTS[2]
    async with running(cfg, "first"):
        await produce(kafka_settings.bootstrap, kafka_topics.requests,
                      [(tenant.encode(), request("old", tenant), None)])  # fmt: skip
        await collect(kafka_settings.bootstrap, kafka_topics.responses, 1)
        await asyncio.sleep(1.5)
        await produce(kafka_settings.bootstrap, kafka_topics.requests,
                      [(tenant.encode(), request("new", tenant), None)])  # fmt: skip
        await collect(kafka_settings.bootstrap, kafka_topics.responses, 2)
    calls = sim_calls(simulator)
    async with running(cfg, "second") as second:
        assert "old" not in second.state.finished  # its answer is forgotten, its id is not
        await produce(kafka_settings.bootstrap, kafka_topics.requests,
                      [(tenant.encode(), request("old", tenant), None)])  # fmt: skip
        answers = await collect(kafka_settings.bootstrap, kafka_topics.responses, 3)
    olds = [msgspec.json.decode(a.value) for a in answers if a.key == b"old"]
    first, again = sorted(olds, key=lambda r: r["status"] != "ok")
    assert first["status"] == "ok"
    assert (again["status"], again["error"]["code"]) == ("rejected", "duplicate_expired")
    assert sim_calls(simulator) == calls  # never a second upstream call
