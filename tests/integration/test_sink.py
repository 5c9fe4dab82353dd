"""`turnout sink` on a real broker: every event exactly once, also across a SIGKILL."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from rich.console import Console

from turnout.analytics.archive import Archive, open_reader, snapshot_path
from turnout.analytics.sink import Reporter, Sink, SinkOptions, SinkStats, run_sink
from turnout.analytics.snapshot import parts_dir
from turnout.analytics.synthetic import envelopes, workload
from turnout.service.core.events import RawEvent
from turnout.service.errors import TurnoutError
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.wire.cloudevents import Envelope, encode

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]
FAST = SinkOptions(max_batch_wait_s=0.05, min_publish_interval_s=0.2, report_interval_s=1.0)


async def produce(settings: KafkaSettings, records: Iterable[Record]) -> list[RecordMetadata]:
    """Send with a plain aiokafka producer, as any client would."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        topic = settings.topics.events
        futures = [await producer.send(topic, v, key=k, headers=h) for k, v, h in records]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


def archived(path: Path, sql: str = "SELECT count(*) FROM events") -> int:
    """A number from the published snapshot (0 while there is none)."""
    try:
        con = open_reader(path)
    except TurnoutError:
        return 0
    try:
        return int(con.execute(sql).fetchall()[0][0])
    finally:
        con.close()


async def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting: {what}"
        await asyncio.sleep(0.1)


def synthetic_records(requests: int, *, seed: int = 0) -> tuple[list[str], list[Record]]:
    envs = list(envelopes(workload(requests), seed=seed))
    return [e.id for e in envs], [encode(e) for e in envs]


@pytest.mark.tansu
async def test_sink_stores_events_once_and_records_unreadable_ones(
    kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    path = tmp_path / "turnout.duckdb"
    ids, good = synthetic_records(60)
    future = Envelope(
        id="future-1", type="turnout.future.thing", time_ms=1, source="turnout/v9/x",
        tenant="acme", data=RawEvent(type="turnout.future.thing", data={"n": 1}, raw=b'{"n": 1}'),
    )  # fmt: skip
    _, _, headers = good[0]
    bad_id = [(k, b"bad-1" if k == "ce_id" else v) for k, v in headers]
    off_schema = [(k, b"off-1" if k == "ce_id" else v) for k, v in headers]
    unreadable: list[Record] = [(b"acme", b"{not json", bad_id), (b"acme", good[1][1], [])]
    stop = asyncio.Event()
    reporter = Reporter(Console(file=io.StringIO()), interval_s=1.0)
    sink = asyncio.create_task(
        run_sink(kafka_settings, path, stop=stop, options=FAST, reporter=reporter)
    )

    sent_bad = await produce(kafka_settings, unreadable)
    await produce(kafka_settings, [*good, encode(future), (b"acme", b'{"n": 2}', off_schema)])
    expected = {*ids, "future-1", "off-1"}
    await wait_for(lambda: archived(path) == len(expected), 30, "every readable event archived")
    stop.set()
    stats = await sink

    assert (stats.stored, stats.errors) == (len(expected), 2)
    assert stats.load_s > 0 and stats.publish_s > 0 and stats.snapshots >= 2  # the writer's time
    con = open_reader(path)
    assert {r[0] for r in con.execute("SELECT id FROM events").fetchall()} == expected
    raw = con.execute("SELECT id, data FROM events WHERE id IN ('future-1', 'off-1') ORDER BY id")
    assert [(i, json.loads(d)) for i, d in raw.fetchall()] == [
        ("future-1", {"n": 1}),
        ("off-1", {"n": 2}),
    ]
    errors = con.execute(
        "SELECT topic, kafka_partition, kafka_offset, code FROM sink_errors ORDER BY code"
    ).fetchall()
    topic = kafka_settings.topics.events
    codes = ["malformed_json", "missing_header"]
    assert errors == [
        (topic, m.partition, m.offset, c) for m, c in zip(sent_bad, codes, strict=True)
    ]
    assert "events stored" in reporter.console.file.getvalue()  # type: ignore[attr-defined]


async def test_a_sink_stopped_with_nothing_new_does_not_copy_the_archive_again(
    kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    """Stopping published a last snapshot always: a copy of the whole archive (seconds
    per GB on ext4) even when the last snapshot held every event already."""
    path = tmp_path / "turnout.duckdb"
    ids, records = synthetic_records(30)
    stop = asyncio.Event()
    reporter = Reporter(Console(file=io.StringIO()), interval_s=1.0)
    sink = asyncio.create_task(
        run_sink(kafka_settings, path, stop=stop, options=FAST, reporter=reporter)
    )
    await produce(kafka_settings, records)
    await wait_for(lambda: archived(path) == len(ids), 30, "every event in a snapshot")
    await asyncio.sleep(0.5)  # the sink has seen its publish done (the file is renamed first)
    snapshot = snapshot_path(path)
    before = snapshot.stat().st_ino
    stop.set()
    await sink
    assert snapshot.stat().st_ino == before  # not replaced by a copy of the same
    assert archived(path) == len(ids)


async def test_a_sink_seals_old_days_and_readers_still_see_every_event(
    kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    """Three days of events: the sink moves the first whole day out of the main file
    (`hot_hours` 24) and says so; readers count every event and every request."""
    path = tmp_path / "turnout.duckdb"
    envs = list(envelopes(workload(300), step_ms=3 * 86_400_000 / 1_650))
    assert envs[-1].time_ms - envs[0].time_ms > 2 * 86_400_000
    stop = asyncio.Event()
    reporter = Reporter(Console(file=io.StringIO()), interval_s=1.0)
    sink = asyncio.create_task(
        run_sink(kafka_settings, path, stop=stop, options=FAST, reporter=reporter)
    )
    await produce(kafka_settings, [encode(e) for e in envs])
    await wait_for(lambda: archived(path) == len(envs), 30, "every event in a snapshot")
    stop.set()
    await sink
    # whole days ending at least 24 h before the last event
    through = (envs[-1].time_ms - 86_400_000) // 86_400_000 * 86_400_000
    days = range(envs[0].time_ms // 86_400_000 * 86_400_000, through, 86_400_000)
    expected = [f"{datetime.fromtimestamp(d / 1000, UTC).date()}.duckdb" for d in days]
    assert len(expected) >= 1
    assert sorted(p.name for p in parts_dir(path).iterdir()) == expected
    assert "sealed 2026-01-01" in reporter.console.file.getvalue()  # type: ignore[attr-defined]
    assert archived(path, "SELECT count(*) FROM requests") == 300
    assert archived(path, "SELECT count(DISTINCT id) FROM events") == len(envs)


class SealWatch(Reporter):
    """A reporter that notes how many events were stored when the first day was sealed."""

    def __init__(self) -> None:
        super().__init__(Console(file=io.StringIO()), interval_s=1.0)
        self.stats: SinkStats | None = None
        self.stored_at_seal: int | None = None

    def update(self, stats: SinkStats, *, force: bool = False) -> None:
        self.stats = stats
        super().update(stats, force=force)

    def note(self, text: str) -> None:
        if text.startswith("sealed") and self.stored_at_seal is None and self.stats:
            self.stored_at_seal = self.stats.stored
        super().note(text)


async def test_a_sink_working_through_a_backlog_seals_only_at_its_end(
    kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    """Three days already in the topic, fetched a few records a partition at a time (a
    fetch side slower than the writer: batches end on time, not full): sealing waits
    until every partition is fetched to its end (the rule itself: test_sink_publish.py),
    and no request is split across a seal. (Events of days the seal leaves open may
    still be in the batches fetched and not yet stored, at most two batches here; the
    next test has them hold the day sealed.)"""
    path = tmp_path / "turnout.duckdb"
    envs = list(envelopes(workload(300), step_ms=3 * 86_400_000 / 1_650))
    await produce(kafka_settings, [encode(e) for e in envs])
    stop = asyncio.Event()
    watch = SealWatch()
    options = replace(
        FAST, fetch_partition_bytes=2048, min_publish_interval_s=0.0, max_batch_records=100
    )
    sink = asyncio.create_task(
        run_sink(kafka_settings, path, stop=stop, options=options, reporter=watch)
    )
    await wait_for(lambda: watch.stored_at_seal is not None, 60, "a day sealed")
    stop.set()
    await sink
    # at most the batch queued and the one being collected are fetched and not stored
    assert watch.stored_at_seal is not None and watch.stored_at_seal >= len(envs) - 2 * 100
    assert archived(path, "SELECT count(*) FROM requests") == 300
    assert archived(path, "SELECT count(DISTINCT request_id) FROM requests") == 300


class SlowDiskSink(Sink):
    """A sink whose disk is slow: each batch takes 0.15 s more to store, so the fetch
    side runs ahead with a batch queued and the next being collected."""

    def _work(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.15)
        return super()._work(*args, **kwargs)


async def test_a_seal_at_the_end_of_a_backlog_keeps_the_days_of_batches_not_yet_stored(
    kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    """Partition 0 holds three days, partition 1 a busy first day: partition 0 is read to
    day 3 long before partition 1 is done with day 1. When the sink has fetched every
    partition to its end, the last records of day 1 are still in batches a slow disk
    has not stored: sealing day 1 then would split their requests across the seal (a
    row in the part, another in the main file). It waits for them instead."""
    day = 86_400_000
    thin = workload(60)
    busy = workload(400, start=60)
    thin_events = sum(1 for _ in envelopes(thin))
    busy_events = sum(1 for _ in envelopes(busy, seed=1))
    sent = [
        *((0, e) for e in envelopes(thin, step_ms=3 * day / thin_events)),
        *((1, e) for e in envelopes(busy, step_ms=day / busy_events, seed=1)),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_settings.bootstrap, linger_ms=5)
    await producer.start()
    try:
        sends = []
        for partition, env in sent:
            key, value, headers = encode(env)
            sends.append(
                await producer.send(
                    kafka_topics.events, value, key=key, headers=headers, partition=partition
                )
            )
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    path = tmp_path / "turnout.duckdb"
    options = replace(
        FAST, fetch_partition_bytes=2048, min_publish_interval_s=0.0, max_batch_records=5_000
    )
    watch = SealWatch()
    stop = asyncio.Event()
    archive = await asyncio.to_thread(Archive.open, path)
    try:
        sink = asyncio.create_task(
            SlowDiskSink(kafka_settings, archive, options=options, reporter=watch).run(stop)
        )
        await wait_for(lambda: watch.stored_at_seal is not None, 90, "a day sealed")
        stop.set()
        await sink
    finally:
        await asyncio.to_thread(archive.close)
    assert "sealed 2026-01-01" in watch.console.file.getvalue()  # type: ignore[attr-defined]
    assert watch.stored_at_seal == len(sent)  # every event of the sealed day was stored
    assert archived(path, "SELECT count(DISTINCT request_id) FROM requests") == 460
    assert archived(path, "SELECT count(*) FROM requests") == 460  # no request split


def start_sink(settings: KafkaSettings, path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TURNOUT_KAFKA_BOOTSTRAP": settings.bootstrap,
        "TURNOUT_KAFKA_TOPIC_PREFIX": settings.topic_prefix,
        "TURNOUT_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "TURNOUT_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "TURNOUT_DUCKDB_PATH": str(path),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "turnout", "sink"],
            cwd=path.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def test_a_sink_killed_mid_stream_and_restarted_stores_every_event_exactly_once(
    kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    path, log = tmp_path / "turnout.duckdb", tmp_path / "sink.log"
    ids, records = synthetic_records(3000, seed=7)  # about 18k events
    procs = [start_sink(kafka_settings, path, log)]
    try:
        producing = asyncio.create_task(trickle(kafka_settings, records))
        await wait_for(lambda: archived(path) > 0, 30, f"first sink stored something: {log}")
        procs[0].send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(procs[0].wait, 10) == -signal.SIGKILL
        await producing
        procs.append(start_sink(kafka_settings, path, log))
        await wait_for(lambda: archived(path) >= len(ids), 45, f"all archived: {log}")
        procs[1].send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(procs[1].wait, 15) == 0, log.read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert archived(path, "SELECT count(DISTINCT id) FROM events") == len(ids)
    assert archived(path) == len(ids)
    con = open_reader(path)
    stored = {r[0] for r in con.execute("SELECT id FROM events").fetchall()}
    assert stored == set(ids)
    assert con.execute("SELECT count(*) FROM sink_errors").fetchall() == [(0,)]
    cli = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "turnout", "sql", "select count(*) as n from events",
         "--format", "csv", "--duckdb", str(path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.split() == ["n", str(len(ids))]


async def trickle(settings: KafkaSettings, records: list[Record], chunks: int = 30) -> None:
    """Produce `records` over a few seconds, so that a kill lands mid-stream."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        size = -(-len(records) // chunks)
        for i in range(0, len(records), size):
            chunk = records[i : i + size]
            sends = [await producer.send(settings.topics.events, v, key=k, headers=h)
                     for k, v, h in chunk]  # fmt: skip
            await asyncio.gather(*sends)
            await asyncio.sleep(0.15)
    finally:
        await producer.stop()
