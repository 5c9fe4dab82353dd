"""Benchmark: what one Kafka round trip costs the router, with aiokafka's protocol codec
and with Turnout's compiled one (`service/kafka/codec.py`), in the same run.

    .venv/bin/python tests/benchmarks/bench_kafka_wire.py [--records 3000] [--rounds 2]

1. The messages alone (no broker): µs to encode the router's fetch request (12 intake
   partitions), decode its response (one partition with a 400-byte record set), encode a
   produce request (a response and two event batches) and decode its response.
2. On a local Apache Kafka (uvloop, as the router runs): CPU µs of this process per
   produce round trip (`BatchedProducer`, linger 0, one record awaited at a time), and
   per record at 500 records/s with a consumer on the 12 partitions reading each (the
   router's intake and response pattern at a moderate rate: about one fetch and one
   produce request per record). Rounds alternate the two codecs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
import timeit
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop
from aiokafka import AIOKafkaConsumer
from aiokafka.protocol.fetch import FetchRequest_v11, FetchResponse_v11
from aiokafka.protocol.produce import ProduceRequest_v8, ProduceResponse_v8
from engines import brokers

from turnout.service.kafka import codec
from turnout.service.kafka.producer import BatchedProducer
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.kafka.topics import ensure_topic

PARTITIONS = 12
T = TypeVar("T")
VALUE = b"x" * 300


def messages() -> dict[str, Callable[[], object]]:
    parts = [(p, -1, 1000 + p, -1, 1_048_576) for p in range(PARTITIONS)]
    fetch = FetchRequest_v11(-1, 10, 1, 52_428_800, 0, 0, -1, [("turnout.requests", parts)], [], "")
    records = [(p, 0, 1000 + p, 1000 + p, 0, None, -1, b"r" * 400 if p == 3 else b"")
               for p in range(PARTITIONS)]  # fmt: skip
    fetched = FetchResponse_v11(0, 0, 0, [("turnout.requests", records)]).encode()
    produce = ProduceRequest_v8(None, -1, 30_000, [
        ("turnout.responses", [(3, b"y" * 500)]),
        ("turnout.events", [(1, b"z" * 900), (5, b"z" * 900)]),
    ])  # fmt: skip
    produced = ProduceResponse_v8(
        [("turnout.responses", [(3, 0, 5, -1, 0, [], None)]),
         ("turnout.events", [(1, 0, 9, -1, 0, [], None), (5, 0, 7, -1, 0, [], None)])], 0,
    ).encode()  # fmt: skip
    return {
        "fetch request encode (12 partitions)": lambda: fetch.encode(),
        "fetch response decode (12 partitions)": lambda: FetchResponse_v11.decode(fetched),
        "produce request encode (3 batches)": lambda: produce.encode(),
        "produce response decode": lambda: ProduceResponse_v8.decode(produced),
    }


def part1() -> None:
    print("== 1. the messages alone: µs per call (best of 5 x 2,000)")
    for name, call in messages().items():
        codec.uninstall()
        before = min(timeit.repeat(call, number=2000, repeat=5)) / 2000 * 1e6
        codec.install()
        after = min(timeit.repeat(call, number=2000, repeat=5)) / 2000 * 1e6
        print(
            f"  {name:40} aiokafka {before:6.1f}   compiled {after:5.1f}   {before / after:4.1f}x"
        )


async def round_trips(settings: KafkaSettings, n: int) -> tuple[float, float]:
    """CPU µs per produce round trip, and per record produced and consumed at 500/s."""
    topic = f"wire-{uuid.uuid4().hex[:8]}"
    await ensure_topic(settings, topic, partitions=PARTITIONS)
    producer = BatchedProducer(settings.replace(linger_ms=0))
    await producer.start()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.bootstrap, group_id=None,
                                fetch_max_wait_ms=10, auto_offset_reset="latest")  # fmt: skip
    try:
        for i in range(200):
            await producer.enqueue(topic, VALUE, partition=i % PARTITIONS)
        cpu = time.process_time()
        for i in range(n):
            await producer.enqueue(topic, VALUE, partition=i % PARTITIONS)
        produce_us = (time.process_time() - cpu) / n * 1e6

        await consumer.start()
        await consumer.seek_to_end()
        got, target, done = 0, -1, asyncio.Event()

        async def read() -> None:
            nonlocal got
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                got += sum(len(records) for records in batch.values())
                if got == target:
                    done.set()

        reader = asyncio.create_task(read())
        for i in range(200):  # the consumer's first fetches, outside the timing
            producer.enqueue(topic, VALUE, partition=i % PARTITIONS)
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.2)
        target, cpu = got + n, time.process_time()
        for i in range(n):
            producer.enqueue(topic, VALUE, partition=i % PARTITIONS)
            await asyncio.sleep(0.002)
        await done.wait()
        paced_us = (time.process_time() - cpu) / n * 1e6
        reader.cancel()
    finally:
        await consumer.stop()
        await producer.stop()
    return produce_us, paced_us


def run(work: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as the router runs
        return runner.run(work)


def part2(bootstrap: str, n: int, rounds: int) -> None:
    settings = KafkaSettings(bootstrap=bootstrap)
    runs: dict[str, list[tuple[float, float]]] = {"aiokafka": [], "compiled": []}
    run(round_trips(settings, 300))  # warm-up
    for r in range(rounds):
        for name in ("aiokafka", "compiled") if r % 2 == 0 else ("compiled", "aiokafka"):
            codec.install() if name == "compiled" else codec.uninstall()
            figure = run(round_trips(settings, n))
            runs[name].append(figure)
            print(f"  round {r + 1} {name:9} produce round trip {figure[0]:5.0f} µs CPU   "
                  f"produced + consumed at 500/s {figure[1]:5.0f} µs CPU per record",
                  flush=True)  # fmt: skip
    codec.install()
    print("medians")
    for name, figures in runs.items():
        produce = statistics.median(f[0] for f in figures)
        paced = statistics.median(f[1] for f in figures)
        print(f"  {name:9} produce round trip {produce:5.0f} µs CPU   at 500/s {paced:5.0f} µs CPU"
              " per record")  # fmt: skip
    base, new = (statistics.median(f[1] for f in runs[k]) for k in ("aiokafka", "compiled"))
    print(f"  compiled codec at 500/s: {new / base:.2f}x aiokafka's CPU per record")


def main() -> None:
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # a new topic's first produce may
    # meet "not leader" once (retried): nothing this measures
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    part1()
    for engine in brokers("kafka"):
        with engine as (name, bootstrap, _pid):
            print(f"\n== 2. round trips on {name} ({bootstrap}): {args.records:,} records a run")
            part2(bootstrap, args.records, args.rounds)


if __name__ == "__main__":
    main()
