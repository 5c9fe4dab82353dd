"""A fetched batch of `turnout.events` records as Arrow columns: the sink's fast path.

The sink touches each record once in Python, to copy its key, value and
CloudEvents headers into columns; DuckDB then checks and parses them
vectorized (analytics/stage.sql) and stores the good ones. At 100k events/s
a full codec decode per record (`turnout.analytics.rows.record_row`) costs more than
the whole budget, so it is kept for the records the fast check refuses: the
codec has the last word on what is unreadable, and why.

Rules:
- pure: no clock, no I/O;
- header, key and value columns are binary; an absent header is b"" (so an
  empty header counts as absent), and `has_key` tells a null key from b"";
- the value must be JSON as msgspec reads it; a record whose value is not
  goes straight to the codec (`refused`), never into the table;
- `i` numbers the table's rows, and `records[i]` is the record they came
  from, with every header, for error rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from turnout.service.wire.cloudevents import parse_time

__all__ = [
    "HEADER_COLUMNS",
    "KafkaRecord",
    "RecordBatch",
    "first_time_ms",
    "merge",
    "record_batch",
    "time_ms",
]

HEADER_COLUMNS = {
    "ce_specversion": "h_specversion",
    "ce_id": "h_id",
    "ce_source": "h_source",
    "ce_type": "h_type",
    "ce_time": "h_time",
    "ce_subject": "h_subject",
    "ce_traceparent": "h_traceparent",
    "content-type": "h_content_type",
}
"""The headers copied into columns (Kafka header name -> column name)."""

_RAW = msgspec.json.Decoder(msgspec.Raw)


class KafkaRecord(Protocol):
    """What the sink needs of a consumed record (aiokafka's ConsumerRecord has it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Records in column form (`table`), the records themselves, and those refused at once."""

    table: pa.Table
    records: list[KafkaRecord]
    refused: list[KafkaRecord]

    def __len__(self) -> int:
        return len(self.records) + len(self.refused)

    @property
    def last_time_ms(self) -> int | None:
        """The `ce_time` of the last record in the table (for progress reports), if readable."""
        return time_ms(self.records[-1]) if self.records else None


def time_ms(record: KafkaRecord) -> int | None:
    """The record's `ce_time` header in ms, if it has a readable one."""
    for header, raw in reversed(record.headers):
        if header == "ce_time":
            try:
                return parse_time(raw.decode())
            except (ValueError, UnicodeDecodeError):
                return None
    return None


def first_time_ms(records: Iterable[KafkaRecord]) -> int | None:
    """The `ce_time` of the first of `records` that has a readable one."""
    return next((t for r in records if (t := time_ms(r)) is not None), None)


def record_batch(records: Iterable[KafkaRecord]) -> RecordBatch:
    """The column form of `records`, in order; values that are not JSON are `refused`."""
    good, refused = _split_json(records)
    headers = [dict(r.headers) for r in good]
    columns = {
        "i": pa.array(range(len(good)), pa.int32()),
        "kafka_partition": pa.array([r.partition for r in good], pa.int32()),
        "kafka_offset": pa.array([r.offset for r in good], pa.int64()),
        "has_key": pa.array([r.key is not None for r in good], pa.bool_()),
        "key": _binary([r.key or b"" for r in good]),
        "value": _binary([r.value for r in good]),  # type: ignore[misc]  # JSON, so not None
    }
    for name, column in HEADER_COLUMNS.items():
        columns[column] = _binary([h.get(name) or b"" for h in headers])
    return RecordBatch(pa.table(columns), good, refused)


def merge(parts: Sequence[RecordBatch]) -> RecordBatch:
    """One batch of `parts` in order, as `record_batch` of all their records would be.

    The sink builds each fetched chunk's columns while it fetches the next one,
    then merges them: tables are concatenated (Arrow keeps the chunks, no copy)
    and each part's `i` is shifted past the records of the parts before it.
    """
    if len(parts) == 1:
        return parts[0]
    tables: list[pa.Table] = []
    records: list[KafkaRecord] = []
    refused: list[KafkaRecord] = []
    for part in parts:
        table = part.table
        if records:
            shifted = pc.add(table.column("i"), pa.scalar(len(records), pa.int32()))
            table = table.set_column(table.schema.get_field_index("i"), "i", shifted)
        tables.append(table)
        records += part.records
        refused += part.refused
    if not tables:
        return record_batch([])
    return RecordBatch(pa.concat_tables(tables), records, refused)


def _split_json(records: Iterable[KafkaRecord]) -> tuple[list[KafkaRecord], list[KafkaRecord]]:
    """(records whose value is JSON, the others); the hot loop, so written flat."""
    good: list[KafkaRecord] = []
    refused: list[KafkaRecord] = []
    keep, drop, check = good.append, refused.append, _RAW.decode
    for r in records:
        try:
            check(r.value)  # type: ignore[arg-type]  # None raises TypeError
        except (msgspec.DecodeError, TypeError, RecursionError):  # too deep: the codec says so
            drop(r)
        else:
            keep(r)
    return good, refused


def _binary(values: list[bytes]) -> pa.Array:
    """A binary column (pyarrow's converter: 2x faster here than joining the bytes into
    buffers by hand, as this module did before; tests/benchmarks/bench_sink.py)."""
    return pa.array(values, pa.large_binary())
