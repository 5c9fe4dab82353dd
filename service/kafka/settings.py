"""Kafka settings: one frozen value object for every Kafka client Turnout opens.

The config loader builds `KafkaSettings` from the `[kafka]` section (key names
match the field names); `from_env` layers `TURNOUT_KAFKA_<FIELD>` variables on
top of a base. This module imports no Kafka client, so configuration code can
use it cheaply.

docs/reference/broker.md rules followed here:
- 6 and 7: producers are always acks=all; idempotent only on Apache Kafka
  (`idempotence`, see `producer.py`).
- 9: `max_record_bytes` is the record-size limit Turnout enforces itself;
  it may be lowered, never raised above 1 MB.
- 11 and 12: group session 30 s (heartbeat 1 s; at most 6 s on Tansu, which joins
  in session/2: see `consumer.py`) and a short fetch wait, because Tansu never
  answers a waiting fetch early.
- 14: topic names are validated here (`[A-Za-z0-9._-]`, at most 249
  characters), because Tansu accepts anything.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turnout.service.core.config import IDEMPOTENCE, KafkaConfig, TopicsConfig
from turnout.service.errors import TurnoutError

__all__ = [
    "COMPRESSION_TYPES",
    "IDEMPOTENCE",
    "MAX_RECORD_BYTES",
    "KafkaSettings",
    "KafkaSettingsError",
    "Topics",
    "validate_topic_name",
]

MAX_RECORD_BYTES = 1_000_000
"""Key + value + headers of one record. Kafka's default `message.max.bytes` is
1 MiB for a whole batch with its overhead; Tansu has no limit at all."""

COMPRESSION_TYPES = ("none", "gzip", "snappy", "lz4", "zstd")

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_ENV_PREFIX = "TURNOUT_KAFKA_"


def validate_topic_name(name: str) -> str:
    """Return `name` if Kafka would accept it as a topic name, else raise."""
    if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        raise TurnoutError(
            f"invalid Kafka topic name {name!r}: use 1-249 characters from "
            "letters, digits, '.', '_' and '-'"
        )
    return name


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names of one Turnout installation."""

    requests: str
    events: str
    responses: str
    dlq: str
    snapshots: str  # compacted: the newest state of each events partition (core.snapshot)

    @classmethod
    def for_prefix(cls, prefix: str) -> Topics:
        names = {role: validate_topic_name(f"{prefix}.{role}") for role in _ROLES}
        return cls(**names)

    def as_dict(self) -> dict[str, str]:
        """Role (`requests`, `events`, `responses`, `dlq`, `snapshots`) to topic name."""
        return {role: getattr(self, role) for role in _ROLES}


_ROLES = tuple(f.name for f in dataclasses.fields(Topics))


class KafkaSettingsError(TurnoutError):
    """Kafka settings that cannot work; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid [kafka] settings: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaSettings:
    """Where Kafka is and how Turnout's clients talk to it."""

    bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "turnout"
    group_id: str = "turnout-router"
    client_id: str = "turnout"
    replication_factor: int = 1
    connect_timeout_ms: int = 10_000
    request_timeout_ms: int = 30_000
    # longer than a broker restart: members expired during one hand their partitions over
    # with their writes still on the way (the fault suite's broker_kill round)
    session_timeout_ms: int = 30_000
    heartbeat_interval_ms: int = 1_000
    # how long a rebalance waits for members to hand their partitions over: longer than
    # the router's revoke drain, or a member still draining is dropped from the group and
    # its partitions handed out while it works on them
    rebalance_timeout_ms: int = 30_000
    fetch_max_wait_ms: int = 10
    # Apache Kafka only: a consumer that got no record for a second waits this long per
    # fetch (answered as soon as a record arrives), then `fetch_max_wait_ms` again once
    # records come: an idle router polled 100 times a second (~7 % of a core) before
    idle_fetch_max_wait_ms: int = 500
    max_poll_records: int = 500
    max_partition_fetch_bytes: int = 1_048_576  # per partition and fetch (aiokafka's default)
    fetch_max_bytes: int = 52_428_800  # per fetch; the sink asks for more of both (SinkOptions)
    commit_timeout_ms: int = 10_000
    linger_ms: int = 5
    events_linger_ms: int = 20  # the router's event producers (see turnout.example.toml)
    max_batch_bytes: int = 524_288  # a full batch makes every send wait (bench_router: -15% CPU)
    compression: str = "none"
    max_record_bytes: int = MAX_RECORD_BYTES
    idempotence: str = "auto"  # auto: on for Apache Kafka, off for Tansu (producer.py)
    # [topics]: retention per topic, in ms (-1: for ever); used when topics are created
    requests_retention_ms: int = TopicsConfig().requests_retention_ms
    events_retention_ms: int = TopicsConfig().events_retention_ms
    responses_retention_ms: int = TopicsConfig().responses_retention_ms
    dlq_retention_ms: int = TopicsConfig().dlq_retention_ms

    def __post_init__(self) -> None:
        if problems := self.problems():
            raise KafkaSettingsError(problems)

    def problems(self) -> list[str]:
        """Every reason these settings cannot work (empty when they can)."""
        problems = [] if self.bootstrap.strip() else ["bootstrap is empty"]
        try:
            self.topics  # noqa: B018 (validates every topic name)
        except TurnoutError as err:
            problems.append(f"topic_prefix: {err}")
        problems += [f"{name} must be positive" for name in _POSITIVE if getattr(self, name) <= 0]
        problems += [f"{name} may not be negative" for name in _LINGERS if getattr(self, name) < 0]
        problems += [
            f"{name} must be positive, or -1 for ever"
            for name in _RETENTIONS
            if getattr(self, name) == 0 or getattr(self, name) < -1
        ]
        if self.compression not in COMPRESSION_TYPES:
            problems.append(f"compression must be one of {', '.join(COMPRESSION_TYPES)}")
        if self.idempotence not in IDEMPOTENCE:
            problems.append(f"idempotence must be one of {', '.join(IDEMPOTENCE)}")
        if self.max_record_bytes > MAX_RECORD_BYTES:
            problems.append(f"max_record_bytes may not exceed {MAX_RECORD_BYTES} (Kafka: ~1 MB)")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            problems.append("heartbeat_interval_ms must be below session_timeout_ms")
        if self.rebalance_timeout_ms < self.session_timeout_ms:
            problems.append("rebalance_timeout_ms may not be below session_timeout_ms")
        return problems

    @property
    def topics(self) -> Topics:
        return Topics.for_prefix(self.topic_prefix)

    def replace(self, **changes: Any) -> KafkaSettings:
        return dataclasses.replace(self, **changes)

    def retention_ms(self, role: str) -> int:
        """The retention of the topic of `role` (`requests`, `events`, ...); -1: for ever
        (snapshots: compacted, the newest per key is kept for ever)."""
        return -1 if role == "snapshots" else int(getattr(self, f"{role}_retention_ms"))

    @classmethod
    def from_config(
        cls,
        kafka: KafkaConfig,
        *,
        topics: TopicsConfig | None = None,
        client_id: str = "turnout",
    ) -> KafkaSettings:
        """The settings of `[kafka]` (and `[topics]`), then `TURNOUT_KAFKA_*` overrides."""
        retention = topics or TopicsConfig()
        base = cls(
            bootstrap=kafka.bootstrap,
            topic_prefix=kafka.topic_prefix,
            group_id=kafka.group_id,
            client_id=client_id,
            session_timeout_ms=kafka.session_timeout_ms,
            rebalance_timeout_ms=kafka.rebalance_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
            fetch_max_wait_ms=kafka.fetch_max_wait_ms,
            idle_fetch_max_wait_ms=kafka.idle_fetch_max_wait_ms,
            linger_ms=kafka.linger_ms,
            events_linger_ms=kafka.events_linger_ms,
            replication_factor=kafka.replication_factor,
            idempotence=kafka.idempotence,
            requests_retention_ms=retention.requests_retention_ms,
            events_retention_ms=retention.events_retention_ms,
            responses_retention_ms=retention.responses_retention_ms,
            dlq_retention_ms=retention.dlq_retention_ms,
        )
        return cls.from_env(base)

    @classmethod
    def from_env(
        cls, base: KafkaSettings | None = None, environ: Mapping[str, str] | None = None
    ) -> KafkaSettings:
        """`base` (default: built-in defaults) with `TURNOUT_KAFKA_<FIELD>` overrides."""
        env = os.environ if environ is None else environ
        changes: dict[str, Any] = {}
        problems: list[str] = []
        for field in dataclasses.fields(cls):
            name = _ENV_PREFIX + field.name.upper()
            if name not in env:
                continue
            raw = env[name].strip()
            if field.type != "int":
                changes[field.name] = raw
            elif raw.lstrip("-").isdigit():
                changes[field.name] = int(raw)
            else:
                problems.append(f"{name}={raw!r} is not a whole number")
        if problems:
            raise KafkaSettingsError(problems)
        return dataclasses.replace(base or cls(), **changes)


_LINGERS = ("linger_ms", "events_linger_ms")  # 0 is allowed: send at once
_RETENTIONS = tuple(
    f.name for f in dataclasses.fields(KafkaSettings) if f.name.endswith("_retention_ms")
)
_POSITIVE = tuple(
    f.name
    for f in dataclasses.fields(KafkaSettings)
    if f.type == "int" and f.name not in _LINGERS + _RETENTIONS
)
