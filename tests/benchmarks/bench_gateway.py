"""Benchmark: `turnout gateway` + one router, driven over HTTP the way the peers are measured.

    .venv/bin/python tests/benchmarks/bench_gateway.py [--seconds 10] [--only plain,open,streams]
        [--engines kafka]

What runs (every process started here is stopped here): a broker (Apache Kafka by
default), `turnout simulate` at 0 ms and at 50 ms (pinned to CPU 0, as in
bench_router.py), ONE `turnout router` and ONE `turnout gateway` (open: no keys) on
fresh topics, tenant limits out of reach and the cache off (every request a miss).
This process is the load generator (aiohttp), on the same 2 cores.

Figures, each beside its baseline measured in the same run (the same requests sent
straight to the simulator by the same generator):
1. Closed loop, 32 connections, 0 ms upstream, plain: req/s, latency p50/p99 and
   added p50/p99, and the CPU (utime + stime) of gateway + router per request.
   Targets: >= 1,500 req/s; <= 0.6 ms CPU per request (Portkey 0.94, LiteLLM 11 on
   this machine).
2. Open loop, 500 req/s, 50 ms upstream, plain and streamed: added p50/p99 (target
   p99 <= 15 ms on Apache Kafka); for streams, to the last byte.
3. Streams: 100 concurrent closed-loop streams from an upstream at a model's pace (50 ms
   to the first token, then a chunk every 25 ms: about half a second a stream, so
   some 200 streams a second): added time to first token p50/p99 (target p99 <=
   15 ms), gateway + router CPU per stream, and chunk records per streamed answer (SSE
   events with an `id:`) with the default coalescing, against the upstream's chunks
   per answer. Then where the first token's time went, hop by hop (`ttft_split`: the
   records' timestamps against the client's clock), so a slow tail can be placed: the
   gateway, either Kafka hop, the router, or the upstream itself slowed by the load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from bench_router import CONFIG, cpu_s, percentile, pinned, py_spy, router, simulator, stop_process
from engines import brokers

from turnout.service.kafka.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
MODEL = "openai/gpt-4o-mini"
_ids = itertools.count()
# streamed requests through the gateway: request id -> (wall-clock ms it was sent, and its
# first text arrived): the client's ends of `ttft_split`
_sent: dict[str, tuple[float, float]] = {}


@contextlib.contextmanager
def gateway(bootstrap: str, prefix: str, config_path: str) -> Iterator[tuple[str, int]]:
    """`turnout gateway` on a free port: (its /v1 base URL, pid), once it is ready."""
    port = free_port()
    env = os.environ | {"TURNOUT_KAFKA_BOOTSTRAP": bootstrap, "TURNOUT_KAFKA_TOPIC_PREFIX": prefix}
    command = [sys.executable, "-m", "turnout", "gateway", "--port", str(port),
               "--config", config_path]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 30
            while not _ready(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"gateway did not start:\n{log.read().decode()[-2000:]}")
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}/v1", proc.pid
        finally:
            stop_process(proc, 15)


@contextlib.contextmanager
def paced_simulator(latency_ms: float, chunk_ms: float) -> Iterator[str]:
    """`turnout simulate` whose streams send a chunk every `chunk_ms` (a real model's
    pace: a 60-token answer takes about 20 chunks), on CPU 0: its base URL."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as scenario:
        scenario.write(f'latency_ms = {latency_ms}\n[[rule]]\nmodel = "*"\nchunk_ms = {chunk_ms}\n')
        scenario.flush()
        command = [sys.executable, "-m", "turnout", "simulate", "--port", "0",
                   "--scenario", scenario.name]  # fmt: skip
        proc = subprocess.Popen(
            pinned(command, 0), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            found = re.search(r"(http://\S+/api/v1)", proc.stdout.readline())
            if found is None:
                raise SystemExit("the paced simulator did not start")
            yield found.group(1)
        finally:
            stop_process(proc, 10)
            proc.stdout.close() if proc.stdout else None


def _ready(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def body(stream: bool, model: str) -> dict[str, Any]:
    n = next(_ids)
    return {"model": model, "temperature": 0, "stream": stream, "max_tokens": 60,
            "messages": [{"role": "user", "content": f"Say hello to request {n}."}]}  # fmt: skip


async def one(
    http: aiohttp.ClientSession, url: str, stream: bool, model: str
) -> tuple[float, float, int]:
    """(seconds to the first token or whole answer, seconds to the end, SSE events: those
    with an `id:` from the gateway, every `data:` one from the upstream)."""
    direct = "/api/v1/" in url
    sent_ms = time.time() * 1000
    start = time.perf_counter()
    first, ids = 0.0, 0
    async with http.post(url, json=body(stream, model)) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
        if not stream:
            await response.read()
            first = time.perf_counter() - start
        else:
            async for line in response.content:
                data = line.startswith(b"data: {")
                if line.startswith(b"id:") or (data and direct):
                    ids += 1
                if data and not first and _has_text(line):
                    first = time.perf_counter() - start
                    if not direct and "x-request-id" in response.headers:
                        _sent[response.headers["x-request-id"]] = (sent_ms, time.time() * 1000)
    return first or time.perf_counter() - start, time.perf_counter() - start, ids


async def closed_loop(
    base: str, model: str, connections: int, seconds: float, stream: bool
) -> list[tuple[float, float, int]]:
    url = f"{base}/chat/completions"
    out: list[tuple[float, float, int]] = []
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        end = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < end:
                out.append(await one(http, url, stream, model))

        await asyncio.gather(*(worker() for _ in range(connections)))
    return out


async def open_loop(
    base: str, model: str, rate: float, seconds: float, stream: bool
) -> list[tuple[float, float, int]]:
    url = f"{base}/chat/completions"
    connector = aiohttp.TCPConnector(limit=2048)
    async with aiohttp.ClientSession(connector=connector) as http:
        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(http, url, stream, model)))
        return list(await asyncio.gather(*tasks))


def _has_text(line: bytes) -> bool:
    """Whether an SSE data line's chunk carries text (not only a role or usage)."""
    at = line.find(b'"content":"')
    return at >= 0 and line[at + 11 : at + 12] != b'"'


async def ttft_split(bootstrap: str, prefix: str) -> None:
    """Where the streams' time to first token went, per hop, from the records' timestamps
    (their producers' clocks, this machine's; 1 ms steps): the request record (the gateway
    produced it), `turnout.request.accepted` and `turnout.stream.first_token` (the router
    decided them; the latter's `ttft_ms`: call start to first token, the upstream's part),
    the answer's first chunk record (`turnout-seq: 1`), and the client's send and first
    text. Read while the gateway runs (it deletes its reply topic when it stops)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", max_poll_records=10_000)  # fmt: skip
    await consumer.start()
    produced: dict[str, float] = {}  # request id -> request record's timestamp
    accepted: dict[str, float] = {}
    upstream: dict[str, float] = {}  # request id -> the router's ttft_ms (of its last attempt)
    decided: dict[str, float] = {}  # first token decided (the event's timestamp)
    chunk: dict[str, float] = {}  # first chunk record produced
    try:
        topics = [t for t in await consumer.topics() if t.startswith(f"{prefix}.")]
        consumer.subscribe(topics)
        while batch := await consumer.getmany(timeout_ms=2000):
            for tp, records in batch.items():
                role = tp.topic[len(prefix) + 1 :]
                for r in records:
                    headers = dict(r.headers or ())
                    if role == "requests":  # keyed by tenant: the id is in the value
                        found = re.search(rb'"request_id":"([^"]+)"', r.value or b"")
                        if found:
                            produced.setdefault(found.group(1).decode(), r.timestamp)
                    elif role.startswith("replies") and headers.get("turnout-seq") == b"1":
                        chunk.setdefault((r.key or b"").decode(), r.timestamp)
                    elif role == "events":
                        kind = headers.get("ce_type", b"")
                        subject = headers.get("ce_subject", b"").decode()
                        if kind == b"turnout.request.accepted":
                            accepted[subject] = r.timestamp
                        elif kind == b"turnout.stream.first_token":
                            found = re.search(rb'"ttft_ms":([0-9.]+)', r.value or b"")
                            upstream[subject] = float(found.group(1)) if found else 0.0
                            decided[subject] = r.timestamp
    finally:
        await consumer.stop()
    hops: dict[str, list[float]] = {"client -> request record": [], "Kafka in (-> accepted)": [],
        "router to the call, its overhead": [], "upstream's first token (router-timed)": [],
        "first chunk record produced": [], "Kafka out + gateway (-> first text)": []}  # fmt: skip
    for rid, (sent_ms, first_ms) in _sent.items():
        if not all(rid in d for d in (produced, accepted, upstream, decided, chunk)):
            continue
        values = (produced[rid] - sent_ms, accepted[rid] - produced[rid],
                  decided[rid] - accepted[rid] - upstream[rid], upstream[rid],
                  chunk[rid] - decided[rid], first_ms - chunk[rid])  # fmt: skip
        for hop, value in zip(hops.values(), values, strict=True):
            hop.append(value / 1000)
    if not hops["Kafka in (-> accepted)"]:
        print("  (time to first token, split: no stream's records found)")
        return
    n = len(hops["Kafka in (-> accepted)"])
    print(f"  time to first token, split ({n:,} streams; record timestamps: 1 ms steps):")
    for name, values in hops.items():
        print(f"    {name:<40} p50 {ms(values, 50):6.1f}  p99 {ms(values, 99):6.1f} ms")
    _sent.clear()


def ms(values: list[float], p: float) -> float:
    return percentile(values, p) * 1000


Timed = list[tuple[float, float, int]]


def line(name: str, got: Timed, base: Timed, seconds: float,
         cpu: tuple[float, float] | None = None, *, which: int = 1) -> None:  # fmt: skip
    a, b = [g[which] for g in got], [g[which] for g in base]
    cpu_text = ""
    if cpu:
        gw, rt = (c * 1000 / len(got) for c in cpu)
        cpu_text = f", gateway+router CPU {gw + rt:.2f} ms/req (gateway {gw:.2f}, router {rt:.2f})"
    print(
        f"  {name}: {len(got) / seconds:,.0f} req/s (baseline {len(base) / seconds:,.0f}), "
        f"p50 {ms(a, 50):.1f} / p99 {ms(a, 99):.1f} ms (baseline {ms(b, 50):.1f} / "
        f"{ms(b, 99):.1f}); added p50 {ms(a, 50) - ms(b, 50):.1f} / p99 "
        f"{ms(a, 99) - ms(b, 99):.1f} ms{cpu_text}",
        flush=True,
    )


def run(args: argparse.Namespace, bootstrap: str) -> None:
    with (
        simulator(0) as (fast, _),
        simulator(50) as (slow, _),
        paced_simulator(50, 25) as paced,
    ):
        for upstream, parts in ((fast, {"plain"}), (slow, {"open"}), (paced, {"streams"})):
            want = parts & args.parts
            if not want:
                continue
            with (
                router(bootstrap, upstream, args.config_path, 10,
                       {"TURNOUT_FEATURES_CACHING": "false"}) as r,
                gateway(bootstrap, r.topics.requests.rsplit(".", 1)[0], args.config_path)
                as (base, gw_pid),
            ):  # fmt: skip
                asyncio.run(closed_loop(base, MODEL, 32, 3, False))  # warm-up
                pids = (gw_pid, r.pid)
                if "plain" in want:
                    before = [cpu_s(p) for p in pids]
                    with py_spy(gw_pid, args.profile, args.profile_format):
                        got = asyncio.run(closed_loop(base, MODEL, 32, args.seconds, False))
                    gw_cpu, router_cpu = (cpu_s(p) - b for p, b in zip(pids, before, strict=True))
                    cpu = (gw_cpu, router_cpu)
                    direct = asyncio.run(closed_loop(upstream, MODEL, 32, args.seconds, False))
                    line("closed loop, 32 connections, plain", got, direct, args.seconds, cpu)
                if "streams" in want:
                    _sent.clear()
                    before = [cpu_s(p) for p in pids]
                    got = asyncio.run(closed_loop(base, MODEL, 100, args.seconds, True))
                    gw_cpu, router_cpu = (cpu_s(p) - b for p, b in zip(pids, before, strict=True))
                    asyncio.run(ttft_split(bootstrap, r.topics.requests.rsplit(".", 1)[0]))
                    direct = asyncio.run(closed_loop(upstream, MODEL, 100, args.seconds, True))
                    line("100 concurrent streams, time to first token", got, direct,
                         args.seconds, (gw_cpu, router_cpu), which=0)  # fmt: skip
                    records = statistics.mean(g[2] for g in got)
                    chunks = statistics.mean(g[2] for g in direct)
                    print(f"  chunk records per streamed answer: {records:.1f} "
                          f"(the upstream's SSE events per answer: {chunks:.1f})")  # fmt: skip
                if "open" in want:
                    for stream in (False, True):
                        got = asyncio.run(open_loop(base, MODEL, args.rate, args.seconds, stream))
                        direct = asyncio.run(
                            open_loop(upstream, MODEL, args.rate, args.seconds, stream)
                        )
                        kind = "streamed, to the last byte" if stream else "plain"
                        line(f"open loop {args.rate:g} req/s, 50 ms upstream, {kind}", got,
                             direct, args.seconds)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--only", default="plain,open,streams")
    parser.add_argument("--engines", default="kafka")
    parser.add_argument("--profile", default=None, help="py-spy output for the gateway (plain)")
    parser.add_argument("--profile-format", default="flamegraph",
                        choices=["flamegraph", "raw", "speedscope"])  # fmt: skip
    args = parser.parse_args()
    args.parts = set(args.only.split(","))
    print(f"{os.cpu_count()} CPUs; simulator pinned to CPU 0; the rest float")
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as config_file:
        config_file.write(CONFIG)
        config_file.flush()
        args.config_path = config_file.name
        for engine in brokers(args.engines):
            with engine as (name, bootstrap, _):
                print(f"\n=== broker: {name} ({bootstrap}) ===", flush=True)
                run(args, bootstrap)


if __name__ == "__main__":
    main()
