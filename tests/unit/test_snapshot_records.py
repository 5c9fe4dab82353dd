"""Snapshot records: chunks and manifests, finding the newest good one, and when one is due."""

from __future__ import annotations

import logging
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.service.core import snapshot
from turnout.service.core.config import SnapshotsConfig
from turnout.service.core.state import RouterState
from turnout.service.runtime import snapshots
from turnout.service.runtime.snapshots import CHUNK_BYTES, Found, Manifest, Schedule, pack, unpack


def frame(offset: int, partition: int = 3) -> bytes:
    part = snapshot.capture(RouterState(), partition)
    return snapshot.encode(part, offset=offset, taken_at_ms=offset, writer="w")


def packed(offset: int, sid: str, partition: int = 3) -> tuple[Manifest, list[bytes]]:
    return pack(frame(offset, partition), snapshot_id=sid, partition=partition, offset=offset,
                taken_at_ms=offset, writer="w")  # fmt: skip


def into(found: Found, manifest: Manifest, chunks: list[bytes]) -> None:
    for i, chunk in enumerate(chunks):
        found.add(snapshots.chunk_key(manifest.partition, manifest.snapshot_id, i), chunk)
    found.add(snapshots.manifest_key(manifest.partition), snapshots._encoder.encode(manifest))


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=0, max_size=3 * CHUNK_BYTES))
def test_any_frame_survives_being_cut_into_chunks(data: bytes) -> None:
    manifest, chunks = pack(data, snapshot_id="s", partition=0, offset=1, taken_at_ms=1,
                            writer="w")  # fmt: skip
    assert all(len(c) <= CHUNK_BYTES for c in chunks)
    assert manifest.chunks == len(chunks)
    joined = b"".join(chunks)
    assert snapshots.zstandard.ZstdDecompressor().decompress(joined) == data


def test_a_big_state_is_several_chunks_and_each_missing_or_changed_one_is_refused() -> None:
    data = frame(9)
    big = data + os.urandom(2 * CHUNK_BYTES)  # incompressible tail: three chunks
    manifest, chunks = pack(big, snapshot_id="s", partition=3, offset=9, taken_at_ms=9, writer="w")
    assert len(chunks) == 3
    with pytest.raises(snapshot.SnapshotError, match="2 of its 3 chunks"):
        unpack(manifest, [chunks[0], None, chunks[2]])
    flipped = bytearray(chunks[1])
    flipped[100] ^= 1
    with pytest.raises(snapshot.SnapshotError, match="digest"):
        unpack(manifest, [chunks[0], bytes(flipped), chunks[2]])
    small, parts = packed(9, "t")
    assert unpack(small, parts).offset == 9


def test_the_newest_offset_wins_and_a_broken_newest_falls_back_to_the_older_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    found = Found()
    older, newer = packed(10, "a"), packed(20, "b")
    into(found, *newer)
    into(found, *older)  # arrived later (a revoked router's late write): offset decides
    best = found.best(3)
    assert best is not None and best.offset == 20

    found.add(snapshots.chunk_key(3, "b", 0), b"\x00garbage")  # the newest corrupted
    with caplog.at_level(logging.WARNING, logger="turnout.snapshots"):
        best = found.best(3)
    assert best is not None and best.offset == 10
    assert "snapshot b of events partition 3 (offset 20) skipped" in caplog.text


def test_superseded_snapshots_whose_chunks_were_tombstoned_are_skipped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    found = Found()
    for offset, sid in ((10, "a"), (20, "b"), (30, "c")):
        into(found, *packed(offset, sid))
    found.add(snapshots.chunk_key(3, "a", 0), None)  # the writer's tombstone
    assert found.chunk_sets(3) == [("b", 1), ("c", 1)]
    for key in (snapshots.chunk_key(3, s, 0) for s in ("b", "c")):
        found.add(key, None)
    with caplog.at_level(logging.WARNING, logger="turnout.snapshots"):
        assert found.best(3) is None  # nothing left: fold from the start
    assert caplog.text.count("skipped") == 1  # the newest one only
    assert found.best(4) is None


def test_a_record_that_is_not_a_manifest_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    found = Found()
    with caplog.at_level(logging.WARNING, logger="turnout.snapshots"):
        found.add("events-3", b"not msgpack \xc1")
        found.add("marker-r1", b"m")
    assert found.manifests == {}
    assert "not a manifest" in caplog.text


def test_a_snapshot_is_due_by_events_or_by_time_one_at_a_time() -> None:
    schedule = Schedule(SnapshotsConfig(every_events=3, every_s=10.0))
    schedule.own([1, 2], None, now_s=0.0, since={1: 2})
    assert not schedule.due(1, 0.0) and not schedule.due(2, 100.0)  # 2: nothing came
    schedule.folded(1)
    assert schedule.due(1, 0.0)
    schedule.taken(1, 0.0)
    schedule.folded(1)
    assert not schedule.due(1, 50.0)  # one is being written
    schedule.lost(1, events=3)  # its write failed: those events are due again
    assert schedule.due(1, 0.0)
    schedule.folded(2)
    assert not schedule.due(2, 9.9) and schedule.due(2, 10.0)
    assert schedule.due(2, 1.0, force=True)
    assert not schedule.due(7, 100.0, force=True)  # not ours


def test_only_the_newest_snapshot_and_its_fallback_keep_their_chunks() -> None:
    schedule = Schedule(SnapshotsConfig())
    schedule.own([1], None, now_s=0.0)
    for n, sid in enumerate(("a", "b", "c")):
        gone = schedule.older(1)
        schedule.taken(1, float(n))
        schedule.done(1, sid, chunks=2, size=10, offset=n)
        assert gone == ([("a", 2)] if sid == "c" else [])  # c is in: a is no one's fallback
    assert schedule.history[1] == [("b", 2), ("c", 2)]
