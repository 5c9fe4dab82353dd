"""The compiled Kafka codec says exactly what aiokafka's own codec says.

Every protocol class aiokafka has whose schema compiles (not only the installed ones):
random values encode to the same bytes as aiokafka's `Schema.encode`, those bytes
decode to the same values as its `Schema.decode`, and a value that does not fit or a
truncated buffer is a ValueError in both. The reference is the generic code of the
base classes, which `install()` never replaces.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import pkgutil
from typing import Any

import aiokafka.protocol
import pytest
from aiokafka.protocol import fetch, produce
from aiokafka.protocol import types as t
from aiokafka.protocol.struct import Struct
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.service.kafka import codec


def _all_structs() -> list[type[Struct]]:
    found = {}
    for info in pkgutil.iter_modules(aiokafka.protocol.__path__):
        module = importlib.import_module(f"aiokafka.protocol.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Struct) and "SCHEMA" in vars(value):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[name] for name in sorted(found)]


ALL = _all_structs()
COMPILED: dict[type[Struct], tuple[Any, Any]] = {}
for _cls in ALL:
    with contextlib.suppress(codec.Unsupported):
        COMPILED[_cls] = codec.compile_struct(_cls)

_INTS = {t.Int8: 8, t.Int16: 16, t.Int32: 32, t.Int64: 64}


def values(field: Any) -> st.SearchStrategy[Any]:
    """Values aiokafka's codec can encode as `field`."""
    if field in _INTS:
        bits = _INTS[field]
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if field is t.UInt32:
        return st.integers(0, 2**32 - 1)
    if field is t.Float64:
        return st.floats(allow_nan=False)
    if field is t.Boolean:
        return st.booleans()
    if field is t.Bytes:  # a built batch is a bytearray; a view goes through too
        data = st.binary(max_size=40)
        return st.none() | data | data.map(bytearray) | data.map(memoryview)
    if type(field) is t.String:
        return st.none() | st.text(max_size=12)
    if type(field) is t.Array:
        return st.none() | st.lists(values(field.array_of), max_size=3)
    assert type(field) is t.Schema
    return st.tuples(*(values(f) for f in field.fields))


def message(cls: type[Struct]) -> st.SearchStrategy[Struct]:
    return st.tuples(*(values(f) for f in cls.SCHEMA.fields)).map(lambda v: _make(cls, v))


def _make(cls: type[Struct], fields: tuple[Any, ...]) -> Struct:
    obj = cls.__new__(cls)  # as decoded (some classes' __init__ takes other arguments)
    obj.__dict__.update(zip(cls.SCHEMA.names, fields, strict=True))
    return obj


def reference(data: bytes, cls: type[Struct]) -> tuple[Any, ...]:
    buffer = io.BytesIO(data)
    decoded = cls.SCHEMA.decode(buffer)
    assert buffer.tell() == len(data)
    return tuple(decoded)


def check(obj: Struct) -> None:
    cls = type(obj)
    encode, decode = COMPILED[cls]
    expected = Struct.encode(obj)  # aiokafka's generic walk of the schema
    assert encode(obj.__dict__) == expected
    got, end = decode(expected, 0)
    assert got == reference(expected, cls) and end == len(expected)
    # after a header, as aiokafka's connection hands a response over
    assert decode(b"HEAD" + expected, 4) == (got, len(expected) + 4)
    if expected:  # one byte short: the last read fails in both, a ValueError (no value)
        with pytest.raises(ValueError):
            reference(expected[:-1], cls)
        with pytest.raises(ValueError):
            decode(expected[:-1], 0)


def test_the_hot_classes_compile_and_are_installed() -> None:
    hot = codec.hot_classes()
    assert produce.ProduceRequest_v8 in hot and fetch.FetchResponse_v11 in hot
    assert set(codec.install()) == set(hot)  # every one compiles (none is flexible)
    assert produce.ProduceRequest_v8.encode is not Struct.encode
    # and most of aiokafka's others would: the compiler is not specific to these two
    assert len(COMPILED) > len(ALL) * 0.6


def test_flexible_versions_are_left_to_aiokafka() -> None:
    flexible = [c for c in ALL if c not in COMPILED]
    assert flexible, "aiokafka has tagged-field messages this does not compile"
    with pytest.raises(codec.Unsupported):
        codec.compile_struct(flexible[0])


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(COMPILED, key=lambda c: c.__qualname__)).flatmap(message))
def test_every_compilable_message_matches_aiokafka(obj: Struct) -> None:
    check(obj)


@pytest.mark.parametrize("cls", codec.hot_classes(), ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_hot_messages_match_aiokafka(cls: type[Struct], data: st.DataObject) -> None:
    check(data.draw(message(cls)))


def test_a_fetch_response_as_the_router_gets_it() -> None:
    """12 partitions, one with records, one with aborted transactions: same values, and
    the records are the same bytes (not a view into the response)."""
    cls = fetch.FetchResponse_v11
    partitions = [
        (p, 0, 1000 + p, 1000 + p, 0, [(7, 900)] if p == 5 else None, -1,
         b"\x00" * 61 + b"records" if p == 3 else b"")
        for p in range(12)
    ]  # fmt: skip
    data = Struct.encode(cls(0, 0, 0, [("turnout.requests", partitions)]))
    codec.install([cls])
    got = cls.decode(data)
    assert got.topics == [("turnout.requests", partitions)]
    assert type(got.topics[0][1][3][7]) is bytes
    buffer = io.BytesIO(b"HEAD" + data)
    buffer.read(4)
    assert cls.decode(buffer).topics == got.topics and buffer.tell() == len(data) + 4


def test_values_that_do_not_fit_are_refused_as_aiokafka_does() -> None:
    codec.install([produce.ProduceRequest_v8])
    encode = produce.ProduceRequest_v8.encode
    assert encode is not Struct.encode
    too_big = produce.ProduceRequest_v8(None, 2**15, 30_000, [])  # acks is an Int16
    with pytest.raises(ValueError):
        Struct.encode(too_big)
    with pytest.raises(ValueError):
        encode(too_big)
    long_topic = produce.ProduceRequest_v8(None, -1, 30_000, [("t" * 40_000, [])])
    with pytest.raises(ValueError):
        encode(long_topic)
    wrong_shape = produce.ProduceRequest_v8(None, -1, 30_000, [("t", [(0, b"x", 1)])])
    with pytest.raises(ValueError, match="field count"):
        encode(wrong_shape)


def test_uninstall_gives_aiokafka_its_codec_back() -> None:
    cls = fetch.FetchRequest_v11
    codec.install([cls])
    assert cls.encode is not Struct.encode
    codec.uninstall()
    assert cls.encode is Struct.encode and cls.decode.__func__ is Struct.decode.__func__
    codec.install()  # as the Kafka adapters leave it for the other tests
    assert cls.encode is not Struct.encode


def test_the_first_bad_value_decides_the_error_as_in_aiokafka() -> None:
    """A str where bytes belong fails as aiokafka's `+` does, even with a later value
    that does not fit either (the compiled encoder must not get to that one first)."""
    cls = produce.ProduceRequest_v3
    encode = COMPILED[cls][0]
    both = _make(cls, (None, -1, 100, [("t", [(0, "not bytes"), (2**40, b"")])]))
    with pytest.raises(TypeError):
        Struct.encode(both)
    with pytest.raises(TypeError):
        encode(both.__dict__)


def test_a_stream_other_than_bytesio_is_decoded_by_aiokafka_s_walk() -> None:
    cls = produce.ProduceResponse_v8
    codec.install([cls])
    data = Struct.encode(cls([("t", [(1, 0, 5, -1, 0, [], None)])], 0))

    class Stream:  # only read(), as aiokafka's decode asks
        def __init__(self, data: bytes) -> None:
            self._io = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self._io.read(n)

    assert cls.decode(Stream(data)).topics == cls.decode(data).topics
