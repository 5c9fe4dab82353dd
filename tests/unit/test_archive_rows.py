"""Record -> archive row: what the sink stores for good, unknown and unreadable records."""

from __future__ import annotations

import json
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.analytics.records import HEADER_COLUMNS, merge, record_batch
from turnout.analytics.rows import ErrorRow, EventRow, KafkaPosition, record_row, trace_id
from turnout.analytics.synthetic import KINDS, envelopes, story
from turnout.service.core.events import RawEvent, RequestRejected
from turnout.service.wire.cloudevents import Envelope, encode, wrap

POS = KafkaPosition("t.events", 3, 1234, 1_767_225_600_123)
TRACE = "0af7651916cd43dd8448eb211c80319c"
EVENT = RequestRejected(request_id="r-1", tenant="acme", code="rate_limited", message="slow down")


def _record(env: Envelope) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return encode(env)


def _env(**kw: object) -> Envelope:
    args: dict = {"id": "e-1", "time_ms": 1_767_225_600_000, "source": "turnout/router/a"}
    args.update(kw)
    return wrap(EVENT, **args)


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        (f"00-{TRACE}-b7ad6b7169203331-01", TRACE),
        (f"00-{TRACE}-b7ad6b7169203331-00", TRACE),
        (f"01-{TRACE}-b7ad6b7169203331-01-future", TRACE),  # a later version may add fields
        (f"00-{TRACE}-b7ad6b7169203331-01-extra", None),  # version 00 may not
        (f"ff-{TRACE}-b7ad6b7169203331-01", None),
        (f"00-{TRACE.upper()}-b7ad6b7169203331-01", None),
        (f"00-{'0' * 32}-b7ad6b7169203331-01", None),
        (f"00-{TRACE[:-1]}-b7ad6b7169203331-01", None),
        (f"00-{TRACE}-b7ad6b716920333-01", None),
        ("", None),
        (None, None),
    ],
)
def test_trace_id_is_the_32_hex_id_of_a_valid_traceparent(
    traceparent: str | None, expected: str | None
) -> None:
    assert trace_id(traceparent) == expected


def test_a_known_event_becomes_a_row_with_its_value_bytes_as_data() -> None:
    key, value, headers = _record(_env(traceparent=f"00-{TRACE}-b7ad6b7169203331-01"))

    row = record_row(key, value, headers, POS)

    assert row == EventRow(
        id="e-1",
        type="turnout.request.rejected",
        time_ms=1_767_225_600_000,
        tenant="acme",
        request_id="r-1",
        source="turnout/router/a",
        trace_id=TRACE,
        data=value.decode(),
        kafka_partition=3,
        kafka_offset=1234,
    )


def test_an_event_of_an_unknown_type_is_stored_raw() -> None:
    raw = b'{"tenant": "acme", "shiny": [1, 2, {"x": null}]}'
    env = Envelope(
        id="e-2",
        type="turnout.future.thing",
        time_ms=5,
        source="turnout/v9/a",
        tenant="acme",
        data=RawEvent(type="turnout.future.thing", data=json.loads(raw), raw=raw),
    )
    key, value, headers = encode(env)

    row = record_row(key, value, headers, POS)

    assert isinstance(row, EventRow)
    assert (row.type, row.data, row.request_id, row.trace_id) == (
        "turnout.future.thing",
        raw.decode(),
        None,
        None,
    )


def _without(headers: list[tuple[str, bytes]], name: str) -> list[tuple[str, bytes]]:
    return [(k, v) for k, v in headers if k != name]


_KEY, _VALUE, _HEADERS = _record(_env())


@pytest.mark.parametrize(
    ("key", "value", "headers", "code"),
    [
        (_KEY, b'{"request_id": "r-1", ', _HEADERS, "malformed_json"),
        (_KEY, None, _HEADERS, "malformed_json"),
        (_KEY, _VALUE, [], "missing_header"),
        (_KEY, _VALUE, _without(_HEADERS, "ce_id"), "missing_header"),
        (_KEY, _VALUE, _without(_HEADERS, "ce_time"), "missing_header"),
        (b"\xff", _VALUE, _HEADERS, "invalid_key"),
    ],
    ids=["bad-json", "tombstone", "no-headers", "no-id", "no-time", "bad-key"],
)
def test_an_unreadable_record_becomes_an_error_row_saying_why(
    key: bytes, value: bytes | None, headers: list[tuple[str, bytes]], code: str
) -> None:
    row = record_row(key, value, headers, POS)

    assert isinstance(row, ErrorRow)
    assert (row.topic, row.kafka_partition, row.kafka_offset) == ("t.events", 3, 1234)
    assert row.kafka_timestamp_ms == POS.timestamp_ms
    assert row.code == code
    assert row.reason.startswith(code)
    assert (row.key, row.value) == (key, value)
    assert row.headers == [(k, v.decode("utf-8", "replace")) for k, v in headers]


def test_data_that_breaks_its_types_schema_is_stored_as_sent() -> None:
    value = b'{"request_id": "r-1", "tenant": "acme", "code": 42}'

    row = record_row(_KEY, value, _HEADERS, POS)

    assert isinstance(row, EventRow)
    assert (row.type, row.data, row.request_id) == (
        "turnout.request.rejected",
        value.decode(),
        "r-1",
    )


def test_error_rows_keep_header_values_that_are_not_utf8_as_text() -> None:
    headers = [*_HEADERS, ("x-bin", b"\xff\xfe"), ("x-none", None)]

    row = record_row(_KEY, b"nope", headers, POS)  # type: ignore[arg-type]

    assert isinstance(row, ErrorRow)
    assert row.headers[-2:] == [("x-bin", "\ufffd\ufffd"), ("x-none", "")]


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(KINDS), n=st.integers(0, 10_000), seed=st.integers(0, 2**16))
def test_every_synthetic_event_round_trips_into_a_row(kind: str, n: int, seed: int) -> None:
    for env in envelopes([story(kind, f"req-{n}", f"t{n % 3}")], seed=seed):
        key, value, headers = encode(env)

        row = record_row(key, value, headers, KafkaPosition("t.events", n % 12, n))

        assert isinstance(row, EventRow)
        assert (row.id, row.type, row.time_ms, row.tenant, row.request_id) == (
            env.id,
            env.type,
            env.time_ms,
            env.tenant,
            env.subject,
        )
        assert json.loads(row.data) == json.loads(value)
        assert row.trace_id is not None and len(row.trace_id) == 32


class _Rec(NamedTuple):
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    offset: int
    topic: str = "t.events"
    partition: int = 2
    timestamp: int = 0


_VALUES = st.sampled_from([_VALUE, b"[]", b"{nope", None, b'{"tenant": "t"}'])
_CHUNKS = st.lists(st.lists(st.tuples(st.booleans(), _VALUES), max_size=6), max_size=5)


@given(_CHUNKS)
@settings(max_examples=200, deadline=None)
def test_merged_chunks_are_the_batch_of_all_their_records(chunks: list) -> None:
    """The sink builds each fetched chunk's columns apart and merges them: the result
    must be what one batch of every record would be (rows, `i` numbering, refusals)."""
    records, parts, offset = [], [], 0
    for chunk in chunks:
        part = []
        for keyed, value in chunk:
            part.append(_Rec(_KEY if keyed else None, value, _HEADERS, offset))
            offset += 1
        records += part
        if part:
            parts.append(record_batch(part))

    whole, merged = record_batch(records), merge(parts)

    assert merged.table.to_pydict() == whole.table.to_pydict()
    assert merged.records == whole.records and merged.refused == whole.refused
    assert [merged.records[i].offset for i in merged.table.column("i").to_pylist()] == [
        r.offset for r in whole.records
    ]


def test_a_record_batch_holds_raw_columns_and_refuses_values_that_are_not_json() -> None:
    records = [
        _Rec(_KEY, _VALUE, _HEADERS, 0),
        _Rec(None, _VALUE, [("ce_id", b"x")], 1),
        _Rec(_KEY, b"{nope", _HEADERS, 2),
        _Rec(_KEY, None, _HEADERS, 3),
        _Rec(b"", b"[]", [("ce_id", b"a"), ("ce_id", b"b")], 4),
    ]

    batch = record_batch(records)

    assert len(batch) == 5
    assert [r.offset for r in batch.refused] == [2, 3]
    assert [r.offset for r in batch.records] == [0, 1, 4]
    cols = batch.table.to_pydict()
    assert cols["i"] == [0, 1, 2] and cols["kafka_partition"] == [2, 2, 2]
    assert cols["kafka_offset"] == [0, 1, 4]
    assert cols["has_key"] == [True, False, True]
    assert cols["key"] == [_KEY, b"", b""]
    assert cols["value"] == [_VALUE, _VALUE, b"[]"]
    assert cols["h_id"] == [b"e-1", b"x", b"b"]  # a repeated header counts by its last value
    assert cols["h_subject"] == [b"r-1", b"", b""]  # absent is empty
    assert set(cols) == {"i", "kafka_partition", "kafka_offset", "has_key", "key", "value",
                         *HEADER_COLUMNS.values()}  # fmt: skip
    assert batch.last_time_ms is None  # the last row has no ce_time
    assert record_batch(records[:1]).last_time_ms == 1_767_225_600_000
    assert record_batch([]).last_time_ms is None
