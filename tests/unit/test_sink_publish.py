"""When the sink publishes the next snapshot: spaced by what spacing saves."""

from __future__ import annotations

import time
from pathlib import Path

from turnout.analytics.archive import Archive, Published
from turnout.analytics.sink import Sink, SinkOptions
from turnout.service.kafka.settings import KafkaSettings


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
