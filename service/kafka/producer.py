"""The producer adapter: Turnout's one way to write records to Kafka.

`send` enqueues a record and returns its delivery future at once; it never
waits for the broker, so a caller sends a whole batch and then awaits the
futures together (`send_batch` does both). aiokafka batches what is enqueued
within `linger_ms`.

Idempotence: on Apache Kafka every Turnout producer is idempotent (a retried
batch is written once, in order); Tansu fails InitProducerId, so there it is
off (docs/reference/broker.md rule 6). `[kafka] idempotence = "auto"` (the default) asks the
broker which it is (`topics.broker_engine`, once per address); `on` / `off`
force it. Either way consumers still dedupe by event id (at-least-once).

docs/reference/broker.md rules followed here:
- 6: no transactions; no idempotence on Tansu.
- 7: acks="all", never 0 (acks=0 corrupts aiokafka's connection on Tansu).
- 8: the default murmur2 partitioner (the core's: twice as fast as aiokafka's), as Java
  clients.
- 9: records over `max_record_bytes` (<= 1 MB) are refused here with
  `RecordTooLarge`, because Tansu accepts anything and Kafka does not;
  `max_request_size` stays at aiokafka's default.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import functools
import itertools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata, TopicPartition

from turnout.service.core.partitioning import murmur2
from turnout.service.errors import TurnoutError
from turnout.service.kafka import codec
from turnout.service.kafka.errors import RecordTooLarge, kafka_errors, start_client, translate
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.kafka.topics import broker_engine

codec.install()  # aiokafka's produce and fetch messages, compiled (codec.py)

__all__ = [
    "BatchedProducer", "Headers", "OutRecord", "Producer", "RecordMetadata", "acked",
    "producer_config",
]  # fmt: skip

Headers = Sequence[tuple[str, bytes]]


async def acked(futures: Iterable[asyncio.Future[Any]]) -> None:
    """Wait until every delivery future is done; raise the first failure, in order.

    What `asyncio.gather` does for the router's acks, at a third of its cost (a
    request waits on ~8 acks that come in one or two produce responses; gather adds a
    callback and an outer future per call). A failure after the one raised is still
    retrieved, so it logs no "exception was never retrieved"."""
    pending = list(futures)
    for i, future in enumerate(pending):
        try:
            await future
        except BaseException:
            for rest in pending[i + 1 :]:
                rest.add_done_callback(_retrieve)
            raise


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to produce. `partition=None` lets the key choose (murmur2)."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: Headers = ()
    partition: int | None = None


def producer_config(settings: KafkaSettings, *, idempotent: bool = False) -> dict[str, Any]:
    """The AIOKafkaProducer keyword arguments every Turnout producer uses."""
    return {
        "bootstrap_servers": settings.bootstrap,
        "client_id": settings.client_id,
        "acks": "all",
        "enable_idempotence": idempotent,
        "linger_ms": settings.linger_ms,
        "max_batch_size": settings.max_batch_bytes,
        "compression_type": None if settings.compression == "none" else settings.compression,
        "request_timeout_ms": settings.request_timeout_ms,
    }


class Producer:
    """A started AIOKafkaProducer with Turnout's settings and size limit."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._producer = self._make(idempotent=settings.idempotence == "on")
        self._limit = settings.max_record_bytes

    @property
    def idempotent(self) -> bool:
        return self._producer._txn_manager is not None

    def _make(self, *, idempotent: bool) -> AIOKafkaProducer:
        try:
            return AIOKafkaProducer(**producer_config(self.settings, idempotent=idempotent))
        except RuntimeError as err:  # aiokafka: "Compression library for zstd not found"
            if "ompression" not in str(err):
                raise  # e.g. no running event loop: create it inside one
            raise TurnoutError(
                f"Kafka compression {self.settings.compression!r} needs the cramjam package "
                f"(`pip install 'aiokafka[{self.settings.compression}]'`): install it or set "
                "TURNOUT_KAFKA_COMPRESSION to gzip or none"
            ) from err

    async def reachable(self, timeout_s: float) -> bool:
        """Does a broker answer a metadata request within `timeout_s` (a readiness probe)?"""
        try:
            async with asyncio.timeout(timeout_s):
                return bool(await self._producer.client.force_metadata_update())
        except (TimeoutError, KafkaError, OSError):
            return False

    async def refresh_metadata(self) -> None:
        """Learn the topics' partitions again (after they were deleted and made anew)."""
        with kafka_errors(self.settings.bootstrap):
            await self._producer.client.force_metadata_update()

    async def start(self) -> None:
        if self.settings.idempotence == "auto":
            try:
                engine = await broker_engine(self.settings)
            except BaseException:
                await self._producer.stop()  # never started: keeps its __del__ from warning
                raise
            if engine == "kafka":
                unstarted, self._producer = self._producer, self._make(idempotent=True)
                await unstarted.stop()
        p, s = self._producer, self.settings
        await start_client(p.start, p.stop, bootstrap=s.bootstrap, timeout_ms=s.connect_timeout_ms)

    async def stop(self) -> None:
        """Deliver what is enqueued, then close."""
        with kafka_errors(self.settings.bootstrap):
            await self._producer.stop()

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Enqueue one record; return its delivery future without waiting for it.

        The await returns at once unless the send buffer is full (backpressure).
        The future fails with aiokafka's error if delivery fails.
        """
        self._check_size(topic, key, value, headers)
        try:  # not `kafka_errors()`: this is the hot path, and try costs nothing
            future: asyncio.Future[RecordMetadata] = await self._producer.send(
                topic, value, key=key, partition=partition, headers=headers
            )
        except (KafkaError, OSError) as err:
            raise translate(err, bootstrap=self.settings.bootstrap) from err
        return future

    async def partitions(self, topic: str) -> int:
        """How many partitions `topic` has (from the producer's metadata)."""
        with kafka_errors(self.settings.bootstrap):
            return len(await self._producer.partitions_for(topic))

    async def topic_exists(self, topic: str) -> bool:
        """Whether the cluster has `topic` now: a fresh metadata request for every topic
        (asking for it by name could create it where auto-creation is on, and the
        producer's own metadata may still list a topic deleted since)."""
        with kafka_errors(self.settings.bootstrap):
            cluster = await self._producer.client.fetch_all_metadata()
        return bool(cluster.partitions_for_topic(topic))

    async def send_batch(self, records: Iterable[OutRecord]) -> list[RecordMetadata]:
        """Enqueue every record, then wait for all deliveries together.

        Sizes are checked first, so a record that is too large sends nothing.
        """
        batch = tuple(records)
        for r in batch:
            self._check_size(r.topic, r.key, r.value, r.headers)
        send = self._sender()
        try:
            futures = [
                await send(r.topic, r.value, key=r.key, partition=r.partition, headers=r.headers)
                for r in batch
            ]
            return list(await asyncio.gather(*futures))
        except (KafkaError, OSError) as err:
            raise translate(err, bootstrap=self.settings.bootstrap) from err

    def _sender(self) -> Callable[..., Awaitable[asyncio.Future[RecordMetadata]]]:
        """What `send_batch` hands each size-checked record to: aiokafka's own send (the
        hot path: no per-record wrapper)."""
        send: Callable[..., Awaitable[asyncio.Future[RecordMetadata]]] = self._producer.send
        return send

    async def flush(self) -> None:
        """Wait until everything enqueued so far is delivered."""
        with kafka_errors(self.settings.bootstrap):
            await self._producer.flush()

    def _check_size(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        size = len(key or b"") + len(value or b"")
        for name, data in headers:
            size += len(name) + len(data or b"")
        if size > self._limit:
            raise RecordTooLarge(
                f"record for {topic} is {size} bytes, over the {self._limit}-byte limit "
                "(Kafka refuses records over about 1 MB): store the payload elsewhere "
                "and send a reference"
            )

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class BatchedProducer(Producer):
    """A producer that builds its record batches itself: `enqueue` (not a coroutine)
    appends a record to its partition's open batch and returns the record's delivery
    future.

    Why: aiokafka's per-record `send` costs ~25 us of CPU (metadata wait, partitioner
    checks, serializer, a coroutine and a future per record); appending to a
    `BatchBuilder` ~7 us. The router sends three events and a response per request.

    When a batch leaves: `linger_ms` after its first record (0: at the end of the
    current event-loop step), or when it is full; but never while the partition's
    previous batch is undelivered. Then it stays open and takes more records, and
    leaves once that batch is acknowledged, as aiokafka's own batches do (one produce
    request in flight per broker; handing it a batch per loop step instead would queue
    them up, one round trip each: 46 ms p50 on the response hop at 500 req/s).
    So each partition has at most one batch in flight and its records keep their
    order. Every record names its partition; `send` enqueues too (its key choosing
    the partition as aiokafka's would), so nothing overtakes.

    An `urgent` record does not linger: its batch is due at the end of the current
    loop step (as with `linger_ms` 0) and takes the lingering records of its partition
    along. So one producer serves records that must go at once (a response, a stream's
    first token) and records that may wait to share a produce request (a stream's later
    chunks) in one batch stream per partition, in order: fewer produce requests than
    a producer for each kind, and no ordering to arrange between them.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self._linger_s = settings.linger_ms / 1000
        super().__init__(settings.replace(linger_ms=0))  # aiokafka must not linger again
        self._open: dict[tuple[str, int], _OpenBatch] = {}  # filling
        self._full: dict[tuple[str, int], collections.deque[_OpenBatch]] = {}  # waiting
        self._busy: set[tuple[str, int]] = set()  # a batch of theirs is undelivered
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._soon: asyncio.Handle | None = None  # urgent batches leave at this loop step's end
        self._tasks: set[asyncio.Task[None]] = set()
        self._spread = itertools.count()  # partitions for keyless records, in turn

    def enqueue(
        self,
        topic: str,
        value: bytes | None,
        *,
        partition: int,
        key: bytes | None = None,
        headers: Headers = (),
        urgent: bool = False,
    ) -> asyncio.Future[RecordMetadata]:
        """Append one record to its partition's open batch; return its delivery future
        (which fails with aiokafka's error if the batch cannot be delivered). `urgent`:
        the batch leaves at the end of this loop step (or once its partition's batch in
        flight is delivered), not after `linger_ms`."""
        self._check_size(topic, key, value, headers)
        tp = (topic, partition)
        batch = self._open.get(tp)
        if batch is None:
            batch = self._open[tp] = _OpenBatch(self._producer.create_batch(), topic, partition)
        future = batch.append(key, value, headers)
        if future is None:  # full: it leaves (or waits its turn); the record starts the next
            del self._open[tp]
            if tp in self._busy:
                self._full.setdefault(tp, collections.deque()).append(batch)
            else:
                self._hand_over(tp, batch)
            batch = self._open[tp] = _OpenBatch(self._producer.create_batch(), topic, partition)
            future = batch.append(key, value, headers)
            assert future is not None  # an empty batch takes any record (size checked)
        if urgent and self._linger_s and not batch.due:
            batch.due = True
            if self._soon is None:
                self._soon = batch.loop.call_soon(self._due_now)
        if self._timer is None:
            loop = batch.loop
            self._timer = (
                loop.call_later(self._linger_s, self._linger_over)
                if self._linger_s
                else loop.call_soon(self._linger_over)
            )
        return future

    def _due_now(self) -> None:
        """The batches made due by an urgent record leave."""
        self._soon = None
        self._send_due()

    def _send_due(self) -> None:
        """Every due batch leaves now if its partition may send; the others leave when
        their partition's batch in flight is delivered (`_next`)."""
        for tp, batch in list(self._open.items()):
            if batch.due and tp not in self._busy:
                del self._open[tp]
                self._hand_over(tp, batch)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
        urgent: bool = False,
    ) -> asyncio.Future[RecordMetadata]:
        """`Producer.send`: the key chooses the partition when none is named (murmur2, as
        aiokafka's and Java's default partitioner; no key: round robin); `urgent` as for
        `enqueue`."""
        if partition is None:
            try:  # waits for the topic's metadata, as aiokafka's send does
                count = len(await self._producer.partitions_for(topic))
            except (KafkaError, OSError) as err:
                raise translate(err, bootstrap=self.settings.bootstrap) from err
            if key is None:
                partition = next(self._spread) % count
            else:
                partition = (murmur2(key) & 0x7FFFFFFF) % count
        return self.enqueue(
            topic, value, key=key, headers=headers, partition=partition, urgent=urgent
        )

    def _sender(self) -> Callable[..., Awaitable[asyncio.Future[RecordMetadata]]]:
        return self.send  # `send_batch` enqueues too: nothing overtakes

    async def flush(self) -> None:
        """Wait until everything enqueued so far is delivered (or failed)."""
        await self._deliver_all()
        await super().flush()

    async def stop(self) -> None:
        """Deliver what is enqueued (lingering or waiting its turn), then close."""
        await self._deliver_all()
        await super().stop()

    async def _deliver_all(self) -> None:
        """Send every open batch (in its turn) and wait until each record enqueued so far
        is delivered or failed, and every batch handed over has reached aiokafka."""
        waiting: list[asyncio.Future[Any]] = [f for b in self._open.values() for f in b.futures]
        waiting += [f for q in self._full.values() for b in q for f in b.futures]
        waiting += self._tasks
        self._linger_over()
        if waiting:
            await asyncio.wait(waiting)

    def _linger_over(self) -> None:
        """The open batches are due: each leaves now, or when its partition's batch in
        flight is delivered."""
        self._timer = None
        for batch in self._open.values():
            batch.due = True
        self._send_due()

    def _next(self, tp: tuple[str, int]) -> None:
        """The partition's batch in flight is delivered (or failed): the next may go."""
        self._busy.discard(tp)
        waiting = self._full.get(tp)
        if waiting:
            self._hand_over(tp, waiting.popleft())
            if not waiting:
                del self._full[tp]
        elif (batch := self._open.get(tp)) is not None and batch.due:
            del self._open[tp]
            self._hand_over(tp, batch)

    def _hand_over(self, tp: tuple[str, int], batch: _OpenBatch) -> None:
        self._busy.add(tp)
        batch.builder.close()
        queued = self._append_now(batch)
        if queued is not None:
            queued.add_done_callback(functools.partial(self._delivered, tp, batch))
            return
        task = batch.loop.create_task(self._deliver(tp, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _append_now(self, batch: _OpenBatch) -> asyncio.Future[Any] | None:
        """What aiokafka's `send_batch` does, without its coroutine, a task to run it and
        a shielded future, when nothing could make it wait or fail: the partition known,
        the partition's queue empty (its last batch was delivered: `_busy`), the producer
        running. Then the batch's delivery future; else None (`_deliver` does it). Per
        batch ~15 us less, and the batch reaches the sender one loop step earlier."""
        producer = self._producer
        accumulator = producer._message_accumulator
        partitions = producer.client.cluster.partitions_for_topic(batch.topic)
        if (
            not partitions
            or batch.partition not in partitions
            or accumulator._closed
            or accumulator._exception is not None
            or (
                producer._txn_manager is not None
                and producer._txn_manager.transactional_id is not None
            )
        ):
            return None
        tp = TopicPartition(batch.topic, batch.partition)
        if accumulator._batches.get(tp):
            return None
        try:
            queued: asyncio.Future[Any] = accumulator._append_batch(batch.builder, tp).future
        except Exception:  # whatever it is, send_batch (in `_deliver`) meets it and says so
            return None
        return queued

    def _delivered(
        self, tp: tuple[str, int], batch: _OpenBatch, future: asyncio.Future[RecordMetadata]
    ) -> None:
        batch.delivered(future)
        self._next(tp)

    async def _deliver(self, tp: tuple[str, int], batch: _OpenBatch) -> None:
        """Give the batch to aiokafka (at once: its partition has nothing pending there)."""
        try:
            delivered = await self._producer.send_batch(
                batch.builder, batch.topic, partition=batch.partition
            )
        except BaseException as err:  # e.g. the producer stopped; or this task cancelled
            batch.fail(err)
            self._next(tp)
            if not isinstance(err, Exception):
                raise
            return

        delivered.add_done_callback(functools.partial(self._delivered, tp, batch))


class _OpenBatch:
    """A BatchBuilder being filled for one partition, and its records' futures."""

    __slots__ = ("builder", "due", "futures", "loop", "partition", "topic")

    def __init__(self, builder: Any, topic: str, partition: int) -> None:
        self.builder = builder
        self.topic = topic
        self.partition = partition
        # once per batch, not per record: CPython's get_running_loop calls getpid(), a
        # system call (per record it cost the router ~7 % of its CPU, bench_router_ab)
        self.loop = asyncio.get_running_loop()
        self.futures: list[asyncio.Future[RecordMetadata]] = []
        self.due = False  # its linger is over: it leaves as soon as its partition may send

    def append(
        self, key: bytes | None, value: bytes | None, headers: Headers
    ) -> asyncio.Future[RecordMetadata] | None:
        if type(headers) is not list:
            headers = list(headers)  # aiokafka's builder takes lists only
        if self.builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
            return None
        future: asyncio.Future[RecordMetadata] = self.loop.create_future()
        self.futures.append(future)
        return future

    def delivered(self, done: asyncio.Future[RecordMetadata]) -> None:
        """Resolve each record's future from its batch's (offsets count up from its base)."""
        if done.cancelled():
            self.fail(asyncio.CancelledError())
            return
        error = done.exception()
        if error is not None:
            self.fail(error)
            return
        meta = done.result()
        if meta is None:  # an empty batch (its only record was refused): nothing to resolve
            return
        base = meta.offset
        for i, future in enumerate(self.futures):
            if not future.done():
                future.set_result(
                    RecordMetadata(
                        meta.topic, meta.partition, meta.topic_partition, base + i,
                        meta.timestamp, meta.timestamp_type, meta.log_start_offset,
                    )
                )  # fmt: skip

    def fail(self, error: BaseException) -> None:
        for future in self.futures:
            if future.done():
                continue
            if isinstance(error, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(copy.copy(error))
                future.exception()  # retrieved: a caller that stopped waiting is no leak
