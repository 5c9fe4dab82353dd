"""Compiled encoders and decoders for the Kafka messages every request pays for.

aiokafka encodes and decodes a protocol message by walking its `Schema` one field at a
time: a method call, a `struct` call and a `try` per integer, a generator per array. A
fetch of the router's 12 intake partitions costs ~80 us of CPU that way (the request
encoded, the response decoded), a produce request and its response ~20 us; at 500
requests/s the router makes about one of each per request
(docs/operations/benchmarks.md).

`install()` gives the hot classes (Produce and Fetch, every version aiokafka has, and the
request and response headers) an `encode` / `decode` generated from their own schemas:
consecutive fixed-size fields packed or unpacked by one precompiled `struct.Struct`,
arrays as plain loops, all in one function per message. Same bytes and same values as
aiokafka's (tests/unit/test_kafka_codec.py compares them for every protocol class
aiokafka has, with hypothesis), and the same exception for a value that does not fit
or a truncated buffer. A schema with a type this does not know (the flexible versions'
tagged fields, compact and variable-length types) is left to aiokafka.
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka.protocol import api, fetch, produce
from aiokafka.protocol.struct import Struct
from aiokafka.protocol.types import (
    Array,
    Boolean,
    Bytes,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    Schema,
    String,
    UInt32,
)

__all__ = ["Unsupported", "compile_struct", "hot_classes", "install", "uninstall"]

_FIXED: dict[Any, str] = {
    Int8: "b", Int16: "h", Int32: "i", UInt32: "I", Int64: "q", Float64: "d", Boolean: "?",
}  # fmt: skip
_NULL16 = struct.pack(">h", -1)
_NULL32 = struct.pack(">i", -1)


class Unsupported(TypeError):
    """The schema holds a type this module does not compile (aiokafka's codec stays)."""


def _kind(field: Any) -> str:
    if isinstance(field, type) and field in _FIXED:
        return "fixed"
    if type(field) is String:
        return "string"
    if field is Bytes:
        return "bytes"
    if type(field) is Array:
        return "array"
    if type(field) is Schema:
        return "schema"
    raise Unsupported(f"no compiled codec for {field!r}")


class _Source:
    """Python source being generated, its constants, and fresh local names."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {"ValueError": ValueError, "struct": struct}
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, value: Any, prefix: str = "K") -> str:
        for name, known in self.consts.items():
            if known is value or (isinstance(value, bytes) and known == value):
                return name
        name = self.name(prefix)
        self.consts[name] = value
        return name

    def struct(self, fmt: str) -> str:
        return self.const(struct.Struct(">" + fmt), "S")

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def function(self, name: str) -> Callable[..., Any]:
        namespace = dict(self.consts)
        exec("\n".join(self.lines), namespace)  # our own generated source, as dataclasses do
        function: Callable[..., Any] = namespace[name]
        return function


def _runs(fields: Iterable[Any]) -> list[tuple[str, list[int]]]:
    """Field indexes grouped: runs of consecutive fixed-size fields, other fields alone."""
    runs: list[tuple[str, list[int]]] = []
    for i, field in enumerate(fields):
        kind = _kind(field)
        if kind == "fixed" and runs and runs[-1][0] == "fixed":
            runs[-1][1].append(i)
        else:
            runs.append((kind, [i]))
    return runs


# ------------------------------------------------------------------ decoding


def _decode_value(src: _Source, field: Any, indent: int) -> str:
    """Emit code reading one value of `field` at `pos`; return the expression holding it."""
    kind = _kind(field)
    if kind == "schema":
        return _decode_schema(src, field, indent)
    if kind == "fixed":
        v = src.name("v")
        code = _FIXED[field]
        src.emit(indent, f"{v}, = {src.struct(code)}.unpack_from(buf, pos)")
        src.emit(indent, f"pos += {struct.calcsize('>' + code)}")
        return v
    if kind in ("string", "bytes"):
        v, n = src.name("v"), src.name("n")
        width, what = ("h", "string") if kind == "string" else ("i", "Bytes")
        src.emit(indent, f"{n}, = {src.struct(width)}.unpack_from(buf, pos)")
        src.emit(indent, f"pos += {struct.calcsize('>' + width)}")
        src.emit(indent, f"if {n} < 0:")
        src.emit(indent + 1, f"{v} = None")
        src.emit(indent, "else:")
        src.emit(indent + 1, f"{v} = buf[pos:pos + {n}]")
        src.emit(indent + 1, f"if len({v}) != {n}:")
        src.emit(indent + 2, f"raise ValueError('Buffer underrun decoding {what}')")
        src.emit(indent + 1, f"pos += {n}")
        if kind == "string":
            src.emit(indent + 1, f"{v} = {v}.decode({field.encoding!r})")
        return v
    # an array: a count (-1: null; other negatives: empty, as aiokafka reads them)
    v, n = src.name("v"), src.name("n")
    src.emit(indent, f"{n}, = {src.struct('i')}.unpack_from(buf, pos)")
    src.emit(indent, "pos += 4")
    src.emit(indent, f"if {n} == -1:")
    src.emit(indent + 1, f"{v} = None")
    inner = field.array_of
    if _kind(inner) == "fixed":
        code, size = _FIXED[inner], struct.calcsize(">" + _FIXED[inner])
        src.emit(indent, f"elif {n} > 0:")
        src.emit(indent + 1, f"{v} = list(struct.unpack_from('>%d{code}' % {n}, buf, pos))")
        src.emit(indent + 1, f"pos += {n} * {size}")
        src.emit(indent, "else:")
        src.emit(indent + 1, f"{v} = []")
        return v
    src.emit(indent, "else:")
    src.emit(indent + 1, f"{v} = []")
    src.emit(indent + 1, f"for _ in range({n}):")
    item = _decode_value(src, inner, indent + 2)
    src.emit(indent + 2, f"{v}.append({item})")
    return v


def _decode_schema(src: _Source, schema: Schema, indent: int) -> str:
    parts: list[str] = []
    for kind, indexes in _runs(schema.fields):
        if kind != "fixed":
            parts.append(_decode_value(src, schema.fields[indexes[0]], indent))
            continue
        fmt = "".join(_FIXED[schema.fields[i]] for i in indexes)
        names = [src.name("v") for _ in indexes]
        src.emit(indent, f"{', '.join(names)}, = {src.struct(fmt)}.unpack_from(buf, pos)")
        src.emit(indent, f"pos += {struct.calcsize('>' + fmt)}")
        parts.extend(names)
    return f"({', '.join(parts)}{',' if len(parts) == 1 else ''})"


def _decoder(schema: Schema) -> Callable[[bytes, int], tuple[tuple[Any, ...], int]]:
    """`decode(buf, pos) -> (values, pos after them)`; ValueError on a truncated buffer."""
    src = _Source()
    src.emit(0, "def decode(buf, pos):")
    src.emit(1, "try:")
    values = _decode_schema(src, schema, 2)
    src.emit(2, f"return {values}, pos")
    src.emit(1, "except struct.error as err:")
    src.emit(2, "raise ValueError(f'Error decoding a Kafka message: {err}') from err")
    return src.function("decode")


# ------------------------------------------------------------------ encoding


def _encode_value(src: _Source, field: Any, value: str, indent: int) -> None:
    """Emit code appending the encoding of `value` (an expression) as `field`."""
    kind = _kind(field)
    if kind == "schema":
        item = src.name("x")
        src.emit(indent, f"{item} = {value}")
        src.emit(indent, f"if len({item}) != {len(field.fields)}:")
        src.emit(indent + 1, "raise ValueError('Item field count does not match Schema')")
        _encode_schema(src, field, [f"{item}[{i}]" for i in range(len(field.fields))], indent)
        return
    if kind == "fixed":
        src.emit(indent, f"ap({src.struct(_FIXED[field])}.pack({value}))")
        return
    v = src.name("x")
    src.emit(indent, f"{v} = {value}")
    src.emit(indent, f"if {v} is None:")
    if kind == "string":
        src.emit(indent + 1, f"ap({src.const(_NULL16, 'NULL')})")
        src.emit(indent, "else:")
        src.emit(indent + 1, f"{v} = str({v}).encode({field.encoding!r})")
        src.emit(indent + 1, f"ap({src.struct('h')}.pack(len({v})))")
        src.emit(indent + 1, f"ap({v})")
        return
    src.emit(indent + 1, f"ap({src.const(_NULL32, 'NULL')})")
    src.emit(indent, "else:")
    src.emit(indent + 1, f"ap({src.struct('i')}.pack(len({v})))")
    if kind == "bytes":  # anything else fails here, as aiokafka's `+` does, not at the join
        src.emit(indent + 1, f"if type({v}) is not bytes and type({v}) is not bytearray:")
        src.emit(indent + 2, f"{v} = b'' + {v}")
        src.emit(indent + 1, f"ap({v})")
        return
    inner = field.array_of
    if _kind(inner) == "fixed":  # one pack for the whole array
        src.emit(indent + 1, f"ap(struct.pack('>%d{_FIXED[inner]}' % len({v}), *{v}))")
        return
    item = src.name("i")
    src.emit(indent + 1, f"for {item} in {v}:")
    _encode_value(src, inner, item, indent + 2)


def _encode_schema(src: _Source, schema: Schema, values: list[str], indent: int) -> None:
    for kind, indexes in _runs(schema.fields):
        if kind != "fixed":
            _encode_value(src, schema.fields[indexes[0]], values[indexes[0]], indent)
            continue
        fmt = "".join(_FIXED[schema.fields[i]] for i in indexes)
        args = ", ".join(values[i] for i in indexes)
        src.emit(indent, f"ap({src.struct(fmt)}.pack({args}))")


def _encoder(schema: Schema) -> Callable[[dict[str, Any]], bytes]:
    """`encode(fields) -> bytes`, `fields` a Struct's `__dict__` (by name)."""
    src = _Source()
    src.emit(0, "def encode(d):")
    src.emit(1, "out = []")
    src.emit(1, "ap = out.append")
    src.emit(1, "try:")
    src.emit(2, "pass")  # a schema may have no fields
    _encode_schema(src, schema, [f"d[{name!r}]" for name in schema.names], 2)
    src.emit(1, "except struct.error as err:")
    src.emit(2, "raise ValueError(f'Error encoding a Kafka message: {err}') from err")
    src.emit(1, "return b''.join(out)")
    return src.function("encode")


# ------------------------------------------------------------------ installing


def compile_struct(
    cls: type[Struct],
) -> tuple[Callable[[dict[str, Any]], bytes], Callable[[bytes, int], tuple[tuple[Any, ...], int]]]:
    """`encode(fields by name) -> bytes` and `decode(buf, pos) -> (values, end)` for a
    Struct class (nothing installed); Unsupported if its schema holds a type this module
    does not know."""
    return _encoder(cls.SCHEMA), _decoder(cls.SCHEMA)


def _methods(cls: type[Struct]) -> tuple[Callable[..., bytes], Callable[..., Any]]:
    encode_fields, decode_values = compile_struct(cls)
    generic_decode = Struct.decode.__func__

    def encode(self: Struct) -> bytes:
        return encode_fields(self.__dict__)

    def decode(cls: type[Struct], data: io.BytesIO | bytes) -> Struct:
        if isinstance(data, bytes):
            values, _ = decode_values(data, 0)
        elif isinstance(data, io.BytesIO):  # made from bytes, it shares them: no copy
            values, end = decode_values(data.getvalue(), data.tell())
            data.seek(end)
        else:  # another stream: aiokafka's own walk
            return generic_decode(cls, data)
        return cls(*values)

    return encode, decode


def hot_classes() -> list[type[Struct]]:
    """Every produce and fetch request and response class, and the two headers that the
    non-flexible versions (all aiokafka sends of these) use."""
    headers = (getattr(api, name, None) for name in ("RequestHeader_v1", "ResponseHeader_v0"))
    found: list[type[Struct]] = [h for h in headers if h is not None]
    for module in (produce, fetch):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Struct) and "SCHEMA" in vars(value):
                found.append(value)
    return found


def install(classes: Iterable[type[Struct]] | None = None) -> list[type[Struct]]:
    """Give each class (default: `hot_classes()`) its compiled codec, once; the classes it
    could compile."""
    with _LOCK:  # the adapters install on import, which two threads may do at once
        return _install(hot_classes() if classes is None else classes)


def _install(classes: Iterable[type[Struct]]) -> list[type[Struct]]:
    done = []
    for cls in classes:
        if cls in _ORIGINAL:
            done.append(cls)
            continue
        try:
            encode, decode = _methods(cls)
        except Unsupported:
            continue
        _ORIGINAL[cls] = (vars(cls).get("encode"), vars(cls).get("decode"))
        cls.encode = encode
        cls.decode = classmethod(decode)
        done.append(cls)
    return done


def uninstall() -> None:
    """aiokafka's own codec again, for every class `install` changed (the benchmarks'
    baseline, measured in the same process)."""
    with _LOCK:
        _uninstall()


def _uninstall() -> None:
    for cls, originals in list(_ORIGINAL.items()):
        for name, original in zip(("encode", "decode"), originals, strict=True):
            if original is None:
                delattr(cls, name)  # inherited from Struct again
            else:
                setattr(cls, name, original)
        del _ORIGINAL[cls]


_ORIGINAL: dict[type[Struct], tuple[Any, Any]] = {}  # class -> its own encode, decode
_LOCK = threading.Lock()
