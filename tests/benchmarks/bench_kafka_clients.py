"""Benchmark: what the router's two Kafka hops cost with aiokafka and with librdkafka.

Run: `.venv/bin/python tests/benchmarks/bench_kafka_clients.py [--rate 500] [--seconds 10]
[--rounds 3] [--relays aiokafka,turnout,pull,librdkafka,hybrid]`

The question behind it (issues 10 and 12): at moderate load the router pays per Kafka
round trip, not per request (docs/operations/benchmarks.md, sessions 16-17: a produce
round trip ~250 us of aiokafka's Python, a 12-partition fetch ~500 us). How much of
that is the client? A relay process reads each request from a 12-partition topic and
produces an answer to another one at once (the router's two hops with no router in
between: bench_router.py part 2's baseline). It is written several ways (`--relays`):

- `aiokafka`: aiokafka 0.14 with Turnout's compiled codec (uvloop, fetch wait 10 ms,
  linger 0, acks=all, idempotent): the baseline;
- `turnout`: the same with Turnout's lean fetch bookkeeping (service/kafka/fetch.py),
  i.e. what Turnout's adapters run;
- `pull`: aiokafka's connection and producer, each fetch sent and read by the relay's
  own loop (no `Fetcher` task, no waiters, no `ConsumerRecord`): the bound on what a
  leaner fetch path inside aiokafka could give;
- `librdkafka`: confluent-kafka (fetch.wait.max.ms 10, linger.ms 0, acks=all,
  idempotent, murmur2), a blocking loop;
- `rd-asyncio`: the same client driven from an asyncio loop as a router would drive it
  (a thread polls the consumer and hands each poll's messages to the loop in one call;
  a thread polls the producer and resolves a poll's acks in one call). confluent-kafka's
  own `confluent_kafka.aio` does not fit: its producer refuses headers in its batch
  mode and holds records up to a second, its consumer runs every call in a thread pool;
- `hybrid` (not run by default): aiokafka's consumer as in `turnout`, librdkafka's
  producer with its acks resolved on the asyncio loop from a polling thread.

The load generator is the same for all (librdkafka, in this process, open loop at
`--rate`); the relays take turns on the same broker, `--rounds` times. Apache Kafka
only by default: the question is the client's cost where a waiting fetch is answered at
once (on Tansu each hop waits out its ~7 ms fetch floor, and idempotent producers,
which these relays are, fail there). Printed per
relay: its CPU per request (user + system, all its threads, from /proc; median over
the rounds) against the first relay's in the same run, and the added latency p50/p99
(request produced -> answer read; no upstream).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_router import cpu_s, percentile, stop_process
from engines import brokers

PARTITIONS = 12
RELAYS = {
    "aiokafka": "aiokafka 0.14 + Turnout's codec (the baseline)",
    "turnout": "the same + Turnout's lean fetch bookkeeping (what the adapters run)",
    "pull": "aiokafka's connection, each fetch sent by the relay itself (no Fetcher)",
    "librdkafka": "confluent-kafka (librdkafka), a blocking loop",
    "rd-asyncio": "librdkafka both ways, driven from asyncio (a polling thread, acks on the loop)",
    "hybrid": "aiokafka's consumer (as 'turnout') with librdkafka's producer, acks on the loop",
}
DEFAULT_RELAYS = "aiokafka,turnout,pull,librdkafka,rd-asyncio"


# --------------------------------------------------------------------------- relays


@contextlib.asynccontextmanager
async def intake(bootstrap: str, requests: str, *, lean: bool) -> AsyncIterator[tuple[Any, Any]]:
    """aiokafka's consumer at the end of the requests topic (Turnout's codec; `lean`: and
    its lean fetch bookkeeping, service/kafka/fetch.py), and the event SIGTERM sets."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    from turnout.service.kafka import codec, fetch

    codec.install()
    if lean:
        fetch.install()
    else:
        fetch.uninstall()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=10)  # fmt: skip
    await consumer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        consumer.assign([TopicPartition(requests, p) for p in range(PARTITIONS)])
        await consumer.seek_to_end()
        print("relaying", flush=True)
        yield consumer, stop
    finally:
        await consumer.stop()


async def relay_aiokafka(bootstrap: str, requests: str, answers: str, *, lean: bool) -> None:
    """aiokafka both ways, as Turnout's adapters use it when `lean`."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0,
                                enable_idempotence=True)  # fmt: skip
    await producer.start()
    try:
        async with intake(bootstrap, requests, lean=lean) as (consumer, stop):
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                for records in batch.values():
                    for r in records:
                        await producer.send(answers, r.value, key=r.key)
    finally:
        await producer.stop()


async def relay_pull(bootstrap: str, requests: str, answers: str) -> None:
    """aiokafka's connection and producer, but each fetch sent and read by the loop
    that uses its records (no Fetcher task, no waiters)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.protocol.fetch import FetchRequest
    from aiokafka.record.memory_records import MemoryRecords
    from aiokafka.structs import TopicPartition

    from turnout.service.kafka import codec

    codec.install()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0,
                                enable_idempotence=True)  # fmt: skip
    await consumer.start()
    await producer.start()
    tps = [TopicPartition(requests, p) for p in range(PARTITIONS)]
    ends = await consumer.end_offsets(tps)
    offsets = {tp.partition: ends[tp] for tp in tps}
    client = consumer._client
    node = client.cluster.leader_for_partition(tps[0])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        print("relaying", flush=True)
        while not stop.is_set():
            request = FetchRequest(
                10, 1, 52_428_800, 0, [(requests, [(p, o, 1_048_576) for p, o in offsets.items()])]
            )
            response = await client.send(node, request)
            for _topic, partitions in response.topics:
                for partition, error, _hw, *part in partitions:
                    if error:
                        raise SystemExit(f"fetch error {error}")
                    records = MemoryRecords(part[-1])
                    while records.has_next():
                        batch = records.next_batch()
                        for r in batch:
                            if r.offset >= offsets[partition]:
                                await producer.send(answers, r.value, key=r.key)
                                offsets[partition] = r.offset + 1
    finally:
        await producer.stop()
        await consumer.stop()


class AckedProducer:
    """librdkafka's producer for asyncio: `send` returns a future resolved when the
    broker acks it; a thread polls librdkafka and resolves a poll's acks in one loop
    call (`call_soon_threadsafe`)."""

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka import Producer

        self.loop = asyncio.get_running_loop()
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                                  "linger.ms": 0, "enable.idempotence": True,
                                  "partitioner": "murmur2_random"})  # fmt: skip
        self.acked: list[tuple[asyncio.Future[None], Any]] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stopping:
            self.producer.poll(0.1)
            if self.acked:
                acked, self.acked = self.acked, []
                self.loop.call_soon_threadsafe(_resolve, acked)

    def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self.loop.create_future()

        def on_delivery(err: Any, _msg: Any) -> None:
            self.acked.append((future, err))

        self.producer.produce(topic, value, key=key, on_delivery=on_delivery)
        return future

    def close(self) -> None:
        self.producer.flush(10)
        self.stopping = True
        self.thread.join(5)


def _resolve(acked: list[tuple[asyncio.Future[None], Any]]) -> None:
    for future, err in acked:
        if future.done():
            continue
        if err is None:
            future.set_result(None)
        else:
            future.set_exception(RuntimeError(str(err)))


async def relay_hybrid(bootstrap: str, requests: str, answers: str) -> None:
    """aiokafka's consumer (as `turnout`) and librdkafka's producer, its acks awaited on
    the loop as the router awaits its own."""
    producer = AckedProducer(bootstrap)
    try:
        async with intake(bootstrap, requests, lean=True) as (consumer, stop):
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                acks = [producer.send(answers, r.value, r.key) for rs in batch.values() for r in rs]
                for ack in acks:
                    await ack
    finally:
        producer.close()


def rd_consumer(bootstrap: str, requests: str) -> Any:
    """A librdkafka consumer at the end of the requests topic, connected."""
    from confluent_kafka import OFFSET_END, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"relay-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 10,
                         "fetch.min.bytes": 1})  # fmt: skip
    consumer.assign([TopicPartition(requests, p, OFFSET_END) for p in range(PARTITIONS)])
    consumer.consume(num_messages=1, timeout=1.0)  # connected, positions resolved
    return consumer


async def relay_rdkafka_asyncio(bootstrap: str, requests: str, answers: str) -> None:
    """librdkafka both ways, driven from an asyncio loop as the router would drive it: a
    thread polls the consumer and hands each poll's messages to the loop in one call,
    the answers' acks come back as in `hybrid` (AckedProducer)."""
    loop = asyncio.get_running_loop()
    consumer = rd_consumer(bootstrap, requests)
    producer = AckedProducer(bootstrap)
    polled: asyncio.Queue[list[Any]] = asyncio.Queue()
    stopping = threading.Event()
    loop.add_signal_handler(signal.SIGTERM, lambda: polled.put_nowait([]))

    def poll() -> None:
        while not stopping.is_set():
            if messages := drain(consumer, 0.1):
                loop.call_soon_threadsafe(polled.put_nowait, messages)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    print("relaying", flush=True)
    try:
        while messages := await polled.get():
            acks = [producer.send(answers, m.value(), m.key()) for m in messages]
            for ack in acks:
                await ack
    finally:
        stopping.set()
        poller.join(5)
        producer.close()
        consumer.close()


def relay_librdkafka(bootstrap: str, requests: str, answers: str) -> None:
    from confluent_kafka import Producer

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    consumer = rd_consumer(bootstrap, requests)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                         "enable.idempotence": True, "partitioner": "murmur2_random"})  # fmt: skip
    print("relaying", flush=True)
    while not stop.is_set():
        for m in drain(consumer, 0.1):
            producer.produce(answers, m.value(), key=m.key())
        producer.poll(0)
    producer.flush(10)
    consumer.close()


def drain(consumer: Any, timeout_s: float) -> list[Any]:
    """The messages librdkafka holds, waiting up to `timeout_s` for the first one
    (`consume(n, timeout)` alone waits for n messages or the whole timeout)."""
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    if first.error():
        raise SystemExit(f"librdkafka: {first.error()}")
    return [first, *consumer.consume(num_messages=500, timeout=0)]


# --------------------------------------------------------------------------- load


def topics(bootstrap: str) -> tuple[str, str]:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    prefix = f"clients-{uuid.uuid4().hex[:8]}"
    names = (f"{prefix}.requests", f"{prefix}.answers")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        future.result()
    return names


def measure(bootstrap: str, client: str, rate: int, seconds: float) -> tuple[float, list[float]]:
    """Run one relay, send `rate` requests/s for `seconds` (after 2 s of the same
    warm-up); its CPU per request (us) and each round trip's latency (ms)."""
    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

    requests, answers = topics(bootstrap)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--relay", client, "--bootstrap", bootstrap,
         "--requests", requests, "--answers", answers],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"relaying":
            raise SystemExit(f"the {client} relay did not start")
        sent: dict[bytes, int] = {}
        latencies: list[float] = []
        reading = threading.Event()
        done = threading.Event()

        def read() -> None:
            c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"load-{uuid.uuid4().hex}",
                          "enable.auto.commit": False, "fetch.wait.max.ms": 10})  # fmt: skip
            c.assign([TopicPartition(answers, p, OFFSET_END) for p in range(PARTITIONS)])
            c.consume(num_messages=1, timeout=1.0)
            reading.set()
            while not done.is_set():
                for m in drain(c, 0.05):
                    t = sent.pop(m.key(), None)
                    if t is not None:
                        latencies.append((time.perf_counter_ns() - t) / 1e6)
            c.close()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reading.wait(30)
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                             "partitioner": "murmur2_random"})  # fmt: skip
        value = b'{"tenant":"t","task_type":"general","messages":[]}' + b" " * 200
        interval = 1 / rate

        def send(n: int) -> None:
            due = time.perf_counter()
            for i in range(n):
                key = f"r-{i:08d}-{uuid.uuid4().hex[:12]}".encode()
                sent[key] = time.perf_counter_ns()
                producer.produce(requests, value, key=key)
                producer.poll(0)
                due += interval
                if (pause := due - time.perf_counter()) > 0:
                    time.sleep(pause)

        send(2 * rate)  # warm-up: connections, JIT paths, the relay's first fetches
        time.sleep(0.5)
        latencies.clear()
        n = int(rate * seconds)
        before = cpu_s(proc.pid)
        send(n)
        producer.flush(10)
        time.sleep(0.5)
        used = cpu_s(proc.pid) - before
        done.set()
        reader.join(5)
        return used / n * 1e6, latencies
    finally:
        stop_process(proc, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engines", default="kafka")
    parser.add_argument("--relays", default=DEFAULT_RELAYS,
                        help=f"which relays, comma-separated, of {', '.join(RELAYS)}")  # fmt: skip
    parser.add_argument("--relay", choices=list(RELAYS), help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--requests", help=argparse.SUPPRESS)
    parser.add_argument("--answers", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay is not None:
        run_relay(args.relay, args.bootstrap, args.requests, args.answers)
        return
    relays = [r.strip() for r in args.relays.split(",") if r.strip()]
    if unknown := [r for r in relays if r not in RELAYS]:
        parser.error(f"unknown relays {unknown}: choose from {', '.join(RELAYS)}")
    for relay in relays:
        print(f"  {relay:10}  {RELAYS[relay]}")
    for engine in brokers(args.engines):
        with engine as (name, bootstrap, _):
            results: dict[str, list[tuple[float, list[float]]]] = {r: [] for r in relays}
            for n in range(args.rounds):
                for relay in relays if n % 2 == 0 else reversed(relays):
                    cpu, lat = measure(bootstrap, relay, args.rate, args.seconds)
                    results[relay].append((cpu, lat))
                    print(f"  {name} round {n + 1} {relay:10}: {cpu:6.0f} us CPU per request, "
                          f"added p50 {percentile(lat, 50):5.2f} p99 {percentile(lat, 99):6.2f} ms"
                          f" ({len(lat):,} answers)", flush=True)  # fmt: skip
            base = statistics.median(c for c, _ in results[relays[0]])
            print(f"\n{name}: a relay of {args.rate} requests/s, two Kafka hops, no upstream "
                  f"(CPU: median of {args.rounds} rounds; baseline: {relays[0]})")  # fmt: skip
            for relay in relays:
                cpu = statistics.median(c for c, _ in results[relay])
                lat = [x for _, ls in results[relay] for x in ls]
                p50, p99 = percentile(lat, 50), percentile(lat, 99)
                print(f"  {relay:10}  {cpu:6.0f} us CPU per request ({cpu / base:4.2f}x)   "
                      f"added p50 {p50:5.2f}  p99 {p99:6.2f} ms")  # fmt: skip


def run_relay(relay: str, bootstrap: str, requests: str, answers: str) -> None:
    if relay == "librdkafka":
        relay_librdkafka(bootstrap, requests, answers)
        return
    import uvloop

    uvloop.install()
    if relay == "pull":
        asyncio.run(relay_pull(bootstrap, requests, answers))
    elif relay == "hybrid":
        asyncio.run(relay_hybrid(bootstrap, requests, answers))
    elif relay == "rd-asyncio":
        asyncio.run(relay_rdkafka_asyncio(bootstrap, requests, answers))
    else:
        asyncio.run(relay_aiokafka(bootstrap, requests, answers, lean=relay == "turnout"))


if __name__ == "__main__":
    main()
