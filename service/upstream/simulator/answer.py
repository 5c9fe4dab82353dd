"""Deterministic answers and token counts for simulated completions.

Job: turn a request's identity (a hash of model, messages and sampling
parameters) into answer text, and count tokens the way the simulator reports
them.

Rules:
- Same request key, same answer: text, token counts and finish reason depend
  only on the key and `max_tokens`, never on time, randomness or `stream`, so
  a cached answer and a fresh one compare equal.
- Tokens are estimated as characters / 4, rounded up (`estimate_tokens`). The
  prompt count sums the text of every message (string content, or the `text`
  of content parts), with no per-message overhead, and is at least 1.
- A natural answer is 12 to 51 words. When it would exceed `max_tokens` it is
  cut to `max_tokens * 4` characters and finishes with `"length"`, so
  `completion_tokens <= max_tokens` always holds.
- Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import msgspec

__all__ = ["Answer", "estimate_tokens", "make_answer", "prompt_text_length", "split_for_stream"]

_SOURCE = (
    "the router sends each request to a model and records what happened as an event so that "
    "replay can rebuild every breaker budget and cache entry from the log alone while the "
    "simulator answers quickly with stable text for tests of caching retries fallbacks and "
    "limits across tenants partitions brokers topics consumers producers latency tokens cost"
)
_VOCAB = tuple(dict.fromkeys(_SOURCE.split(" ")))


class Answer(msgspec.Struct, frozen=True):
    text: str
    completion_tokens: int
    finish_reason: str


def estimate_tokens(chars: int) -> int:
    """The simulator's token estimate for `chars` characters: ceil(chars / 4)."""
    return -(-chars // 4)


def prompt_text_length(contents: Iterable[str | list[Any] | None]) -> int:
    """Characters of text across message contents (strings or content parts)."""
    total = 0
    for content in contents:
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    total += len(text)
    return total


def make_answer(key: bytes, max_tokens: int | None) -> Answer:
    """The answer for a request whose identity hashes to `key`."""
    digest = hashlib.blake2b(key, digest_size=64).digest()
    count = 12 + digest[0] % 40
    words = [_VOCAB[b % len(_VOCAB)] for b in digest[1 : 1 + count]]
    text = " ".join(words).capitalize() + "."
    if max_tokens is not None and estimate_tokens(len(text)) > max_tokens:
        text = text[: max_tokens * 4]
        return Answer(text, estimate_tokens(len(text)), "length")
    return Answer(text, estimate_tokens(len(text)), "stop")


def split_for_stream(text: str, words_per_chunk: int = 3) -> list[str]:
    """Stream deltas of a few words each; joined, they give `text` back."""
    words = text.split(" ")
    chunks = []
    for start in range(0, len(words), words_per_chunk):
        piece = " ".join(words[start : start + words_per_chunk])
        chunks.append(piece if start + words_per_chunk >= len(words) else piece + " ")
    return chunks
