"""The router's intake offset bookkeeping: a commit never passes a record that nobody
decided in the partition's current ownership epoch.

Found by the fault suite's broker_kill round (32 requests lost, no event for any of
them): a router dropped from the group fenced its partitions, went on to handle records
it had fetched before, and a late finish of one recreated the partition's bookkeeping;
when the partition came back to it, the commit point moved past records nobody decided.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from turnout.service.kafka.consumer import TopicPartition
from turnout.service.runtime.router import Offsets

TP = TopicPartition("turnout.requests", 0)


def test_a_late_finish_from_before_a_drop_does_not_move_the_commit_point() -> None:
    offsets = Offsets()
    stale = offsets.start(TP, 7)  # fetched and started, then the partition is fenced
    offsets.drop([TP])
    fresh = offsets.start(TP, 7)  # the record comes again to the new epoch
    offsets.finish(stale)  # the fenced task ends late
    assert offsets.committable()[TP] == 7  # not past the record still being worked on
    offsets.finish(fresh)
    assert offsets.committable()[TP] == 8


def test_a_dropped_partition_has_nothing_to_commit_until_it_is_read_again() -> None:
    offsets = Offsets()
    old = offsets.start(TP, 3)
    offsets.drop([TP])
    offsets.finish(old)
    assert TP not in offsets.committable()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.integers(0, 30)),
        st.tuples(st.just("finish"), st.integers(0, 40)),
        st.tuples(st.just("drop"), st.just(0)),
    ),
    max_size=60,
)


@given(ops)
def test_the_commit_point_never_passes_an_unfinished_record_of_the_current_epoch(
    plan: list[tuple[str, int]],
) -> None:
    offsets = Offsets()
    started: list[tuple[int, int, tuple[TopicPartition, int, int]]] = []  # epoch, offset, pos
    epoch = 0
    open_now: set[int] = set()  # offsets started in this epoch and not finished in it
    for op, n in plan:
        if op == "start":
            if any(x[0] == epoch and x[1] == n for x in started):
                continue  # a record is read once per epoch
            pos = offsets.start(TP, n)
            started.append((epoch, n, pos))
            open_now.add(n)
        elif op == "finish" and started:
            e, offset, pos = started.pop(n % len(started))
            offsets.finish(pos)
            if e == epoch:
                open_now.discard(offset)
        elif op == "drop":
            offsets.drop([TP])
            epoch += 1
            open_now.clear()
        point = offsets.committable().get(TP)
        if open_now:
            assert point is not None and point <= min(open_now)
