"""Streaming's pure parts: the SSE parser, chunk merging and assembly, the first-token gate."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_request import CFG, request
from turnout.service.core import events as ev
from turnout.service.core.budget import completion_allowance
from turnout.service.core.pricing import Price, cost_micros
from turnout.service.core.request import (
    Call,
    CallResult,
    Context,
    Respond,
    Streamed,
    Wait,
    decide_first_token,
    decide_intake,
    decide_result,
)
from turnout.service.core.state import RouterState, evolve
from turnout.service.wire.sse import SSEParser, encode_event
from turnout.service.wire.stream import chunk_of, chunk_record, completion, has_token, merge

# --------------------------------------------------------------------------- SSE

OPENROUTER = (
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"id":"g","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"id":"g","choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
    b'data: {"id":"g","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"g","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)


def parse(pieces: list[bytes]) -> tuple[list[str], int]:
    parser = SSEParser()
    data = [e.data for piece in pieces for e in parser.feed(piece)]
    return data, parser.comments


def test_openrouters_stream_parses_into_its_events_and_keepalives_are_comments() -> None:
    data, comments = parse([OPENROUTER])
    assert comments == 2
    assert data[-1] == "[DONE]"
    assert json.loads(data[-2])["usage"] == {"prompt_tokens": 3, "completion_tokens": 2}
    assert [json.loads(d)["choices"][0]["delta"].get("content") for d in data[1:3]] == ["Hel", "lo"]


@given(st.lists(st.integers(min_value=0, max_value=len(OPENROUTER)), max_size=30))
def test_any_cutting_of_the_bytes_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    ends = zip([0, *points], [*points, len(OPENROUTER)], strict=True)
    pieces = [OPENROUTER[a:b] for a, b in ends]
    assert parse(pieces) == parse([OPENROUTER])


@given(st.sampled_from([b"\r\n", b"\r", b"\n"]), st.integers(min_value=1, max_value=7))
def test_crlf_cr_and_lf_line_ends_mean_the_same_also_cut_between_cr_and_lf(
    eol: bytes, step: int
) -> None:
    text = OPENROUTER.replace(b"\n", eol)
    pieces = [text[i : i + step] for i in range(0, len(text), step)]
    assert parse(pieces) == parse([OPENROUTER])


def test_multi_line_data_ids_bom_and_an_unfinished_event() -> None:
    parser = SSEParser()
    events = parser.feed(b"\xef\xbb\xbfid: 7\ndata: a\ndata:b\nevent: x\n\ndata: cut")
    assert [(e.data, e.id, e.event) for e in events] == [("a\nb", "7", "x")]
    assert parser.feed(b"") == []  # the unfinished one is never dispatched without its end
    assert encode_event(b'{"a":1}', id="3") == b'id: 3\ndata: {"a":1}\n\n'


# --------------------------------------------------------------------------- merging

TEXT = st.text(alphabet="ab ", max_size=4)


def _chunk(draw: Any) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if draw(st.booleans()):
        delta["content"] = draw(TEXT)
    if draw(st.booleans()):
        delta["reasoning"] = draw(TEXT)
    if draw(st.booleans()):
        delta["tool_calls"] = [{"index": draw(st.integers(0, 1)),
                                "function": {"arguments": draw(TEXT)}}]  # fmt: skip
    choice = {"index": draw(st.integers(0, 1)), "delta": delta,
              "finish_reason": draw(st.sampled_from([None, None, "stop"]))}  # fmt: skip
    out: dict[str, Any] = {"id": "g", "model": "m", "choices": [choice]}
    if draw(st.booleans()):
        out["usage"] = {"completion_tokens": draw(st.integers(0, 9))}
    return out


chunks_strategy = st.lists(st.composite(_chunk)(), min_size=1, max_size=12)


def _fold(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] | None = None
    for chunk in chunks:
        merged = merge(merged, chunk)
    assert merged is not None
    return merged


@given(chunks_strategy, st.lists(st.integers(min_value=1, max_value=11), max_size=6))
def test_coalescing_in_any_grouping_means_the_same_stream(
    chunks: list[dict[str, Any]], cuts: list[int]
) -> None:
    points = sorted({c for c in cuts if c < len(chunks)})
    groups = [chunks[a:b] for a, b in zip([0, *points], [*points, len(chunks)], strict=True)]
    before = json.dumps(chunks)
    assert _fold([_fold(g) for g in groups if g]) == _fold(chunks)
    assert json.dumps(chunks) == before  # inputs untouched


def test_assembly_concatenates_text_reasoning_and_tool_call_arguments() -> None:
    stream = [
        {"id": "g", "model": "m", "created": 1,
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"id": "g", "choices": [{"index": 0, "delta": {"reasoning": "think "}}]},
        {"id": "g", "choices": [{"index": 0, "delta": {"content": "Hi", "tool_calls": [
            {"index": 0, "id": "c1", "type": "function",
             "function": {"name": "f", "arguments": '{"a"'}}]}}]},
        {"id": "g", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": ":1}"}}]}, "finish_reason": "tool_calls"}]},
        {"id": "g", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 4}},
    ]  # fmt: skip
    assert not has_token(stream[0]) and has_token(stream[1]) and has_token(stream[3])
    done = completion(_fold(stream))
    (choice,) = done["choices"]
    assert choice["message"] == {
        "role": "assistant", "content": "Hi", "reasoning": "think ",
        "tool_calls": [{"index": 0, "id": "c1", "type": "function",
                        "function": {"name": "f", "arguments": '{"a":1}'}}],
    }  # fmt: skip
    assert choice["finish_reason"] == "tool_calls"
    assert done["usage"] == {"prompt_tokens": 1, "completion_tokens": 4}
    assert done["object"] == "chat.completion" and done["model"] == "m"


@given(st.text(max_size=40), st.integers(min_value=1, max_value=10**9))
def test_a_chunk_records_chunk_bytes_come_back_as_written(rid: str, seq: int) -> None:
    chunk = msgspec.json.encode({"choices": [{"delta": {"content": ',"chunk":'}}]})
    value = chunk_record(rid, seq, chunk)
    doc = json.loads(value)
    assert (doc["request_id"], doc["seq"]) == (rid, seq)
    assert chunk_of(value) == chunk


# --------------------------------------------------------------------------- the gate

STREAM_CFG = CFG


def _ctx(now: int = 1_000_000) -> Context:
    return Context(now_ms=now, cfg=STREAM_CFG)


def _started(state: RouterState) -> str:
    req = msgspec.structs.replace(request("s1"), stream=True)
    decision = decide_intake(state, req, _ctx())
    for event in decision.events:
        evolve(state, event, 1_000_000, STREAM_CFG)
    assert state.inflight["s1"].stream
    return "s1"


def _apply(state: RouterState, events: list[Any]) -> None:
    for event in events:
        evolve(state, event, 1_000_010, STREAM_CFG)


def _failure(model: str, attempt: int) -> CallResult:
    usage = ev.Usage(prompt_tokens=3, completion_tokens=9, total_tokens=12)
    return CallResult(
        model=model, attempt=attempt, ok=False, status=200, latency_ms=9.0,
        error_class="midstream_error", message="provider went away", usage=usage,
        cost_micros=40, stream=ev.StreamStats(chunks=2, ttft_ms=5.0, usage_estimated=True),
    )  # fmt: skip


def test_before_the_first_token_a_failed_stream_is_retried_like_any_call() -> None:
    state = RouterState()
    rid = _started(state)
    decision = decide_result(state, rid, _failure("a/one", 1), _ctx())
    assert any(isinstance(e, Wait) for e in decision.effects)  # retried: nothing went out


def test_after_the_first_token_a_failure_ends_the_request_partial_and_charged() -> None:
    state = RouterState()
    rid = _started(state)
    first = decide_first_token(state, rid, "a/one", 1, 5.0, _ctx())
    (event,) = first.events
    assert isinstance(event, ev.StreamFirstToken) and event.ttft_ms == 5.0
    _apply(state, first.events)
    assert decide_first_token(state, rid, "a/one", 1, 6.0, _ctx()).events == []  # once
    decision = decide_result(state, rid, _failure("a/one", 1), _ctx())
    (respond,) = decision.effects
    assert isinstance(respond, Respond)
    failed = respond.terminal
    assert isinstance(failed, ev.RequestFailed)
    assert failed.partial and failed.code == "upstream_stream_error"
    assert failed.cost_micros == 40 and failed.usage is not None
    assert failed.usage.completion_tokens == 9
    types = [type(e).__name__ for e in decision.events]
    assert "RetryScheduled" not in types and "FallbackTaken" not in types
    attempt = next(e for e in decision.events if isinstance(e, ev.AttemptFailed))
    assert attempt.breaker_failure and attempt.error_class == "upstream_stream_error"
    charged = [e for e in decision.events if isinstance(e, ev.BudgetCharged)]
    assert sum(e.amount_micros for e in charged) == 40
    (cut,) = [e for e in decision.events if isinstance(e, ev.StreamCut)]  # the contract's why
    assert (cut.why, cut.model, cut.attempt, cut.completion_tokens) == ("upstream", "a/one", 1, 9)


def test_a_stale_attempts_first_token_is_refused() -> None:
    state = RouterState()
    rid = _started(state)
    assert decide_first_token(state, rid, "a/one", 2, 5.0, _ctx()).events == []
    assert decide_first_token(state, "nobody", "a/one", 1, 5.0, _ctx()).events == []


def test_a_stream_whose_router_died_after_its_first_token_ends_partial_on_resume() -> None:
    state = RouterState()
    rid = _started(state)
    _apply(state, decide_first_token(state, rid, "a/one", 1, 5.0, _ctx()).events)
    req = msgspec.structs.replace(request(rid), stream=True)
    decision = decide_intake(state, req, _ctx(1_000_500), resume=True)
    (respond,) = decision.effects
    assert isinstance(respond, Respond)
    assert isinstance(respond.terminal, ev.RequestFailed) and respond.terminal.partial
    assert respond.terminal.code == "upstream_stream_error"
    assert not [e for e in decision.events if isinstance(e, ev.BudgetCharged)]  # unknown


def test_a_follower_of_a_dead_routers_stream_ends_with_it_and_is_not_streamed_again() -> None:
    """A coalesced follower had the leader's chunks as they went. When the next owner
    ends the begun leader `partial`, the follower ends with it (not charged); it used to
    stay in flight, and its own record, resumed, started a new upstream stream at seq 1."""
    state = RouterState()
    leader = msgspec.structs.replace(
        request("s1"), stream=True, params={"temperature": 0},
        messages=[{"role": "user", "content": "hi"}],
    )  # fmt: skip
    _apply(state, decide_intake(state, leader, _ctx()).events)  # cacheable: a key to share
    rid = leader.request_id
    follower = msgspec.structs.replace(leader, request_id="s2")
    joined = decide_intake(state, follower, _ctx(1_000_001))
    assert any(isinstance(e, ev.RequestCoalesced) for e in joined.events)
    _apply(state, joined.events)
    _apply(state, decide_first_token(state, rid, "a/one", 1, 5.0, _ctx()).events)
    decision = decide_intake(state, leader, _ctx(1_000_500), resume=True)
    ended = {e.terminal.request_id: e.terminal for e in decision.effects
             if isinstance(e, Respond)}  # fmt: skip
    assert set(ended) == {rid, "s2"}
    assert isinstance(ended["s2"], ev.RequestFailed) and ended["s2"].cost_micros == 0
    _apply(state, decision.events)
    assert "s2" not in state.inflight
    again = decide_intake(state, follower, _ctx(1_000_600), resume=True)
    assert not any(isinstance(e, Call) for e in again.effects)  # never called again


def test_what_a_dead_routers_stream_sent_is_charged_when_it_is_ended() -> None:
    state = RouterState()
    rid = _started(state)
    _apply(state, decide_first_token(state, rid, "a/one", 1, 5.0, _ctx()).events)
    req = msgspec.structs.replace(request(rid), stream=True)
    usage = ev.Usage(prompt_tokens=3, completion_tokens=5, total_tokens=8)
    streamed = Streamed(chunks=2, usage=usage, cost_micros=17)
    decision = decide_intake(state, req, _ctx(1_000_500), resume=True, streamed=streamed)
    (respond,) = decision.effects
    assert isinstance(respond, Respond) and isinstance(respond.terminal, ev.RequestFailed)
    terminal = respond.terminal
    assert (terminal.usage, terminal.cost_micros) == (usage, 17)
    assert terminal.stream is not None and terminal.stream.usage_estimated
    charged = [e for e in decision.events if isinstance(e, ev.BudgetCharged)]
    assert sum(e.amount_micros for e in charged) == 17


# --------------------------------------------------------------------------- cancel


def test_a_cancel_record_is_read_as_one_and_a_bad_one_is_refused() -> None:
    import pytest

    from turnout.service.wire.errors import WireError
    from turnout.service.wire.intake import decode_cancel

    cancel = decode_cancel(b'{"cancel": "r-1", "tenant": "acme"}', key=None)
    assert cancel is not None and (cancel.request_id, cancel.tenant) == ("r-1", "acme")
    assert decode_cancel(b'{"cancel": "r-1"}', key=b"acme") == cancel
    said = b'{"messages": [{"role": "user", "content": "cancel"}], "tenant": "a"}'
    assert decode_cancel(said, key=None) is None  # a request that mentions the word
    with pytest.raises(WireError, match="tenant"):
        decode_cancel(b'{"cancel": "r-1", "tenant": "no spaces"}', key=None)
    with pytest.raises(WireError, match="request id"):
        decode_cancel(b'{"cancel": 7, "tenant": "acme"}', key=None)


def test_a_cancel_ends_a_request_once_charging_what_it_streamed() -> None:
    from turnout.service.core.request import decide_cancel

    state = RouterState()
    rid = _started(state)
    _apply(state, decide_first_token(state, rid, "a/one", 1, 5.0, _ctx()).events)
    assert decide_cancel(state, rid, "someone-else", "x", _ctx()).events == []
    stopped = msgspec.structs.replace(_failure("a/one", 1), error_class="cancelled")
    decision = decide_cancel(state, rid, "acme", "client disconnected", _ctx(), stopped=stopped)
    (respond,) = decision.effects
    assert isinstance(respond, Respond) and isinstance(respond.terminal, ev.RequestCancelled)
    assert respond.terminal.cost_micros == 40 and respond.terminal.reason == "client disconnected"
    assert isinstance(decision.events[0], ev.StreamCut)
    charged = [e for e in decision.events if isinstance(e, ev.BudgetCharged)]
    assert sum(e.amount_micros for e in charged) == 40
    _apply(state, decision.events)
    assert rid not in state.inflight and isinstance(state.finished.get(rid), ev.RequestCancelled)
    assert decide_cancel(state, rid, "acme", "again", _ctx()).events == []  # ended once


# --------------------------------------------------------------------------- cutting


def test_a_cut_keeps_only_what_is_allowed_and_ends_with_length() -> None:
    from turnout.service.wire.stream import trim

    chunk = {"id": "g", "choices": [{"index": 0, "delta": {"content": "abcdef", "tool_calls": [
        {"index": 0, "function": {"arguments": "xyz"}}]}}]}  # fmt: skip
    cut = trim(chunk, 7)
    (choice,) = cut["choices"]
    assert choice["delta"]["content"] == "abcdef"
    assert choice["delta"]["tool_calls"][0]["function"]["arguments"] == "x"
    assert choice["finish_reason"] == "length"
    assert trim(chunk, 0)["choices"][0]["delta"]["content"] == ""
    assert chunk["choices"][0]["delta"]["content"] == "abcdef"  # untouched


@given(
    st.integers(min_value=0, max_value=10**7),
    st.integers(min_value=0, max_value=10**5),
    st.none() | st.builds(Price, prompt=st.floats(0, 1e-4), completion=st.floats(1e-9, 1e-4)),
)
def test_a_stream_cut_at_its_allowance_never_costs_more_than_its_reservation(
    reservation: int, prompt: int, price: Price | None
) -> None:
    limits = CFG.tenant("default")
    tokens = completion_allowance(reservation, prompt, price, limits=limits)
    assert tokens is not None and tokens >= 0
    at = price or Price(
        prompt=limits.default_price_per_mtok / 1e6, completion=limits.default_price_per_mtok / 1e6
    )
    if tokens > 0:
        assert cost_micros(at, prompt, tokens) <= reservation
    # and it is not needlessly short: two tokens more would pass the reservation (exactly)
    more = Decimal(str(at.prompt)) * prompt + Decimal(str(at.completion)) * (tokens + 2)
    assert more * 1_000_000 > reservation or tokens == 0
