"""The duplicate-answer memory: answers inside the window, ids and outcomes past it,
bounded by bytes, and never a second upstream call for a request that was answered."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_admission import Shell, cfg, request
from turnout.service.core import snapshot as snaps
from turnout.service.core.decision import Resend
from turnout.service.core.partitioning import PARTITIONS, home_partition
from turnout.service.core.request import decide_intake
from turnout.service.core.state import ID_BYTES, fold, request_holder

HOUR_MS = 3_600_000
UNLIMITED: dict[str, Any] = {"requests_per_minute": None, "requests_per_hour": None,
                             "requests_per_day": None, "burst": None, "tokens_per_minute": None,
                             "budget_usd_per_day": None, "budget_usd_per_month": None}  # fmt: skip


def config(**router: Any) -> Any:
    return cfg(router={"dedupe_window_s": 3600, "dedupe_ids_s": 4 * 86_400} | router,
               tenants={"default": UNLIMITED}, cache={"ttl_s": 1})  # fmt: skip


def resent(shell: Shell, rid: str, **kw: Any) -> Any:
    decision = decide_intake(shell.state, request(rid, **kw), shell.ctx())
    assert decision.events == [] and shell.calls == []  # nothing new is decided or called
    (effect,) = decision.effects
    assert isinstance(effect, Resend)
    return effect.terminal


def test_inside_the_window_a_resend_gets_the_recorded_answer() -> None:
    shell = Shell(config())
    first = shell.run(request("r1", text="a"))
    shell.now += HOUR_MS - 1
    assert resent(shell, "r1", text="a") == first


def test_a_resend_is_answered_where_its_own_sender_listens() -> None:
    """An SDK's retry through another gateway names that gateway's reply topic: the
    recorded answer goes there (to the first record's topic nobody may read now)."""
    shell = Shell(config())
    first = shell.run(request("r1", text="a"))
    again = msgspec.structs.replace(request("r1", text="a"), reply_to="turnout.gw-2.replies")
    answer = resent_req(shell, again)
    assert answer.reply_to == "turnout.gw-2.replies"
    assert msgspec.structs.replace(answer, reply_to=first.reply_to) == first


def resent_req(shell: Shell, req: Any) -> Any:
    decision = decide_intake(shell.state, req, shell.ctx())
    (effect,) = decision.effects
    assert decision.events == [] and isinstance(effect, Resend)
    return effect.terminal


def test_an_id_is_held_by_its_tenant_in_flight_and_answered_and_by_no_one_after() -> None:
    """What the router asks before taking a record as a resend: whose request is this id?"""
    shell = Shell(config())
    shell.submit(request("r1", tenant="acme", text="a"))
    assert request_holder(shell.state, "r1") == "acme"  # in flight
    (call,) = shell.calls
    shell.answer(call)
    assert "r1" in shell.state.finished and request_holder(shell.state, "r1") == "acme"
    assert request_holder(shell.state, "r2") is None
    shell.now += HOUR_MS + 1
    shell.run(request("r2", tenant="acme", text="b"))  # r1's answer is forgotten
    assert request_holder(shell.state, "r1") is None  # past the window: a new request
    shell.run(request("r3", tenant="rival", text="c"))
    assert request_holder(shell.state, "r3") == "rival"


def test_past_the_window_a_resend_is_rejected_duplicate_expired_with_the_outcome() -> None:
    shell = Shell(config())
    shell.run(request("r1", text="a"))
    shell.now += HOUR_MS + 1
    shell.run(request("r2", text="b"))  # a later terminal makes the state forget r1's answer
    answer = resent(shell, "r1", text="a")
    assert "r1" not in shell.state.finished
    assert (answer.TYPE, answer.code) == ("turnout.request.rejected", "duplicate_expired")
    assert "already answered (completed)" in answer.message
    assert "1 h" in answer.message


def test_past_the_id_window_a_resend_is_a_new_request() -> None:
    shell = Shell(config())
    shell.run(request("r1", text="a"))
    shell.now += 6 * 86_400_000
    shell.run(request("r2", text="b"))
    shell.submit(request("r1", text="a"))
    assert len(shell.calls) == 1  # called again: it is older than anything remembered
    assert shell.state.snapshot()["forgotten"] == 0  # r1's hour bucket is past dedupe_ids_s


def test_answers_are_bounded_by_bytes_per_partition_oldest_first() -> None:
    one = Shell(config())
    one.run(request("probe", text="probe"))
    size = one.state.answer_bytes[home_partition("acme")]
    cap = 5 * size * PARTITIONS  # room for about five answers per partition
    shell = Shell(config(dedupe_max_bytes=cap, answer_overhead_bytes=0))
    for n in range(20):
        shell.run(request(f"r{n}", text=str(n)))
        shell.now += 1
    p = home_partition("acme")
    assert shell.state.answer_bytes[p] <= cap // PARTITIONS
    kept = [rid for rid in shell.state.finished if rid.startswith("r")]
    assert kept == [f"r{n}" for n in range(20 - len(kept), 20)] and 3 <= len(kept) <= 6
    assert resent(shell, "r0", text="0").code == "duplicate_expired"
    assert resent(shell, "r19", text="19").TYPE == "turnout.request.completed"


def test_each_answer_is_charged_its_overhead_so_the_cap_bounds_memory() -> None:
    one = Shell(config())
    one.run(request("probe", text="probe"))
    size = one.state.answer_bytes[home_partition("acme")]
    overhead = 3 * size
    cap = 20 * size * PARTITIONS  # 20 answers' bytes, or 5 answers with their overhead
    shell = Shell(config(dedupe_max_bytes=cap, answer_overhead_bytes=overhead))
    for n in range(30):
        shell.run(request(f"r{n}", text=str(n)))
        shell.now += 1
    p = home_partition("acme")
    kept = [rid for rid in shell.state.finished if rid.startswith("r")]
    charged = shell.state.answer_bytes[p] + overhead * len(shell.state.answers[p])
    assert charged <= cap // PARTITIONS
    assert kept == [f"r{n}" for n in range(30 - len(kept), 30)] and 3 <= len(kept) <= 6
    assert resent(shell, "r10", text="10").code == "duplicate_expired"


def test_ids_past_their_answers_are_bounded_by_bytes_the_oldest_hours_first() -> None:
    ids_cap = 3 * ID_BYTES * PARTITIONS  # room for three ids per partition
    shell = Shell(config(dedupe_max_bytes=1, dedupe_ids_max_bytes=ids_cap))  # no answer kept
    for n in range(10):  # one an hour
        shell.run(request(f"r{n}", text=str(n)))
        shell.now += HOUR_MS
    assert shell.state.snapshot()["forgotten"] == 3
    for n in (7, 8, 9):  # the newest three hours are still known: never called again
        assert resent(shell, f"r{n}", text=str(n)).code == "duplicate_expired"
    calls = len(shell.calls)
    shell.submit(request("r0", text="0"))  # the oldest is forgotten: a new request
    assert len(shell.calls) == calls + 1


def test_ids_are_forgotten_by_whole_hours_so_the_order_inside_one_does_not_matter() -> None:
    ids_cap = 3 * ID_BYTES * PARTITIONS
    shell = Shell(config(dedupe_max_bytes=1, dedupe_ids_max_bytes=ids_cap))
    for n in range(4):  # four in the first hour: over the cap, that hour goes whole
        shell.run(request(f"a{n}", text=f"a{n}"))
    assert shell.state.snapshot()["forgotten"] == 0
    shell.now += HOUR_MS
    for n in range(2):
        shell.run(request(f"b{n}", text=f"b{n}"))
    assert shell.state.snapshot()["forgotten"] == 2


def test_a_version_1_snapshot_keeps_its_ids_by_day_at_the_days_first_hour() -> None:
    shell = Shell(config(dedupe_max_bytes=1))  # every answer forgotten, its id kept
    shell.run(request("r1", text="a"))
    state = fold(shell.log, shell.cfg)
    p = home_partition("acme")
    ((hour, ids),) = state.expired[p].by_hour().items()
    part = snaps.capture(state, p)
    old = msgspec.structs.replace(part, expired={hour // 24: ids})  # as version 1 kept it
    body = msgspec.msgpack.encode(old)
    frame = snaps.decode(msgspec.msgpack.encode(snaps.Snapshot(
        version=1, partition=p, offset=9, taken_at_ms=1, writer="v1",
        digest=hashlib.blake2b(body, digest_size=16).hexdigest(), body=body)))  # fmt: skip
    restored = snaps.restore([frame])
    assert restored.expired[p].by_hour() == {hour // 24 * 24: ids}
    assert resent_in(restored, shell, "r1", text="a").code == "duplicate_expired"


def resent_in(state: Any, shell: Shell, rid: str, **kw: Any) -> Any:
    (effect,) = decide_intake(state, request(rid, **kw), shell.ctx()).effects
    assert isinstance(effect, Resend)
    return effect.terminal


PLANS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3 * HOUR_MS)), min_size=1,
                 max_size=30)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(PLANS, st.floats(0, 1), st.sampled_from([None, 2, 5]))
def test_the_memory_folds_the_same_from_a_snapshot_at_any_point(
    plan: list[tuple[int, int]], where: float, ids_kept: int | None
) -> None:
    """Also with room for only 2 or 5 ids per partition (the ids cap evicting)."""
    ids_cap = {} if ids_kept is None else {"dedupe_ids_max_bytes": ids_kept * ID_BYTES * PARTITIONS}
    shell = Shell(config(dedupe_max_bytes=4000 * PARTITIONS, **ids_cap))
    tenants = ["acme", "globex", "initech", "hooli"]
    for n, (tenant, gap) in enumerate(plan):
        shell.now += gap
        shell.run(request(f"r{n}", tenant=tenants[tenant], text=str(n)))
    cut = int(len(shell.log) * where)
    head, tail = shell.log[:cut], shell.log[cut:]
    before = fold(head, shell.cfg)
    frames = [snaps.decode(snaps.encode(snaps.capture(before, p), offset=1, taken_at_ms=1,
                                        writer="t")) for p in range(PARTITIONS)]  # fmt: skip
    rebuilt = fold(tail, shell.cfg, snaps.restore(frames))
    whole = fold(shell.log, shell.cfg)
    assert rebuilt.snapshot() == whole.snapshot()
    assert all(snaps.own_parts(rebuilt, p) == snaps.own_parts(whole, p) for p in range(PARTITIONS))
    if ids_kept is not None:
        return
    for n in range(len(plan)):  # and every id is still answered or known, never new
        decision = decide_intake(rebuilt, request(f"r{n}", tenant=tenants[plan[n][0]]),
                                 shell.ctx())  # fmt: skip
        assert decision.events == [] and all(isinstance(e, Resend) for e in decision.effects)
