"""Benchmark: what snapshots cost a busy router, and what a router's state costs in memory.

    .venv/bin/python tests/benchmarks/bench_state.py [--only snapshots,memory]
        [--requests 20000] [--pairs 3] [--memory-requests 1000000] [--step 100000]

Real sizes are the defaults. Apache Kafka only (`turnout broker`'s local broker, warmed
first); the simulator at 0 ms in its own process; one router per run, on fresh topics,
with every tenant limit lifted (as in bench_router.py) so each request is admitted,
called, charged and remembered: the most state a request can leave.

1. **Snapshots on vs off** (issue 11: throughput within 5 %): the same `--requests`
   cache-miss requests through a router with `[features] snapshots` on, then one with it
   off, `--pairs` times alternating (on, off, on, off, ...: the machine's drift hits both
   alike); each run's requests/s and router CPU ms per request, then the medians and
   their ratio. The baseline is the run with snapshots off.
2. **Memory after 1 M requests** (issue 11: <= 1 GiB with the defaults, state bounded
   by bytes, not by count): one router with the default config (cache, coalescing,
   snapshots, the 24 h duplicate-answer window: all on), `--memory-requests` requests
   with distinct prompts (every answer cached and remembered), sent in steps of
   `--step`; after each step the router's resident memory (VmRSS) and its `/healthz`
   state sizes. The baseline is the same router's resident memory when it started,
   before any request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_router import CACHE_OFF, CONFIG, cpu_s, drive, router, simulator
from engines import brokers

from turnout.service.kafka.local import free_port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def healthz(port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/healthz"
    with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=10) as r:
        return dict(json.loads(r.read()))
    return {}


# --------------------------------------------------------------------------- part 1


def one_run(
    args: argparse.Namespace, bootstrap: str, base_url: str, on: bool
) -> tuple[float, float]:
    env = CACHE_OFF | {"TURNOUT_FEATURES_SNAPSHOTS": "true" if on else "false"}
    with router(bootstrap, base_url, args.config_path, 10, env) as r:
        asyncio.run(drive(bootstrap, r.topics, args.warmup, tag="warm"))
        before = cpu_s(r.pid)
        run = asyncio.run(drive(bootstrap, r.topics, args.requests, tag="load", timeout_s=900))
        used = cpu_s(r.pid) - before
    return args.requests / run.wall_s, used / args.requests * 1000


def part_snapshots(args: argparse.Namespace, bootstrap: str) -> None:
    print(f"\n== 1. snapshots on vs off: {args.requests:,} requests a run, "
          f"{args.pairs} pairs, 0 ms upstream, cache off")  # fmt: skip
    figures: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with simulator(0) as (base_url, _):
        for i in range(args.pairs):
            for on in (True, False):
                rps, ms = one_run(args, bootstrap, base_url, on)
                figures[on].append((rps, ms))
                print(f"  pair {i + 1} snapshots {'on ' if on else 'off'}  {rps:>7,.0f} req/s  "
                      f"{ms:.3f} ms router CPU/req", flush=True)  # fmt: skip
    med = {on: (statistics.median(r for r, _ in v), statistics.median(m for _, m in v))
           for on, v in figures.items()}  # fmt: skip
    (on_rps, on_ms), (off_rps, off_ms) = med[True], med[False]
    print(f"  median with snapshots    {on_rps:>7,.0f} req/s  {on_ms:.3f} ms/req")
    print(f"  baseline, snapshots off  {off_rps:>7,.0f} req/s  {off_ms:.3f} ms/req")
    print(f"  throughput with snapshots: {on_rps / off_rps:.1%} of the baseline "
          f"(target: within 5 %); CPU per request {on_ms / off_ms:.1%}")  # fmt: skip


# --------------------------------------------------------------------------- part 2


def part_memory(args: argparse.Namespace, bootstrap: str) -> None:
    total, step = args.memory_requests, args.step
    print(f"\n== 2. memory: {total:,} requests in steps of {step:,}, default config "
          "(tenant limits lifted), distinct prompts")  # fmt: skip
    port = free_port()
    with (
        simulator(0) as (base_url, _),
        router(bootstrap, base_url, args.config_path, 10, health_port=port) as r,
    ):
        time.sleep(2.0)
        start = rss_mb(r.pid)
        print(f"  baseline: resident memory at start, no request yet: {start:,.0f} MB")
        print(f"  {'requests':>10}  {'RSS MB':>7}  {'req/s':>6}  state (/healthz)")
        done = 0
        while done < total:
            n = min(step, total - done)
            run = asyncio.run(drive(bootstrap, r.topics, n, tag=f"m{done}", prompts=f"p{done}",
                                    timeout_s=1800))  # fmt: skip
            done += n
            cache = healthz(port).get("cache", {})
            stored = cache.get("stored_bytes", 0) / 2**20
            entries = cache.get("entries", 0)
            print(f"  {done:>10,}  {rss_mb(r.pid):>7,.0f}  {n / run.wall_s:>6,.0f}  cache "
                  f"{entries:,} entries, {stored:,.0f} MB", flush=True)  # fmt: skip
        print(f"  after {total:,} requests: {rss_mb(r.pid):,.0f} MB resident (target <= 1,024 MB; "
              f"{start:,.0f} MB at start)")  # fmt: skip


@contextlib.contextmanager
def config_file() -> Iterator[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(CONFIG)
        f.flush()
        yield f.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", default="snapshots,memory")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--memory-requests", type=int, default=1_000_000)
    parser.add_argument("--step", type=int, default=100_000)
    args = parser.parse_args()
    parts = set(args.only.split(","))
    with config_file() as path:
        args.config_path = path
        for engine in brokers("kafka"):
            with engine as (name, bootstrap, _pid):
                print(f"=== broker: {name} ({bootstrap}) ===", flush=True)
                if "snapshots" in parts:
                    part_snapshots(args, bootstrap)
                if "memory" in parts:
                    part_memory(args, bootstrap)


if __name__ == "__main__":
    main()
