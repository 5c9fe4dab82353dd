"""When the sink publishes the next snapshot: spaced by what spacing saves."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from turnout.analytics.archive import Archive, Published
from turnout.analytics.records import record_batch
from turnout.analytics.sink import Sink, SinkOptions, caught_up, oldest_ms
from turnout.analytics.synthetic import envelopes, workload
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.wire.cloudevents import encode


def test_a_long_fold_does_not_push_the_next_snapshot_further_away(tmp_path: Path) -> None:
    """A publish after a backlog folds and checkpoints many events (4.9 s of its 5 s
    here). That work costs the same per event however publishes are spaced, so only the
    copy (0.1 s) spaces the next one: due after 10 x 0.1 s = 1 s, not 10 x 5 s. Counted
    in, each wait gathered more events and made the next wait longer, while catching up
    and after (22.8 s from the last batch stored to a snapshot holding it, bench_sink)."""
    with Archive.open(tmp_path / "a.duckdb") as archive:
        sink = Sink(KafkaSettings(bootstrap="127.0.0.1:1"), archive, options=SinkOptions())
        sink._published(Published(archive.snapshot, 800_000, seconds=5.0, fold_s=3, copy_s=0.1))
        assert not sink._publish_due(loading=True)  # at least min_publish_interval_s apart
        sink._published_at = time.monotonic() - 1.5
        assert sink._publish_due(loading=True)
        sink._published(Published(archive.snapshot, 0, seconds=5.0, fold_s=0.5, copy_s=4.5))
        sink._published_at = time.monotonic() - 30  # a slow copy: 10 x 4.5 s
        assert not sink._publish_due(loading=True)
        sink._published_at = time.monotonic() - 46
        assert sink._publish_due(loading=True)


def test_old_days_are_sealed_only_once_the_sink_has_read_every_partition_to_its_end() -> None:
    """A full batch, or any partition behind its end or not fetched yet, means a
    backlog: partitions reach a day's end at different moments (each fetch takes the
    same bytes from each), so sealing by the newest event could split a request still
    coming on another partition."""
    assert caught_up(10, 100, {0: 0, 1: 0}, 2)
    assert caught_up(0, 100, {0: 0, 1: 0}, 2)  # an idle publish
    assert not caught_up(100, 100, {0: 0, 1: 0}, 2)  # a full batch
    assert not caught_up(10, 100, {0: 0, 1: 3}, 2)  # one partition behind
    assert not caught_up(10, 100, {0: 0}, 2)  # one not fetched yet
    assert not caught_up(0, 100, {}, 0)  # nothing assigned (a rebalance): nothing known


def test_a_publish_seals_only_when_asked_and_never_with_hot_hours_0(tmp_path: Path) -> None:
    envs = list(envelopes(workload(300), step_ms=3 * 86_400_000 / 1_650))  # three days
    records = [_Record(i, *encode(e)) for i, e in enumerate(envs)]
    with Archive.open(tmp_path / "a.duckdb") as archive:
        sink = Sink(KafkaSettings(bootstrap="127.0.0.1:1"), archive, options=SinkOptions())
        _, published = sink._work(record_batch(records), True, False)
        assert published is not None and published.sealed == ()
        never = Sink(
            KafkaSettings(bootstrap="127.0.0.1:1"), archive, options=SinkOptions(hot_hours=0)
        )
        assert never._publish_now(seal=True).sealed == ()
        _, published = sink._work(None, True, True)
        assert published is not None and len(published.sealed) >= 1


def test_the_oldest_event_in_flight_is_each_partitions_first_readable_time() -> None:
    """What a seal must leave open (`Sink._seal_until`): a partition's records come in
    about their events' order, so its first readable `ce_time` is its oldest; a record
    without one (refused, bound for sink_errors) does not hide the next one's."""
    envs = list(envelopes(workload(4), step_ms=1_000))
    first, second = (_Record(i, *encode(e)) for i, e in enumerate(envs[:2]))
    broken = replace(first, headers=[(k, b"yesterday" if k == "ce_time" else v)
                                     for k, v in first.headers])  # fmt: skip
    later = replace(second, partition=1)
    assert oldest_ms({("t", 0): [first, second], ("t", 1): [later]}) == envs[0].time_ms
    assert oldest_ms({("t", 0): [broken, second], ("t", 1): [later]}) == envs[1].time_ms
    assert oldest_ms({("t", 0): [broken]}) is None
    assert oldest_ms({}) is None


@dataclass(frozen=True)
class _Record:
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    topic: str = "t.events"
    partition: int = 0
    timestamp: int = 0
