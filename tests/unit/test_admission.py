"""Admission in the decider: rate limits, budgets, the cache, coalescing, resuming orphans.

Driven without I/O: the test plays the shell (answers calls, encodes answers
for the cache with encoding "none", decodes a live entry before deciding).
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.service.core import events as ev
from turnout.service.core.cache import EncodedBody
from turnout.service.core.config import Config, parse_config
from turnout.service.core.partitioning import home_partition
from turnout.service.core.request import (
    Call,
    CallResult,
    Context,
    Decision,
    IntakeRequest,
    Respond,
    admission_key,
    decide_intake,
    decide_result,
)
from turnout.service.core.state import RouterState, evolve, fold

T0 = 1_795_000_000_000
USAGE = ev.Usage(prompt_tokens=3, completion_tokens=5, total_tokens=8)


def cfg(**sections: Any) -> Config:
    base: dict[str, Any] = {"routes": {"general": {"models": ["a/one", "b/two"]}}}
    return parse_config(base | sections, {})


def request(rid: str, *, tenant: str = "acme", text: str = "hi", **params: Any) -> IntakeRequest:
    messages = [{"role": "user", "content": text}]
    return IntakeRequest(
        request_id=rid, tenant=tenant, messages_hash=text, prompt_tokens_est=3,
        max_tokens=params.get("max_tokens"), params={"temperature": 0, **params},
        messages=messages,
    )  # fmt: skip


class Shell:
    """Folds decisions, keeps the log, answers calls only when told to."""

    def __init__(self, config: Config, now_ms: int = T0) -> None:
        self.state, self.cfg, self.now = RouterState(), config, now_ms
        self.log: list[tuple[int, Any]] = []
        self.calls: list[Call] = []
        self.answers: dict[str, ev.RequestCompleted | ev.RequestFailed | ev.RequestRejected] = {}

    def ctx(self) -> Context:
        return Context(now_ms=self.now, cfg=self.cfg)

    def apply(self, decision: Decision) -> Decision:
        for event in decision.events:
            evolve(self.state, event, self.now, self.cfg)
            self.log.append((self.now, event))
        for effect in decision.effects:
            if isinstance(effect, Call):
                self.calls.append(effect)
            elif isinstance(effect, Respond):
                self.answers[effect.terminal.request_id] = effect.terminal
        return decision

    def submit(self, req: IntakeRequest, *, resume: bool = False) -> Decision:
        return self.apply(
            decide_intake(self.state, req, self.ctx(), cached_response=self.cached(req),
                          resume=resume)
        )  # fmt: skip

    def cached(self, req: IntakeRequest) -> dict[str, Any] | None:
        key = admission_key(req, self.cfg)
        index = self.state.cache.get(home_partition(req.tenant))
        entry = index.lookup(key, self.now) if key and index else None
        return msgspec.json.decode(entry.body) if entry is not None else None

    def answer(self, call: Call, *, ok: bool = True, cost: int = 7) -> Decision:
        self.calls.remove(call)
        response = {"id": f"gen-{call.request_id}", "model": call.model}
        body = msgspec.json.encode(response)
        result = CallResult(
            model=call.model, attempt=call.attempt, ok=ok, status=200 if ok else 400,
            latency_ms=10.0, response=response if ok else None, usage=USAGE,
            cost_micros=cost, error_class="ok" if ok else "bad_request",
            cache_body=EncodedBody(encoding="none", body=body, size_bytes=len(body)),
        )  # fmt: skip
        return self.apply(decide_result(self.state, call.request_id, result, self.ctx()))

    def run(self, req: IntakeRequest) -> Any:
        self.submit(req)
        while self.calls:
            self.answer(self.calls[0])
        return self.answers[req.request_id]

    def types(self, rid: str | None = None) -> list[str]:
        return [
            e.TYPE.removeprefix("turnout.")
            for _, e in self.log
            if rid is None or getattr(e, "request_id", None) == rid
        ]


# --- rate limits -------------------------------------------------------------


def test_over_the_minute_limit_a_request_is_rejected_with_the_wait_and_consumes_nothing() -> None:
    shell = Shell(cfg(tenants={"default": {"requests_per_minute": 2, "burst": 10}}))
    shell.run(request("r1", text="a"))
    shell.now += 10_000
    shell.run(request("r2", text="b"))
    shell.now += 5_000
    rejected = shell.run(request("r3", text="c"))
    assert isinstance(rejected, ev.RequestRejected) and rejected.code == "rate_limited"
    assert rejected.retry_after_ms == 45_000  # r1 leaves the window 60 s after it came
    assert shell.types("r3") == ["ratelimit.exceeded", "request.rejected"]
    shell.now += 45_000
    assert isinstance(shell.run(request("r4", text="d")), ev.RequestCompleted)


def test_a_rejected_request_gets_its_reply_to_and_a_readable_message() -> None:
    shell = Shell(cfg(tenants={"default": {"burst": 1}}))
    shell.run(request("r1", text="a"))
    req = msgspec.structs.replace(request("r2", text="b"), reply_to="my.replies")
    rejected = shell.run(req)
    assert rejected.reply_to == "my.replies"
    assert "burst = 1" in rejected.message and "'acme'" in rejected.message


def test_a_request_over_tokens_per_minute_by_itself_is_a_bad_request_not_a_busy_tenant() -> None:
    """Its estimate alone passes the limit, so no wait ever admits it: a 429 told clients
    (and the openai SDK, which retries those) to try again. It is refused as
    `invalid_request` (400), saying why; one within the limit is still `rate_limited`."""
    shell = Shell(cfg(tenants={"default": {"tokens_per_minute": 1_000}}))
    huge = shell.run(request("r1", text="a", max_tokens=5_000))
    assert isinstance(huge, ev.RequestRejected) and huge.code == "invalid_request"
    assert huge.retry_after_ms is None
    assert "can never be admitted" in huge.message and "tokens_per_minute = 1000" in huge.message
    shell.submit(request("r2", text="b", max_tokens=900))  # in flight: counted its estimate
    busy = shell.run(request("r3", text="c", max_tokens=900))
    assert isinstance(busy, ev.RequestRejected) and busy.code == "rate_limited"


def test_limits_are_per_tenant() -> None:
    shell = Shell(cfg(tenants={"default": {"burst": 1}}))
    assert isinstance(shell.run(request("r1", tenant="acme")), ev.RequestCompleted)
    assert isinstance(shell.run(request("r2", tenant="globex")), ev.RequestCompleted)
    assert isinstance(shell.run(request("r3", tenant="acme", text="x")), ev.RequestRejected)


# --- budgets -----------------------------------------------------------------


def test_a_request_reserves_its_worst_case_then_is_charged_its_cost_and_released_the_rest() -> None:
    shell = Shell(cfg())
    shell.run(request("r1", max_tokens=100))
    reserved, charged, released = (
        next(e for _, e in shell.log if isinstance(e, kind))
        for kind in (ev.BudgetReserved, ev.BudgetCharged, ev.BudgetReleased)
    )
    assert reserved.amount_micros == 1_030  # (3 + 100) tokens at the default $10 per Mtok
    assert charged.amount_micros == 7
    assert released.amount_micros == 1_023
    (budget,) = shell.state.budgets.values()
    assert budget.open == {}


def test_a_request_that_would_pass_the_budget_is_rejected_before_it_is_accepted() -> None:
    shell = Shell(cfg(tenants={"default": {"budget_usd_per_day": 0.0015}}))
    first = request("r1", text="a", max_tokens=100)  # reserves 1,030 of 1,500
    shell.submit(first)
    shell.submit(request("r2", text="b", max_tokens=100))
    refused = shell.answers["r2"]
    assert isinstance(refused, ev.RequestRejected) and refused.code == "budget_exceeded"
    assert shell.types("r2") == ["budget.exceeded", "request.rejected"]
    shell.answer(shell.calls[0])  # r1 is charged 7: 1,493 left
    assert isinstance(shell.run(request("r3", text="c", max_tokens=100)), ev.RequestCompleted)


def test_a_failed_request_releases_its_whole_reservation() -> None:
    shell = Shell(cfg(features={"retries": False, "fallbacks": False}))
    shell.submit(request("r1", max_tokens=100))
    shell.answer(shell.calls[0], ok=False)
    released = [e for _, e in shell.log if isinstance(e, ev.BudgetReleased)]
    assert [e.amount_micros for e in released] == [1_030]
    assert not any(isinstance(e, ev.BudgetCharged) for _, e in shell.log)


# --- cache and coalescing ------------------------------------------------------


def test_a_repeat_is_answered_from_the_cache_for_free_with_the_savings_shown() -> None:
    shell = Shell(cfg())
    first = shell.run(request("r1"))
    assert "cache.stored" in shell.types("r1")
    hit = shell.run(request("r2"))
    assert shell.types("r2") == ["request.accepted", "cache.hit", "request.completed"]
    assert hit.cached and hit.attempts == 0 and hit.cost_micros == 0
    assert hit.usage.total_tokens == 0 and hit.saved_usage == first.usage
    assert hit.saved_cost_micros == first.cost_micros and hit.response == first.response


def test_a_request_that_is_not_deterministic_is_not_cached() -> None:
    shell = Shell(cfg())
    shell.run(request("r1", temperature=0.7))
    shell.run(request("r2", temperature=0.7))
    assert "cache.stored" not in shell.types() and "cache.hit" not in shell.types()


def test_identical_requests_in_flight_share_one_call() -> None:
    shell = Shell(cfg())
    shell.submit(request("r1"))
    follower = shell.submit(request("r2"))
    assert follower.effects == [] and shell.types("r2")[-1] == "request.coalesced"
    assert len(shell.calls) == 1
    done = shell.answer(shell.calls[0])
    assert [e.terminal.request_id for e in done.effects if isinstance(e, Respond)] == ["r1", "r2"]
    leader, joined = shell.answers["r1"], shell.answers["r2"]
    assert joined.coalesced and joined.response == leader.response and joined.cost_micros == 0
    assert joined.saved_usage == leader.usage


def test_a_leader_s_failure_fails_its_followers_too() -> None:
    shell = Shell(cfg(features={"retries": False, "fallbacks": False}))
    shell.submit(request("r1"))
    shell.submit(request("r2"))
    shell.answer(shell.calls[0], ok=False)
    assert isinstance(shell.answers["r2"], ev.RequestFailed)
    assert shell.answers["r2"].code == shell.answers["r1"].code


# --- switches: off means off ---------------------------------------------------------


def test_caching_off_means_no_cache_events_and_a_second_call() -> None:
    shell = Shell(cfg(features={"caching": False}))
    shell.run(request("r1"))
    second = shell.run(request("r2"))
    assert not second.cached
    assert not [t for t in shell.types() if t.startswith("cache.") or t == "request.coalesced"]


def test_coalescing_off_means_every_request_calls() -> None:
    shell = Shell(cfg(features={"request_coalescing": False}))
    shell.submit(request("r1"))
    shell.submit(request("r2"))
    assert len(shell.calls) == 2 and "request.coalesced" not in shell.types()


def test_rate_limiting_off_admits_everything() -> None:
    shell = Shell(cfg(features={"rate_limiting": False}, tenants={"default": {"burst": 1}}))
    answers = [shell.run(request(f"r{i}", text=str(i))) for i in range(5)]
    assert all(isinstance(a, ev.RequestCompleted) for a in answers)
    assert shell.state.limits == {}


def test_budgets_off_writes_no_budget_event() -> None:
    shell = Shell(cfg(features={"budgets": False}, tenants={"default": {"budget_usd_per_day": 0}}))
    assert isinstance(shell.run(request("r1")), ev.RequestCompleted)
    assert not [t for t in shell.types() if t.startswith("budget.")]


def test_breaker_off_never_skips_a_model() -> None:
    shell = Shell(cfg(features={"circuit_breaker": False, "retries": False}))
    for i in range(8):
        shell.submit(request(f"r{i}", text=str(i)))
        shell.answer(next(c for c in shell.calls if c.model == "a/one"), ok=False)
        while shell.calls:
            shell.answer(shell.calls[0])
    assert not [t for t in shell.types() if t.startswith("breaker.")]
    decided = [e for _, e in shell.log if isinstance(e, ev.RouteDecided)]
    assert all(d.order == ["a/one", "b/two"] for d in decided)


# --- resuming an orphan ------------------------------------------------------------------


def test_an_orphan_resumes_without_being_admitted_or_reserved_again() -> None:
    shell = Shell(cfg(tenants={"default": {"requests_per_minute": 1}}))
    req = request("r1", max_tokens=10)
    shell.submit(req)
    shell.calls.clear()  # its router died before the answer came back
    again = shell.submit(req, resume=True)
    assert [type(e).__name__ for e in again.events] == ["RouteDecided", "AttemptStarted"]
    shell.answer(shell.calls[0])
    assert shell.types("r1").count("request.accepted") == 1
    assert shell.types("r1").count("budget.reserved") == 1
    assert isinstance(shell.answers["r1"], ev.RequestCompleted)
    (budget,) = shell.state.budgets.values()
    assert budget.open == {}


# --- replay --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["acme", "globex"]), st.integers(0, 3), st.integers(0, 4_000)),
        min_size=1,
        max_size=40,
    )
)
def test_folding_the_log_rebuilds_the_live_state(plan: list[tuple[str, int, int]]) -> None:
    """Limits, budgets, cache and coalescing state: replay equals live, also in two halves."""
    config = cfg(tenants={"default": {"burst": 3, "requests_per_minute": 12,
                                      "budget_usd_per_day": 0.01}})  # fmt: skip
    shell = Shell(config)
    for n, (tenant, text, gap) in enumerate(plan):
        shell.now += gap
        shell.submit(request(f"r{n}", tenant=tenant, text=str(text), max_tokens=50))
        if shell.calls and n % 3 == 0:
            shell.answer(shell.calls[0])
    while shell.calls:
        shell.answer(shell.calls[0])
    live = shell.state.snapshot()
    assert fold(shell.log, config).snapshot() == live
    half = len(shell.log) // 2
    assert fold(shell.log[half:], config, fold(shell.log[:half], config)).snapshot() == live
    assert len(shell.answers) == len(plan)  # every request answered exactly once
