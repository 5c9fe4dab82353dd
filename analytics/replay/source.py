"""Where replays read the log: the DuckDB archive (default) or the events topic itself.

Both sources give `Recorded` events, decoded by the same codec the router uses
(`turnout.service.wire.cloudevents`, so upcasters apply alike), each with its Kafka
partition and offset. A `Query` says which events a command needs; the
archive answers it in SQL (and streams the rows: `ArchiveStream`), the topic
by reading every partition once.

Rules:
- `log_order` is the one order replays fold and print in: each partition in
  offset order (Kafka's only order), partitions merged by time. A partition's
  clock is taken never to run back (an event sorts at the latest time seen
  on its partition so far), so merging never reorders a partition. The
  archive computes the same order in SQL.
- Reading the topic follows docs/reference/broker.md (rule 4): no end offsets. A marker event is
  produced to every partition first, and each partition is read until its
  marker comes back (as the router does on assignment). Markers are
  `turnout.router.marker` events, which no fold changes state for.
- A record the codec refuses is skipped and counted, never fatal (the router
  skips it too; the sink keeps it in `sink_errors`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import duckdb
import msgspec

from turnout.service.core import events as ev
from turnout.service.kafka.consumer import Reader, topic_partitions
from turnout.service.kafka.producer import OutRecord, Producer
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.wire import cloudevents as ce
from turnout.service.wire.errors import WireError

__all__ = [
    "BREAKER_TYPES",
    "ArchiveStream",
    "Loaded",
    "Query",
    "Recorded",
    "from_archive",
    "from_kafka",
    "log_order",
]

BREAKER_TYPES: Final = (ev.BreakerOpened.TYPE, ev.BreakerHalfOpened.TYPE, ev.BreakerClosed.TYPE)


class Recorded(msgspec.Struct, frozen=True, kw_only=True):
    """One event as the log holds it: where it sits, its CloudEvents attributes, its data.

    `id` and `source` are empty when the reader did not need them (folds).
    """

    partition: int
    offset: int
    time_ms: int
    type: str
    tenant: str
    subject: str | None = None
    data: ev.Event | ev.RawEvent
    id: str = ""
    source: str = ""

    @classmethod
    def of(cls, env: ce.Envelope, *, partition: int, offset: int) -> Recorded:
        return cls(
            partition=partition, offset=offset, time_ms=env.time_ms, type=env.type,
            tenant=env.tenant, subject=env.subject, data=env.data, id=env.id, source=env.source,
        )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Query:
    """Which events a command needs; every condition given must hold.

    `request_id` matches the event's subject; `types` exact CloudEvents
    types; times are inclusive Unix ms bounds; `partitions` Kafka partitions.
    """

    request_id: str | None = None
    types: tuple[str, ...] | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    partitions: tuple[int, ...] | None = None
    tenant: str | None = None

    def wants(self, *, type_: str, subject: str | None, partition: int) -> bool:
        """What can be judged before decoding the value."""
        if self.request_id is not None and subject != self.request_id:
            return False
        if self.types is not None and type_ not in self.types:
            return False
        return self.partitions is None or partition in self.partitions

    def matches(self, rec: Recorded) -> bool:
        if not self.wants(type_=rec.type, subject=rec.subject, partition=rec.partition):
            return False
        if self.since_ms is not None and rec.time_ms < self.since_ms:
            return False
        if self.until_ms is not None and rec.time_ms > self.until_ms:
            return False
        return self.tenant is None or rec.tenant == self.tenant


@dataclass(slots=True)
class Loaded:
    """Events one query found (in log order), and how many records could not be read."""

    events: list[Recorded] = field(default_factory=list)
    unreadable: int = 0


def log_order(records: Iterable[Recorded]) -> list[Recorded]:
    """Partitions in offset order, merged by time (see the module docstring)."""
    ordered = sorted(records, key=lambda r: (r.partition, r.offset))
    keyed: list[tuple[int, int, int, Recorded]] = []
    partition, latest = -1, 0
    for rec in ordered:
        if rec.partition != partition:
            partition, latest = rec.partition, rec.time_ms
        latest = max(latest, rec.time_ms)
        keyed.append((latest, rec.partition, rec.offset, rec))
    keyed.sort(key=lambda k: k[:3])
    return [k[3] for k in keyed]


# --- the archive ------------------------------------------------------------

# In log order, computed by DuckDB: `log_order` in SQL (the running latest time per partition).
_SELECT = """
    SELECT type, epoch_ms(time) AS time_ms, tenant, request_id, data, kafka_partition,
           kafka_offset, {extra}
           max(epoch_ms(time)) OVER (PARTITION BY kafka_partition ORDER BY kafka_offset
                                     ROWS UNBOUNDED PRECEDING) AS sort_ms
    FROM events {where}
    ORDER BY sort_ms, kafka_partition, kafka_offset
"""


def _where(query: Query) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if query.request_id is not None:
        clauses.append("request_id = ?")
        params.append(query.request_id)
    if query.types is not None:
        clauses.append(f"type IN ({', '.join('?' * len(query.types))})")
        params.extend(query.types)
    if query.since_ms is not None:
        clauses.append("time >= epoch_ms(?::BIGINT)")
        params.append(query.since_ms)
    if query.until_ms is not None:
        clauses.append("time <= epoch_ms(?::BIGINT)")
        params.append(query.until_ms)
    if query.partitions is not None:
        clauses.append(f"kafka_partition IN ({', '.join('?' * len(query.partitions)) or 'NULL'})")
        params.extend(query.partitions)
    if query.tenant is not None:
        clauses.append("tenant = ?")
        params.append(query.tenant)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def _decode_data(type_: str, data: str | None) -> ev.Event | ev.RawEvent | None:
    """An archived event's data, decoded exactly as the codec decodes a record's value
    (its typed decoders and upcasters); None when the codec refuses it."""
    try:
        return ce.decode_data(type_, None if data is None else data.encode())
    except WireError:
        return None


def _archived(row: tuple[Any, ...], data: ev.Event | ev.RawEvent, attributes: bool) -> Recorded:
    type_, time_ms, tenant, subject, _, partition, offset, *rest = row
    id_, source = rest[:2] if attributes else ("", "")
    return Recorded(
        partition=partition, offset=offset, time_ms=time_ms, type=type_, tenant=tenant,
        subject=subject, data=data, id=id_, source=source,
    )  # fmt: skip


class ArchiveStream:
    """The archived events of one query, in log order, decoded while iterated (once).

    Streaming keeps a fold of millions of events in constant memory;
    `unreadable` counts the rows the codec refused so far.
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, query: Query, *, attributes: bool = True
    ) -> None:
        where, params = _where(query)
        extra = "id, source," if attributes else ""
        self._cursor = con.execute(_SELECT.format(where=where, extra=extra), params)
        self._attributes = attributes
        self.unreadable = 0

    def __iter__(self) -> Iterator[Recorded]:
        attributes = self._attributes
        while rows := self._cursor.fetchmany(50_000):
            for row in rows:
                data = _decode_data(row[0], row[4])
                if data is None:
                    self.unreadable += 1
                else:
                    yield _archived(row, data, attributes)


def from_archive(
    con: duckdb.DuckDBPyConnection, query: Query, *, attributes: bool = True
) -> Loaded:
    """The archived events `query` asks for, in log order. `attributes=False` leaves
    `id` and `source` empty (folds do not need them)."""
    stream = ArchiveStream(con, query, attributes=attributes)
    events = list(stream)
    return Loaded(events, stream.unreadable)


# --- the events topic -------------------------------------------------------


def _wanted(queries: Sequence[Query], record: Any) -> list[int] | None:
    """The indexes of the queries that may want `record`, judged on its headers (None:
    its headers cannot be read, so no query can tell)."""
    try:
        headers = dict(record.headers)
        type_ = headers["ce_type"].decode()
        subject = headers["ce_subject"].decode() if "ce_subject" in headers else None
    except (KeyError, AttributeError, UnicodeDecodeError, TypeError, ValueError):
        return None
    return [
        i
        for i, q in enumerate(queries)
        if q.wants(type_=type_, subject=subject, partition=record.partition)
    ]


def _take(record: Any, queries: Sequence[Query], out: list[Loaded]) -> None:
    wanted = _wanted(queries, record)
    if wanted is None:  # counted once: the warning sums the queries' counts
        out[0].unreadable += 1
        return
    if not wanted:
        return
    try:
        env = ce.decode(record.key, record.value, record.headers)
    except WireError:
        for i in wanted:
            out[i].unreadable += 1
        return
    rec = Recorded.of(env, partition=record.partition, offset=record.offset)
    for i in wanted:
        if queries[i].matches(rec):
            out[i].events.append(rec)


async def from_kafka(
    settings: KafkaSettings,
    queries: Sequence[Query],
    *,
    instance: str,
    new_id: Callable[[], str],
    now_ms: Callable[[], int],
    progress: Callable[[int], None] | None = None,
    timeout_s: float = 300.0,
) -> list[Loaded]:
    """Read the events topic once, each partition up to a marker; answer each query.

    `instance` names this replay in the markers' source. Only the partitions
    some query needs are read (all, when any query names none). Raises
    TimeoutError when a marker does not come back within `timeout_s`.
    """
    partitions = await topic_partitions(settings, [settings.topics.events])
    needed = {tp.partition for tp in partitions}
    if all(q.partitions is not None for q in queries):
        needed &= {p for q in queries for p in q.partitions or ()}
    marker_id = new_id()
    markers = [_marker(settings, p, marker_id, instance, new_id(), now_ms()) for p in needed]
    async with Producer(settings) as producer:
        await producer.send_batch(markers)
    out = [Loaded() for _ in queries]
    waiting, seen = set(needed), 0
    async with (
        Reader(settings, [tp for tp in partitions if tp.partition in needed]) as reader,
        asyncio.timeout(timeout_s),
    ):
        while waiting:
            batch = await reader.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    if record.partition not in waiting:
                        continue
                    if _is_marker(record, marker_id):
                        waiting.discard(record.partition)
                        continue
                    _take(record, queries, out)
                    seen += 1
            if progress is not None:
                progress(seen)
    for loaded in out:
        loaded.events = log_order(loaded.events)
    return out


def _marker(
    settings: KafkaSettings, partition: int, marker_id: str, instance: str, event_id: str,
    time_ms: int,
) -> OutRecord:  # fmt: skip
    marker = ev.RouterMarker(
        tenant=ev.SYSTEM_TENANT, instance=instance, marker_id=marker_id, partition=partition
    )
    env = ce.wrap(marker, id=event_id, time_ms=time_ms, source=f"turnout/replay/{instance}")
    key, value, headers = ce.encode(env)
    return OutRecord(settings.topics.events, value, key=key, headers=headers, partition=partition)


def _is_marker(record: Any, marker_id: str) -> bool:
    if dict(record.headers).get("ce_type") != ev.RouterMarker.TYPE.encode():
        return False
    try:
        data = ce.decode(record.key, record.value, record.headers).data
    except WireError:
        return False
    return isinstance(data, ev.RouterMarker) and data.marker_id == marker_id
