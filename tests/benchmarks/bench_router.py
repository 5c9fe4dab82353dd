"""Benchmark: the router end to end (throughput, CPU per request, added latency, rebuild).

    .venv/bin/python tests/benchmarks/bench_router.py [--requests 2000] [--latency-seconds 4]
        [--fold-events 100000] [--profile /tmp/router.svg] [--only throughput,latency,fold]

Real sizes: --requests 20000 --latency-seconds 20 --latency-warmup-seconds 5
--fold-events 1000000.

What runs (every process started here is stopped here):
- each broker in turn (`--engines`: Apache Kafka, then Tansu), and
  `turnout simulate` in its own process,
  pinned to CPU 0 when there are two (0 ms; a second one at 50 ms for part 2);
- ONE router per scenario: `python -m turnout router --health-port 0` with a
  unique topic prefix and group id (TURNOUT_KAFKA_* / TURNOUT_UPSTREAM_BASE_URL
  in its environment) and a config file that lifts the tenant limits, so no
  request is refused; topics are created first with `ensure_topics`;
- this process is the client: one aiokafka producer (16 tenant keys, distinct
  request ids and prompts, so every request is a cache miss) and one aiokafka
  consumer on `<prefix>.responses` (and one on `<prefix>.events` in part 2).

Figures:
1. Sustained throughput (cache off, as the issue defines it; limits and budgets
   on, out of reach): N requests produced as fast as possible after a warm-up;
   requests/s from the first produce to the last response, and the router's CPU
   time per request (utime+stime from /proc/<pid>/stat), plus the
   broker's and the simulator's. Baseline in the same run: N chat calls
   straight to the simulator with 256 in flight (the router's max_in_flight),
   through httpx + the aiohttp transport and through raw aiohttp.
   Targets: >= 3,000 req/s, <= 0.4 ms router CPU per request on Apache Kafka
   (issue 10); 2,000 and 0.5 on Tansu (wave 1).
2. Added latency at a fixed 500 req/s with a 50 ms upstream: response arrival
   - produce time - the attempt's upstream latency (`latency_ms` of the
   router's `turnout.attempt.succeeded` event); p50/p99 at fetch waits of 20
   and 10 ms (the default; the same for the router and this client's consumer).
   Timed after `--latency-warmup-seconds` at the same rate (a fresh
   broker JVM and router run the first seconds slower). Target: p99 <= 10 ms.
   Split by Kafka record timestamps into the hop in
   (produce -> `request.accepted` produced), the router itself (-> response
   produced, less the upstream) and the hop out (-> arrival). Baseline in the
   same run: a relay process that answers each request the moment it reads it
   (same fetch wait, linger 0), i.e. the two Kafka hops with no router at all.
3. Projection rebuild: `turnout.service.core.state.fold` over a synthetic event mix
   (analytics.synthetic), events/s; and CloudEvents decode + evolve of the
   encoded records. Target: >= 200,000 events/s for the fold.

`--profile PATH` runs `py-spy record` on the router during the measured part of
(1) and writes PATH (a flame graph; `--profile-format raw` for collapsed
stacks). py-spy pauses the router to sample it: take figures from a run
without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from engines import DEFAULT_ENGINES, brokers
from httpx_aiohttp import AiohttpTransport

from turnout.analytics.synthetic import envelopes, workload
from turnout.service.core.config import parse_config
from turnout.service.core.events import AttemptSucceeded, RequestAccepted
from turnout.service.core.state import RouterState, evolve, fold
from turnout.service.kafka.consumer import topic_partitions
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.kafka.topics import ensure_topics
from turnout.service.wire import cloudevents as ce

ROOT = Path(__file__).resolve().parents[2]
TENANTS = [f"tenant-{i:02d}" for i in range(16)]
IN_FLIGHT = 256  # the router's [batching] max_in_flight default
POOL = 100  # the router's [upstream] pool_size default
MODEL = "openai/gpt-4o-mini"
BIG = 1_000_000_000
# every tenant limit out of the way: the benchmark measures the path, not the refusals
CONFIG = f"""
[tenants.default]
requests_per_minute = {BIG}
requests_per_hour = {BIG}
requests_per_day = {BIG}
burst = {BIG}
tokens_per_minute = {BIG}
budget_usd_per_day = 1e9
budget_usd_per_month = 1e9
"""
SUCCEEDED = AttemptSucceeded.TYPE
ACCEPTED = RequestAccepted.TYPE
CACHE_OFF = {"TURNOUT_FEATURES_CACHING": "false"}  # parts 1 and 2 measure the miss path
ROUTER_ENV: list[str] = []  # --router-env KEY=VALUE: extra settings for every router
_json = msgspec.json.Encoder()
_object = msgspec.json.Decoder(dict[str, Any])  # a response or a request


# --------------------------------------------------------------------------- processes


def cpu_s(pid: int | None) -> float:
    """utime + stime of process `pid` in seconds (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned(command: list[str], cpu: int) -> list[str]:
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *command]
    return command


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 35.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def simulator(latency_ms: float) -> Iterator[tuple[str, int]]:
    """`turnout simulate` in a subprocess on CPU 0: (base URL, pid)."""
    command = [sys.executable, "-m", "turnout", "simulate", "--port", "0",
               "--latency-ms", str(latency_ms)]  # fmt: skip
    proc = subprocess.Popen(
        pinned(command, 0), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://\S+/api/v1)", line)
        if match is None:
            raise SystemExit(f"simulator did not start: {line!r}")
        yield match.group(1), proc.pid
    finally:
        stop_process(proc, 10)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class RouterProc:
    proc: subprocess.Popen[bytes]
    topics: Topics
    fetch_max_wait_ms: int

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.contextmanager
def router(
    bootstrap: str,
    base_url: str,
    config_path: str,
    fetch_max_wait_ms: int,
    extra_env: dict[str, str] | None = None,
    health_port: int = 0,
) -> Iterator[RouterProc]:
    """One `turnout router` on fresh topics; returns once it serves its partitions."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix)
    asyncio.run(ensure_topics(settings))
    env = (
        os.environ
        | {
            "TURNOUT_KAFKA_BOOTSTRAP": bootstrap,
            "TURNOUT_KAFKA_TOPIC_PREFIX": prefix,
            "TURNOUT_KAFKA_GROUP_ID": f"{prefix}-router",
            "TURNOUT_KAFKA_FETCH_MAX_WAIT_MS": str(fetch_max_wait_ms),
            "TURNOUT_UPSTREAM_BASE_URL": base_url,
        }
        | (extra_env or {})
        | dict(kv.split("=", 1) for kv in ROUTER_ENV)
    )
    command = [sys.executable, "-m", "turnout", "router", "--health-port", str(health_port),
               "--config", config_path, "--instance", "bench"]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 30
            while b"serving partitions" not in _read(log):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = _read(log).decode(errors="replace")[-2000:]
                    raise SystemExit(f"router did not become ready:\n{tail}")
                time.sleep(0.05)
            yield RouterProc(proc, settings.topics, fetch_max_wait_ms)
        finally:
            stop_process(proc)
            errors = [ln for ln in _read(log).decode(errors="replace").splitlines()
                      if " ERROR " in ln or "Traceback" in ln]  # fmt: skip
            if errors:
                print(f"  router logged {len(errors)} error lines, first: {errors[0][:200]}")


def _read(log: Any) -> bytes:
    log.seek(0)
    return bytes(log.read())


@contextlib.contextmanager
def py_spy(pid: int, path: str | None, fmt: str) -> Iterator[None]:
    """`py-spy record` on `pid` while the block runs (nothing when `path` is None)."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if path is None:
        yield
        return
    if not Path(binary).exists():
        print("  py-spy not installed: no profile")
        yield
        return
    command = [binary, "record", "--pid", str(pid), "-o", path, "--format", fmt, "-r", "200"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # let it attach
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        print(f"  py-spy: wrote {path} ({err.decode(errors='replace').strip()[-120:]})")


# --------------------------------------------------------------------------- load


def request(rid: str, tenant: str, prompt: str | None = None) -> bytes:
    return _json.encode({
        "request_id": rid, "tenant": tenant, "temperature": 0,
        "messages": [{"role": "user", "content": f"Say hello to request {prompt or rid}."}],
    })  # fmt: skip


@dataclass
class Run:
    sent_at: dict[str, float] = field(default_factory=dict)
    arrived_at: dict[str, float] = field(default_factory=dict)
    upstream_ms: dict[str, float] = field(default_factory=dict)
    # wall clock (s), to set against Kafka record timestamps (ms, wall clock)
    sent_wall: dict[str, float] = field(default_factory=dict)
    arrived_wall: dict[str, float] = field(default_factory=dict)
    response_ts: dict[str, float] = field(default_factory=dict)  # the router produced it
    accepted_ts: dict[str, float] = field(default_factory=dict)  # request.accepted produced
    not_ok: int = 0
    cached: int = 0
    first_sent: float = 0.0
    last_arrived: float = 0.0

    @property
    def wall_s(self) -> float:
        return self.last_arrived - self.first_sent


async def drive(
    bootstrap: str,
    topics: Topics,
    n: int,
    *,
    tag: str,
    rate: float | None = None,
    fetch_max_wait_ms: int = 20,
    with_events: bool = False,
    timeout_s: float = 300,
    prompts: str | None = None,
) -> Run:
    """Produce `n` requests (as fast as possible, or at `rate`/s) and collect their answers."""
    run = Run()
    ids = [f"{tag}-{i:07d}" for i in range(n)]
    records = [
        (TENANTS[i % 16].encode(),
         request(rid, TENANTS[i % 16], f"{prompts}-{i}" if prompts else None))
        for i, rid in enumerate(ids)
    ]  # fmt: skip
    wanted = set(ids)
    consumer = AIOKafkaConsumer(
        topics.responses, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, fetch_max_wait_ms=fetch_max_wait_ms, max_poll_records=5000,
    )  # fmt: skip
    # events are off the timed path: read once every response is in (decoding them while
    # timing cost the client ~0.2 core at 500 req/s, CPU the router and broker then lacked)
    events = AIOKafkaConsumer(
        topics.events, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, fetch_max_wait_ms=200, max_poll_records=5000,
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                linger_ms=0 if rate else 5, max_batch_size=262_144)  # fmt: skip
    await consumer.start()
    await producer.start()

    async def collect() -> None:
        while len(run.arrived_at) < n:
            batch = await consumer.getmany(timeout_ms=100)
            now, wall = time.perf_counter(), time.time()
            for records_ in batch.values():
                for r in records_:
                    rid = r.key.decode()
                    if rid in wanted and rid not in run.arrived_at:
                        run.arrived_at[rid] = now
                        run.arrived_wall[rid] = wall
                        run.response_ts[rid] = r.timestamp / 1000
                        run.last_arrived = now
                        answer = _object.decode(r.value)
                        if answer.get("status") != "ok":
                            run.not_ok += 1
                        run.cached += bool(answer.get("cached"))

    async def collect_events() -> None:
        while len(run.upstream_ms) < n or len(run.accepted_ts) < n:
            batch = await events.getmany(timeout_ms=200)
            for records_ in batch.values():
                for r in records_:
                    kind = ce.decode_type(r.headers)
                    if kind not in (SUCCEEDED, ACCEPTED):
                        continue
                    data = ce.decode(r.key, r.value, r.headers).data
                    if data.request_id not in wanted:
                        continue
                    if isinstance(data, AttemptSucceeded):
                        run.upstream_ms[data.request_id] = data.latency_ms
                    else:
                        run.accepted_ts[data.request_id] = r.timestamp / 1000

    try:
        await consumer.getmany(timeout_ms=50)  # joined the partitions before timing
        collector = asyncio.create_task(collect())
        run.first_sent = time.perf_counter()
        futures = []
        for i, (key, value) in enumerate(records):
            if rate is not None:
                delay = run.first_sent + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            run.sent_at[ids[i]] = time.perf_counter()
            run.sent_wall[ids[i]] = time.time()
            futures.append(await producer.send(topics.requests, value, key=key))
            if len(futures) >= 1000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
        await asyncio.wait_for(collector, timeout_s)
        if with_events:
            await events.start()
            await asyncio.wait_for(collect_events(), timeout_s)
    except TimeoutError:
        print(f"  TIMEOUT: {len(run.arrived_at)}/{n} responses, {len(run.upstream_ms)} attempts")
        raise
    finally:
        await producer.stop()
        await consumer.stop()
        await events.stop()
    return run


# --------------------------------------------------------------------------- part 1


async def baseline(base_url: str, n: int) -> dict[str, tuple[float, float]]:
    """N chat calls straight to the simulator, 256 in flight: name -> (req/s, CPU ms/req)."""
    url = f"{base_url}/chat/completions"
    bodies = [_json.encode({"model": MODEL, "temperature": 0, "stream": False,
                            "messages": [{"role": "user", "content": f"Say hello to {i}."}]})
              for i in range(n)]  # fmt: skip
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
    out: dict[str, tuple[float, float]] = {}
    async with (
        httpx.AsyncClient(
            base_url=base_url, transport=AiohttpTransport(limits=limits), timeout=120
        ) as hx,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL), timeout=aiohttp.ClientTimeout(total=120)
        ) as session,
    ):

        async def via_httpx(body: bytes) -> None:
            response = await hx.post("/chat/completions", content=body, headers=headers)
            msgspec.json.decode(response.content)

        async def via_aiohttp(body: bytes) -> None:
            async with session.post(url, data=body, headers=headers) as response:
                msgspec.json.decode(await response.read())

        for name, call in (("httpx + aiohttp transport", via_httpx),
                           ("aiohttp.ClientSession", via_aiohttp)):  # fmt: skip
            for size in (min(n, 500), n):  # warm-up, then measured
                it = iter(bodies[:size])

                async def worker(call: Any = call, it: Iterator[bytes] = it) -> None:
                    for body in it:
                        await call(body)

                cpu0, wall0 = time.process_time(), time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
                wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            out[name] = (n / wall, cpu / n * 1000)
    return out


# sustained req/s and router CPU ms/req: issue 10's on Apache Kafka, the first wave's on Tansu
TARGETS = {"kafka": (3_000, 0.4), "tansu": (2_000, 0.5)}


def part_throughput(
    args: argparse.Namespace, engine: str, bootstrap: str, broker_pid: int | None
) -> None:
    print(f"\n== 1. sustained throughput: {args.requests:,} requests, 0 ms upstream")
    with simulator(0) as (base_url, sim_pid):
        with router(bootstrap, base_url, args.config_path, 10, CACHE_OFF) as r:
            asyncio.run(drive(bootstrap, r.topics, args.warmup, tag="warm"))
            pids = {"router": r.pid, "broker": broker_pid, "simulator": sim_pid}
            before = {k: cpu_s(p) for k, p in pids.items()}
            with py_spy(r.pid, args.profile, args.profile_format):
                run = asyncio.run(drive(bootstrap, r.topics, args.requests, tag="load"))
            used = {k: cpu_s(p) - before[k] for k, p in pids.items()}
            rps = args.requests / run.wall_s
            router_ms = used["router"] / args.requests * 1000
            rps_target, ms_target = TARGETS.get(engine, TARGETS["kafka"])
            print(f"  router            {rps:>9,.0f} req/s  (target >= {rps_target:,})   "
                  f"{run.wall_s:.2f} s, {run.not_ok} not ok")  # fmt: skip
            print(f"  router CPU        {router_ms:>9.3f} ms/req (target <= {ms_target})")
            for name in ("broker", "simulator"):
                print(f"  {name} CPU {used[name] / args.requests * 1000:>15.3f} ms/req")
        print(f"  baseline: the same {args.requests:,} calls straight to the simulator, "
              f"{IN_FLIGHT} in flight")  # fmt: skip
        cpu0 = cpu_s(sim_pid)
        figures = asyncio.run(baseline(base_url, args.requests))
        sim_ms = (cpu_s(sim_pid) - cpu0) / (2 * args.requests + 2 * min(args.requests, 500)) * 1000
        for name, (b_rps, b_ms) in figures.items():
            print(f"  {name:<26} {b_rps:>9,.0f} req/s  {b_ms:.3f} ms client CPU/req")
        print(f"  simulator CPU in the baseline: {sim_ms:.3f} ms/req")
        bare_ms = figures["aiohttp.ClientSession"][1]
        print(
            f"  the router's CPU per request is {router_ms / bare_ms:.1f} bare aiohttp calls "
            "of this run (this machine's speed drifts: compare ratios across days)"
        )


# --------------------------------------------------------------------------- part 4


def part_cache(args: argparse.Namespace, bootstrap: str) -> None:
    """The cache-hit path end to end, against the cache-miss path of the same run."""
    n = args.requests
    print(f"\n== 4. cache: {n:,} requests that miss and are stored, then {n:,} that hit")
    with simulator(0) as (base_url, _), router(bootstrap, base_url, args.config_path, 10) as r:
        asyncio.run(drive(bootstrap, r.topics, args.warmup, tag="warm"))
        for tag in ("miss", "hit"):
            cpu0 = cpu_s(r.pid)
            profile = args.profile if tag == "hit" and "throughput" not in args.only else None
            with py_spy(r.pid, profile, args.profile_format):
                run = asyncio.run(drive(bootstrap, r.topics, n, tag=tag, prompts="cacheable"))
            router_ms = (cpu_s(r.pid) - cpu0) / n * 1000
            target = "  (target >= 5,000)" if tag == "hit" else "  (baseline)"
            print(f"  {tag:<5} path {n / run.wall_s:>9,.0f} req/s{target}  {router_ms:.3f} ms "
                  f"router CPU/req, {run.cached:,} cached, {run.not_ok} not ok")  # fmt: skip


# --------------------------------------------------------------------------- part 2


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def part_latency(args: argparse.Namespace, bootstrap: str, broker_pid: int | None) -> None:
    n = int(args.rate * args.latency_seconds)
    warm = max(200, int(args.rate * args.latency_warmup_seconds))
    print(f"\n== 2. added latency: {n:,} requests at {args.rate:g} req/s, 50 ms upstream "
          f"(after {warm:,} at that rate: a fresh JVM runs its first seconds slower)")  # fmt: skip
    print("  added = response arrival - produce - attempt latency (attempt.succeeded latency_ms)")
    with simulator(50) as (base_url, sim_pid):
        for wait_ms in args.fetch_waits:
            print(f"  fetch_max_wait_ms={wait_ms} (router, relay and client)")
            with router(bootstrap, base_url, args.config_path, wait_ms, CACHE_OFF) as r:
                asyncio.run(drive(bootstrap, r.topics, warm, tag="warm", rate=args.rate,
                                  fetch_max_wait_ms=wait_ms))  # fmt: skip
                pids = {"router": r.pid, "broker": broker_pid, "simulator": sim_pid,
                        "client": os.getpid()}  # fmt: skip
                before, began = {k: cpu_s(p) for k, p in pids.items()}, time.perf_counter()
                run = asyncio.run(drive(bootstrap, r.topics, n, tag="lat", rate=args.rate,
                                        fetch_max_wait_ms=wait_ms, with_events=True))  # fmt: skip
                wall = time.perf_counter() - began
                busy = {k: (cpu_s(p) - before[k]) / wall for k, p in pids.items()}
                idle = idle_share(r.pid, args.idle_seconds)
            ids = [k for k in run.arrived_at if k in run.upstream_ms and k in run.accepted_ts]
            up = run.upstream_ms
            added = [(run.arrived_at[k] - run.sent_at[k]) * 1000 - up[k] for k in ids]
            achieved = n / (max(run.sent_at.values()) - run.first_sent)
            print(f"    router   added {spread(added)}  (target p99 <= 10)"
                  f"   sent at {achieved:,.0f}/s, {run.not_ok} not ok")  # fmt: skip
            hop_in = [(run.accepted_ts[k] - run.sent_wall[k]) * 1000 for k in ids]
            own = [(run.response_ts[k] - run.accepted_ts[k]) * 1000 - up[k] for k in ids]
            hop_out = [(run.arrived_wall[k] - run.response_ts[k]) * 1000 for k in ids]
            print(f"      of it: Kafka in  {spread(hop_in, max_=False)}  (produce -> accepted)")
            print(f"             router    {spread(own, max_=False)}  (accepted -> response"
                  " produced, less the upstream)")  # fmt: skip
            print(f"             Kafka out {spread(hop_out, max_=False)}  (response produced "
                  "-> arrival; record timestamps: 1 ms steps)")  # fmt: skip
            print("      router's own part: target p99 <= 2")
            shares = ", ".join(f"{k} {v:.0%}" for k, v in busy.items())
            print(f"      CPU busy (of one core) while timed: {shares}; the machine "
                  f"{sum(busy.values()) / (os.cpu_count() or 1):.0%} of its "
                  f"{os.cpu_count()} cores; router {busy['router'] / args.rate * 1000:.2f} ms "
                  "CPU per request at this rate")  # fmt: skip
            with relay(bootstrap, wait_ms) as (topics, relay_pid):
                asyncio.run(drive(bootstrap, topics, warm, tag="warm", rate=args.rate,
                                  fetch_max_wait_ms=wait_ms))  # fmt: skip
                base = asyncio.run(drive(bootstrap, topics, n, tag="lat", rate=args.rate,
                                         fetch_max_wait_ms=wait_ms))  # fmt: skip
                relay_idle = idle_share(relay_pid, args.idle_seconds)
            print(f"      idle afterwards (no traffic, {args.idle_seconds:g} s): router "
                  f"{idle:.1%} of a core; baseline: the relay below (a plain aiokafka "
                  f"consumer fetching every {wait_ms} ms) {relay_idle:.1%}")  # fmt: skip
            floor = [(base.arrived_at[k] - base.sent_at[k]) * 1000 for k in base.arrived_at]
            print("    baseline: a relay that answers each request at once, no upstream")
            print(f"             added {spread(floor)}  (the two Kafka hops alone)")


def idle_share(pid: int, seconds: float) -> float:
    """The share of one core process `pid` uses over `seconds` with no traffic (after a
    second for its last acks and commits): what polling alone costs."""
    time.sleep(1.0)
    cpu0, began = cpu_s(pid), time.perf_counter()
    time.sleep(seconds)
    return (cpu_s(pid) - cpu0) / (time.perf_counter() - began)


def spread(values: list[float], max_: bool = True) -> str:
    figures = f"p50 {percentile(values, 50):6.2f}  p90 {percentile(values, 90):6.2f}  "
    figures += f"p99 {percentile(values, 99):6.2f}"
    return figures + (f"  max {max(values):7.2f} ms" if max_ else " ms")


@contextlib.contextmanager
def relay(bootstrap: str, fetch_max_wait_ms: int) -> Iterator[tuple[Topics, int]]:
    """The latency baseline: a process that answers every request at once (`--relay`);
    its topics and pid."""
    prefix = f"relay-{uuid.uuid4().hex[:8]}"
    settings = KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix)
    asyncio.run(ensure_topics(settings))
    command = [sys.executable, __file__, "--relay", prefix, "--relay-bootstrap", bootstrap,
               "--relay-fetch-wait", str(fetch_max_wait_ms)]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"relaying":
            raise SystemExit("the relay did not start")
        yield settings.topics, proc.pid
    finally:
        stop_process(proc, 10)
        if proc.stdout is not None:
            proc.stdout.close()


async def run_relay(bootstrap: str, prefix: str, fetch_max_wait_ms: int) -> None:
    """Answer each request with `{"request_id", "status": "ok"}`, as a router's response
    would go out: read with the same fetch wait, produce at once (linger 0)."""
    settings = KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix)
    topics = settings.topics
    partitions = await topic_partitions(settings, [topics.requests])
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=fetch_max_wait_ms)  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        consumer.assign(list(partitions))
        await consumer.seek_to_beginning()
        print("relaying", flush=True)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for r in records:
                    rid = _object.decode(r.value)["request_id"]
                    answer = _json.encode({"request_id": rid, "status": "ok"})
                    await producer.send(topics.responses, answer, key=rid.encode())
    finally:
        await producer.stop()
        await consumer.stop()


# --------------------------------------------------------------------------- part 3


def part_fold(args: argparse.Namespace) -> None:
    n = args.fold_events
    print(f"\n== 3. projection rebuild: {n:,} events (analytics.synthetic mix)")
    cfg = parse_config({}, {})
    t0 = time.perf_counter()
    envs = list(itertools.islice(envelopes(workload(n // 3 + 1000, tenants=16), step_ms=0.01), n))
    print(f"  generated in {time.perf_counter() - t0:.1f} s")
    pairs = [(env.time_ms, env.data) for env in envs]
    times = []
    for _ in range(args.fold_rounds):
        t0 = time.perf_counter()
        state = fold(pairs, cfg)
        times.append(time.perf_counter() - t0)
    best, med = min(times), statistics.median(times)
    print(f"  fold                {n / med:>11,.0f} events/s (median of {len(times)};"
          f" best {n / best:,.0f})  target >= 200,000")  # fmt: skip
    print(f"    state: {len(state.inflight):,} in flight, {len(state.finished):,} finished")
    encoded = [ce.encode(env) for env in envs]
    del envs, pairs
    times = []
    for _ in range(args.fold_rounds):
        state = RouterState()
        t0 = time.perf_counter()
        for key, value, headers in encoded:
            env = ce.decode(key, value, headers)
            evolve(state, env.data, env.time_ms, cfg)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for key, value, headers in encoded:
        ce.decode(key, value, headers)
    decode_only = time.perf_counter() - t0
    print(f"  decode + evolve     {n / statistics.median(times):>11,.0f} events/s"
          f"   (decode alone {n / decode_only:,.0f}/s)")  # fmt: skip


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=2000, help="part 1 (real: 20000)")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--rate", type=float, default=500.0, help="part 2 requests/s")
    parser.add_argument("--latency-seconds", type=float, default=4.0, help="part 2 (real: 20)")
    parser.add_argument("--idle-seconds", type=float, default=3.0,
                        help="part 2: the idle router's CPU is measured this long")  # fmt: skip
    parser.add_argument("--latency-warmup-seconds", type=float, default=2.0,
                        help="part 2: requests at the rate before timing (real: 5)")  # fmt: skip
    parser.add_argument("--fetch-waits", type=lambda s: [int(x) for x in s.split(",")],
                        default=[20, 10], help="part 2 fetch_max_wait_ms values")  # fmt: skip
    parser.add_argument("--fold-events", type=int, default=100_000, help="part 3 (real: 1000000)")
    parser.add_argument("--fold-rounds", type=int, default=3)
    parser.add_argument("--profile", default=None, help="py-spy output for part 1's router")
    parser.add_argument("--profile-format", default="flamegraph",
                        choices=["flamegraph", "raw", "speedscope"])  # fmt: skip
    parser.add_argument("--only", default="throughput,latency,fold,cache")
    parser.add_argument("--engines", default=DEFAULT_ENGINES,
                        help="brokers to run on, in this order (default kafka,tansu)")  # fmt: skip
    parser.add_argument("--router-env", action="append", default=[], metavar="KEY=VALUE",
                        help="router environment, e.g. TURNOUT_KAFKA_LINGER_MS=0")  # fmt: skip
    parser.add_argument("--relay", default=None, help=argparse.SUPPRESS)  # part 2's baseline
    parser.add_argument("--relay-bootstrap", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--relay-fetch-wait", type=int, default=20, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        asyncio.run(run_relay(args.relay_bootstrap, args.relay, args.relay_fetch_wait))
        return
    ROUTER_ENV.extend(args.router_env)
    parts = set(args.only.split(","))
    print(f"{os.cpu_count()} CPUs; simulator pinned to CPU 0; router, broker, client float")
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as config_file:
        config_file.write(CONFIG)
        config_file.flush()
        args.config_path = config_file.name
        if parts & {"throughput", "latency", "cache"}:
            for engine in brokers(args.engines):
                with engine as (name, bootstrap, pid):
                    print(f"\n=== broker: {name} ({bootstrap}) ===", flush=True)
                    if "throughput" in parts:
                        part_throughput(args, name, bootstrap, pid)
                    if "latency" in parts:
                        part_latency(args, bootstrap, pid)
                    if "cache" in parts:
                        part_cache(args, bootstrap)
    if "fold" in parts:
        part_fold(args)


if __name__ == "__main__":
    main()
