"""A response delivered but never recorded (the router died between the two writes) is
recorded from the response itself: the terminal event it was built from, settled once."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_admission import Shell, cfg, request
from turnout.service.core import events as ev
from turnout.service.core.decision import Respond
from turnout.service.core.request import decide_delivered
from turnout.service.wire.response import encode_response, terminal_from_response

_text = st.text(min_size=1, max_size=20)
_usage = st.builds(
    ev.Usage, prompt_tokens=st.integers(0, 10**6), completion_tokens=st.integers(0, 10**6),
    total_tokens=st.integers(0, 2 * 10**6),
)  # fmt: skip
_latency = st.floats(0, 10**6, allow_nan=False).map(lambda x: round(x, 3))
_stats = st.none() | st.builds(
    ev.StreamStats, chunks=st.integers(0, 10**5), ttft_ms=st.none() | _latency,
    usage_estimated=st.booleans(),
)  # fmt: skip
_completed = st.builds(
    ev.RequestCompleted, request_id=_text, tenant=_text, model=_text, cached=st.booleans(),
    coalesced=st.booleans(), attempts=st.integers(0, 20), latency_ms=_latency, usage=_usage,
    cost_micros=st.integers(0, 10**12), response=st.dictionaries(_text, _text, max_size=3),
    reply_to=st.none() | _text, saved_usage=st.none() | _usage,
    saved_cost_micros=st.integers(0, 10**9), stream=_stats,
).filter(lambda t: t.saved_usage is not None or t.saved_cost_micros == 0)  # fmt: skip
_failed = st.builds(
    ev.RequestFailed, request_id=_text, tenant=_text, code=_text, message=_text,
    attempts=st.integers(0, 20), latency_ms=_latency, reply_to=st.none() | _text,
    errors=st.lists(st.builds(ev.CandidateError, model=_text, code=_text, message=_text),
                    max_size=3),
)  # fmt: skip
_partial = st.builds(
    ev.RequestFailed, request_id=_text, tenant=_text, code=_text, message=_text,
    attempts=st.integers(1, 20), latency_ms=_latency, reply_to=st.none() | _text,
    partial=st.just(True), model=_text, usage=_usage, cost_micros=st.integers(0, 10**9),
    stream=_stats,
)  # fmt: skip
_cancelled = st.builds(
    ev.RequestCancelled, request_id=_text, tenant=_text, reason=_text,
    attempts=st.integers(0, 20), latency_ms=_latency, model=st.none() | _text, usage=_usage,
    cost_micros=st.integers(0, 10**9), reply_to=st.none() | _text, stream=_stats,
)  # fmt: skip
_rejected = st.builds(
    ev.RequestRejected, request_id=_text, tenant=_text, code=_text, message=_text,
    retry_after_ms=st.none() | st.integers(0, 10**8), reply_to=st.none() | _text,
)  # fmt: skip


@given(st.one_of(_completed, _failed, _partial, _cancelled, _rejected))
def test_a_response_gives_back_the_terminal_event_it_was_built_from(terminal: ev.Event) -> None:
    doc = msgspec.json.decode(encode_response(terminal))  # type: ignore[arg-type]
    assert terminal_from_response(doc, reply_to=terminal.reply_to) == terminal  # type: ignore[attr-defined]


def test_a_delivered_answer_is_recorded_and_settled_once_and_not_sent_again() -> None:
    shell = Shell(cfg())
    shell.submit(request("r1"))
    reserved = dict(shell.state.budgets["acme"].reserved)
    completed = ev.RequestCompleted(
        request_id="r1", tenant="acme", model="m", cached=False, coalesced=False, attempts=1,
        latency_ms=12.5, usage=ev.Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7),
        cost_micros=9, response={"id": "x"},
    )  # fmt: skip
    decision = shell.apply(decide_delivered(shell.state, completed, shell.ctx()))

    (respond,) = decision.effects
    assert isinstance(respond, Respond) and respond.delivered
    assert reserved and shell.state.budgets["acme"].reserved == {}
    assert set(shell.state.budgets["acme"].spent.values()) == {9}
    assert shell.types("r1")[-3:] == ["budget.charged", "budget.released", "request.completed"]
    # found a second time (a record delivered twice): nothing more
    again = decide_delivered(shell.state, completed, shell.ctx())
    assert (again.events, again.effects) == ([], [])


def test_a_rejected_record_delivered_again_is_not_answered_again() -> None:
    """A request rejected at the door has no `accepted` event: its rejection records the
    intake position, so the same record redelivered after a crash is not answered twice,
    while a client's resend of the same id (another record) still gets its answer."""
    shell = Shell(cfg(tenants={"default": {"requests_per_minute": 1, "burst": 10}}))
    shell.run(msgspec.structs.replace(request("a", text="1"), intake_partition=1, intake_offset=5))
    rejected = msgspec.structs.replace(request("b", text="2"), intake_partition=1, intake_offset=6)
    first = shell.submit(rejected)
    again = shell.submit(rejected)
    resent = shell.submit(msgspec.structs.replace(rejected, intake_offset=9))

    assert [type(e).__name__ for e in first.events][-1] == "RequestRejected"
    assert (again.events, again.effects) == ([], [])
    assert [type(e).__name__ for e in resent.effects] == ["Resend"]


def test_a_delivered_answer_recorded_for_a_record_is_not_answered_again_for_that_record() -> None:
    """Found by the fault suite's combined round (10 answered twice): a rejection answered
    by a router that died before recording it was recorded by the next owner from its
    response, with no intake position; that owner died too before its commit, and the
    third owner took the same record for a client's resend and answered it again. The
    recorded terminal now carries the record's position: the record, delivered a third
    time, is answered by nobody, while a resend of the id (another record) still is."""
    shell = Shell(cfg())
    rejected = ev.RequestRejected(
        request_id="r9", tenant="acme", code="rate_limited", message="burst reached"
    )
    record = msgspec.structs.replace(request("r9"), intake_partition=3, intake_offset=41)
    recorded = shell.apply(decide_delivered(shell.state, rejected, shell.ctx(), intake=(3, 41)))
    again = shell.submit(record)
    resent = shell.submit(msgspec.structs.replace(record, intake_offset=77))

    (terminal,) = recorded.events
    assert (terminal.intake_partition, terminal.intake_offset) == (3, 41)
    assert (again.events, again.effects) == ([], [])
    assert [type(e).__name__ for e in resent.effects] == ["Resend"]


def test_a_delivered_completion_never_accepted_in_the_log_records_its_record_too() -> None:
    shell = Shell(cfg())
    completed = ev.RequestCompleted(
        request_id="r8", tenant="acme", model="m", cached=False, coalesced=False, attempts=1,
        latency_ms=1.0, usage=ev.Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
        cost_micros=3, response={"id": "x"},
    )  # fmt: skip
    shell.apply(decide_delivered(shell.state, completed, shell.ctx(), intake=(5, 9)))
    again = shell.submit(
        msgspec.structs.replace(request("r8"), intake_partition=5, intake_offset=9)
    )
    assert (again.events, again.effects) == ([], [])
