"""`turnout sink`: stream `turnout.events` into the DuckDB archive, exactly once per event.

One member of the consumer group `<prefix>-sink` reads the events topic in
batches (up to `max_batch_records`, or what arrived within `max_batch_wait_s`),
puts each batch in column form (`turnout.analytics.records`) and stores it in one
DuckDB transaction (`Archive.load_records`); only then are the batch's Kafka
offsets committed. A crash after the transaction and before the commit
redelivers the batch, and the primary key on the event id stores each event
once: at-least-once delivery + an idempotent archive = every event exactly once.

Rules:
- the main file has one writer: one sink per archive (a second one fails
  with a clear message); readers use the snapshot the sink publishes at most
  every `min_publish_interval_s`, longer when the snapshot copy takes long
  (`publish_cost_factor` x the last copy, which grows with the archive), see
  `turnout.analytics.snapshot`. The fold into the derived tables and the
  checkpoint are left out of that: they cost about the same per event however
  publishes are spaced (the checkpoint writes what came through the WAL since the
  last one), and counted in, they spaced publishes ever further apart while the
  sink caught up (each wait gathered more events, which made the next publish
  longer and its wait longer still: minutes between snapshots, and as long
  after the backlog was gone). A stop publishes only if something changed;
- two tasks: one fetches the next batch and puts it in column form (each
  fetched chunk on a thread while the next is fetched) while the other has
  the archive's thread store the last one; batches are stored one
  at a time, in order, and a batch's offsets are committed after it is
  stored, never before;
- an unreadable record (not JSON, not UTF-8, missing or bad CloudEvents
  headers) becomes a `sink_errors` row, and the sink goes on; events of
  unknown types, and data that breaks its type's schema, are stored as sent;
- a failed offset commit (a rebalance took the partition away) is reported
  and skipped: the records come again and are skipped as duplicates;
- speed: batches of up to 122,880 records (a DuckDB row group, which DuckDB
  writes straight to the file instead of through its WAL), DuckDB doing the
  per-record checks vectorized, and Python's cyclic GC run on a clock instead
  of on allocation counts (`_ManualGC`) took the sink from 36k to about 90k
  events/s on two cores (tests/benchmarks/bench_sink.py); young-generation
  collections on most ticks, column building overlapped with fetching, and
  no DuckDB checkpoint but the snapshot's took it past 100k; fetches of up to
  8 MiB per partition (aiokafka's default is 1 MiB) keep the fetch side from being the
  bottleneck on Apache Kafka;
- progress: a status line on a terminal, else a line every `report_interval_s`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias, TypeVar

from rich.console import Console

from turnout.analytics.archive import ROW_GROUP_ROWS, Archive, LoadResult, Published
from turnout.analytics.records import RecordBatch, first_time_ms, merge, record_batch
from turnout.service.kafka.consumer import Batch, GroupConsumer, TopicPartition, next_offsets
from turnout.service.kafka.errors import KafkaFailure, quiet_client_logs
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.kafka.topics import ensure_topics
from turnout.service.runtime.config import load_config
from turnout.service.wire.cloudevents import format_time

__all__ = [
    "Reporter",
    "Sink",
    "SinkOptions",
    "SinkStats",
    "caught_up",
    "cli_main",
    "oldest_ms",
    "sink_group_id",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkOptions:
    """How the sink batches, publishes and reports."""

    # exactly one DuckDB row group (`ROW_GROUP_ROWS`): written straight to the file, not via
    # the WAL, and whole, so the next checkpoint has nothing to rewrite. With 125,000 each
    # batch also left a 2,120-row group that the checkpoint merged by rewriting the batch:
    # 0.5 s per checkpoint at 125k events, 3.4 us of the writer's ~8 per event, and a file
    # 1.7x as large (323 vs 193 MB at 1.17M events). Only a full batch of new, readable
    # events fills a row group: one with an unreadable record or a redelivered one (after
    # a restart), or a batch cut short by `max_batch_wait_s`, goes through the WAL and
    # costs its checkpoint that rewrite, as every batch did before
    max_batch_records: int = ROW_GROUP_ROWS
    max_batch_wait_s: float = 1.0
    # fetches of up to 8 MiB per partition: with aiokafka's 1 MiB the fetch side, not
    # DuckDB, was the bottleneck (bench_sink: 63-66k -> 114-129k events/s); at most
    # ~100 MB of fetched records are held at once
    fetch_partition_bytes: int = 8 * 1_048_576
    fetch_max_bytes: int = 100 * 1_048_576
    min_publish_interval_s: float = 1.0
    # snapshot copies take at most ~1/11 of the writer's time
    publish_cost_factor: float = 10.0
    # whole UTC days of events older than this are sealed into read-only parts at a
    # publish once the sink has caught up, so a snapshot copies the last day or two,
    # not the archive's months (`[duckdb] hot_hours`; None or 0: never seal)
    hot_hours: float | None = 24.0
    # sealed parts older than this many days are dropped (`[duckdb] keep_days`; None or 0:
    # keep every day)
    keep_days: int | None = None
    report_interval_s: float = 10.0
    gc_interval_s: float | None = 10.0  # None: leave Python's cyclic GC alone


@dataclass(slots=True)
class SinkStats:
    """Running totals of one sink process."""

    stored: int = 0
    duplicates: int = 0
    errors: int = 0
    batches: int = 0
    snapshots: int = 0
    load_s: float = 0.0  # the writer's time storing batches
    publish_s: float = 0.0  # ... and publishing snapshots (derive, checkpoint, copy)
    last_event_ms: int | None = None
    started: float = field(default_factory=time.monotonic)

    def add(self, result: LoadResult) -> None:
        self.stored += result.inserted
        self.duplicates += result.duplicates
        self.errors += result.errors
        self.batches += 1
        if result.last_event_ms is not None:
            self.last_event_ms = max(self.last_event_ms or 0, result.last_event_ms)


def caught_up(batch: int, max_batch: int, lag: dict[int, int], assigned: int) -> bool:
    """May a publish seal old days: has the sink read the log to its end?

    Only then: while it works through a backlog, its partitions reach the same event
    time at different moments (each fetch takes the same bytes from each, however
    busy), and a day sealed by the newest event could still have requests to come on
    a partition behind, whose rows the seal would split. At the end: the last batch
    was not full, and every assigned partition was fetched and has nothing left
    (`lag`, from the last fetch's high watermark; on Tansu, whose end offsets are
    wrong, the batch size is the only guard).
    """
    return batch < max_batch and 0 < len(lag) == assigned and not any(lag.values())


def sink_group_id(settings: KafkaSettings) -> str:
    """The sink's consumer group: one per topic prefix."""
    return f"{settings.topic_prefix}-sink"


class Reporter:
    """Progress on stderr: a live status line on a terminal, else a line every interval."""

    def __init__(self, console: Console | None = None, *, interval_s: float = 10.0) -> None:
        self.console = console or Console(stderr=True)
        self.interval_s = interval_s
        self._live = self.console.is_terminal
        self._status = self.console.status("sink: starting") if self._live else None
        self._last = (time.monotonic(), 0)

    def start(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)
        if self._status is not None:
            self._status.start()

    def update(self, stats: SinkStats, *, force: bool = False) -> None:
        now, stored = time.monotonic(), stats.stored
        if self._status is not None:
            self._status.update(self._line(stats, now))
        elif force or now - self._last[0] >= self.interval_s:
            self.console.print(self._line(stats, now), highlight=False, soft_wrap=True)
        else:
            return
        if force or now - self._last[0] >= self.interval_s:
            self._last = (now, stored)

    def note(self, text: str) -> None:
        self.console.print(f"sink: {text}", highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.console.print(f"sink: warning: {text}", highlight=False, soft_wrap=True)

    def stop(self, stats: SinkStats) -> None:
        if self._status is not None:
            self._status.stop()
        self.console.print(self._line(stats, time.monotonic()), highlight=False, soft_wrap=True)

    def _line(self, stats: SinkStats, now: float) -> str:
        since, stored_then = self._last
        rate = (stats.stored - stored_then) / max(now - since, 1e-3)
        last = format_time(stats.last_event_ms) if stats.last_event_ms is not None else "none yet"
        return (
            f"sink: {stats.stored:,} events stored ({rate:,.0f}/s), "
            f"{stats.duplicates:,} duplicates skipped, {stats.errors:,} unreadable; "
            f"last event {last}; {stats.snapshots:,} snapshots"
        )


_Done: TypeAlias = tuple[LoadResult | None, Published | None]
_T = TypeVar("_T")


class _ManualGC:
    """Python's cyclic GC run every `interval_s` instead of on allocation counts.

    A batch is ~123k records, each a handful of objects that reference
    counting frees; the collector, triggered by those allocations, rescans
    the live batch again and again and cost a quarter of the sink's
    throughput. Inside this block it runs on a clock (`tick`), and the
    previous setting comes back on exit. `interval_s=None` changes nothing.
    A tick collects the young generations; every `full_every`-th tick also
    the oldest, whose walk over every live object cost ~15% of the sink's
    time when done on every tick (py-spy, bench_sink.py).
    """

    def __init__(self, interval_s: float | None, *, full_every: int = 30) -> None:
        self.interval_s = interval_s
        self.full_every = full_every
        self._ticks = 0
        self._was_enabled = gc.isenabled()
        self._last = time.monotonic()

    def __enter__(self) -> _ManualGC:
        self._was_enabled = gc.isenabled()
        if self.interval_s is not None:
            gc.disable()
        return self

    def tick(self) -> None:
        if self.interval_s is not None and time.monotonic() - self._last >= self.interval_s:
            self._ticks += 1
            gc.collect(2 if self._ticks % self.full_every == 0 else 1)
            self._last = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        if self.interval_s is not None and self._was_enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class _Work:
    """A batch in column form (None: only publish), the offsets to commit after it, and
    its number among the batches in flight (`Sink._in_flight`)."""

    records: RecordBatch | None
    offsets: dict[TopicPartition, int]
    seq: int = -1


def oldest_ms(got: Batch) -> int | None:
    """The time of the oldest event among fetched records, as their order tells: each
    partition's first record with a readable time (a partition's events come in about
    the order they happened; the sealing margin, `hot_hours`, covers the rest)."""
    times = (first_time_ms(records) for records in got.values())
    return min((t for t in times if t is not None), default=None)


async def _in_thread(fn: Callable[..., _T], *args: object) -> _T:
    """`fn(*args)` on a worker thread; if cancelled, wait for the thread before going on,
    so the archive is never closed under a running statement."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


class Sink:
    """One sink: a group consumer feeding one archive."""

    def __init__(
        self,
        settings: KafkaSettings,
        archive: Archive,
        *,
        options: SinkOptions | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.options = options or SinkOptions()
        self.reporter = reporter or Reporter(interval_s=self.options.report_interval_s)
        self.stats = SinkStats()
        self._dirty = True
        self._published_at = 0.0
        self._publish_cost = 0.0
        self._gc = _ManualGC(None)
        # the oldest event time of each batch fetched and not stored yet, by batch number:
        # a seal leaves the days those could still add rows to (`_seal_until`)
        self._in_flight: dict[int, int] = {}
        self._batches = itertools.count()

    async def run(self, stop: asyncio.Event) -> SinkStats:
        """Consume until `stop` is set; then commit, publish a last snapshot and leave."""
        settings = self.settings.replace(
            max_partition_fetch_bytes=self.options.fetch_partition_bytes,
            fetch_max_bytes=self.options.fetch_max_bytes,
        )
        consumer = GroupConsumer(
            settings, [self.settings.topics.events], group_id=sink_group_id(self.settings)
        )
        await consumer.start()
        try:
            await self._publish()
            with _ManualGC(self.options.gc_interval_s) as self._gc:
                await self._loop(consumer, stop)
            if self._dirty:  # else the snapshot holds everything: no copy of it again
                await self._publish()
        finally:
            await consumer.stop()
        self.reporter.stop(self.stats)
        return self.stats

    async def _loop(self, consumer: GroupConsumer, stop: asyncio.Event) -> None:
        """Fetch and write concurrently: the next batch is fetched and put in column
        form while the archive's thread stores the last one."""
        queue: asyncio.Queue[_Work | None] = asyncio.Queue(maxsize=1)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._fetch(consumer, stop, queue))
            tasks.create_task(self._write(consumer, queue))

    async def _fetch(
        self, consumer: GroupConsumer, stop: asyncio.Event, queue: asyncio.Queue[_Work | None]
    ) -> None:
        while not stop.is_set():
            seq = next(self._batches)
            batch, columns = await self._collect(consumer, stop, seq)
            if batch:
                await queue.put(_Work(columns, next_offsets(batch), seq))
            elif self._publish_due(loading=False):  # idle: let the writer publish
                await queue.put(_Work(None, {}))
        await queue.put(None)

    async def _write(self, consumer: GroupConsumer, queue: asyncio.Queue[_Work | None]) -> None:
        while (work := await queue.get()) is not None:
            publish = self._publish_due(loading=work.records is not None)
            if work.records is None and not publish:
                continue
            seal = publish and await self._caught_up(consumer, work.records)
            until = self._seal_until(work.seq) if seal else None
            result, published = await _in_thread(self._work, work.records, publish, seal, until)
            self._in_flight.pop(work.seq, None)
            if result is not None:
                self.stats.add(result)
                self._dirty = True
            if published is not None:
                self._published(published)
            if work.offsets:
                await self._commit(consumer, work.offsets)
            self._gc.tick()
            self.reporter.update(self.stats)

    async def _collect(
        self, consumer: GroupConsumer, stop: asyncio.Event, seq: int
    ) -> tuple[Batch, RecordBatch | None]:
        """Records until the batch is full, the stream pauses, or the wait is over; and
        their column form, each fetched chunk's built on a thread while the next is
        fetched (None when nothing came). The oldest event time goes to `_in_flight`
        as the chunks come."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.max_batch_wait_s
        batch: Batch = {}
        parts: list[asyncio.Future[RecordBatch]] = []
        count = 0
        try:
            while count < self.options.max_batch_records and not stop.is_set():
                wait_ms = int((deadline - loop.time()) * 1000)
                if wait_ms <= 0:
                    break
                got = await consumer.getmany(
                    timeout_ms=wait_ms, max_records=self.options.max_batch_records - count
                )
                if not got and count:
                    break
                chunk = [r for records in got.values() for r in records]
                if chunk:
                    parts.append(asyncio.ensure_future(_in_thread(record_batch, chunk)))
                    if (oldest := oldest_ms(got)) is not None:
                        self._in_flight[seq] = min(oldest, self._in_flight.get(seq, oldest))
                for tp, records in got.items():
                    batch.setdefault(tp, []).extend(records)
                    count += len(records)
        finally:  # never leave a chunk's thread running behind a cancel
            done = await asyncio.gather(*parts)
        return batch, merge(done) if done else None

    def _work(
        self,
        records: RecordBatch | None,
        publish: bool,
        seal: bool = False,
        until_ms: int | None = None,
    ) -> _Done:
        """On the archive's thread: load the batch, then publish a snapshot if asked."""
        started = time.monotonic()
        result = self.archive.load_records(records) if records is not None else None
        self.stats.load_s += time.monotonic() - started
        return result, self._publish_now(seal=seal, until_ms=until_ms) if publish else None

    def _seal_until(self, storing: int) -> int | None:
        """The oldest event fetched and not stored once batch `storing` is: a seal keeps
        the days it could still add rows to (at the end of a backlog, the batch queued
        and the one being collected can hold events of the day a seal would close)."""
        return min((t for seq, t in self._in_flight.items() if seq != storing), default=None)

    async def _caught_up(self, consumer: GroupConsumer, records: RecordBatch | None) -> bool:
        """Has the sink read every partition to its end (see `caught_up`)?"""
        if records is not None and len(records) >= self.options.max_batch_records:
            return False  # no need to ask: a full batch is a backlog
        return caught_up(
            len(records) if records is not None else 0, self.options.max_batch_records,
            await consumer.lag(), len(consumer.assignment),
        )  # fmt: skip

    async def _commit(self, consumer: GroupConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:  # a commit that fails (also one that times out while the broker restarts) is
            # retried by the next one: the archive skips the records that come again
            await consumer.commit(offsets)
        except KafkaFailure as err:
            self.reporter.warn(
                f"offset commit failed ({err}); those records will come again "
                "and be skipped as duplicates"
            )

    def _publish_due(self, *, loading: bool) -> bool:
        wait = max(
            self.options.min_publish_interval_s,
            self.options.publish_cost_factor * self._publish_cost,
        )
        return (self._dirty or loading) and time.monotonic() - self._published_at >= wait

    async def _publish(self) -> None:
        self._published(await _in_thread(self._publish_now))

    def _publish_now(self, *, seal: bool = False, until_ms: int | None = None) -> Published:
        """On the archive's thread: publish a snapshot, sealing old days first if asked
        (none that events up to `until_ms` could still add rows to)."""
        hot = self.options.hot_hours if seal and self.options.hot_hours else None
        keep = self.options.keep_days if hot is not None else None
        return self.archive.publish(hot_hours=hot, keep_days=keep, until_ms=until_ms)

    def _published(self, published: Published) -> None:
        self._dirty = False
        self._published_at = time.monotonic()
        self._publish_cost = published.copy_s  # the part spacing saves: the module's doc
        self.stats.snapshots += 1
        self.stats.publish_s += published.seconds
        for part in published.expired:
            self.reporter.note(
                f"dropped {part.path.name} ({part.events:,} events, {part.requests:,} requests): "
                f"older than keep_days={self.options.keep_days}"
            )
        for part in published.sealed:
            what = (
                f"sealed {part.day}"
                if part.days == 1
                else f"merged {part.days} days from {part.day}"
            )
            self.reporter.note(
                f"{what} ({part.events:,} events, {part.requests:,} requests) into {part.path}"
            )


async def run_sink(
    settings: KafkaSettings,
    path: str | Path,
    *,
    stop: asyncio.Event,
    options: SinkOptions | None = None,
    reporter: Reporter | None = None,
) -> SinkStats:
    """Create the topics if missing, open the archive at `path` and sink until `stop`."""
    await ensure_topics(settings)
    archive = await asyncio.to_thread(Archive.open, path)
    try:
        sink = Sink(settings, archive, options=options, reporter=reporter)
        sink.reporter.start(
            f"sink: {settings.topics.events} on {settings.bootstrap} (group "
            f"{sink_group_id(settings)}) -> {archive.path}; readers use {archive.snapshot}"
        )
        return await sink.run(stop)
    finally:
        await asyncio.to_thread(archive.close)


async def _main(settings: KafkaSettings, path: str, options: SinkOptions) -> int:
    """Sink until SIGINT or SIGTERM, then stop cleanly (exit 0)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await run_sink(settings, path, stop=stop, options=options)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return 0


def cli_main(args: argparse.Namespace) -> int:
    """`turnout sink [--config FILE] [--duckdb PATH]`: run until Ctrl-C or SIGTERM."""
    quiet_client_logs()
    cfg = load_config(args.config)
    path = args.duckdb or cfg.duckdb.path
    settings = KafkaSettings.from_config(cfg.kafka, topics=cfg.topics, client_id="turnout-sink")
    code = asyncio.run(
        _main(
            settings,
            path,
            SinkOptions(hot_hours=cfg.duckdb.hot_hours, keep_days=cfg.duckdb.keep_days),
        )
    )
    sys.stderr.flush()
    return code
