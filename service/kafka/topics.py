"""Topic bootstrap: create Turnout's topics explicitly, with fixed partition counts and configs.

`ensure_topics` is idempotent: it reads which topics exist, creates only the
missing ones (with their configs: retention per topic from `[topics]`,
`cleanup.policy=delete`, but `compact` for the snapshots topic,
`min.insync.replicas` where the replication factor allows), waits until each
new partition has a leader, and checks the topics that were there already:
- a config of ours that differs (say, another `retention.ms`) is drift that
  can be fixed: on Apache Kafka it is set back, and reported as fixed;
- another partition count is drift that cannot be fixed (tenants are
  co-partitioned: a new count would move them), so it is an error that
  `turnout topics ensure` reports with exit code 1.
On Tansu, configs are stored but have no effect and cannot be altered
(docs/reference/broker.md), so only partition counts are checked there.

`broker_engine` tells Apache Kafka from Tansu (once per address).

docs/reference/broker.md rules followed here:
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
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import errors as ak
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code

from turnout.service.errors import TurnoutError
from turnout.service.kafka.errors import kafka_errors, quiet_client_logs, start_client, translate
from turnout.service.kafka.settings import KafkaSettings, validate_topic_name

__all__ = [
    "TOPIC_SPECS",
    "EnsureReport",
    "TopicOutcome",
    "TopicSpec",
    "admin_client",
    "broker_engine",
    "cli_ensure",
    "delete_topics",
    "ensure_topic",
    "ensure_topics",
    "existing_topics",
    "forget_engine",
    "print_report",
    "topic_specs",
]

TOPIC_SPECS: Mapping[str, int] = {
    "requests": 12, "events": 12, "responses": 12, "dlq": 3, "snapshots": 1,
}  # fmt: skip
"""Partition count per topic role. Requests and events must stay equal (co-partitioned)."""

_TOPIC_ALREADY_EXISTS = 36
_DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs config_source: set on the topic itself
_TANSU_CLUSTER_ID = "tansu_cluster"
_ENGINES: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    configs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TopicOutcome:
    """What `ensure` found or did for one topic."""

    name: str
    partitions: int
    created: bool
    actual_partitions: int
    fixed: tuple[str, ...] = ()
    """Configs that had drifted and were set back, as `key: was -> now`."""

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
    engine: str = "kafka"

    @property
    def created(self) -> tuple[TopicOutcome, ...]:
        return tuple(t for t in self.topics if t.created)

    @property
    def nothing_to_do(self) -> bool:
        return not self.created and not any(t.fixed for t in self.topics)

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(t.warning for t in self.topics if t.warning)

    @property
    def ok(self) -> bool:
        """False when a topic drifted in a way that cannot be fixed in place."""
        return not self.warnings


# A rebuild reads the whole snapshots topic, superseded snapshots included until the log
# cleaner removes them, and the cleaner never touches a partition's active segment (1 GiB
# or 7 days by a broker's defaults): small segments that roll within minutes, a low dirty
# ratio and a bound on how long a superseded record may wait keep a rebuild's read to
# about the live snapshots, whatever the broker's defaults.
SNAPSHOT_COMPACTION: Final = {
    "segment.bytes": str(64 * 2**20),
    "segment.ms": str(10 * 60_000),
    "min.cleanable.dirty.ratio": "0.1",
    "max.compaction.lag.ms": str(15 * 60_000),
    "delete.retention.ms": str(60 * 60_000),  # tombstones: readers see deletions for 1 h
}


def topic_specs(settings: KafkaSettings) -> tuple[TopicSpec, ...]:
    names = settings.topics.as_dict()
    return tuple(
        TopicSpec(names[role], count, _configs(settings, role))
        for role, count in TOPIC_SPECS.items()
    )


def _configs(settings: KafkaSettings, role: str) -> dict[str, str]:
    if role == "snapshots":  # one value per key, kept: a new snapshot replaces the last
        configs = {"cleanup.policy": "compact", "retention.ms": "-1"} | SNAPSHOT_COMPACTION
    else:
        configs = {"cleanup.policy": "delete", "retention.ms": str(settings.retention_ms(role))}
    if settings.replication_factor >= 3:  # acks=all then survives one broker down
        configs["min.insync.replicas"] = "2"
    return configs


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


def forget_engine(bootstrap: str) -> None:
    """Drop the cached engine of `bootstrap` (a broker of another engine may listen there
    now: a local broker started on a port an earlier one used)."""
    _ENGINES.pop(bootstrap, None)


async def broker_engine(settings: KafkaSettings) -> str:
    """`tansu` when the broker at `settings.bootstrap` is Tansu, else `kafka` (cached)."""
    if engine := _ENGINES.get(settings.bootstrap):
        return engine
    async with admin_client(settings) as admin:
        engine = await _engine(admin)
    _ENGINES[settings.bootstrap] = engine
    return engine


async def _engine(admin: AIOKafkaAdminClient) -> str:
    cluster = await admin.describe_cluster()
    return "tansu" if cluster.get("cluster_id") == _TANSU_CLUSTER_ID else "kafka"


async def delete_topics(settings: KafkaSettings, names: Iterable[str]) -> None:
    """Delete topics (and every record in them); a topic already gone is no error."""
    async with admin_client(settings) as admin:
        with kafka_errors(settings.bootstrap), suppress(ak.UnknownTopicOrPartitionError):
            await admin.delete_topics(list(names))


async def existing_topics(settings: KafkaSettings) -> dict[str, int]:
    """Every topic on the cluster with its partition count; creates nothing."""
    async with admin_client(settings) as admin:
        return await _partition_counts(admin)


async def ensure_topics(settings: KafkaSettings) -> EnsureReport:
    """Create whichever of Turnout's topics are missing; check (and fix) the others."""
    async with admin_client(settings) as admin:
        engine = await _engine(admin)
        _ENGINES[settings.bootstrap] = engine
        outcomes = await _ensure(admin, topic_specs(settings), settings, engine=engine)
    return EnsureReport(settings.bootstrap, outcomes, engine)


async def ensure_topic(settings: KafkaSettings, name: str, partitions: int) -> TopicOutcome:
    """Create one topic (for example a client's reply topic) unless it exists."""
    spec = TopicSpec(validate_topic_name(name), partitions)
    async with admin_client(settings) as admin:
        (outcome,) = await _ensure(admin, [spec], settings, engine="kafka")
    return outcome


async def _ensure(
    admin: AIOKafkaAdminClient, specs: Iterable[TopicSpec], settings: KafkaSettings, *, engine: str
) -> tuple[TopicOutcome, ...]:
    specs = tuple(specs)
    counts = await _partition_counts(admin)
    missing = [spec for spec in specs if spec.name not in counts]
    created = await _create(admin, missing, settings) if missing else set()
    if created:
        await _wait_for_leaders(admin, created, settings)
    if len(created) < len(missing):  # someone else created one meanwhile: it exists now
        counts = await _partition_counts(admin)
    kept = [s for s in specs if s.name not in created and s.configs]
    fixed = await _fix_configs(admin, kept) if kept and engine == "kafka" else {}
    return tuple(
        TopicOutcome(
            name=spec.name,
            partitions=spec.partitions,
            created=spec.name in created,
            actual_partitions=spec.partitions if spec.name in created else counts[spec.name],
            fixed=fixed.get(spec.name, ()),
        )
        for spec in specs
    )


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    # describe_topics() without names reads the metadata of all topics, exactly
    # like list_topics(), and so probes (auto-creates) nothing (rule 3).
    return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, names: set[str], settings: KafkaSettings
) -> None:
    """Until every partition of `names` has a leader: Kafka elects them just after create."""
    async with asyncio.timeout(settings.request_timeout_ms / 1000):
        while True:
            topics = [t for t in await admin.describe_topics() if t["topic"] in names]
            ready = [t for t in topics if all(p["leader"] >= 0 for p in t["partitions"])]
            if len(ready) == len(names):
                return
            await asyncio.sleep(0.05)


async def _create(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], settings: KafkaSettings
) -> set[str]:
    """Create `specs`; return the names this call created (error 36 is not one)."""
    new = [
        NewTopic(s.name, s.partitions, settings.replication_factor, topic_configs=dict(s.configs))
        for s in specs
    ]
    response = await admin.create_topics(new, timeout_ms=settings.request_timeout_ms)
    created: set[str] = set()
    for name, code, *rest in response.topic_errors:
        if code == 0:
            created.add(name)
        elif code != _TOPIC_ALREADY_EXISTS:
            message = (rest[0] if rest else None) or f"cannot create topic {name}"
            raise translate(for_code(code)(message), bootstrap=settings.bootstrap)
    return created


async def _fix_configs(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec]
) -> dict[str, tuple[str, ...]]:
    """Set back every config of ours that drifted; return what was fixed, per topic.

    AlterConfigs replaces a topic's whole set of its own configs, so the
    configs set on the topic by others are sent along unchanged.
    """
    resources = [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
    (described,) = await admin.describe_configs(resources)
    current: dict[str, dict[str, tuple[str, int]]] = {
        name: {entry[0]: (entry[1], entry[3]) for entry in entries}
        for _code, _msg, _type, name, entries in described.resources
    }
    fixed: dict[str, tuple[str, ...]] = {}
    changes: list[ConfigResource] = []
    for spec in specs:
        have = current.get(spec.name, {})
        drift = {k: v for k, v in spec.configs.items() if have.get(k, ("", 0))[0] != v}
        if not drift:
            continue
        own = {k: v for k, (v, source) in have.items() if source == _DYNAMIC_TOPIC_CONFIG}
        changes.append(
            ConfigResource(ConfigResourceType.TOPIC, spec.name, own | dict(spec.configs))
        )
        fixed[spec.name] = tuple(
            f"{k}: {have.get(k, ('unset', 0))[0]} -> {v}" for k, v in drift.items()
        )
    if changes:
        for response in await admin.alter_configs(changes):
            for code, message, _type, name in response.resources:
                if code != 0:
                    raise TurnoutError(f"cannot set the configs of topic {name}: {message}")
    return fixed


def cli_ensure(args: argparse.Namespace) -> int:
    """`turnout topics ensure`: create the topics, check the others; exit 1 on unfixable drift."""
    from turnout.service.runtime.config import load_config

    quiet_client_logs()
    cfg = load_config(getattr(args, "config", None))
    settings = KafkaSettings.from_config(cfg.kafka, topics=cfg.topics, client_id="turnout-topics")
    report = asyncio.run(ensure_topics(settings))
    print_report(report)
    return 0 if report.ok else 1


def print_report(report: EnsureReport, out: Any = None) -> None:
    out = out or sys.stdout
    width = max(len(t.name) for t in report.topics)
    for t in report.topics:
        status = "created" if t.created else "fixed  " if t.fixed else "exists "
        noun = "partition" if t.actual_partitions == 1 else "partitions"
        print(f"{status}  {t.name:<{width}}  {t.actual_partitions:>3} {noun}", file=out)
        for change in t.fixed:
            print(f"         config drift set back: {change}", file=out)
    for warning in report.warnings:
        print(f"error: {warning}", file=sys.stderr)
    if report.engine == "tansu":
        print("note: Tansu ignores topic configs (retention), so they were not checked", file=out)
    if report.nothing_to_do:
        print(
            f"Nothing to do: all {len(report.topics)} topics exist on {report.bootstrap}.", file=out
        )
    else:
        fixed = sum(1 for t in report.topics if t.fixed)
        print(
            f"Created {len(report.created)} topic(s), fixed the configs of {fixed}, "
            f"on {report.bootstrap}.",
            file=out,
        )
