"""One Kafka record of `turnout.events` -> one archive row (or one sink-error row).

The sink's only translation step, kept pure (no clock, no I/O) so it is tested
by tables: `event_row` turns a decoded `Envelope` plus its Kafka position into
an `events` row; `record_row` decodes a raw record with the CloudEvents codec
and returns either that row or an `ErrorRow` saying why the record is
unreadable.

Rules:
- the archive stores what the log holds: `data` is the record's value bytes
  as sent (never re-encoded), also for event types this reader does not know;
- readable means a CloudEvent the codec (`turnout.service.wire.cloudevents.decode`)
  reads: its headers, key and JSON; data that breaks its known type's schema
  is stored as sent, like the data of an unknown type (the archive mirrors
  the log; replay reports such events when it decodes them);
- `trace_id` is the 32-hex trace id of a valid W3C `traceparent`, else None;
- a bad record is data, not an exception: it becomes an `ErrorRow` with the
  WireError code, and the sink goes on;
- `events_table` / `errors_table` give rows the Arrow form DuckDB loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import msgspec
import pyarrow as pa

from turnout.analytics.records import KafkaRecord
from turnout.service.wire.cloudevents import Envelope, decode, decode_type
from turnout.service.wire.errors import MALFORMED_JSON, SCHEMA_VIOLATION, WireError

__all__ = [
    "EVENT_COLUMNS",
    "ErrorRow",
    "EventRow",
    "KafkaPosition",
    "decode_records",
    "error_row",
    "errors_table",
    "event_row",
    "events_table",
    "record_row",
    "trace_id",
]

EVENT_COLUMNS = (
    "id",
    "type",
    "time_ms",
    "tenant",
    "request_id",
    "source",
    "trace_id",
    "data",
    "kafka_partition",
    "kafka_offset",
)
"""The fields of an `EventRow`, in the order of the `events` table (time as Unix ms)."""

_HEX = frozenset("0123456789abcdef")
_AS_SENT = b"turnout.analytics.as-sent"  # a type no reader knows


class EventRow(NamedTuple):
    """One `events` row; `time_ms` is Unix milliseconds UTC, `data` the JSON text."""

    id: str
    type: str
    time_ms: int
    tenant: str
    request_id: str | None
    source: str
    trace_id: str | None
    data: str
    kafka_partition: int
    kafka_offset: int


class ErrorRow(NamedTuple):
    """One `sink_errors` row: where the unreadable record is, why, and its bytes."""

    topic: str
    kafka_partition: int
    kafka_offset: int
    kafka_timestamp_ms: int | None
    code: str
    reason: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str]]


class KafkaPosition(NamedTuple):
    """Where a record sits in Kafka, and the broker timestamp it carries."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), else None.

    An all-zero trace id is invalid by the spec and gives None too.
    """
    if traceparent is None or len(traceparent) < 55:
        return None
    parts = traceparent.split("-")
    if len(parts) < 4 or [len(p) for p in parts[:4]] != [2, 32, 16, 2]:
        return None
    version, trace, span, flags = parts[:4]
    if version == "ff" or not _is_hex(version + trace + span + flags):
        return None
    if version == "00" and len(parts) != 4:
        return None
    return None if trace == "0" * 32 else trace


def _is_hex(text: str) -> bool:
    return _HEX.issuperset(text)


def event_row(env: Envelope, value: bytes, *, partition: int, offset: int) -> EventRow:
    """The archive row of `env`, decoded from `value` at `partition`/`offset`."""
    return EventRow(
        env.id,
        env.type,
        env.time_ms,
        env.tenant,
        env.subject,
        env.source,
        trace_id(env.traceparent),
        value.decode(),
        partition,
        offset,
    )


def record_row(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    position: KafkaPosition,
) -> EventRow | ErrorRow:
    """The archive row of one record, or the error row that says why it is unreadable."""
    try:
        env = _decode(key, value, headers)
        assert value is not None  # decode refuses a record without a value
        return event_row(env, value, partition=position.partition, offset=position.offset)
    except WireError as err:
        return error_row(key, value, headers, position, err.code, str(err))
    except UnicodeDecodeError as err:  # not UTF-8 inside a JSON string (see _decode)
        reason = f"{MALFORMED_JSON}: value is not UTF-8: {err}"
        return error_row(key, value, headers, position, MALFORMED_JSON, reason)


def _decode(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> Envelope:
    """The codec's envelope; data that breaks its type's schema is read as sent.

    Raises WireError, or UnicodeDecodeError: msgspec lets that one out of an
    untyped decode of a JSON string that is not UTF-8, and the codec does not
    translate it (reported to its owner).
    """
    try:
        return decode(key, value, headers)
    except WireError as err:
        if err.code != SCHEMA_VIOLATION:
            raise
        return _decode_as_sent(key, value, headers)


def _decode_as_sent(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> Envelope:
    """The envelope of a record whose data breaks its type's schema, with the data read
    as for a type this reader does not know (the archive stores the log as it is)."""
    attrs = dict(headers)
    attrs["ce_type"] = _AS_SENT
    env = decode(key, value, list(attrs.items()))
    return msgspec.structs.replace(env, type=decode_type(headers))


def error_row(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    position: KafkaPosition,
    code: str,
    reason: str,
) -> ErrorRow:
    """An `ErrorRow` for a record at `position`; header values as text (bad UTF-8 replaced)."""
    return ErrorRow(
        position.topic,
        position.partition,
        position.offset,
        position.timestamp_ms,
        code,
        reason,
        key,
        value,
        [(name, (raw or b"").decode("utf-8", "replace")) for name, raw in headers],
    )


def events_table(rows: Sequence[EventRow]) -> pa.Table:
    """Event rows as an Arrow table with the `events` columns (`time` a UTC timestamp)."""
    cols = list(zip(*rows, strict=True))
    return pa.Table.from_arrays(
        [
            pa.array(cols[0], pa.string()),
            pa.array(cols[1], pa.string()),
            pa.array(cols[2], pa.timestamp("ms", tz="UTC")),
            pa.array(cols[3], pa.string()),
            pa.array(cols[4], pa.string()),
            pa.array(cols[5], pa.string()),
            pa.array(cols[6], pa.string()),
            pa.array(cols[7], pa.string()),
            pa.array(cols[8], pa.int32()),
            pa.array(cols[9], pa.int64()),
        ],
        names=[*EVENT_COLUMNS[:2], "time", *EVENT_COLUMNS[3:]],
    )


_HEADERS_JSON = msgspec.json.Encoder()


def errors_table(errors: Sequence[ErrorRow], seen_ms: int) -> pa.Table:
    """Error rows as an Arrow table with the `sink_errors` columns, seen at `seen_ms`."""
    cols = list(zip(*errors, strict=True))
    headers = [_HEADERS_JSON.encode(h).decode() for h in cols[8]]
    return pa.Table.from_arrays(
        [
            pa.array(cols[0], pa.string()),
            pa.array(cols[1], pa.int32()),
            pa.array(cols[2], pa.int64()),
            pa.array(cols[3], pa.timestamp("ms", tz="UTC")),
            pa.array(cols[4], pa.string()),
            pa.array(cols[5], pa.string()),
            pa.array(cols[6], pa.binary()),
            pa.array(cols[7], pa.binary()),
            pa.array(headers, pa.string()),
            pa.array([seen_ms] * len(errors), pa.timestamp("ms", tz="UTC")),
        ],
        names=["topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "code", "reason",
               "key", "value", "headers", "seen_at"],
    )  # fmt: skip


def decode_records(records: Iterable[KafkaRecord]) -> tuple[list[EventRow], list[ErrorRow]]:
    """The codec's verdict on each record: an event row, or an error row saying why not."""
    rows: list[EventRow] = []
    errors: list[ErrorRow] = []
    for r in records:
        position = KafkaPosition(r.topic, r.partition, r.offset, r.timestamp)
        row = record_row(r.key, r.value, r.headers, position)
        if isinstance(row, EventRow):
            rows.append(row)
        else:
            errors.append(row)
    return rows, errors
