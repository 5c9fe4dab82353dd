"""Benchmark: `turnout simulate` throughput on one core, against a bare baseline.

Run:  .venv/bin/python tests/benchmarks/bench_simulator.py [--requests 20000] [--concurrency 64]

How it is driven:
- each server is a subprocess pinned to CPU 0 (`taskset -c 0`): the simulator
  through its CLI (`python -m turnout simulate --port 0`, 0 ms latency), and a
  baseline bare starlette + uvicorn app answering `{"hello": "world"}` with the
  same uvicorn settings (this script with `--serve-baseline`);
- the load generator is this process, pinned to CPU 1, with one
  aiohttp.ClientSession and `--concurrency` workers looping on keep-alive
  connections, after a warm-up;
- reported: requests/s, latency p50/p99, and the server's CPU time per request
  (utime + stime from /proc/PID/stat). CPU per request is the robust figure on
  a shared machine: 1e6 / (µs per request) is what one core can serve when the
  load generator is not the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHAT = {
    "model": "openai/gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello to the router in one short sentence."}],
    "max_tokens": 32,
}


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    cpu_s: float
    p50_ms: float
    p99_ms: float

    def line(self) -> str:
        cpu_us = self.cpu_s / self.requests * 1e6
        return (
            f"{self.name:<34} {self.requests / self.seconds:>8,.0f} req/s   "
            f"p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms   "
            f"server CPU {cpu_us:6.1f} µs/req  (one core: ~{1e6 / cpu_us:,.0f} req/s)"
        )


def _serve_baseline() -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"hello": "world"})

    app = Starlette(routes=[Route("/", hello)])
    config = uvicorn.Config(app, host="127.0.0.1", port=0, access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(f"baseline listening on http://127.0.0.1:{sock.getsockname()[1]}/", flush=True)
    server.run(sockets=[sock])


def _start(command: list[str]) -> tuple[subprocess.Popen[str], str]:
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    process = subprocess.Popen(
        [*pin, *command], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=os.environ.copy()
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"(http://\S+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"server did not start: {line!r}")
    _wait_listening(match.group(1))
    return process, match.group(1)


def _wait_listening(url: str) -> None:
    host, port = re.findall(r"//([^:/]+):(\d+)", url)[0]
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(
    name: str, url: str, pid: int, *, requests: int, concurrency: int, body: bytes | None
) -> Result:
    import aiohttp

    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one() -> None:
            started = time.perf_counter()
            method = session.post(url, data=body) if body is not None else session.get(url)
            async with method as response:
                await response.read()
                if response.status != 200:
                    raise SystemExit(f"{name}: HTTP {response.status}")
            latencies.append(time.perf_counter() - started)

        async def worker(count: int) -> None:
            for _ in range(count):
                await one()

        await asyncio.gather(*(worker(500 // concurrency + 1) for _ in range(concurrency)))
        latencies.clear()
        per_worker = requests // concurrency
        cpu_before, started = _cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
        seconds, cpu = time.perf_counter() - started, _cpu_seconds(pid) - cpu_before
    latencies.sort()
    n = len(latencies)
    return Result(name, n, seconds, cpu, latencies[n // 2] * 1e3, latencies[int(n * 0.99)] * 1e3)


async def _bench(name: str, command: list[str], path: str, body: bytes | None, **kw: int) -> Result:
    process, url = _start(command)
    try:
        return await _drive(name, url.rstrip("/") + path, process.pid, body=body, **kw)
    finally:
        process.terminate()
        process.wait(10)


async def main(args: argparse.Namespace) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    kw = {"requests": args.requests, "concurrency": args.concurrency}
    simulate = [sys.executable, "-m", "turnout", "simulate", "--port", "0"]
    baseline = [sys.executable, __file__, "--serve-baseline"]
    chat = json.dumps(CHAT).encode()
    stream = json.dumps({**CHAT, "stream": True}).encode()
    print(
        f"servers pinned to CPU 0, aiohttp load generator on CPU 1; "
        f"{args.requests} requests, concurrency {args.concurrency}, keep-alive, 0 ms latency"
    )
    results = [
        await _bench("baseline starlette GET hello", baseline, "/", None, **kw),
        await _bench("simulator chat completion", simulate, "/chat/completions", chat, **kw),
        await _bench("simulator chat completion, SSE", simulate, "/chat/completions", stream, **kw),
    ]
    for result in results:
        print(result.line())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve_baseline:
        _serve_baseline()
    else:
        asyncio.run(main(arguments))
