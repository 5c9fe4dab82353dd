"""The CloudEvents Kafka codec: round trips, the plain-client view, and bad input."""

from __future__ import annotations

import json
import pickle
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.service.clock import uuid7_at
from turnout.service.core.events import (
    EVENT_TYPES,
    AttemptFailed,
    BreakerOpened,
    CacheMiss,
    Event,
    RawEvent,
    RequestCompleted,
    Usage,
)
from turnout.service.wire.cloudevents import (
    Envelope,
    decode,
    decode_type,
    encode,
    encode_event,
    format_time,
    parse_time,
    wrap,
)
from turnout.service.wire.errors import WireError

MIN_MS = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
REQUIRED_HEADERS = {"ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "content-type"}
RFC3339_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
ID = "019ac3c5-1b3b-7000-8000-000000000001"
SOURCE = "turnout/router/r1"

# --- strategies derived from the structs, so a new event type is covered unseen ---

text = st.text(st.characters(codec="utf-8"), max_size=12)
int64 = st.integers(-(2**63), 2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | int64 | finite | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10,
)


def strategy_for(t: mi.Type) -> st.SearchStrategy[Any]:
    """A strategy for any value of msgspec type `t`: the events' own schema drives generation."""
    match t:
        case mi.StrType():
            return text
        case mi.IntType():
            return int64
        case mi.FloatType():
            return finite
        case mi.BoolType():
            return st.booleans()
        case mi.BytesType():
            return st.binary(max_size=32)
        case mi.NoneType():
            return st.none()
        case mi.AnyType():
            return json_values
        case mi.ListType(item_type=item):
            return st.lists(strategy_for(item), max_size=3)
        case mi.DictType(key_type=key, value_type=value):
            return st.dictionaries(strategy_for(key), strategy_for(value), max_size=3)
        case mi.UnionType(types=members):
            return st.one_of(*(strategy_for(m) for m in members))
        case mi.StructType(cls=cls, fields=fields):
            return st.builds(cls, **{f.name: strategy_for(f.type) for f in fields})
    raise TypeError(f"no strategy for {t}")


def events_of(cls: type) -> st.SearchStrategy[Event]:
    return strategy_for(mi.type_info(cls))


@st.composite
def envelopes(draw: st.DrawFn, data: st.SearchStrategy[Event | RawEvent]) -> Envelope:
    event = draw(data)
    return Envelope(
        id=str(
            uuid7_at(draw(st.integers(0, 2**48 - 1)), draw(st.binary(min_size=10, max_size=10)))
        ),
        type=event.type if isinstance(event, RawEvent) else event.TYPE,
        time_ms=draw(st.integers(MIN_MS, MAX_MS)),
        source="turnout/" + draw(text) + "/" + draw(text),
        subject=draw(st.none() | text),
        traceparent=draw(st.none() | text),
        tenant=draw(text),
        data=event,
    )


any_event = st.one_of(*(events_of(cls) for cls in EVENT_TYPES.values()))
unknown_types = text.map(lambda s: "turnout.future." + s).filter(lambda t: t not in EVENT_TYPES)


def headers_of(env: Envelope) -> dict[str, bytes]:
    _, _, headers = encode(env)
    return dict(headers)


def sample_envelope(**changes: Any) -> Envelope:
    event = CacheMiss(request_id="r-1", tenant="acme", cache_key="k1")
    env = wrap(event, id=ID, time_ms=1_795_758_937_123, source=SOURCE, traceparent="00-ab-cd-01")
    return msgspec.structs.replace(env, **changes)


# --- round trips ------------------------------------------------------------


@pytest.mark.parametrize("cls", EVENT_TYPES.values(), ids=list(EVENT_TYPES))
@settings(max_examples=40)
@given(data=st.data())
def test_every_event_type_round_trips(cls: type, data: st.DataObject) -> None:
    env = data.draw(envelopes(events_of(cls)))
    assert decode(*encode(env)) == env


@given(env=envelopes(any_event))
def test_encoding_is_deterministic(env: Envelope) -> None:
    assert encode(env) == encode(decode(*encode(env)))


@given(env=envelopes(any_event), time_ms=st.integers(0, 253_402_300_799_999))
def test_encode_event_writes_what_encode_of_wrap_writes(env: Envelope, time_ms: int) -> None:
    """The router's fast path (no envelope) writes the same bytes as `encode(wrap(...))`."""
    event = env.data
    assert not isinstance(event, RawEvent)
    args = {"id": env.id, "time_ms": time_ms, "source": env.source, "traceparent": env.traceparent}
    assert encode_event(event, **args) == encode(wrap(event, **args))


@given(
    type_=unknown_types,
    doc=json_values,
    separators=st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]),
    pad=st.sampled_from(["", " ", "\n"]),
)
def test_unknown_types_survive_as_raw_events_byte_for_byte(
    type_: str, doc: Any, separators: tuple[str, str], pad: str
) -> None:
    value = (pad + json.dumps(doc, separators=separators, ensure_ascii=False) + pad).encode()
    env = Envelope(
        id=ID,
        type=type_,
        time_ms=0,
        source=SOURCE,
        tenant="acme",
        data=RawEvent(type=type_, data=doc, raw=value),
    )
    key, wire_value, headers = encode(env)
    decoded = decode(key, wire_value, headers)
    assert decoded.data == RawEvent(type=type_, data=doc, raw=value)
    assert encode(decoded) == (key, value, headers)


def test_raw_event_without_raw_bytes_encodes_its_data() -> None:
    env = Envelope(
        id=ID,
        type="x.y",
        time_ms=0,
        source=SOURCE,
        tenant="t",
        data=RawEvent(type="x.y", data={"a": [1]}),
    )
    assert encode(env)[1] == b'{"a":[1]}'


# --- ce_time ----------------------------------------------------------------


@given(st.integers(MIN_MS, MAX_MS))
def test_ce_time_round_trips_at_millisecond_precision(ms: int) -> None:
    text_time = format_time(ms)
    assert RFC3339_MS.fullmatch(text_time)
    assert parse_time(text_time) == ms
    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert text_time == expected.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(
    moment=st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    offset_min=st.integers(-23 * 60 - 59, 23 * 60 + 59),
    sep=st.sampled_from("Tt "),
)
def test_parse_time_reads_any_offset_and_fraction(
    moment: datetime, offset_min: int, sep: str
) -> None:
    local = moment.astimezone(timezone(timedelta(minutes=offset_min)))
    expected = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert parse_time(local.isoformat(sep=sep, timespec="microseconds")) == expected


@pytest.mark.parametrize(
    ("given_text", "ms"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00.5z", 500),
        ("1970-01-01T01:00:00.0019+01:00", 1),
        ("1969-12-31T23:59:59.999Z", -1),
        ("2026-11-27T05:35:37.123Z", 1_795_758_937_123 - 20 * 60_000),
    ],
)
def test_parse_time_table(given_text: str, ms: int) -> None:
    assert parse_time(given_text) == ms


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "2026-11-27",
        "2026-11-27T05:35:37",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-27T24:00:00Z",
        "2026-11-27T05:35:37+24:00",
        "٢٠٢٦-11-27T05:35:37Z",
        "2026-W48-5T05:35:37Z",
    ],
)
def test_parse_time_refuses_what_is_not_rfc3339(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_time(bad)


def test_format_time_refuses_years_past_9999() -> None:
    with pytest.raises(ValueError):
        format_time(MAX_MS + 1)


# --- what a plain Kafka client sees -----------------------------------------


@given(env=envelopes(any_event))
def test_header_set_is_exactly_the_binary_mode_set(env: Envelope) -> None:
    _, _, headers = encode(env)
    names = [name for name, _ in headers]
    optional = {
        n
        for n, v in [("ce_subject", env.subject), ("ce_traceparent", env.traceparent)]
        if v is not None
    }
    assert len(names) == len(set(names))
    assert set(names) == REQUIRED_HEADERS | optional
    assert all(isinstance(v, bytes) for _, v in headers)


@given(env=envelopes(any_event))
def test_plain_client_view(env: Envelope) -> None:
    key, value, headers = encode(env)
    seen = {name: raw.decode() for name, raw in headers}
    assert key.decode() == env.tenant
    assert seen["ce_specversion"] == "1.0"
    assert seen["content-type"] == "application/json"
    assert seen["ce_type"] == env.type and seen["ce_id"] == env.id
    assert seen["ce_source"] == env.source
    assert RFC3339_MS.fullmatch(seen["ce_time"])
    assert seen.get("ce_subject") == env.subject
    assert seen.get("ce_traceparent") == env.traceparent
    assert json.loads(value) == msgspec.to_builtins(env.data)


def test_completed_event_table() -> None:
    usage = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    event = RequestCompleted(
        request_id="r-9",
        tenant="acme",
        model="a/b",
        cached=True,
        coalesced=False,
        attempts=1,
        latency_ms=1.5,
        usage=usage,
        cost_micros=0,
        response={"id": "g"},
    )
    key, value, headers = encode(wrap(event, id=ID, time_ms=1_795_757_737_123, source=SOURCE))
    assert key == b"acme"
    assert headers == [
        ("ce_specversion", b"1.0"),
        ("ce_id", ID.encode()),
        ("ce_source", SOURCE.encode()),
        ("ce_type", b"turnout.request.completed"),
        ("ce_time", b"2026-11-27T05:35:37.123Z"),
        ("ce_subject", b"r-9"),
        ("content-type", b"application/json"),
    ]
    assert value == (
        b'{"request_id":"r-9","tenant":"acme","model":"a/b","cached":true,"coalesced":false,'
        b'"attempts":1,"latency_ms":1.5,"usage":{"prompt_tokens":1,"completion_tokens":2,'
        b'"total_tokens":3},"cost_micros":0,"response":{"id":"g"},"reply_to":null,'
        b'"saved_usage":null,"saved_cost_micros":0,"stream":null,"intake_partition":null,'
        b'"intake_offset":null}'
    )


def test_system_event_has_no_subject_and_the_system_key() -> None:
    event = BreakerOpened(model="a/b", reason="r", failures=5, calls=5, open_until_ms=1)
    key, _, headers = encode(wrap(event, id=ID, time_ms=0, source=SOURCE))
    assert key == b"_system"
    assert "ce_subject" not in dict(headers)


def test_decode_type_peeks_without_the_value() -> None:
    _, _, headers = encode(sample_envelope())
    assert decode_type(headers) == "turnout.cache.miss"
    with pytest.raises(WireError) as err:
        decode_type([h for h in headers if h[0] != "ce_type"])
    assert (err.value.code, err.value.path) == ("missing_header", "headers.ce_type")


def test_record_without_key_takes_the_tenant_from_the_data() -> None:
    _, value, headers = encode(sample_envelope())
    assert decode(None, value, headers).tenant == "acme"


def test_content_type_parameters_are_accepted() -> None:
    key, value, headers = encode(sample_envelope())
    headers = [h for h in headers if h[0] != "content-type"]
    assert decode(key, value, [*headers, ("content-type", b"Application/JSON; charset=utf-8")])
    assert decode(key, value, headers)  # absent: JSON assumed


def test_ce_time_in_another_producer_style_is_read() -> None:
    key, value, headers = encode(sample_envelope())
    headers = [h for h in headers if h[0] != "ce_time"]
    other = [*headers, ("ce_time", b"2026-11-27T06:35:37.123456+01:00")]
    assert decode(key, value, other).time_ms == 1_795_757_737_123


def test_encode_refuses_an_envelope_whose_type_disagrees_with_its_data() -> None:
    with pytest.raises(ValueError, match=r"turnout\.cache\.hit"):
        encode(sample_envelope(type="turnout.cache.hit"))


# --- bad input --------------------------------------------------------------

GOOD_KEY, GOOD_VALUE, GOOD_HEADERS = encode(sample_envelope())


def _with(name: str, raw: bytes | None) -> list[tuple[str, bytes]]:
    kept = [h for h in GOOD_HEADERS if h[0] != name]
    return kept if raw is None else [*kept, (name, raw)]


@pytest.mark.parametrize(
    ("headers", "code", "path"),
    [
        *[
            (_with(n, None), "missing_header", f"headers.{n}")
            for n in sorted(REQUIRED_HEADERS - {"content-type"})
        ],
        (_with("ce_specversion", b"0.3"), "invalid_header", "headers.ce_specversion"),
        (_with("ce_id", b""), "invalid_header", "headers.ce_id"),
        (_with("ce_source", b"\xff"), "invalid_header", "headers.ce_source"),
        (_with("ce_time", b"yesterday"), "invalid_header", "headers.ce_time"),
        (_with("ce_time", b"2026-11-27T05:35:37"), "invalid_header", "headers.ce_time"),
        (_with("ce_subject", b"\xc3"), "invalid_header", "headers.ce_subject"),
        (
            _with("content-type", b"application/cloudevents+json"),
            "unsupported_content_type",
            "headers.content-type",
        ),
    ],
)
def test_bad_headers_raise_wire_error(
    headers: list[tuple[str, bytes]], code: str, path: str
) -> None:
    with pytest.raises(WireError) as err:
        decode(GOOD_KEY, GOOD_VALUE, headers)
    assert (err.value.code, err.value.path) == (code, path)


def _completed_doc() -> dict[str, Any]:
    usage = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    event = RequestCompleted(
        request_id="r",
        tenant="t",
        model="m",
        cached=False,
        coalesced=False,
        attempts=1,
        latency_ms=1.0,
        usage=usage,
        cost_micros=1,
        response={},
    )
    return msgspec.to_builtins(event)  # type: ignore[no-any-return]


def _completed_headers() -> list[tuple[str, bytes]]:
    return [h for h in GOOD_HEADERS if h[0] != "ce_type"] + [
        ("ce_type", b"turnout.request.completed")
    ]


@pytest.mark.parametrize(
    ("mutate", "code", "path"),
    [
        (lambda d: d["usage"].update(total_tokens="3"), "schema_violation", "$.usage.total_tokens"),
        (lambda d: d["usage"].pop("total_tokens"), "schema_violation", "$.usage.total_tokens"),
        (lambda d: d.pop("model"), "schema_violation", "$.model"),
        (lambda d: d.update(attempts=None), "schema_violation", "$.attempts"),
    ],
)
def test_bad_data_raises_wire_error_with_the_json_path(mutate: Any, code: str, path: str) -> None:
    doc = _completed_doc()
    mutate(doc)
    with pytest.raises(WireError) as err:
        decode(b"t", json.dumps(doc).encode(), _completed_headers())
    assert (err.value.code, err.value.path) == (code, path)


@pytest.mark.parametrize(
    ("key", "value", "code", "path"),
    [
        (GOOD_KEY, b"{not json", "malformed_json", None),
        (GOOD_KEY, b"", "malformed_json", None),
        (GOOD_KEY, None, "malformed_json", None),
        (GOOD_KEY, b"[1, 2]", "schema_violation", "$"),
        (b"\xff", GOOD_VALUE, "invalid_key", "key"),
    ],
)
def test_bad_key_or_value_raises_wire_error(
    key: bytes, value: bytes, code: str, path: str | None
) -> None:
    with pytest.raises(WireError) as err:
        decode(key, value, GOOD_HEADERS)
    assert (err.value.code, err.value.path) == (code, path)


def test_a_string_that_is_not_utf8_is_malformed_for_known_and_unknown_types() -> None:
    value = b'{"request_id": "\xff", "tenant": "acme", "cache_key": "k"}'
    for type_ in (b"turnout.cache.miss", b"turnout.future.thing"):
        with pytest.raises(WireError) as err:
            decode(GOOD_KEY, value, _with("ce_type", type_))
        assert err.value.code == "malformed_json"


def test_unknown_type_without_key_or_tenant_is_refused() -> None:
    with pytest.raises(WireError) as err:
        decode(None, b"[]", _with("ce_type", b"turnout.future.x"))
    assert (err.value.code, err.value.path) == ("missing_key", "key")


@given(
    type_=st.sampled_from([*sorted(EVENT_TYPES), "turnout.future.thing"]),
    value=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()),
)
def test_any_value_decodes_or_raises_wire_error(type_: str, value: bytes) -> None:
    try:
        decode(GOOD_KEY, value, _with("ce_type", type_.encode()))
    except WireError as err:
        assert err.code in {"malformed_json", "schema_violation"}
        assert err.path is None or err.path.startswith("$")


@given(
    env=envelopes(st.one_of(events_of(AttemptFailed), events_of(CacheMiss))),
    drop=st.sampled_from(sorted(REQUIRED_HEADERS - {"content-type"})),
)
def test_dropping_a_required_header_names_it(env: Envelope, drop: str) -> None:
    key, value, headers = encode(env)
    with pytest.raises(WireError) as err:
        decode(key, value, [h for h in headers if h[0] != drop])
    assert (err.value.code, err.value.path) == ("missing_header", f"headers.{drop}")


def test_wire_error_reads_as_one_line_and_pickles() -> None:
    err = WireError("schema_violation", "Expected `int`, got `str`", "$.attempts")
    assert str(err) == "schema_violation: Expected `int`, got `str` at $.attempts"
    again = pickle.loads(pickle.dumps(err))
    assert (again.code, again.detail, again.path) == (err.code, err.detail, err.path)
