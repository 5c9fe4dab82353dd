"""Benchmark: the router's CPU per request at two commits, alternating on one broker.

    .venv/bin/python tests/benchmarks/bench_router_ab.py --baseline REV [--rounds 3]
        [--requests 10000]

Machine speed here drifts 20-40 % from hour to hour, so a figure is only comparable
with one taken in the same minutes. This runs the working tree's router and the
router of `--baseline` (a git revision, checked out into a temporary worktree) in
turn, ABBA order, on ONE Apache Kafka broker and ONE simulator (0 ms upstream), each
on fresh topics with the cache off, as part 1 of bench_router.py does. Prints each
run and the medians: router CPU per request (utime + stime), req/s, and the broker's
CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
from pathlib import Path

import bench_router as br
from engines import brokers

ROOT = Path(__file__).resolve().parents[2]


def run(trees: dict[str, Path], rounds: int, n: int) -> dict[str, list[tuple[float, float, float]]]:
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in trees}
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as config:
        config.write(br.CONFIG)
        config.flush()
        for engine in brokers("kafka"):
            with engine as (_, bootstrap, broker_pid), br.simulator(0) as (base_url, _):
                for r in range(rounds):
                    order = list(trees) if r % 2 == 0 else list(reversed(trees))
                    for name in order:
                        br.ROOT = trees[name]  # the router runs from that tree's code
                        br.ROUTER_ENV[:] = [f"PYTHONPATH={trees[name]}"]
                        with br.router(bootstrap, base_url, config.name, 10, br.CACHE_OFF) as rp:
                            asyncio.run(br.drive(bootstrap, rp.topics, 1000, tag="warm"))
                            cpu0, broker0 = br.cpu_s(rp.pid), br.cpu_s(broker_pid)
                            load = asyncio.run(br.drive(bootstrap, rp.topics, n, tag="load"))
                            ms = (br.cpu_s(rp.pid) - cpu0) / n * 1000
                            broker_ms = (br.cpu_s(broker_pid) - broker0) / n * 1000
                        figure = (ms, n / load.wall_s, broker_ms)
                        results[name].append(figure)
                        print(f"  round {r + 1} {name:<10} router {ms:6.3f} ms/req  "
                              f"{figure[1]:>7,.0f} req/s  broker {broker_ms:5.3f} ms/req",
                              flush=True)  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="turnout-ab-") as tmp:
        worktree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.baseline],
                       cwd=ROOT, check=True, capture_output=True)  # fmt: skip
        try:
            trees = {"this tree": ROOT, args.baseline[:10]: worktree}
            results = run(trees, args.rounds, args.requests)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)],
                           cwd=ROOT, check=False, capture_output=True)  # fmt: skip
    print("\nmedians")
    for name, figures in results.items():
        ms, rps, broker = (statistics.median(f[i] for f in figures) for i in range(3))
        print(f"  {name:<10} router {ms:6.3f} ms/req  {rps:>7,.0f} req/s  "
              f"broker {broker:5.3f} ms/req")  # fmt: skip
    (ours, theirs) = (statistics.median(f[0] for f in v) for v in results.values())
    print(f"  router CPU per request: {ours / theirs:.2f}x the baseline's")


if __name__ == "__main__":
    main()
