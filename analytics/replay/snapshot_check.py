"""`turnout replay verify --snapshots`: is every stored snapshot the fold of its events?

A snapshot of events partition `p` at offset `o` (`turnout.service.core.snapshot`) claims
that `p`'s own parts (requests in flight and finished, rate windows and budgets
of its tenants, its cache index) are what folding `p`'s events before `o` gives.
This reads every snapshot whose chunks are still in `turnout.snapshots`, folds the
events it covers from the topic itself, and compares the two with
`snapshot.own_parts` (a snapshot's router-wide signals fold from every partition
in arrival order: they are not checked).

When retention has deleted the start of the partition, a snapshot is checked
against the newest older snapshot that the remaining log reaches (which is itself
checked the same way); one that nothing reaches is reported `not checkable`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from turnout.analytics.replay.verify import Difference, diff
from turnout.service.core import snapshot
from turnout.service.core.config import Config
from turnout.service.core.state import RouterState, evolve
from turnout.service.kafka.consumer import Reader
from turnout.service.kafka.producer import Producer
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.runtime import snapshots
from turnout.service.wire import cloudevents as ce
from turnout.service.wire.errors import WireError

__all__ = ["Checked", "check_snapshots"]


@dataclass
class Checked:
    """One stored snapshot and what the log says of it."""

    partition: int
    offset: int
    snapshot_id: str
    taken_at_ms: int
    writer: str
    outcome: str  # "ok", "different", "unreadable", "not checkable"
    events: int = 0  # events folded to check it
    base: int | None = None  # the older snapshot's offset it was checked from (retention)
    reason: str = ""
    differences: list[Difference] = field(default_factory=list)


async def check_snapshots(
    settings: KafkaSettings, cfg: Config, *, instance: str, marker_id: str,
    progress: Callable[[int], None] = lambda n: None,
) -> list[Checked]:  # fmt: skip
    """Every snapshot in the topic, checked against the fold of the events it covers."""
    producer = Producer(settings)
    await producer.start()
    try:
        found = await snapshots.read_snapshots(
            settings, producer, instance=instance, marker_id=marker_id
        )
    finally:
        await producer.stop()
    out: list[Checked] = []
    for p in sorted(found.manifests):
        out.extend(await _check_partition(settings, cfg, found, p, progress))
    return out


async def _check_partition(
    settings: KafkaSettings, cfg: Config, found: snapshots.Found, p: int,
    progress: Callable[[int], None],
) -> list[Checked]:  # fmt: skip
    readable: list[tuple[snapshots.Manifest, snapshot.Snapshot]] = []
    out: list[Checked] = []
    for manifest in sorted(found.manifests[p], key=lambda m: m.offset):
        chunks = [found.chunks.get(snapshots.chunk_key(p, manifest.snapshot_id, i))
                  for i in range(manifest.chunks)]  # fmt: skip
        if all(c is None for c in chunks):
            continue  # superseded: its chunks were tombstoned
        try:
            readable.append((manifest, snapshots.unpack(manifest, chunks)))
        except snapshot.SnapshotError as err:
            out.append(_checked(manifest, "unreadable", reason=str(err)))
    if not readable:
        return out
    tp = TopicPartition(settings.topics.events, p)
    async with Reader(settings, [tp]) as reader:
        start = (await reader.beginning_offsets([tp])).get(tp, 0)
    state, at, base = RouterState(), 0, None
    if start > 0:  # the oldest events are gone: check from the oldest snapshot they reach
        gone = f"events 0..{start - 1} of partition {p} were deleted by retention"
        while readable and (readable[0][0].offset < start or base is None):
            manifest, snap = readable.pop(0)
            if manifest.offset >= start:
                state, at, base = snapshot.restore([snap]), manifest.offset, manifest.offset
            out.append(_checked(manifest, "not checkable", reason=gone))
    folded = 0
    for manifest, snap in readable:
        events = await _fold(settings, tp, state, cfg, at, manifest.offset)
        folded += events
        progress(folded)
        at = manifest.offset
        stored = snapshot.restore([snap])
        differences = diff(snapshot.own_parts(state, p), snapshot.own_parts(stored, p))
        out.append(_checked(manifest, "different" if differences else "ok", events=events,
                            base=base, differences=differences))  # fmt: skip
    return sorted(out, key=lambda c: c.offset)


def _checked(manifest: snapshots.Manifest, outcome: str, **extra: Any) -> Checked:
    m = manifest
    return Checked(m.partition, m.offset, m.snapshot_id, m.taken_at_ms, m.writer, outcome,
                   **extra)  # fmt: skip


async def _fold(
    settings: KafkaSettings, tp: TopicPartition, state: RouterState, cfg: Config, since: int,
    until: int,
) -> int:  # fmt: skip
    """Fold `tp`'s events at offsets since..until-1 into `state`; how many there were."""
    if until <= since:
        return 0
    count = 0
    async with Reader(settings, [tp], start_offsets={tp: since}) as reader:
        while True:
            batch = await reader.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if record.offset >= until:
                        return count
                    count += 1
                    try:
                        env = ce.decode(record.key, record.value, record.headers)
                    except WireError:
                        continue
                    evolve(state, env.data, env.time_ms, cfg)
                    if record.offset == until - 1:
                        return count
