"""Deterministic "randomness": uniform samples derived from a hash of ids.

The core never calls a random generator. Where a choice needs chance (weighted
routing, retry jitter) it takes `uniform(request_id, ...)`: the same request id
gives the same sample on every replay, and events record what was chosen.
"""

from __future__ import annotations

import hashlib

__all__ = ["uniform"]

_SCALE = float(1 << 64)


def uniform(*parts: str | int) -> float:
    """A number in [0, 1) fixed by `parts` (blake2b of their text)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE
