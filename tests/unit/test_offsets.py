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


def test_work_handed_over_gives_its_slots_back_once() -> None:
    """Each record worked on holds an in-flight slot. A handed-over request whose task
    never ends (a coalesced follower of a fenced leader, a retry of a request the new
    state no longer has) used to hold its slot for ever: enough of them and the router
    waited for a slot with nothing in flight."""
    offsets = Offsets()
    a, b = offsets.start(TP, 1), offsets.start(TP, 2)
    assert offsets.finish(a) is True  # finished in its epoch: give its slot back
    assert offsets.finish(a) is False  # never twice
    assert offsets.drop([TP]) == 1  # b's slot goes back with the partition
    assert offsets.finish(b) is False  # and not again when its task ends late


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
    held = 0  # in-flight slots taken and not given back
    open_now: set[int] = set()  # offsets started in this epoch and not finished in it
    for op, n in plan:
        if op == "start":
            if any(x[0] == epoch and x[1] == n for x in started):
                continue  # a record is read once per epoch
            pos = offsets.start(TP, n)
            held += 1
            started.append((epoch, n, pos))
            open_now.add(n)
        elif op == "finish" and started:
            e, offset, pos = started.pop(n % len(started))
            held -= offsets.finish(pos)
            if e == epoch:
                open_now.discard(offset)
        elif op == "drop":
            held -= offsets.drop([TP])
            epoch += 1
            open_now.clear()
        point = offsets.committable().get(TP)
        if open_now:
            assert point is not None and point <= min(open_now)
        # every slot taken is given back exactly once: by its finish or by the drop
        assert held == offsets.in_progress() == sum(1 for e, _, _ in started if e == epoch)
