"""The shell's ids: UUIDv7 strings that are unique, in creation order, and differ in a fork."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from turnout.service.clock import SystemClock


def test_ids_are_uuid7_unique_and_ordered_by_their_millisecond() -> None:
    clock = SystemClock()
    ids = [clock.new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    stamps = [u.int >> 80 for u in parsed]
    assert stamps == sorted(stamps)  # ordered by their millisecond
    assert len(set(stamps)) < len(stamps)  # many ids share a millisecond...
    assert ids == sorted(ids)  # ...and still sort in the order they were made
    assert [str(u) for u in parsed] == ids  # the canonical lower-case 8-4-4-4-12 form


def test_ids_counting_up_within_a_millisecond_carry_into_rand_a(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Within one millisecond the 74 random bits count up; crossing from rand_b (62 bits)
    into rand_a (12 bits, before the variant) the text must carry, not wrap."""
    clock = SystemClock()
    monkeypatch.setattr(time, "time_ns", lambda: 1_795_757_737_123_000_000)
    first = uuid.UUID(clock.new_id())
    clock._last_bits = (1 << 62) - 2  # two ids before rand_b overflows
    ids = [clock.new_id() for _ in range(4)]
    parsed = [uuid.UUID(i) for i in ids]
    assert [str(u) for u in parsed] == ids and ids == sorted(ids)
    assert all(u.int >> 80 == 1_795_757_737_123 and u.version == 7 for u in parsed)
    assert all(u.variant == uuid.RFC_4122 for u in [first, *parsed])
    bits = [(u.int >> 64 & 0xFFF) << 62 | u.int & ((1 << 62) - 1) for u in parsed]
    assert bits == [(1 << 62) - 1, 1 << 62, (1 << 62) + 1, (1 << 62) + 2]


def test_ids_of_a_clock_that_stepped_back_still_count_up(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SystemClock()
    first = clock.new_id()
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() - 5_000_000_000)  # NTP stepped back 5 s
    later = [clock.new_id() for _ in range(100)]
    assert [first, *later] == sorted([first, *later]) and len(set(later)) == 100
    assert all(uuid.UUID(i).version == 7 for i in later)


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the same generator state would give the parent's next ids
        os.write(write, ",".join(SystemClock().new_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    parent = {SystemClock().new_id() for _ in range(100)}
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    assert len(child) == 100
    assert not parent & child
