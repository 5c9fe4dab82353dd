"""`turnout.snapshots`: writing a partition's snapshot, and finding the newest good one.

The codec (what a snapshot holds, its version and digest) is `turnout.service.core.snapshot`;
this is its shell: compression, records, and the compacted topic.

A snapshot of events partition `p` is written as
- chunks: the zstd-compressed frame cut into pieces of at most `CHUNK_BYTES`, keyed
  `events-<p>/<snapshot id>/<i>` (a big partition's state is larger than a record may be),
- then its manifest, keyed `events-<p>` (so compaction keeps only the newest): the
  snapshot id, the events offset it covers, the chunk count, size and digest;
- then tombstones for the chunks of every older snapshot of `p` but the one before
  (kept as the fallback if the newest turns out unreadable).

A manifest is sent only once all its chunks are acknowledged, and a snapshot's
offset is known only once the last event it covers is acknowledged: a manifest
never names chunks or events that are not in the log.

Reading: to a marker this reader writes itself (key `marker-<instance>`), never
to end offsets. For each partition the manifests are tried newest offset first; one
whose chunks are missing, whose digest differs or whose frame does not decode is
skipped with a warning (a superseded one silently), and the next older is tried.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import msgspec
import zstandard
from aiokafka import TopicPartition

from turnout.service.core import snapshot
from turnout.service.core.config import SnapshotsConfig
from turnout.service.kafka.consumer import Reader
from turnout.service.kafka.producer import Producer
from turnout.service.kafka.settings import KafkaSettings

__all__ = [
    "CHUNK_BYTES",
    "Found",
    "Manifest",
    "Schedule",
    "pack",
    "read_snapshots",
    "unpack",
    "write_snapshot",
]

log = logging.getLogger("turnout.snapshots")

CHUNK_BYTES: Final = 512 * 1024
MANIFEST_VERSION: Final = 1
KEEP: Final = 2  # snapshots per partition whose chunks stay: the newest and its fallback
READ_TIMEOUT_S: Final = 120.0


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """The record keyed `events-<p>`: which chunks make the snapshot, and what it covers."""

    version: int
    snapshot_id: str
    partition: int
    offset: int  # the events offset the snapshot covers up to (exclusive)
    taken_at_ms: int
    writer: str
    chunks: int
    size: int  # compressed bytes, all chunks together
    digest: str  # blake2b-128 of the compressed bytes


_encoder: Final = msgspec.msgpack.Encoder()
_manifest_decoder: Final = msgspec.msgpack.Decoder(Manifest)


def manifest_key(partition: int) -> str:
    return f"events-{partition}"


def chunk_key(partition: int, snapshot_id: str, index: int) -> str:
    return f"events-{partition}/{snapshot_id}/{index}"


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# --- pure: frame <-> manifest + chunks ------------------------------------------------


def pack(
    frame: bytes, *, snapshot_id: str, partition: int, offset: int, taken_at_ms: int, writer: str
) -> tuple[Manifest, list[bytes]]:
    """Compress an encoded snapshot frame and cut it into chunks."""
    payload = zstandard.ZstdCompressor(level=3).compress(frame)
    chunks = [payload[i : i + CHUNK_BYTES] for i in range(0, len(payload), CHUNK_BYTES)] or [b""]
    manifest = Manifest(
        version=MANIFEST_VERSION, snapshot_id=snapshot_id, partition=partition, offset=offset,
        taken_at_ms=taken_at_ms, writer=writer, chunks=len(chunks), size=len(payload),
        digest=_digest(payload),
    )  # fmt: skip
    return manifest, chunks


def unpack(manifest: Manifest, chunks: Iterable[bytes | None]) -> snapshot.Snapshot:
    """The snapshot a manifest and its chunks make, or `SnapshotError` saying why not."""
    parts = list(chunks)
    if len(parts) != manifest.chunks or any(c is None for c in parts):
        have = sum(c is not None for c in parts)
        raise snapshot.SnapshotError(f"{have} of its {manifest.chunks} chunks are in the topic")
    payload = b"".join(c for c in parts if c is not None)
    if len(payload) != manifest.size or _digest(payload) != manifest.digest:
        raise snapshot.SnapshotError("its chunks do not match the manifest's digest (corrupt)")
    try:
        frame = zstandard.ZstdDecompressor().decompress(payload)
    except zstandard.ZstdError as err:
        raise snapshot.SnapshotError(f"its chunks do not decompress: {err}") from None
    snap = snapshot.decode(frame)
    if snap.partition != manifest.partition or snap.offset != manifest.offset:
        raise snapshot.SnapshotError("its frame names another partition or offset")
    return snap


# --- reading --------------------------------------------------------------------------


@dataclass
class Found:
    """What the snapshots topic holds: manifests per partition (log order), live chunks."""

    manifests: dict[int, list[Manifest]] = field(default_factory=dict)
    chunks: dict[str, bytes] = field(default_factory=dict)
    records: int = 0

    def add(self, key: str, value: bytes | None) -> None:
        self.records += 1
        if key.startswith("marker-"):
            return
        if "/" in key:  # a chunk, or a chunk's tombstone
            if value is None:
                self.chunks.pop(key, None)
            else:
                self.chunks[key] = value
            return
        if value is None:
            return
        try:
            manifest = _manifest_decoder.decode(value)
        except msgspec.DecodeError as err:
            log.warning("snapshots: record %s is not a manifest (%s): ignored", key, err)
            return
        if manifest.version != MANIFEST_VERSION or key != manifest_key(manifest.partition):
            log.warning("snapshots: manifest %s of version %s: ignored", key, manifest.version)
            return
        self.manifests.setdefault(manifest.partition, []).append(manifest)

    def best(self, partition: int) -> snapshot.Snapshot | None:
        """The newest snapshot of `partition` that restores; None: fold from the start."""
        candidates = sorted(self.manifests.get(partition, []), key=lambda m: m.offset)
        for rank, manifest in enumerate(reversed(candidates)):
            chunks = [self.chunks.get(chunk_key(partition, manifest.snapshot_id, i))
                      for i in range(manifest.chunks)]  # fmt: skip
            try:
                return unpack(manifest, chunks)
            except snapshot.SnapshotError as err:
                if rank == 0 or any(c is not None for c in chunks):  # not merely superseded
                    log.warning(
                        "snapshot %s of events partition %d (offset %d) skipped: %s",
                        manifest.snapshot_id, partition, manifest.offset, err,
                    )  # fmt: skip
        return None

    def chunk_sets(self, partition: int) -> list[tuple[str, int]]:
        """(snapshot id, chunk count) of every snapshot of `partition` with chunks left,
        oldest first (the writer tombstones all but the newest `KEEP`)."""
        prefix = f"{manifest_key(partition)}/"
        counts: dict[str, int] = {}
        for key in self.chunks:
            if key.startswith(prefix):
                sid, _, index = key[len(prefix) :].partition("/")
                if index.isdigit():
                    counts[sid] = max(counts.get(sid, 0), int(index) + 1)
        return sorted(counts.items())  # ids are uuid7: time-ordered


async def read_snapshots(
    settings: KafkaSettings, producer: Producer, *, instance: str, marker_id: str
) -> Found:
    """Everything in the snapshots topic up to a marker written now."""
    topic = settings.topics.snapshots
    marker = f"marker-{instance}".encode()
    await (await producer.send(topic, marker_id.encode(), key=marker, partition=0))
    found = Found()
    async with Reader(settings, [TopicPartition(topic, 0)]) as reader:
        records = await reader.read_until(
            lambda r: r.key == marker and r.value == marker_id.encode(), timeout_s=READ_TIMEOUT_S
        )
    for record in records:
        if record.key is not None:
            found.add(record.key.decode("utf-8", "replace"), record.value)
    return found


# --- writing --------------------------------------------------------------------------


class Schedule:
    """When each owned partition is due a snapshot, and which chunk sets it has written.

    Due: `every_events` events folded since the last snapshot, or `every_s` since it
    when at least one event came. One snapshot per partition at a time.
    """

    def __init__(self, cfg: SnapshotsConfig) -> None:
        self.cfg = cfg
        self.owned: set[int] = set()
        self.since: dict[int, int] = {}
        self.last_s: dict[int, float] = {}
        self.busy: set[int] = set()
        self.history: dict[int, list[tuple[str, int]]] = {}
        self.written = 0
        self.failed = 0
        self.last_bytes: dict[int, int] = {}
        self.last_offset: dict[int, int] = {}

    def own(
        self, partitions: Iterable[int], found: Found | None, now_s: float,
        since: dict[int, int] | None = None,
    ) -> None:  # fmt: skip
        """Serve `partitions` from now on; `since`: events each rebuild folded after its
        snapshot (they count toward the next one)."""
        self.owned = set(partitions)
        for p in self.owned:
            self.since[p] = (since or {}).get(p, 0)
            self.last_s[p] = now_s
            self.busy.discard(p)
            if found is not None:
                self.history[p] = found.chunk_sets(p)

    def folded(self, partition: int) -> None:
        self.since[partition] = self.since.get(partition, 0) + 1

    def due(self, partition: int, now_s: float, *, force: bool = False) -> bool:
        """`force`: due if any event came since the last one (on stop)."""
        if partition not in self.owned or partition in self.busy:
            return False
        since = self.since.get(partition, 0)
        if since >= self.cfg.every_events or (force and since > 0):
            return True
        return since > 0 and now_s - self.last_s.get(partition, now_s) >= self.cfg.every_s

    def taken(self, partition: int, now_s: float) -> None:
        self.busy.add(partition)
        self.since[partition] = 0
        self.last_s[partition] = now_s

    def done(self, partition: int, snapshot_id: str, chunks: int, size: int, offset: int) -> None:
        self.busy.discard(partition)
        self.history[partition] = [*self.history.get(partition, [])[-(KEEP - 1) :],
                                   (snapshot_id, chunks)]  # fmt: skip
        self.written += 1
        self.last_bytes[partition] = size
        self.last_offset[partition] = offset

    def lost(self, partition: int, events: int) -> None:
        """The write failed: the events it covered are due again."""
        self.busy.discard(partition)
        self.failed += 1
        self.since[partition] = self.since.get(partition, 0) + events

    def older(self, partition: int) -> list[tuple[str, int]]:
        """Chunk sets to tombstone once a new snapshot is in: all but the newest one."""
        return self.history.get(partition, [])[: -(KEEP - 1) or None]

    def as_dict(self) -> dict[str, object]:
        return {
            "written": self.written, "failed": self.failed,
            "partitions": {str(p): {"offset": self.last_offset.get(p),
                                    "bytes": self.last_bytes.get(p),
                                    "events_since": self.since.get(p, 0)}
                           for p in sorted(self.owned)},
        }  # fmt: skip


async def write_snapshot(
    producer: Producer, topic: str, manifest: Manifest, chunks: list[bytes],
    older: list[tuple[str, int]],
) -> None:  # fmt: skip
    """Chunks, then (once they are acknowledged) the manifest, then tombstones for `older`
    snapshots' chunks (once the manifest is acknowledged)."""
    p, sid = manifest.partition, manifest.snapshot_id
    sent = [await producer.send(topic, c, key=chunk_key(p, sid, i).encode(), partition=0)
            for i, c in enumerate(chunks)]  # fmt: skip
    for future in sent:
        await future
    await (await producer.send(topic, _encoder.encode(manifest),
                               key=manifest_key(p).encode(), partition=0))  # fmt: skip
    gone = [await producer.send(topic, None, key=chunk_key(p, old, i).encode(), partition=0)
            for old, count in older for i in range(count)]  # fmt: skip
    for future in gone:
        await future
