"""Cached response bodies: round trips per encoding, through the event log, and corruption."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.service.core import events as ev
from turnout.service.core.cache import (
    CacheIndex,
    EncodedBody,
    decide_lookup,
    decide_store,
    evolve_cache,
)
from turnout.service.core.config import parse_config
from turnout.service.runtime.cachecodec import BodyCodec, CacheCodecError, default_codec
from turnout.service.wire.cloudevents import decode, encode, wrap

ENCODINGS = ["zstd", "gzip", "none"]
USAGE = ev.Usage(prompt_tokens=12, completion_tokens=40, total_tokens=52)


def completion(answer: str = "Paris is the capital of France. " * 20) -> dict[str, Any]:
    return {
        "id": "gen-1764221737-abcdefghijklmnop",
        "object": "chat.completion",
        "created": 1_764_221_737,
        "model": "openai/gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
    }


@settings(max_examples=100)
@given(st.binary(max_size=5_000), st.sampled_from(ENCODINGS))
def test_any_bytes_round_trip_in_every_encoding(data: bytes, encoding: str) -> None:
    codec = BodyCodec()
    assert codec.decode(codec.encode(data, encoding), encoding, size_bytes=len(data)) == data


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_response_round_trips_and_compression_shrinks_it(encoding: str) -> None:
    codec = default_codec()
    encoded = codec.encode_response(completion(), encoding)
    assert encoded.encoding == encoding
    assert codec.decode_response(encoded) == completion()
    if encoding == "none":
        assert len(encoded.body) == encoded.size_bytes
    else:
        assert len(encoded.body) * 2 < encoded.size_bytes  # a repetitive answer
    assert codec.encode_response(completion(), encoding) == encoded  # same body, same bytes


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_stored_answer_read_back_from_the_event_log_answers_a_hit(encoding: str) -> None:
    """What a restart does: the `CacheStored` event is decoded from its record, folded,
    and the body it carries (base64 in the JSON) is what the hit answers with."""
    codec, cfg = BodyCodec(), parse_config({"cache": {"compression": encoding}}, {})
    stored = decide_store(
        CacheIndex(),
        request_id="r1",
        tenant="acme",
        key="k",
        model="openai/gpt-4o-mini",
        body=codec.encode_response(completion(), encoding),
        usage=USAGE,
        cost_micros=210,
        now_ms=1_000,
        cfg=cfg,
    )
    envelopes = [wrap(e, id=f"e{n}", time_ms=1_000, source="t") for n, e in enumerate(stored)]
    rebuilt = CacheIndex()
    for env in envelopes:
        evolve_cache(rebuilt, decode(*encode(env)).data)
    hit = decide_lookup(rebuilt, request_id="r2", tenant="acme", key="k", now_ms=2_000)
    assert hit.entry is not None and hit.entry.encoding == encoding
    assert codec.decode_response(hit.entry) == completion()


def flip(body: bytes, at: int) -> bytes:
    return body[:at] + bytes([body[at] ^ 0x41]) + body[at + 1 :]


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_a_corrupt_compressed_body_raises_a_clear_error(encoding: str) -> None:
    codec = BodyCodec()
    encoded = codec.encode_response(completion(), encoding)
    for bad in (flip(encoded.body, len(encoded.body) // 2), encoded.body[:-5], b"not a frame"):
        corrupt = EncodedBody(encoding=encoding, body=bad, size_bytes=encoded.size_bytes)
        with pytest.raises(CacheCodecError, match=rf"cached body \({encoding}, .* is corrupt"):
            codec.decode_response(corrupt)


def test_a_truncated_plain_body_or_one_that_is_not_json_is_refused() -> None:
    codec = BodyCodec()
    encoded = codec.encode_response(completion(), "none")
    cut = EncodedBody(encoding="none", body=encoded.body[:-1], size_bytes=encoded.size_bytes)
    with pytest.raises(CacheCodecError, match=r"decoded to \d+ bytes, not the \d+ recorded"):
        codec.decode_response(cut)
    with pytest.raises(CacheCodecError, match="not JSON"):
        codec.decode_response(EncodedBody(encoding="none", body=b"{", size_bytes=1))
    with pytest.raises(CacheCodecError, match="not a JSON object"):
        codec.decode_response(EncodedBody(encoding="none", body=b"[]", size_bytes=2))


def test_a_body_read_with_the_wrong_or_an_unknown_encoding_is_refused() -> None:
    codec = BodyCodec()
    zstd = codec.encode(b"hello" * 100, "zstd")
    with pytest.raises(CacheCodecError, match="is corrupt"):
        codec.decode(zstd, "gzip")
    with pytest.raises(CacheCodecError, match="unknown cache encoding 'lz4'"):
        codec.decode(zstd, "lz4")
    with pytest.raises(CacheCodecError, match="expected one of zstd, gzip, none"):
        codec.encode(b"x", "brotli")
