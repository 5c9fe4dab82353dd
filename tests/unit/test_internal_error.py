"""A request the router itself fails on still ends once: `internal_error`, its holds released."""

from __future__ import annotations

from tests.unit.test_admission import Shell, cfg, request
from turnout.service.core.decision import Respond
from turnout.service.core.request import decide_internal_error


def test_a_request_in_flight_fails_internal_error_and_releases_its_budget() -> None:
    shell = Shell(cfg())
    shell.submit(request("r1"))
    assert shell.calls and "r1" in shell.state.inflight
    reserved = dict(shell.state.budgets["acme"].reserved)
    decision = shell.apply(decide_internal_error(shell.state, "r1", "boom", shell.ctx()))

    (respond,) = [e for e in decision.effects if isinstance(e, Respond)]
    assert (respond.terminal.TYPE, respond.terminal.code) == ("turnout.request.failed",
                                                              "internal_error")  # fmt: skip
    assert "r1" not in shell.state.inflight and "r1" in shell.state.finished
    assert reserved and shell.state.budgets["acme"].reserved == {}
    assert shell.types("r1")[-2:] == ["budget.released", "request.failed"]
    assert shell.types("r1").count("request.failed") == 1


def test_a_request_not_in_flight_is_left_alone() -> None:
    shell = Shell(cfg())
    shell.run(request("done"))
    before = len(shell.log)
    for rid in ("done", "never-seen"):
        decision = decide_internal_error(shell.state, rid, "boom", shell.ctx())
        assert (decision.events, decision.effects) == ([], [])
    assert len(shell.log) == before
