"""The brokers a benchmark runs on: Apache Kafka and Tansu, one after the other, in one run.

    for engine in brokers(args.engines):   # "kafka,tansu" by default
        with engine as (name, bootstrap, pid):
            ...

`TURNOUT_KAFKA_BOOTSTRAP`, when set, replaces them with that one broker
(`external`, pid unknown). Each local broker is fresh (a temporary data dir
for Apache Kafka) and stopped when its block ends.

A fresh JVM runs its produce and fetch paths interpreted until the JIT has seen
them: the first ~20 s of traffic on a new Apache Kafka broker were 4-5x slower
(latency p99 142 ms, then 35 ms on the same run's third pass). A production
broker is warm, so each local broker first carries `WARMUP_S` seconds of small
produce requests and waiting fetches (a throwaway topic; `TURNOUT_BENCH_WARMUP_S`
overrides, 0 turns it off), and the benchmark prints that it did.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from turnout.service.kafka.broker import local_broker

__all__ = ["DEFAULT_ENGINES", "Engine", "brokers"]

DEFAULT_ENGINES = "kafka,tansu"
Engine = tuple[str, str, int | None]
WARMUP_S = float(os.environ.get("TURNOUT_BENCH_WARMUP_S", "20"))


@contextlib.contextmanager
def _local(engine: str) -> Iterator[Engine]:
    with (
        tempfile.TemporaryDirectory(prefix=f"bench-{engine}-") as data,
        local_broker(engine, data_dir=f"{data}/kafka") as broker,
    ):
        if WARMUP_S > 0:
            # its own thread and loop: callers inside a running loop (bench_sink) block
            # on it as the others do
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                sent = pool.submit(asyncio.run, warm(broker.bootstrap, WARMUP_S)).result()
            print(f"  (broker warmed: {sent:,} records in {WARMUP_S:g} s before timing)")
        yield engine, broker.bootstrap, broker.pid


@contextlib.contextmanager
def _external(bootstrap: str) -> Iterator[Engine]:
    yield "external", bootstrap, None


def brokers(engines: str = DEFAULT_ENGINES) -> list[AbstractContextManager[Engine]]:
    """One context manager per engine named in `engines` (comma-separated)."""
    if bootstrap := os.environ.get("TURNOUT_KAFKA_BOOTSTRAP"):
        return [_external(bootstrap)]
    return [_local(name.strip()) for name in engines.split(",") if name.strip()]


async def warm(bootstrap: str, seconds: float) -> int:
    """Small produce requests (idempotent, acks=all, one or a few records each) and
    waiting fetches on a 16-partition topic for `seconds`: the JIT's warm-up."""
    topic = f"warmup-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 16, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=topic,
                                auto_offset_reset="earliest", fetch_max_wait_ms=10)  # fmt: skip
    await producer.start()
    await consumer.start()
    sent = 0
    try:
        end = time.monotonic() + seconds

        async def read() -> None:
            while time.monotonic() < end:
                await consumer.getmany(timeout_ms=50)

        reader = asyncio.create_task(read())
        while time.monotonic() < end:
            futures = [await producer.send(topic, b"x" * 200, key=b"%d" % (sent + i))
                       for i in range(8)]  # fmt: skip
            await asyncio.gather(*futures)
            sent += len(futures)
        await reader
    finally:
        await consumer.stop()
        await producer.stop()
    return sent
