"""Benchmark: CPU per request of the upstream client, aiohttp transport vs httpx's default.

Run:  .venv/bin/python tests/benchmarks/bench_upstream.py [--requests 4000] [--rounds 3]

How it is driven:
- the simulator runs in its own process through its CLI (`python -m turnout
  simulate --port 0 --latency-ms 0`), pinned to CPU 0 when there are two;
  this process (the client) is pinned to CPU 1;
- five clients, each with `--concurrency` (32) workers looping on keep-alive
  connections over one pool, after a warm-up, interleaved over `--rounds`
  rounds (median reported) so machine noise hits them all alike:
    UpstreamClient, the router's        what the router runs (chat calls on its HTTP/1.1 pool)
    UpstreamClient, default transport   the same client on httpcore
    httpx + aiohttp transport, bare     `AsyncClient.post` + msgspec decode (our layer's cost)
    aiohttp.ClientSession, raw          the floor for a Python HTTP client library
    H1Pool, bare                        the router's HTTP/1.1 pool (service/upstream/h1.py)
                                        without the client around it: the floor
- reported: requests/s and this process's CPU time per request
  (`time.process_time()` / requests), and the ratios against the default
  transport. CPU per request is the robust figure on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import msgspec
from httpx_aiohttp import AiohttpTransport

from turnout.service.upstream.client import ClientOptions, UpstreamClient
from turnout.service.upstream.h1 import H1Pool

ROOT = Path(__file__).resolve().parents[2]
MODEL = "openai/gpt-4o-mini"
CHAT: dict[str, Any] = {
    "messages": [{"role": "user", "content": "Say hello to the router in one short sentence."}],
    "max_tokens": 32,
    "temperature": 0,
}
PAYLOAD = msgspec.json.encode({**CHAT, "model": MODEL, "stream": False})
Call = Callable[[], Awaitable[None]]


@dataclass
class Figure:
    name: str
    rps: list[float]
    cpu_ms: list[float]

    @property
    def median_rps(self) -> float:
        return statistics.median(self.rps)

    @property
    def median_cpu_ms(self) -> float:
        return statistics.median(self.cpu_ms)


# --------------------------------------------------------------------------- the simulator


def start_simulator() -> tuple[subprocess.Popen[str], str]:
    """`turnout simulate` in a subprocess at 0 ms latency; returns it and its base URL."""
    command = [sys.executable, "-m", "turnout", "simulate", "--port", "0", "--latency-ms", "0"]
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        command = ["taskset", "-c", "0", *command]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(http://\S+/api/v1)", line)
    if match is None:
        proc.terminate()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, match.group(1)


def pin_to_cpu_1() -> None:
    if (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})


# --------------------------------------------------------------------------- the clients


async def drive(call: Call, requests: int, concurrency: int) -> tuple[float, float]:
    """Run `requests` calls with `concurrency` workers: (requests/s, CPU ms per request)."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return requests / wall, cpu / requests * 1000


def upstream_call(client: UpstreamClient) -> Call:
    async def call() -> None:
        result = await client.call(MODEL, CHAT)
        if not result.ok:
            raise RuntimeError(f"call failed: {result.error_class}: {result.message}")

    return call


def bare_httpx_call(client: httpx.AsyncClient) -> Call:
    headers = {"content-type": "application/json"}

    async def call() -> None:
        response = await client.post("/chat/completions", content=PAYLOAD, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}")
        msgspec.json.decode(response.content)

    return call


def raw_aiohttp_call(session: aiohttp.ClientSession, url: str) -> Call:
    headers = {"content-type": "application/json"}

    async def call() -> None:
        async with session.post(url, data=PAYLOAD, headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")
        msgspec.json.decode(body)

    return call


def pool_call(pool: H1Pool) -> Call:
    async def call() -> None:
        status, body, _ = await pool.request("POST", "/chat/completions", PAYLOAD, 30.0)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        msgspec.json.decode(body)

    return call


def limits(pool: int) -> httpx.Limits:
    return httpx.Limits(max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=30)


async def run_round(
    base_url: str, requests: int, concurrency: int, figures: dict[str, Figure]
) -> None:
    options = ClientOptions(base_url=base_url, pool_size=100, keepalive_s=30)
    default = httpx.AsyncHTTPTransport(limits=limits(100))
    bare_transport = AiohttpTransport(limits=limits(100))
    async with (
        UpstreamClient(options, environ={}) as ours,
        UpstreamClient(options, transport=default, environ={}) as ours_default,
        httpx.AsyncClient(base_url=base_url, transport=bare_transport) as bare,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session,
    ):
        pool = H1Pool(base_url, headers={"content-type": "application/json"}, size=100)
        clients = {
            "UpstreamClient, the router's": upstream_call(ours),
            "UpstreamClient, default transport": upstream_call(ours_default),
            "httpx + aiohttp transport, bare": bare_httpx_call(bare),
            "aiohttp.ClientSession, raw": raw_aiohttp_call(session, f"{base_url}/chat/completions"),
            "H1Pool, bare": pool_call(pool),
        }
        for name, call in clients.items():
            await drive(call, max(200, requests // 10), concurrency)  # warm-up: fill the pool
            rps, cpu_ms = await drive(call, requests, concurrency)
            figure = figures.setdefault(name, Figure(name, [], []))
            figure.rps.append(rps)
            figure.cpu_ms.append(cpu_ms)
            print(f"  {name:<36} {rps:>8,.0f} req/s  {cpu_ms:6.3f} ms CPU/req", flush=True)
        pool.close()


def report(figures: dict[str, Figure]) -> None:
    baseline = figures["UpstreamClient, default transport"]
    print("\nmedians (client process only; the simulator runs in its own process)")
    columns = (("req/s", 8), ("CPU ms/req", 11), ("CPU vs default", 15), ("req/s vs default", 17))
    print(f"{'client':<36} " + " ".join(f"{title:>{width}}" for title, width in columns))
    for figure in figures.values():
        cpu_ratio = baseline.median_cpu_ms / figure.median_cpu_ms
        rps_ratio = figure.median_rps / baseline.median_rps
        print(
            f"{figure.name:<36} {figure.median_rps:>8,.0f} {figure.median_cpu_ms:>11.3f} "
            f"{cpu_ratio:>14.2f}x {rps_ratio:>16.2f}x"
        )


async def main_async(args: argparse.Namespace, base_url: str) -> None:
    figures: dict[str, Figure] = {}
    for number in range(1, args.rounds + 1):
        size = f"{args.requests} requests, {args.concurrency} in flight"
        print(f"round {number}/{args.rounds}: {size}")
        await run_round(base_url, args.requests, args.concurrency, figures)
    report(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uvloop", action="store_true", help="run the client on uvloop")
    args = parser.parse_args()
    proc, base_url = start_simulator()
    try:
        pin_to_cpu_1()
        loop_name = "uvloop" if args.uvloop else "asyncio"
        print(f"simulator at {base_url} (pid {proc.pid}); client loop: {loop_name}")
        if args.uvloop:
            import uvloop

            uvloop.run(main_async(args, base_url))
        else:
            asyncio.run(main_async(args, base_url))
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    main()
