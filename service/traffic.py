"""`turnout traffic`: a steady, mixed stream of requests, as several tenants would send them.

Job: drive a running Turnout with traffic that shows every part of it: two
routes with different strategies, tenants that share prompts (temperature 0,
so the cache answers repeats), one tenant sending faster than its rate limit
and one spending past its budget (`service/demo_files/turnout.toml` sets those limits).
`turnout demo` runs it as a child; it is just as usable alone against any
Turnout (`turnout traffic --rate 20 --duration 60`).

Rules:
- The mix is a pure function of the seed (`plan`): the i-th request's tenant,
  task type, prompt, temperature and send time come from a hash of (seed, i),
  never from `random`, so two runs with one seed send the same requests at the
  same offsets. Request ids are fresh UUIDv7s (a fixed id would be answered
  from an earlier run's recorded outcome).
- Arrivals are a Poisson process at `rate` requests/s (exponential gaps from
  the same hash), so a tenant's burst limit is met now and then as in life.
- Sending follows the schedule, never the answers: requests go out through
  one `AsyncTurnout` (its own reply topic) and are awaited in the background;
  past `max_in_flight` unanswered requests a due request is skipped (counted).
- Every second the counts are written atomically to `--stats FILE` as JSON
  (`turnout demo` reads it for its progress line); a line is printed every
  5 s and the totals at the end.
- SIGINT or SIGTERM: stop sending, give answers in flight up to 5 s, delete
  the reply topic, print the totals, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

__all__ = [
    "DEFAULT_MIX",
    "Shot",
    "Tally",
    "TenantMix",
    "TrafficOptions",
    "cli_main",
    "plan",
    "run_traffic",
    "summary_line",
    "uniform",
]

T = TypeVar("T")


class TenantMix(msgspec.Struct, frozen=True, kw_only=True):
    """One tenant's share of the traffic and how it asks."""

    tenant: str
    weight: float
    task_types: tuple[str, ...] = ("general",)
    repeat_share: float = 0.0  # share of requests that repeat a common prompt at temperature 0
    max_tokens: int = 128
    stream_share: float = 0.0  # share of its fresh requests sent as streams


class Shot(msgspec.Struct, frozen=True, kw_only=True):
    """One planned request: when (seconds after the start), who and what."""

    index: int
    at_s: float
    tenant: str
    task_type: str
    prompt: str
    temperature: float
    max_tokens: int
    stream: bool = False


DEFAULT_MIX: Final = (
    TenantMix(tenant="acme", weight=3.0, repeat_share=0.6, stream_share=0.5),
    TenantMix(
        tenant="globex",
        weight=2.0,
        task_types=("general", "code"),
        repeat_share=0.3,
        stream_share=0.3,
    ),
    TenantMix(tenant="initech", weight=1.5, repeat_share=0.2, max_tokens=64),
    TenantMix(tenant="penny", weight=1.0, task_types=("code",), max_tokens=256),
)
"""The demo's tenants (limits in service/demo_files/turnout.toml): at 5 requests/s acme sends ~2/s,
globex ~1.3/s on both routes, initech ~1/s against a limit of 20 a minute, penny
~0.7/s of code questions against a budget of $0.008 a day. Half of acme's fresh
questions and 30% of globex's are streamed (a repeat is never: streams are not cached)."""

_COMMON: Final[dict[str, tuple[str, ...]]] = {
    "general": (
        "What is the capital of France?",
        "Summarise the plot of Hamlet in two sentences.",
        "Give me three tips for a good night's sleep.",
        "Translate 'good morning' into Spanish, French and German.",
        "What is the difference between weather and climate?",
        "Explain photosynthesis to a ten-year-old.",
    ),
    "code": (
        "Write a Python function that reverses a string.",
        "Explain what a SQL LEFT JOIN returns.",
        "How do I read a file line by line in Go?",
        "What does `git rebase -i` do?",
    ),
}
_FRESH: Final[dict[str, tuple[str, ...]]] = {
    "general": (
        "Write a haiku about the number {n}.",
        "Suggest a name for a cafe on street number {n}.",
        "Give fun fact number {n} about the year {year}.",
        "Plan a {n}-minute workout without equipment.",
    ),
    "code": (
        "Write a function that returns the {n}th Fibonacci number.",
        "Write a regular expression that matches {n} digits.",
        "Explain the time complexity of sorting {n} items.",
    ),
}


def uniform(seed: int, index: int, salt: str) -> float:
    """A number in [0, 1) that depends only on (seed, index, salt)."""
    digest = hashlib.sha256(f"{seed}:{index}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _pick(items: tuple[T, ...], u: float) -> T:
    return items[min(int(u * len(items)), len(items) - 1)]


def _tenant(mix: tuple[TenantMix, ...], u: float) -> TenantMix:
    target, acc = u * sum(m.weight for m in mix), 0.0
    for m in mix:
        acc += m.weight
        if target < acc:
            return m
    return mix[-1]


def _shot(index: int, at_s: float, *, seed: int, mix: tuple[TenantMix, ...]) -> Shot:
    who = _tenant(mix, uniform(seed, index, "tenant"))
    task = _pick(who.task_types, uniform(seed, index, "task"))
    repeat = uniform(seed, index, "repeat") < who.repeat_share
    if repeat:
        prompt = _pick(_COMMON.get(task, _COMMON["general"]), uniform(seed, index, "prompt"))
    else:
        template = _pick(_FRESH.get(task, _FRESH["general"]), uniform(seed, index, "prompt"))
        prompt = template.format(n=index + 1, year=1900 + index % 125)
    stream = not repeat and uniform(seed, index, "stream") < who.stream_share
    return Shot(index=index, at_s=at_s, tenant=who.tenant, task_type=task, prompt=prompt,
                temperature=0.0 if repeat else 0.7, max_tokens=who.max_tokens,
                stream=stream)  # fmt: skip


def plan(*, seed: int, rate: float, mix: tuple[TenantMix, ...] = DEFAULT_MIX) -> Iterator[Shot]:
    """The endless schedule of requests for `seed` at `rate` per second (Poisson arrivals)."""
    if rate <= 0 or not mix:
        raise ValueError("traffic needs a positive rate and at least one tenant")
    at_s, index = 0.0, 0
    while True:
        at_s += -math.log(1.0 - uniform(seed, index, "gap")) / rate
        yield _shot(index, at_s, seed=seed, mix=mix)
        index += 1


@dataclass
class Tally:
    """What happened so far: requests sent and responses by status and error code."""

    sent: int = 0
    answered: int = 0
    cached: int = 0
    streamed: int = 0  # answers that came as streams
    chunks: int = 0  # chunk records those streams had
    timeouts: int = 0
    send_errors: int = 0
    skipped: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    tenants: Counter[str] = field(default_factory=Counter)

    @property
    def in_flight(self) -> int:
        return self.sent - self.answered - self.timeouts

    def record(self, doc: Mapping[str, Any]) -> None:
        """Count one response document (docs/reference/records.md, the response)."""
        self.answered += 1
        status = str(doc.get("status", "unknown"))
        self.statuses[status] += 1
        self.tenants[f"{doc.get('tenant', '?')}:{status}"] += 1
        if doc.get("cached"):
            self.cached += 1
        error = doc.get("error")
        if status != "ok" and isinstance(error, Mapping):
            self.codes[str(error.get("code", "unknown"))] += 1

    def to_dict(self, *, elapsed_s: float = 0.0, done: bool = False) -> dict[str, Any]:
        return {
            "sent": self.sent, "answered": self.answered, "in_flight": self.in_flight,
            "cached": self.cached, "streamed": self.streamed, "chunks": self.chunks,
            "timeouts": self.timeouts, "send_errors": self.send_errors,
            "skipped": self.skipped, "status": dict(self.statuses), "codes": dict(self.codes),
            "tenants": dict(self.tenants), "elapsed_s": round(elapsed_s, 1), "done": done,
        }  # fmt: skip


def summary_line(stats: Mapping[str, Any]) -> str:
    """One line for people: `120 sent, 112 answered: ok 90, rejected 20 (rate_limited 20) ...`."""
    status: Mapping[str, int] = stats.get("status") or {}
    codes: Mapping[str, int] = stats.get("codes") or {}
    parts = [f"{name} {n}" for name, n in sorted(status.items(), key=lambda kv: -kv[1])]
    line = f"{stats.get('sent', 0)} sent, {stats.get('answered', 0)} answered"
    if parts:
        line += ": " + ", ".join(parts)
    if codes:
        line += " (" + ", ".join(f"{c} {n}" for c, n in sorted(codes.items())) + ")"
    line += f"; {stats.get('cached', 0)} from cache"
    if stats.get("streamed"):
        line += f", {stats['streamed']} streamed ({stats.get('chunks', 0)} chunks)"
    extra = [f"{stats[k]} {k.replace('_', ' ')}" for k in ("timeouts", "send_errors", "skipped")
             if stats.get(k)]  # fmt: skip
    return line + ("; " + ", ".join(extra) if extra else "")


@dataclass(frozen=True, kw_only=True)
class TrafficOptions:
    rate: float = 5.0
    seed: int = 7
    duration_s: float | None = None  # None: until stopped
    max_tokens: int | None = None  # a cap on every request's max_tokens (cheap runs)
    max_in_flight: int = 256
    timeout_s: float = 30.0
    drain_s: float = 5.0
    stats_path: Path | None = None
    mix: tuple[TenantMix, ...] = DEFAULT_MIX


async def _one(client: Any, shot: Shot, tally: Tally, options: TrafficOptions) -> None:
    cap = options.max_tokens
    max_tokens = min(shot.max_tokens, cap) if cap else shot.max_tokens
    if shot.stream:
        await _streamed(client, shot, tally, options, max_tokens)
        return
    try:
        rid = await client.submit(shot.prompt, tenant=shot.tenant, task_type=shot.task_type,
                                  temperature=shot.temperature, max_tokens=max_tokens)  # fmt: skip
    except Exception:
        tally.send_errors += 1
        return
    tally.sent += 1
    try:
        tally.record(await client.wait(rid, timeout_s=options.timeout_s))
    except TimeoutError:
        tally.timeouts += 1
    except Exception:  # the client closed under us: counted as no answer
        tally.timeouts += 1


async def _streamed(
    client: Any, shot: Shot, tally: Tally, options: TrafficOptions, max_tokens: int
) -> None:
    from turnout.service.client import StreamFailed

    try:
        stream = await client.stream(shot.prompt, tenant=shot.tenant, task_type=shot.task_type,
                                     temperature=shot.temperature, max_tokens=max_tokens,
                                     timeout_s=options.timeout_s)  # fmt: skip
    except Exception:
        tally.send_errors += 1
        return
    tally.sent += 1
    chunks = 0
    try:
        async for _ in stream:
            chunks += 1
    except StreamFailed:
        pass  # counted by its last record below
    except Exception:  # no next record in time, or the client closed under us
        tally.timeouts += 1
        return
    if stream.response is not None:
        tally.streamed += 1
        tally.chunks += chunks
        tally.record(stream.response)


async def _stopped(stop: asyncio.Event, delay_s: float) -> bool:
    """Wait `delay_s` seconds; True when `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), max(delay_s, 0.0))
    except TimeoutError:
        return stop.is_set()
    return True


async def _send_all(client: Any, options: TrafficOptions, tally: Tally, stop: asyncio.Event,
                    pending: set[asyncio.Task[None]]) -> None:  # fmt: skip
    start = asyncio.get_running_loop().time()
    for shot in plan(seed=options.seed, rate=options.rate, mix=options.mix):
        if options.duration_s is not None and shot.at_s >= options.duration_s:
            return
        delay = start + shot.at_s - asyncio.get_running_loop().time()
        if await _stopped(stop, delay):
            return
        if len(pending) >= options.max_in_flight:
            tally.skipped += 1
            continue
        task = asyncio.create_task(_one(client, shot, tally, options))
        pending.add(task)
        task.add_done_callback(pending.discard)


def _write_stats(path: Path, stats: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(stats, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


async def _report(tally: Tally, options: TrafficOptions, started: float,
                  out: Callable[[str], None]) -> None:  # fmt: skip
    loop, tick = asyncio.get_running_loop(), 0
    while True:
        await asyncio.sleep(1.0)
        tick += 1
        stats = tally.to_dict(elapsed_s=loop.time() - started)
        if options.stats_path is not None:
            _write_stats(options.stats_path, stats)
        if tick % 5 == 0:
            out(f"traffic: {summary_line(stats)}")


async def run_traffic(
    options: TrafficOptions,
    *,
    stop: asyncio.Event,
    config: Any = None,
    out: Callable[[str], None] = print,
) -> Tally:
    """Send the planned traffic until `stop` (or the duration); return the counts.

    `config` is a `turnout.service.core.config.Config` (None: `./turnout.toml` and the
    environment, as every command reads it).
    """
    from turnout.service.client import AsyncTurnout

    tally, pending = Tally(), set[asyncio.Task[None]]()
    client = AsyncTurnout(config=config)
    await client.start()
    started = asyncio.get_running_loop().time()
    reporter = asyncio.create_task(_report(tally, options, started, out))
    try:
        await _send_all(client, options, tally, stop, pending)
        if pending:
            await asyncio.wait(set(pending), timeout=options.drain_s)
    finally:
        for task in (*pending, reporter):
            task.cancel()
        await asyncio.gather(*pending, reporter, return_exceptions=True)
        await client.close(delete_reply_topic=True)
        elapsed = asyncio.get_running_loop().time() - started
        if options.stats_path is not None:
            _write_stats(options.stats_path, tally.to_dict(elapsed_s=elapsed, done=True))
    return tally


async def _main(args: argparse.Namespace) -> int:
    from turnout.service.kafka.errors import quiet_client_logs
    from turnout.service.runtime.config import load_config

    quiet_client_logs()
    cfg = load_config(args.config)
    options = TrafficOptions(
        rate=args.rate, seed=args.seed, duration_s=args.duration, max_tokens=args.max_tokens,
        max_in_flight=args.max_in_flight, timeout_s=args.timeout,
        stats_path=Path(args.stats) if args.stats else None,
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def say(line: str) -> None:
        print(line, flush=True)

    say(f"traffic: {options.rate:g} requests/s (seed {options.seed}) to "
        f"{cfg.kafka.topic_prefix}.requests; tenants "
        + ", ".join(m.tenant for m in options.mix))  # fmt: skip
    tally = await run_traffic(options, stop=stop, config=cfg, out=say)
    say(f"traffic: done: {summary_line(tally.to_dict())}")
    return 0


def cli_main(args: argparse.Namespace) -> int:
    """`turnout traffic [--rate R] [--seed N] [--duration S] [--stats FILE] ...`."""
    if args.rate <= 0:
        print("turnout traffic: error: --rate must be above 0 (requests per second)",
              file=sys.stderr)  # fmt: skip
        return 2
    return asyncio.run(_main(args))
