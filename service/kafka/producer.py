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
- 8: aiokafka's default murmur2 partitioner, the same as Java clients.
- 9: records over `max_record_bytes` (<= 1 MB) are refused here with
  `RecordTooLarge`, because Tansu accepts anything and Kafka does not;
  `max_request_size` stays at aiokafka's default.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from turnout.service.errors import TurnoutError
from turnout.service.kafka.errors import RecordTooLarge, kafka_errors, start_client, translate
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.kafka.topics import broker_engine

__all__ = ["Headers", "OutRecord", "Producer", "RecordMetadata", "producer_config"]

Headers = Sequence[tuple[str, bytes]]


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

    async def send_batch(self, records: Iterable[OutRecord]) -> list[RecordMetadata]:
        """Enqueue every record, then wait for all deliveries together.

        Sizes are checked first, so a record that is too large sends nothing.
        """
        batch = tuple(records)
        for r in batch:
            self._check_size(r.topic, r.key, r.value, r.headers)
        send = self._producer.send  # the hot path: no per-record wrapper
        try:
            futures = [
                await send(r.topic, r.value, key=r.key, partition=r.partition, headers=r.headers)
                for r in batch
            ]
            return list(await asyncio.gather(*futures))
        except (KafkaError, OSError) as err:
            raise translate(err, bootstrap=self.settings.bootstrap) from err

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
