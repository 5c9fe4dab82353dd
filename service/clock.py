"""The one source of time and ids for the shell.

The functional core never reads the clock or randomness: the shell asks this
module for `now` and fresh ids and hands them to the core as arguments. Tests
replace the clock with `FixedClock` to get deterministic times and ids.

Ids are UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits, so
they sort by creation time. `SystemClock.new_id` is monotonic within a process
(RFC 9562 section 6.2, method 3: within one millisecond, the 74 random bits of
the previous id plus one): the events of one router sort, by id, in the order
it decided them, even within a millisecond and across partitions (what-if
replay uses that order to break ties).
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "FixedClock", "SystemClock", "clock", "uuid7", "uuid7_at"]


def uuid7_at(unix_ms: int, rand: bytes) -> uuid.UUID:
    """A UUIDv7 for `unix_ms` with 74 random bits taken from `rand` (10 bytes)."""
    value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80
    value |= int.from_bytes(rand[:10], "big") & ((1 << 80) - 1)
    value &= ~(0xF << 76)
    value |= 0x7 << 76  # version
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # RFC 4122 variant
    return uuid.UUID(int=value)


_RAND_BITS = 74  # 12 bits of rand_a, then 62 of rand_b, around the version and variant
_LOW_62 = (1 << 62) - 1
_VARIANT = 0x2 << 62  # RFC 9562: the top two bits of the last 64 are 10


# new_id's random bits: a private generator seeded from the OS (and again in a forked
# child), not os.urandom per id: a getrandom() syscall per event cost ~0.3 us of the
# ~1.7 us an id took, on a path that makes ten ids per request. Ids need to be unique,
# not secret (nothing is authorised by knowing one).
_rng = random.Random()
_forks = [0]  # a forked child counts up from its own random bits, never from its parent's


def _forked() -> None:
    _rng.seed()
    _forks[0] += 1


os.register_at_fork(after_in_child=_forked)


def uuid7() -> uuid.UUID:
    return uuid7_at(time.time_ns() // 1_000_000, os.urandom(10))


class Clock(Protocol):
    def now_ms(self) -> int: ...
    def monotonic(self) -> float: ...
    def new_id(self) -> str: ...


class SystemClock:
    """Wall-clock time in Unix milliseconds and UUIDv7 ids (monotonic per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._last_bits = 0
        self._fork = _forks[0]
        self._high = -1  # the id text up to rand_b depends on these 60 bits only:
        self._prefix = ""  # made once per millisecond (and rand_a), not once per id

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    def new_id(self) -> str:
        """A UUIDv7 string, greater than every id this clock made before (hot path: no
        `uuid.UUID`). A new millisecond starts from fresh random bits (the top one clear,
        so counting up within it cannot overflow in practice); the same millisecond, or a
        clock that stepped back, counts up from the last id."""
        now = time.time_ns() // 1_000_000
        with self._lock:
            if self._fork != _forks[0]:
                self._fork, self._last_ms = _forks[0], 0
            if now > self._last_ms:
                bits = _rng.getrandbits(_RAND_BITS - 1)
            else:
                now, bits = self._last_ms, self._last_bits + 1
                if bits >> _RAND_BITS:  # 2^73 ids in one millisecond: take the next one
                    now, bits = now + 1, _rng.getrandbits(_RAND_BITS - 1)
            self._last_ms, self._last_bits = now, bits
            high = (now & 0xFFFF_FFFF_FFFF) << 12 | bits >> 62  # unix_ms, rand_a
            if high != self._high:
                h = f"{high:015x}"
                self._high, self._prefix = high, f"{h[:8]}-{h[8:12]}-7{h[12:]}-"
            prefix = self._prefix
        low = f"{_VARIANT | bits & _LOW_62:016x}"  # the variant, then rand_b
        return f"{prefix}{low[:4]}-{low[4:]}"

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.now_ms() / 1000, tz=UTC)


class FixedClock:
    """A clock for tests: time moves only when told; ids count up."""

    def __init__(self, start_ms: int = 1_767_225_600_000) -> None:
        self._now_ms = start_ms
        self._seq = 0

    def now_ms(self) -> int:
        return self._now_ms

    def monotonic(self) -> float:
        return self._now_ms / 1000

    def advance(self, ms: int) -> None:
        self._now_ms += ms

    def new_id(self) -> str:
        self._seq += 1
        return str(uuid7_at(self._now_ms, self._seq.to_bytes(10, "big")))


clock: Clock = SystemClock()
