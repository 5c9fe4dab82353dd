"""The request decider driven by a pure in-memory loop: outcomes, events, replay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.service.core import events as ev
from turnout.service.core.config import Config, parse_config
from turnout.service.core.request import (
    Call,
    CallResult,
    Context,
    Decision,
    IntakeRequest,
    Resend,
    Respond,
    Wait,
    decide_intake,
    decide_result,
    decide_retry_due,
)
from turnout.service.core.state import RouterState, evolve, fold

CFG = parse_config(
    {
        "routes": {"general": {"models": ["a/one", "b/two"]}},
        "retry": {
            "max_retries": 2,
            "base_delay_ms": 100,
            "max_delay_ms": 1000,
            "retry_budget_min": 1000,
        },
        "breaker": {"failure_threshold": 3, "recovery_timeout_s": 10, "success_threshold": 1},
    },
    {},
)
Upstream = Callable[[str, int, int], CallResult]  # (model, attempt, now_ms) -> result


def ok(model: str, attempt: int, _now: int) -> CallResult:
    usage = ev.Usage(prompt_tokens=3, completion_tokens=5, total_tokens=8)
    return CallResult(
        model=model,
        attempt=attempt,
        ok=True,
        status=200,
        latency_ms=12.0,
        response={"id": "gen-1", "model": model},
        usage=usage,
        cost_micros=7,
    )


def fail(
    error_class: str, status: int | None = None, retry_after_ms: int | None = None
) -> Upstream:
    def call(model: str, attempt: int, _now: int) -> CallResult:
        return CallResult(
            model=model,
            attempt=attempt,
            ok=False,
            status=status,
            latency_ms=5.0,
            error_class=error_class,
            message=f"{error_class} from {model}",
            retry_after_ms=retry_after_ms,
        )

    return call


def request(rid: str = "r1", model: str | None = None) -> IntakeRequest:
    return IntakeRequest(
        request_id=rid, tenant="acme", model=model, messages_hash="h", prompt_tokens_est=3
    )


class Loop:
    """Runs decisions to completion: folds events, performs effects with `upstream`."""

    def __init__(self, upstream: Upstream, cfg: Config = CFG, now_ms: int = 1_000_000) -> None:
        self.state, self.cfg, self.now, self.upstream = RouterState(), cfg, now_ms, upstream
        self.log: list[tuple[int, Any]] = []
        self.answers: list[Any] = []

    def ctx(self) -> Context:
        return Context(now_ms=self.now, cfg=self.cfg)

    def apply(self, decision: Decision) -> None:
        for event in decision.events:
            evolve(self.state, event, self.now, self.cfg)
            self.log.append((self.now, event))
        for effect in decision.effects:
            match effect:
                case Call():
                    self.now += 5
                    result = self.upstream(effect.model, effect.attempt, self.now)
                    self.apply(decide_result(self.state, effect.request_id, result, self.ctx()))
                case Wait():
                    self.now += effect.delay_ms
                    self.apply(decide_retry_due(self.state, effect.request_id, self.ctx()))
                case Respond() | Resend():
                    self.answers.append(effect.terminal)

    def submit(self, req: IntakeRequest) -> None:
        self.apply(decide_intake(self.state, req, self.ctx()))

    def types(self) -> list[str]:
        return [type(e).TYPE.removeprefix("turnout.") for _, e in self.log]


def test_a_healthy_request_is_accepted_routed_attempted_and_completed() -> None:
    loop = Loop(ok)
    loop.submit(request())
    assert loop.types() == [
        "request.accepted",
        "budget.reserved",
        "route.decided",
        "attempt.started",
        "attempt.succeeded",
        "budget.charged",
        "budget.released",
        "request.completed",
    ]
    (answer,) = loop.answers
    assert isinstance(answer, ev.RequestCompleted) and answer.model == "a/one"
    assert answer.usage.total_tokens == 8 and answer.cost_micros == 7


def test_a_redelivered_request_is_answered_from_state_without_a_new_call() -> None:
    calls: list[str] = []

    def counting(model: str, attempt: int, now: int) -> CallResult:
        calls.append(model)
        return ok(model, attempt, now)

    loop = Loop(counting)
    loop.submit(request())
    loop.submit(request())
    assert calls == ["a/one"]
    assert loop.answers[0] == loop.answers[1]
    assert loop.types().count("request.completed") == 1


def test_retryable_failures_are_retried_then_fall_back_to_the_next_model() -> None:
    loop = Loop(lambda m, a, n: fail("unavailable", 503)(m, a, n) if m == "a/one" else ok(m, a, n))
    loop.submit(request())
    assert loop.types() == [
        "request.accepted",
        "budget.reserved",
        "route.decided",
        "attempt.started",
        "attempt.failed",
        "retry.scheduled",
        "attempt.started",
        "attempt.failed",
        "retry.scheduled",
        "attempt.started",
        "attempt.failed",
        "breaker.opened",
        "fallback.taken",
        "attempt.started",
        "attempt.succeeded",
        "budget.charged",
        "budget.released",
        "request.completed",
    ]
    assert loop.answers[0].model == "b/two" and loop.answers[0].attempts == 4


def test_retry_after_is_honoured_as_the_retry_delay() -> None:
    loop = Loop(fail("rate_limited", 429, retry_after_ms=800))
    loop.submit(request())
    delays = [e.delay_ms for _, e in loop.log if isinstance(e, ev.RetryScheduled)]
    assert delays and all(d >= 800 for d in delays)


def test_a_bad_request_is_not_retried_nor_sent_elsewhere() -> None:
    loop = Loop(fail("bad_request", 400))
    loop.submit(request())
    (answer,) = loop.answers
    assert isinstance(answer, ev.RequestFailed) and answer.code == "invalid_request"
    assert loop.types().count("attempt.started") == 1


def test_when_every_candidate_fails_the_errors_of_each_are_reported() -> None:
    loop = Loop(fail("unavailable", 503))
    loop.submit(request())
    (answer,) = loop.answers
    assert answer.code == "upstream_unavailable"
    assert {e.model for e in answer.errors} == {"a/one", "b/two"}


def test_an_open_breaker_is_skipped_then_half_opens_and_closes_after_recovery() -> None:
    healthy = {"a/one": False}
    loop = Loop(
        lambda m, a, n: ok(m, a, n) if healthy.get(m, True) else fail("unavailable", 503)(m, a, n)
    )
    loop.submit(request("r1"))  # three failures on a/one open its breaker
    loop.submit(request("r2"))
    decided = [e for _, e in loop.log if isinstance(e, ev.RouteDecided)][-1]
    assert decided.order == ["b/two"] and decided.skipped[0].reason == "breaker_open"
    healthy["a/one"] = True
    loop.now += 10_000
    loop.submit(request("r3"))
    assert loop.types()[-8:] == [
        "route.decided",
        "breaker.half_opened",
        "attempt.started",
        "attempt.succeeded",
        "breaker.closed",
        "budget.charged",
        "budget.released",
        "request.completed",
    ]
    assert loop.state.breakers["a/one"].status == "closed"


def test_with_retries_and_fallbacks_switched_off_the_first_failure_is_final() -> None:
    cfg = parse_config({"features": {"retries": False, "fallbacks": False}}, {})
    loop = Loop(fail("unavailable", 503), cfg=cfg)
    loop.submit(request())
    assert loop.types().count("attempt.started") == 1
    assert isinstance(loop.answers[0], ev.RequestFailed)


outcome = st.sampled_from(
    ["ok", "unavailable", "rate_limited", "bad_request", "timeout", "forbidden"]
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(outcome, min_size=1, max_size=12), min_size=1, max_size=12), st.data())
def test_any_run_ends_each_request_once_and_replay_rebuilds_the_state(
    scripts: list[list[str]], data: st.DataObject
) -> None:
    queue = [o for script in scripts for o in script]

    def scripted(model: str, attempt: int, now: int) -> CallResult:
        name = queue.pop(0) if queue else "ok"
        return (
            ok(model, attempt, now)
            if name == "ok"
            else fail(name, retry_after_ms=300)(model, attempt, now)
        )

    loop = Loop(scripted)
    ids = [f"r{i}" for i in range(len(scripts))]
    for rid in ids + data.draw(st.lists(st.sampled_from(ids), max_size=4)):
        loop.submit(request(rid))
        loop.now += data.draw(st.integers(0, 20_000))
    terminals = [
        e.request_id
        for _, e in loop.log
        if isinstance(e, ev.RequestCompleted | ev.RequestFailed | ev.RequestRejected)
    ]
    assert sorted(terminals) == sorted(ids)
    assert fold(loop.log, CFG).snapshot() == loop.state.snapshot()
    half = len(loop.log) // 2
    assert (
        fold(loop.log[half:], CFG, fold(loop.log[:half], CFG)).snapshot() == loop.state.snapshot()
    )


def test_the_same_record_redelivered_is_not_answered_twice_but_a_resubmission_is() -> None:
    loop = Loop(ok)
    first = msgspec.structs.replace(request(), intake_partition=3, intake_offset=41)
    loop.submit(first)
    loop.submit(first)  # redelivered after a crash before commit: already answered
    assert len(loop.answers) == 1
    loop.submit(msgspec.structs.replace(first, intake_offset=97))  # the client sent it again
    assert len(loop.answers) == 2 and loop.answers[0] == loop.answers[1]
    assert loop.types().count("request.completed") == 1
