"""Benchmark: Turnout's Kafka adapters against raw aiokafka with the same settings.

    .venv/bin/python tests/benchmarks/bench_kafka.py [--records 100000] [--rounds 3] [--uvloop]

Produces N records (200-byte values, 7 CloudEvents-like headers, 50 tenant
keys) with `Producer.send_batch` in batches of 500, and with a raw
AIOKafkaProducer doing the same sends and gathers; then reads them back with
`Reader.getmany` and with a raw AIOKafkaConsumer (assign + seek to beginning).
Both sides use `producer_config` / `consumer_config`, so only the adapters'
own cost differs. Rounds alternate which side goes first; each round writes to
fresh topics. Reports records/s (wall) and CPU µs per record of this process
(the broker runs in another process), and the adapter/raw ratio (target >= 0.8).

Kafka: TURNOUT_KAFKA_BOOTSTRAP if set, else Apache Kafka and then Tansu in the same
run (`--engines`). On Apache Kafka the producers are idempotent (as Turnout's are).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from engines import DEFAULT_ENGINES, brokers

from turnout.service.kafka.consumer import Reader, TopicPartition, consumer_config
from turnout.service.kafka.producer import OutRecord, Producer, producer_config
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.kafka.topics import broker_engine, ensure_topic

PARTITIONS = 12
BATCH = 500
VALUE = b'{"request_id":"0192f0c4-7d1e-7000-8000-000000000000","model":"openai/gpt-4o-mini"' + (
    b',"pad":"' + b"x" * 109 + b'"}'
)
assert len(VALUE) == 200, len(VALUE)


def _headers(i: int) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", f"0192f0c4-7d1e-7000-8000-{i:012d}".encode()),
        ("ce_source", b"turnout/router/bench"),
        ("ce_type", b"turnout.request.accepted"),
        ("ce_time", b"2026-01-01T00:00:00.000Z"),
        ("ce_subject", b"0192f0c4-7d1e-7000-8000-000000000000"),
        ("content-type", b"application/json"),
    ]


@dataclass
class Sample:
    wall_s: float
    cpu_s: float
    records: int

    @property
    def rate(self) -> float:
        return self.records / self.wall_s

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.records * 1e6


async def _measure(work: Callable[[], Awaitable[int]]) -> Sample:
    wall, cpu = time.perf_counter(), time.process_time()
    records = await work()
    return Sample(time.perf_counter() - wall, time.process_time() - cpu, records)


def _records(topic: str, n: int) -> list[OutRecord]:
    return [
        OutRecord(topic, VALUE, key=b"tenant-%d" % (i % 50), headers=_headers(i)) for i in range(n)
    ]


async def produce_adapter(settings: KafkaSettings, records: list[OutRecord]) -> Sample:
    async with Producer(settings) as producer:

        async def work() -> int:
            for i in range(0, len(records), BATCH):
                await producer.send_batch(records[i : i + BATCH])
            return len(records)

        return await _measure(work)


async def produce_raw(settings: KafkaSettings, records: list[OutRecord]) -> Sample:
    idempotent = await broker_engine(settings) == "kafka"  # as the adapter decides
    producer = AIOKafkaProducer(**producer_config(settings, idempotent=idempotent))
    await producer.start()
    try:

        async def work() -> int:
            for i in range(0, len(records), BATCH):
                futures = [
                    await producer.send(r.topic, r.value, key=r.key, headers=r.headers)
                    for r in records[i : i + BATCH]
                ]
                await asyncio.gather(*futures)
            return len(records)

        return await _measure(work)
    finally:
        await producer.stop()


async def consume_adapter(settings: KafkaSettings, topic: str, n: int) -> Sample:
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    async with Reader(settings, tps) as reader:

        async def work() -> int:
            seen = 0
            while seen < n:
                seen += sum(map(len, (await reader.getmany(timeout_ms=100)).values()))
            return seen

        return await _measure(work)


async def consume_raw(settings: KafkaSettings, topic: str, n: int) -> Sample:
    consumer = AIOKafkaConsumer(**consumer_config(settings, group_id=None))
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)

        async def work() -> int:
            seen = 0
            while seen < n:
                seen += sum(map(len, (await consumer.getmany(timeout_ms=100)).values()))
            return seen

        return await _measure(work)
    finally:
        await consumer.stop()


async def one_round(settings: KafkaSettings, n: int, adapter_first: bool) -> dict[str, Sample]:
    results: dict[str, Sample] = {}
    for side in ("adapter", "raw") if adapter_first else ("raw", "adapter"):
        topic = f"bench.{side}.{uuid.uuid4().hex[:8]}"
        await ensure_topic(settings, topic, PARTITIONS)
        records = _records(topic, n)
        produce = produce_adapter if side == "adapter" else produce_raw
        consume = consume_adapter if side == "adapter" else consume_raw
        results[f"produce {side}"] = await produce(settings, records)
        results[f"consume {side}"] = await consume(settings, topic, n)
    return results


def report(rounds: list[dict[str, Sample]]) -> None:
    def median(key: str, attr: str) -> float:
        return statistics.median(getattr(r[key], attr) for r in rounds)

    print(f"{'':18}{'records/s':>12}{'CPU µs/record':>16}")
    for key in ("produce adapter", "produce raw", "consume adapter", "consume raw"):
        print(f"{key:18}{median(key, 'rate'):>12,.0f}{median(key, 'cpu_us'):>16.2f}")
    for step in ("produce", "consume"):
        rate = median(f"{step} adapter", "rate") / median(f"{step} raw", "rate")
        cpu = median(f"{step} raw", "cpu_us") / median(f"{step} adapter", "cpu_us")
        print(f"{step}: adapter/raw throughput {rate:.2f}x, CPU efficiency {cpu:.2f}x")


async def main(args: argparse.Namespace, bootstrap: str) -> None:
    settings = KafkaSettings(bootstrap=bootstrap, compression=args.compression)
    await one_round(settings, min(args.records, 5_000), True)  # warm-up
    rounds = [await one_round(settings, args.records, i % 2 == 0) for i in range(args.rounds)]
    loop = "uvloop" if args.uvloop else "asyncio"
    print(
        f"{args.records:,} records x {args.rounds} rounds, {loop}, compression={args.compression}"
    )
    report(rounds)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compression", default="none", choices=["none", "zstd", "gzip", "lz4"])
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--engines", default=DEFAULT_ENGINES, help="default kafka,tansu")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    for engine in brokers(args.engines):
        with engine as (name, bootstrap, _pid):
            print(f"\n=== broker: {name} ({bootstrap}) ===", flush=True)
            asyncio.run(main(args, bootstrap))


if __name__ == "__main__":
    cli()
