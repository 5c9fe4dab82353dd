"""Encode and decode cached response bodies: zstd, gzip or none (the shell side of the cache).

The pure core cannot import a compression library, so the shell encodes a
successful answer here before the core decides to store it
(`turnout.service.core.cache.decide_store` takes the `EncodedBody`), and decodes an
entry's body here to answer a hit.

Rules:
- A body is the JSON of the OpenAI chat.completion object (msgspec, compact).
- zstd: level 3, the frame records the content size and a checksum; gzip:
  level 6, RFC 1952 (CRC-32). The same body always encodes to the same bytes.
- Compressor objects are made once per `BodyCodec` and reused; a codec is not
  thread-safe (one per thread; the router's event loop uses `default_codec()`).
- A body that does not decode (corrupt, truncated, wrong encoding, not the
  recorded size) raises `CacheCodecError` saying why, never a library
  exception; the caller treats the entry as a miss.
"""

from __future__ import annotations

import zlib
from typing import Any, Final, Protocol

import msgspec
import zstandard

from turnout.service.core.cache import ENCODINGS, EncodedBody

__all__ = [
    "GZIP_LEVEL",
    "ZSTD_LEVEL",
    "BodyCodec",
    "CacheCodecError",
    "Stored",
    "default_codec",
]

ZSTD_LEVEL: Final = 3
GZIP_LEVEL: Final = 6
_GZIP_WBITS: Final = 31  # zlib's gzip container


class Stored(Protocol):
    """What `decode_response` reads: an `EncodedBody` or a cache entry (`CacheStored`)."""

    @property
    def encoding(self) -> str: ...
    @property
    def body(self) -> bytes: ...
    @property
    def size_bytes(self) -> int: ...


class CacheCodecError(ValueError):
    """A cached body could not be encoded or decoded; the message says what to do."""


class BodyCodec:
    """Encodes and decodes cache bodies, reusing its zstd (de)compressor."""

    __slots__ = ("_json", "_unzstd", "_zstd")

    def __init__(self, *, zstd_level: int = ZSTD_LEVEL) -> None:
        self._zstd = zstandard.ZstdCompressor(
            level=zstd_level, write_content_size=True, write_checksum=True
        )
        self._unzstd = zstandard.ZstdDecompressor()
        self._json = msgspec.json.Encoder()

    def encode(self, data: bytes, encoding: str) -> bytes:
        """`data` in `encoding` ("zstd", "gzip" or "none")."""
        if encoding == "zstd":
            return self._zstd.compress(data)
        if encoding == "gzip":
            return zlib.compress(data, GZIP_LEVEL, wbits=_GZIP_WBITS)
        if encoding == "none":
            return bytes(data)
        raise CacheCodecError(_unknown(encoding))

    def decode(self, body: bytes, encoding: str, *, size_bytes: int | None = None) -> bytes:
        """The original bytes of `body`; `size_bytes`, when given, must match them."""
        try:
            data = self._decode(body, encoding, size_bytes)
        except (zstandard.ZstdError, zlib.error) as err:
            raise CacheCodecError(
                f"a cached body ({encoding}, {len(body)} bytes) is corrupt: {err}; "
                "the entry cannot answer, treat it as a miss"
            ) from None
        if size_bytes is not None and len(data) != size_bytes:
            raise CacheCodecError(
                f"a cached body ({encoding}) decoded to {len(data)} bytes, "
                f"not the {size_bytes} recorded; treat the entry as a miss"
            )
        return data

    def _decode(self, body: bytes, encoding: str, size_bytes: int | None) -> bytes:
        if encoding == "zstd":
            limit = size_bytes + 1 if size_bytes is not None else 0
            return self._unzstd.decompress(body, max_output_size=limit)
        if encoding == "gzip":
            unzip = zlib.decompressobj(wbits=_GZIP_WBITS)
            data = unzip.decompress(body)
            if not unzip.eof or unzip.unused_data:
                raise zlib.error("truncated or trailing data after the gzip stream")
            return data
        if encoding == "none":
            return bytes(body)
        raise CacheCodecError(_unknown(encoding))

    def encode_response(self, response: dict[str, Any], encoding: str) -> EncodedBody:
        """A chat.completion object as the `EncodedBody` the core stores."""
        data = self._json.encode(response)
        return EncodedBody(
            encoding=encoding, body=self.encode(data, encoding), size_bytes=len(data)
        )

    def decode_response(self, entry: Stored) -> dict[str, Any]:
        """The chat.completion object of an entry or an `EncodedBody`."""
        data = self.decode(entry.body, entry.encoding, size_bytes=entry.size_bytes)
        try:
            response = msgspec.json.decode(data)
        except msgspec.DecodeError as err:
            raise CacheCodecError(f"a cached body is not JSON: {err}") from None
        if not isinstance(response, dict):
            raise CacheCodecError("a cached body is not a JSON object")
        return response


def _unknown(encoding: str) -> str:
    return f"unknown cache encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}"


_default: BodyCodec | None = None


def default_codec() -> BodyCodec:
    """The process's codec for the event loop's thread (made on first use)."""
    global _default
    if _default is None:
        _default = BodyCodec()
    return _default
