"""`turnout broker`: which local broker to run, and running it in the foreground.

Two engines (docs/reference/contract.md, "Embedded defaults"):
- `kafka`: Apache Kafka itself (`apache.py`), the default wherever a Java >= 17
  runtime is found; its data is kept on disk (`--data`, default `data/kafka`);
- `tansu`: the memory-only Tansu broker (`tansu.py`), where no Java is found or
  when asked (`--engine tansu`).

`choose_engine` decides and says why; with no engine asked for (`auto`), a
Java that is there but whose Kafka jars cannot be had falls back to Tansu,
loudly. `local_broker` builds the chosen one. `cli_main` starts it, creates
Turnout's topics (docs/reference/broker.md rule 2: after every start, before any client
produces), prints the bootstrap address, and on Ctrl-C/SIGTERM stops it
cleanly (a controlled shutdown for Kafka) so nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from turnout.service.errors import TurnoutError
from turnout.service.kafka.apache import ApacheKafkaBroker
from turnout.service.kafka.errors import quiet_client_logs
from turnout.service.kafka.jars import ensure_jars, find_java, jars_ready, require_java
from turnout.service.kafka.local import LocalBroker, free_port, port_is_open
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.kafka.tansu import LIMITS, TansuBroker
from turnout.service.kafka.topics import EnsureReport, ensure_topics
from turnout.service.procs import stop_requested

__all__ = [
    "ENGINES",
    "EngineChoice",
    "choose_engine",
    "cli_main",
    "free_port",
    "local_broker",
    "port_is_open",
]

ENGINES = ("auto", "kafka", "tansu")


@dataclass(frozen=True, slots=True)
class EngineChoice:
    """The engine to run and, when it is not the one asked for, why."""

    engine: str
    reason: str = ""


def choose_engine(requested: str | None = None) -> EngineChoice:
    """`kafka` where Java >= 17 (and its jars) can be had, else `tansu`; `requested` wins.

    `requested` defaults to `TURNOUT_BROKER_ENGINE`, then `auto`. An explicit
    `kafka` that cannot run is an error, never a silent Tansu.
    """
    wanted = (requested or os.environ.get("TURNOUT_BROKER_ENGINE") or "auto").lower()
    if wanted not in ENGINES:
        raise TurnoutError(f"unknown broker engine {wanted!r}: use one of {', '.join(ENGINES)}")
    if wanted == "tansu":
        return EngineChoice("tansu")
    if wanted == "kafka":
        require_java()
        return EngineChoice("kafka")
    java = find_java()
    if java is None or java.major < 17:
        found = "no Java found" if java is None else f"Java {java.version} is below 17"
        return EngineChoice("tansu", f"{found}: Apache Kafka needs Java >= 17")
    if not jars_ready():
        try:
            ensure_jars()
        except TurnoutError as err:
            return EngineChoice("tansu", f"Apache Kafka's jars are not available: {err}")
    return EngineChoice("kafka")


def local_broker(
    engine: str,
    *,
    port: int = 0,
    data_dir: Path | str = Path("data/kafka"),
    fresh: bool = False,
    properties: Mapping[str, str] | None = None,
) -> LocalBroker:
    """An unstarted broker of `engine` (`kafka` or `tansu`); `properties` go on top of
    Apache Kafka's settings (Tansu takes none)."""
    if engine == "kafka":
        return ApacheKafkaBroker(port, data_dir=data_dir, fresh=fresh, properties=properties)
    if engine == "tansu":
        return TansuBroker(port)
    raise TurnoutError(f"unknown broker engine {engine!r}")


def cli_main(args: argparse.Namespace) -> int:
    """`turnout broker`: run a local broker in the foreground until Ctrl-C/SIGTERM."""
    quiet_client_logs()
    choice = choose_engine(args.engine)
    if choice.reason:
        print(f"warning: running Tansu, not Apache Kafka: {choice.reason}", file=sys.stderr)
    if args.prepare:
        return _prepare_only(choice)
    broker = local_broker(choice.engine, port=args.port, data_dir=args.data, fresh=args.fresh)
    if args.fresh and choice.engine == "tansu":
        print("note: --fresh changes nothing for Tansu: it keeps nothing anyway", file=sys.stderr)
    settings = KafkaSettings.from_env()
    if choice.engine == "kafka":
        print(f"Starting {broker.describe()} ...", flush=True)
    with stop_requested() as stop, broker:
        if not args.no_topics:
            report = asyncio.run(ensure_topics(settings.replace(bootstrap=broker.bootstrap)))
            print(_topics_line(report))
        print(f"Kafka broker ready at {broker.bootstrap} ({broker.describe()})")
        print(f"  export TURNOUT_KAFKA_BOOTSTRAP={broker.bootstrap}", flush=True)
        while not stop.wait(0.5):
            if not broker.running:
                raise broker.failure("stopped unexpectedly")
        print("Stopping the broker...", flush=True)
    return 0


def _prepare_only(choice: EngineChoice) -> int:
    """`turnout broker --prepare`: fetch what the engine needs (the jars), start nothing."""
    if choice.engine == "kafka":
        lib = ensure_jars()
        print(f"Apache Kafka is ready to run: jars in {lib}")
    else:
        print(f"Tansu needs nothing more ({LIMITS})")
    return 0


def _topics_line(report: EnsureReport) -> str:
    names = ", ".join(f"{t.name} ({t.actual_partitions})" for t in report.topics)
    return f"Topics: {names}" + (" (already there)" if report.nothing_to_do else "")
