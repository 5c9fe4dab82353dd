"""Benchmark: a router's rebuild time against the log's length, with and without snapshots.

Run: `.venv/bin/python tests/benchmarks/bench_rebuild.py [--sizes 100000,1000000,2000000]`
     `.venv/bin/python tests/benchmarks/bench_rebuild.py --history 1000000`

The events topic is filled with the synthetic mixed workload (`turnout.analytics.synthetic`:
real event structs, ~6 per request, CloudEvents-encoded, each on its tenant's home
partition, 48 tenants over the 12 partitions) up to each size in turn (the log only
grows: 100k, then 1M, then 2M). At each size, on the same broker, in the same run:

- **baseline, no snapshots**: a router with `[features] snapshots = false` rebuilds by
  folding every events partition from offset 0 (what every rebuild did before);
- **snapshots, after a stop**: a router with snapshots folds the log once and stops
  (a stop snapshots every partition); the next start is timed;
- and, at the largest size, **snapshots, worst tail**: `every_events - 1` more events on
  every partition after the last snapshot (a router that died just before its next
  snapshot), then a start.

Reported: the rebuild itself (`/healthz` `rebuild.seconds`: snapshots read, restored,
the tail folded to the markers) and the whole start until ready (group join included),
and the events folded. Target (issue 11): <= 5 s with 1 M events, not growing when the
log doubles.

`--history N [--days D]` measures the log as it grows in production, with its age: N
events of the last 6 hours alone, then the same N after N events of D days ago (10 by
default: past the 24 h answer window and the 8-day id window, so what they leave in
state is budgets; with D = 3 their ids are still kept, and the restore grows with
them). The sizes above put every event in the last day, so there the state (and a
snapshot's restore) grows with the log too.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer
from engines import brokers
from rich.console import Console
from rich.table import Table

from turnout.analytics.synthetic import envelopes, workload
from turnout.service.core.config import Config, parse_config
from turnout.service.core.partitioning import home_partition
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.kafka.topics import ensure_topics
from turnout.service.runtime.router import Router
from turnout.service.runtime.serve import _tune_gc
from turnout.service.upstream.simulator import SimulatorOptions, start_in_thread
from turnout.service.wire.cloudevents import encode

TENANTS = 48
EVENTS_PER_REQUEST = 6


async def fill(
    bootstrap: str,
    topic: str,
    start: int,
    count: int,
    *,
    tenant: str | None = None,
    hours_ago: float = 24.0,
) -> int:
    """About `count` more synthetic events (requests numbered from `start`), the first
    `hours_ago` hours before now (7 ms apart); how many. With `tenant`: all of one
    tenant's (the workload's `t0`, renamed; global events left out)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                max_batch_size=1 << 20, compression_type=None)  # fmt: skip
    await producer.start()
    sent = 0
    try:
        tenants = 1 if tenant else TENANTS
        stories = workload(count // EVENTS_PER_REQUEST + 1, tenants=tenants, start=start)
        pending = []
        t0_ms = int((time.time() - hours_ago * 3600) * 1000)
        for env in envelopes(stories, t0_ms=t0_ms, seed=start):
            if tenant is not None:
                if getattr(env.data, "tenant", None) != "t0":
                    continue
                env = msgspec.structs.replace(
                    env, data=msgspec.structs.replace(env.data, tenant=tenant)
                )
            key, value, headers = encode(env)
            p = home_partition(env.data.tenant)
            pending.append(await producer.send(topic, value, key=key, headers=headers, partition=p))
            sent += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
            if sent >= count:
                break
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def start_router(cfg: Config, name: str) -> dict[str, Any]:
    """Start a router until ready, stop it; what its rebuild took."""
    router = Router(cfg, instance=name)
    stop = asyncio.Event()
    began = time.perf_counter()
    task = asyncio.create_task(router.run(stop))
    await asyncio.wait_for(router.ready.wait(), 600)
    ready_s = time.perf_counter() - began
    stats = dict(router.rebuild_stats)
    stop.set()
    await asyncio.wait_for(task, 600)
    return {"ready_s": ready_s, **stats}


def config(bootstrap: str, prefix: str, base_url: str, *, snapshots: bool) -> Config:
    return parse_config({
        "kafka": {"bootstrap": bootstrap, "topic_prefix": prefix, "group_id": f"g-{prefix}"},
        "upstream": {"base_url": base_url},
        "features": {"snapshots": snapshots},
    }, {})  # fmt: skip


async def run(bootstrap: str, sizes: list[int], out: Console) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    settings = KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix)
    await ensure_topics(settings)
    table = Table("log (events)", "rebuild", "rebuild s", "ready s", "events folded",
                  title="router rebuild", title_justify="left")  # fmt: skip
    with start_in_thread(SimulatorOptions()) as sim:
        plain = config(bootstrap, prefix, sim.base_url, snapshots=False)
        snapping = config(bootstrap, prefix, sim.base_url, snapshots=True)
        total, requests = 0, 0
        for size in sizes:
            t = time.perf_counter()
            added = await fill(bootstrap, settings.topics.events, requests, size - total)
            total += added
            requests += added // EVENTS_PER_REQUEST + 1
            out.print(f"  log at {total:,} events ({added:,} produced in "
                      f"{time.perf_counter() - t:.1f} s)")  # fmt: skip
            base = await start_router(plain, "no-snapshots")
            table.add_row(f"{total:,}", "baseline: no snapshots, from offset 0",
                          f"{base['seconds']:.2f}", f"{base['ready_s']:.2f}",
                          f"{base['events_folded']:,}")  # fmt: skip
            await start_router(snapping, "snapshot-writer")  # folds the log, snapshots on stop
            snap = await start_router(snapping, "from-snapshots")
            table.add_row(f"{total:,}", "snapshots, after a stop", f"{snap['seconds']:.2f}",
                          f"{snap['ready_s']:.2f}", f"{snap['events_folded']:,}")  # fmt: skip
            out.print(f"  {total:,}: baseline {base['seconds']:.2f} s, "
                      f"from snapshots {snap['seconds']:.2f} s")  # fmt: skip
        tail = snapping.snapshots.every_events - 1
        added = 0
        for p in range(12):  # every partition just short of its next snapshot
            tenant = next(f"tail-{n}" for n in range(10_000) if home_partition(f"tail-{n}") == p)
            added += await fill(
                bootstrap, settings.topics.events, 10**7 * (p + 1), tail, tenant=tenant
            )
        total += added
        worst = await start_router(snapping, "worst-tail")
        table.add_row(f"{total:,}", f"snapshots + {tail:,} events per partition",
                      f"{worst['seconds']:.2f}", f"{worst['ready_s']:.2f}",
                      f"{worst['events_folded']:,}")  # fmt: skip
    out.print(table)


async def history(bootstrap: str, size: int, days: float, out: Console) -> None:
    """A log doubled by older history (the same `size` recent events, alone and after
    `size` events of `days` days ago), as a log grows with its age: from snapshots, both
    rebuild in about the same time once that history is older than every window state
    keeps (answers 24 h, ids 8 days); within the id window its ids are kept."""
    table = Table("log (events)", "rebuild", "rebuild s", "ready s", "events folded",
                  title="router rebuild: a log twice as old", title_justify="left")  # fmt: skip
    with start_in_thread(SimulatorOptions()) as sim:
        for old in (0, size):
            prefix = f"bench-{uuid.uuid4().hex[:6]}"
            settings = KafkaSettings(bootstrap=bootstrap, topic_prefix=prefix)
            await ensure_topics(settings)
            if old:
                await fill(bootstrap, settings.topics.events, 0, old, hours_ago=24 * days)
            total = old + await fill(bootstrap, settings.topics.events, 10**7, size, hours_ago=6)
            what = f"{total:,} ({f'half of it {days:g} days old' if old else 'the last 6 hours'})"
            plain = config(bootstrap, prefix, sim.base_url, snapshots=False)
            snapping = config(bootstrap, prefix, sim.base_url, snapshots=True)
            base = await start_router(plain, "no-snapshots")
            table.add_row(what, "baseline: no snapshots, from offset 0",
                          f"{base['seconds']:.2f}", f"{base['ready_s']:.2f}",
                          f"{base['events_folded']:,}")  # fmt: skip
            await start_router(snapping, "snapshot-writer")
            snap = await start_router(snapping, "from-snapshots")
            table.add_row(what, "snapshots, after a stop", f"{snap['seconds']:.2f}",
                          f"{snap['ready_s']:.2f}", f"{snap['events_folded']:,}")  # fmt: skip
            out.print(f"  {what}: baseline {base['seconds']:.2f} s, "
                      f"from snapshots {snap['seconds']:.2f} s")  # fmt: skip
    out.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="100000,1000000,2000000")
    parser.add_argument("--engines", default="kafka", help="kafka, tansu or both")
    parser.add_argument("--history", type=int, default=0, metavar="EVENTS",
                        help="instead: EVENTS recent events alone, then after as many "
                        "--days old (a log that doubled with its age)")  # fmt: skip
    parser.add_argument("--days", type=float, default=10.0,
                        help="how old --history's older half is "
                        "(default 10: past the 8-day id window)")  # fmt: skip
    args = parser.parse_args()
    _tune_gc()  # as `turnout router` runs
    sizes = [int(s) for s in args.sizes.split(",")]
    out = Console(highlight=False)
    for engine in brokers(args.engines):
        with engine as (name, bootstrap, _pid):
            out.print(f"[bold]{name}[/bold] at {bootstrap}")
            if args.history:
                asyncio.run(history(bootstrap, args.history, args.days, out))
            else:
                asyncio.run(run(bootstrap, sizes, out))


if __name__ == "__main__":
    main()
