"""The sink's clock-driven garbage collector frees cyclic garbage, old or young."""

from __future__ import annotations

import gc
import weakref

from turnout.analytics.sink import _ManualGC


class _Node:
    peer: _Node | None = None


def _cycle() -> _Node:
    node = _Node()
    node.peer = node
    return node


def test_young_cycles_go_on_every_tick_and_old_ones_on_every_full_tick() -> None:
    was_enabled = gc.isenabled()
    with _ManualGC(0.0, full_every=3) as collector:
        assert not gc.isenabled()  # allocations no longer trigger collections
        old = _cycle()
        old_ref = weakref.ref(old)
        collector.tick()  # 1: `old` survives (still referenced) into the oldest generation
        del old
        young_ref = weakref.ref(_cycle())
        collector.tick()  # 2: young generations only
        assert young_ref() is None
        assert old_ref() is not None
        collector.tick()  # 3: a full collection
        assert old_ref() is None
    assert gc.isenabled() == was_enabled
