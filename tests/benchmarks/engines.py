"""The brokers a benchmark runs on: Apache Kafka and Tansu, one after the other, in one run.

    for engine in brokers(args.engines):   # "kafka,tansu" by default
        with engine as (name, bootstrap, pid):
            ...

`TURNOUT_KAFKA_BOOTSTRAP`, when set, replaces them with that one broker
(`external`, pid unknown). Each local broker is fresh (a temporary data dir
for Apache Kafka) and stopped when its block ends.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager

from service.kafka.broker import local_broker

__all__ = ["DEFAULT_ENGINES", "Engine", "brokers"]

DEFAULT_ENGINES = "kafka,tansu"
Engine = tuple[str, str, int | None]


@contextlib.contextmanager
def _local(engine: str) -> Iterator[Engine]:
    with (
        tempfile.TemporaryDirectory(prefix=f"bench-{engine}-") as data,
        local_broker(engine, data_dir=f"{data}/kafka") as broker,
    ):
        yield engine, broker.bootstrap, broker.pid


@contextlib.contextmanager
def _external(bootstrap: str) -> Iterator[Engine]:
    yield "external", bootstrap, None


def brokers(engines: str = DEFAULT_ENGINES) -> list[AbstractContextManager[Engine]]:
    """One context manager per engine named in `engines` (comma-separated)."""
    if bootstrap := os.environ.get("TURNOUT_KAFKA_BOOTSTRAP"):
        return [_external(bootstrap)]
    return [_local(name.strip()) for name in engines.split(",") if name.strip()]
