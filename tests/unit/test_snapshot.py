"""Snapshots: restore(snapshot(fold(a))) then fold(b) is fold(a + b), for any split."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_admission import Shell, cfg, request
from turnout.service.core import snapshot as snaps
from turnout.service.core.breaker import Breaker
from turnout.service.core.partitioning import PARTITIONS, home_partition
from turnout.service.core.state import RouterState, fold

TENANTS = ["acme", "globex", "initech", "umbrella", "hooli"]
CONFIG = cfg(
    tenants={"default": {"burst": 3, "requests_per_minute": 12, "tokens_per_minute": 400,
                         "budget_usd_per_day": 0.01, "budget_usd_per_month": 0.05,
                         "budget_usd_lifetime": 0.2}},
    cache={"ttl_s": 30},
)  # fmt: skip


def traffic(plan: list[tuple[int, int, int, bool]]) -> Shell:
    """Requests from several tenants (several partitions), some left in flight."""
    shell = Shell(CONFIG)
    for n, (tenant, text, gap, answer) in enumerate(plan):
        shell.now += gap
        shell.submit(request(f"r{n}", tenant=TENANTS[tenant], text=str(text), max_tokens=50))
        if answer and shell.calls:
            shell.answer(shell.calls[0], ok=n % 5 != 0)
    return shell


def round_trip(state: RouterState, partitions: range | list[int]) -> list[snaps.Snapshot]:
    """Every partition's snapshot, through bytes, as a rebuild would read it."""
    frames = [snaps.encode(snaps.capture(state, p), offset=1, taken_at_ms=1, writer="test")
              for p in partitions]  # fmt: skip
    return [snaps.decode(frame) for frame in frames]


def everything(state: RouterState) -> dict[str, Any]:
    return {"state": state.snapshot(),
            "parts": {p: snaps.own_parts(state, p) for p in range(PARTITIONS)}}  # fmt: skip


PLANS = st.lists(
    st.tuples(st.integers(0, len(TENANTS) - 1), st.integers(0, 3), st.integers(0, 9_000),
              st.booleans()),
    min_size=1, max_size=50,
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(PLANS, st.floats(0, 1))
def test_a_rebuild_from_snapshots_then_the_rest_of_the_log_is_the_whole_fold(
    plan: list[tuple[int, int, int, bool]], where: float
) -> None:
    log = traffic(plan).log
    split = int(len(log) * where)
    whole = fold(log, CONFIG)
    restored = snaps.restore(round_trip(fold(log[:split], CONFIG), range(PARTITIONS)))
    assert everything(fold(log[split:], CONFIG, restored)) == everything(whole)


@settings(max_examples=30, deadline=None)
@given(PLANS)
def test_each_partitions_snapshot_holds_only_that_partitions_tenants(
    plan: list[tuple[int, int, int, bool]],
) -> None:
    state = fold(traffic(plan).log, CONFIG)
    for snap in round_trip(state, range(PARTITIONS)):
        part = snap.state
        tenants = [f.tenant for f in part.inflight] + [*part.limits, *part.budgets]
        assert all(home_partition(t) == snap.partition for t in tenants)
    # one partition restored alone gives back that partition's parts and nothing else
    p = home_partition("acme")
    (alone,) = round_trip(state, [p])
    restored = snaps.restore([alone])
    assert snaps.own_parts(restored, p) == snaps.own_parts(state, p)
    others = [q for q in range(PARTITIONS) if q != p]
    assert all(snaps.own_parts(restored, q) == snaps.own_parts(RouterState(), q) for q in others)


def test_a_month_of_spend_survives_in_the_snapshot_when_its_events_are_gone() -> None:
    shell = traffic([(0, i, 1_000, True) for i in range(6)])
    (snap,) = round_trip(fold(shell.log, CONFIG), [home_partition("acme")])
    restored = snaps.restore([snap])  # the events themselves are not read again
    spent = fold(shell.log, CONFIG).budgets["acme"].spent
    assert spent and restored.budgets["acme"].spent == spent
    assert {k for k in spent if len(k) == 7} and "lifetime" in spent  # the month and lifetime


def test_the_newest_snapshots_signals_win_so_an_open_breaker_stays_open() -> None:
    shell = traffic([(0, 0, 0, False)])
    older = RouterState()
    newer = fold(shell.log, CONFIG)
    newer.breakers["a/one"] = msgspec.structs.replace(
        newer.breakers.get("a/one") or Breaker(), status="open", open_until_ms=99
    )
    frames = [
        snaps.decode(snaps.encode(snaps.capture(newer, 0), offset=5, taken_at_ms=20, writer="b")),
        snaps.decode(snaps.encode(snaps.capture(older, 1), offset=5, taken_at_ms=10, writer="a")),
    ]
    assert snaps.restore(frames).breakers["a/one"].status == "open"


def test_a_tampered_or_foreign_snapshot_is_refused_with_the_reason() -> None:
    state = fold(traffic([(0, 1, 0, True), (0, 2, 0, False)]).log, CONFIG)
    frame = snaps.encode(snaps.capture(state, home_partition("acme")), offset=3,
                         taken_at_ms=1, writer="test")  # fmt: skip
    decoded = snaps.decode(frame)
    assert decoded.offset == 3 and decoded.writer == "test"
    tampered = frame.replace(b"acme", b"acmf")
    with pytest.raises(snaps.SnapshotError, match="digest"):
        snaps.decode(tampered)
    future = msgspec.msgpack.encode(msgspec.structs.replace(decoded, version=snaps.VERSION + 1))
    with pytest.raises(snaps.SnapshotError, match="version"):
        snaps.decode(future)
    with pytest.raises(snaps.SnapshotError, match="not a snapshot"):
        snaps.decode(b"{not msgpack")
