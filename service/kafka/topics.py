"""Topic bootstrap: create Turnout's topics explicitly, with fixed partition counts.

`ensure_topics` is idempotent: it reads which topics exist, creates only the
missing ones and reports, per topic, whether it was created or already there
(with a warning when an existing topic has another partition count).
`turnout topics ensure` is its command line.

BROKER.md rules followed here:
- 1: every topic is created explicitly with `create_topics` and a fixed
  partition count; TopicAlreadyExists (error 36) counts as success.
- 2: callers re-run this after any broker (re)start, before producing.
- 3: existence is read from the metadata of *all* topics (what `list_topics`
  reads), never by describing a named topic, which auto-creates it on Tansu.
- 13: no create_partitions: a wrong partition count is reported, not fixed.
- 14: names are validated (`settings.py`); replication factor 1 by default.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from service.kafka.errors import kafka_errors, quiet_client_logs, start_client, translate
from service.kafka.settings import KafkaSettings, validate_topic_name

__all__ = [
    "TOPIC_SPECS",
    "EnsureReport",
    "TopicOutcome",
    "TopicSpec",
    "admin_client",
    "cli_ensure",
    "ensure_topic",
    "ensure_topics",
    "existing_topics",
    "print_report",
    "topic_specs",
]

TOPIC_SPECS: Mapping[str, int] = {"requests": 12, "events": 12, "responses": 12, "dlq": 3}
"""Partition count per topic role. Requests and events must stay equal (co-partitioned)."""

_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int


@dataclass(frozen=True, slots=True)
class TopicOutcome:
    """What `ensure` found or did for one topic."""

    name: str
    partitions: int
    created: bool
    actual_partitions: int

    @property
    def warning(self) -> str | None:
        if self.actual_partitions == self.partitions:
            return None
        return (
            f"topic {self.name} has {self.actual_partitions} partitions, Turnout expects "
            f"{self.partitions}: delete it and run `turnout topics ensure` again "
            "(a topic's partition count cannot be changed in place)"
        )


@dataclass(frozen=True, slots=True)
class EnsureReport:
    bootstrap: str
    topics: tuple[TopicOutcome, ...]

    @property
    def created(self) -> tuple[TopicOutcome, ...]:
        return tuple(t for t in self.topics if t.created)

    @property
    def nothing_to_do(self) -> bool:
        return not self.created

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(t.warning for t in self.topics if t.warning)


def topic_specs(settings: KafkaSettings) -> tuple[TopicSpec, ...]:
    names = settings.topics.as_dict()
    return tuple(TopicSpec(names[role], count) for role, count in TOPIC_SPECS.items())


@asynccontextmanager
async def admin_client(settings: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client; Kafka failures inside come out as Turnout errors."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap,
        client_id=f"{settings.client_id}-admin",
        request_timeout_ms=settings.request_timeout_ms,
    )
    await start_client(
        admin.start,
        admin.close,
        bootstrap=settings.bootstrap,
        timeout_ms=settings.connect_timeout_ms,
    )
    try:
        with kafka_errors(settings.bootstrap):
            yield admin
    finally:
        await admin.close()


async def existing_topics(settings: KafkaSettings) -> dict[str, int]:
    """Every topic on the cluster with its partition count; creates nothing."""
    async with admin_client(settings) as admin:
        return await _partition_counts(admin)


async def ensure_topics(settings: KafkaSettings) -> EnsureReport:
    """Create whichever of Turnout's four topics are missing."""
    async with admin_client(settings) as admin:
        outcomes = await _ensure(admin, topic_specs(settings), settings)
    return EnsureReport(settings.bootstrap, outcomes)


async def ensure_topic(settings: KafkaSettings, name: str, partitions: int) -> TopicOutcome:
    """Create one topic (for example a client's reply topic) unless it exists."""
    spec = TopicSpec(validate_topic_name(name), partitions)
    async with admin_client(settings) as admin:
        (outcome,) = await _ensure(admin, [spec], settings)
    return outcome


async def _ensure(
    admin: AIOKafkaAdminClient, specs: Iterable[TopicSpec], settings: KafkaSettings
) -> tuple[TopicOutcome, ...]:
    specs = tuple(specs)
    counts = await _partition_counts(admin)
    missing = [spec for spec in specs if spec.name not in counts]
    created = await _create(admin, missing, settings) if missing else set()
    if len(created) < len(missing):  # someone else created one meanwhile: it exists now
        counts = await _partition_counts(admin)
    return tuple(
        TopicOutcome(
            name=spec.name,
            partitions=spec.partitions,
            created=spec.name in created,
            actual_partitions=spec.partitions if spec.name in created else counts[spec.name],
        )
        for spec in specs
    )


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    # describe_topics() without names reads the metadata of all topics, exactly
    # like list_topics(), and so probes (auto-creates) nothing (rule 3).
    return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}


async def _create(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], settings: KafkaSettings
) -> set[str]:
    """Create `specs`; return the names this call created (error 36 is not one)."""
    new = [NewTopic(s.name, s.partitions, settings.replication_factor) for s in specs]
    response = await admin.create_topics(new, timeout_ms=settings.request_timeout_ms)
    created: set[str] = set()
    for name, code, *rest in response.topic_errors:
        if code == 0:
            created.add(name)
        elif code != _TOPIC_ALREADY_EXISTS:
            message = (rest[0] if rest else None) or f"cannot create topic {name}"
            raise translate(for_code(code)(message), bootstrap=settings.bootstrap)
    return created


def cli_ensure(args: argparse.Namespace) -> int:
    """`turnout topics ensure`: create the topics, say per topic what was done."""
    quiet_client_logs()
    settings = KafkaSettings.from_env()
    report = asyncio.run(ensure_topics(settings))
    print_report(report)
    return 0


def print_report(report: EnsureReport, out: Any = None) -> None:
    out = out or sys.stdout
    width = max(len(t.name) for t in report.topics)
    for t in report.topics:
        status = "created" if t.created else "exists "
        print(f"{status}  {t.name:<{width}}  {t.actual_partitions:>3} partitions", file=out)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.nothing_to_do:
        print(
            f"Nothing to do: all {len(report.topics)} topics exist on {report.bootstrap}.", file=out
        )
    else:
        print(f"Created {len(report.created)} topic(s) on {report.bootstrap}.", file=out)
