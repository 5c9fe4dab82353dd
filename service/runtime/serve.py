"""`turnout router`: load config, run one router with its health server until signalled."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import socket
from collections.abc import Callable

from turnout.service.clock import clock
from turnout.service.runtime.config import load_config

__all__ = ["cli_main", "dump_tasks"]


async def _main(args: argparse.Namespace) -> int:
    from turnout.service.health import start_health
    from turnout.service.kafka.errors import quiet_client_logs
    from turnout.service.runtime.router import Router
    from turnout.service.telemetry import Telemetry

    cfg = load_config(args.config)
    quiet_client_logs()
    instance = args.instance or f"{socket.gethostname()}-{clock.new_id()[-6:]}"
    telemetry = Telemetry.from_env(
        tracing=cfg.features.tracing, metrics=cfg.features.metrics, instance=instance
    )
    router = Router(cfg, instance=instance, telemetry=telemetry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)  # `kill -USR1 PID`: what awaits what
    serve_health = args.health_port and cfg.features.health_checks
    if args.health_port and not serve_health:
        print("health checks are off ([features] health_checks): no health server", flush=True)
    host = getattr(args, "health_host", "127.0.0.1")
    health = await start_health(router, args.health_port, host) if serve_health else None
    print(f"router {instance}: consuming {router.topics.requests} on {router.kafka.bootstrap}"
          + (f", health on http://{host}:{args.health_port}/healthz" if health else ""),
          flush=True)  # fmt: skip
    try:
        await router.run(stop)
        if router.fatal is not None:
            print(f"router {instance}: stopped: {router.fatal}", flush=True)
            return 1
    finally:
        if health is not None:
            await health.cleanup()
        await asyncio.to_thread(telemetry.shutdown)  # flush spans and metrics before exit
    return 0


def dump_tasks() -> None:
    """Log every asyncio task of the process with the line it waits on: for a router that
    went quiet, `kill -USR1 <pid>` shows where each request, rebalance or loop is stuck."""
    tasks = asyncio.all_tasks()
    lines = [f"{len(tasks)} asyncio tasks (SIGUSR1):"]
    for task in sorted(tasks, key=lambda t: t.get_name()):
        lines.append(f"  {task.get_name()}: {_awaiting(task.get_coro())}")
    logging.getLogger("turnout.router").warning("\n".join(lines))


def _awaiting(coro: object) -> str:
    """A coroutine's await chain, outermost first: `run:331 > _serve:402 > wait:...`."""
    steps: list[str] = []
    while coro is not None and len(steps) < 30:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            steps.append(type(coro).__name__)  # a Future, or a finished coroutine
            break
        steps.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " > ".join(steps) or "not started"


def _tune_gc() -> None:
    """The router keeps many long-lived objects (the outcome of every finished request)
    and allocates ~100 short-lived ones per request: with the default thresholds the
    collector ran so often that it cost a quarter of the router's CPU (py-spy showed it
    under aiokafka's create_future). Young objects are collected every 50,000
    allocations instead of 700, and the old generations less often."""
    gc.set_threshold(50_000, 20, 100)


def cli_main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call is noise
    _tune_gc()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_main(args))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (every asyncio piece gets a little cheaper)."""
    try:
        import uvloop
    except ImportError:  # Windows
        return None
    return uvloop.new_event_loop
