"""Rate limits: window edges, burst, token settling, retry_after, and a brute-force oracle."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from turnout.service.core import events as ev
from turnout.service.core.config import TenantLimits
from turnout.service.core.ratelimit import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    SECOND_MS,
    Exceeded,
    TenantWindows,
    admit,
    check,
    settle,
    snapshot,
    token_estimate,
)

_LIMIT_KEYS = (
    "requests_per_minute",
    "requests_per_hour",
    "requests_per_day",
    "burst",
    "tokens_per_minute",
)


def only(**limits: int) -> TenantLimits:
    """Limits with only the given ones set (every other one off)."""
    return msgspec.convert({**dict.fromkeys(_LIMIT_KEYS), **limits}, TenantLimits)


NONE = only()


def admitted(limits: TenantLimits, times: list[int], tokens: int = 0) -> TenantWindows:
    """Windows holding one admission at each of `times` (each asserted admissible)."""
    w = TenantWindows()
    for i, t in enumerate(times):
        assert check(w, limits, now_ms=t, tokens=tokens) is None, f"admission {i} at {t}"
        admit(w, limits, request_id=f"r{i}", now_ms=t, tokens=tokens)
    return w


def refusal(limit: str, value: int, wait: int) -> Exceeded:
    return Exceeded(limit=limit, limit_value=value, retry_after_ms=wait)


# --- tables -------------------------------------------------------------------

# (limits, admission times, now, tokens) -> expected verdict
WINDOW_EDGES = [
    # windows are (now - W, now]: an admission at 0 is gone at exactly W
    (only(requests_per_minute=2), [0, 1], 59_999, 0, refusal("requests_per_minute", 2, 1)),
    (only(requests_per_minute=2), [0, 1], 60_000, 0, None),
    (only(requests_per_minute=2), [0, 30_000], 60_000, 0, None),
    (
        only(requests_per_minute=2),
        [0, 30_000],
        30_001,
        0,
        refusal("requests_per_minute", 2, 29_999),
    ),
    (only(requests_per_hour=1), [5], HOUR_MS + 4, 0, refusal("requests_per_hour", 1, 1)),
    (only(requests_per_hour=1), [5], HOUR_MS + 5, 0, None),
    (only(requests_per_day=3), [0, 0, 0], DAY_MS - 1, 0, refusal("requests_per_day", 3, 1)),
    (only(requests_per_day=3), [0, 0, 0], DAY_MS, 0, None),
    # burst: a 1 s sliding window, not a calendar second
    (only(burst=3), [0, 0, 0], 0, 0, refusal("burst", 3, 1000)),
    (only(burst=3), [0, 0, 0], 999, 0, refusal("burst", 3, 1)),
    (only(burst=3), [0, 0, 0], 1000, 0, None),
    (only(burst=2), [900, 1100], 1500, 0, refusal("burst", 2, 400)),
    (only(burst=2), [900, 1100], 1900, 0, None),
    # the N-th most recent admission decides, not the oldest one
    (
        only(requests_per_minute=2),
        [0, 50_000, 100_000],
        105_000,
        0,
        refusal("requests_per_minute", 2, 5_000),
    ),
    # a limit of 0 refuses everything, waiting the window
    (only(requests_per_minute=0), [], 0, 0, refusal("requests_per_minute", 0, MINUTE_MS)),
    (only(burst=0), [], 0, 0, refusal("burst", 0, SECOND_MS)),
    # tokens: the window's amounts plus this request's stay <= the limit
    (only(tokens_per_minute=1000), [0], 10, 0, None),
    (only(tokens_per_minute=1000), [], 0, 1000, None),
    (only(tokens_per_minute=1000), [], 0, 1001, refusal("tokens_per_minute", 1000, MINUTE_MS)),
    (NONE, [0] * 50, 0, 10**9, None),
]


@pytest.mark.parametrize(("limits", "times", "now", "tokens", "expected"), WINDOW_EDGES)
def test_window_edges(
    limits: TenantLimits, times: list[int], now: int, tokens: int, expected: Exceeded | None
) -> None:
    assert check(admitted(limits, times), limits, now_ms=now, tokens=tokens) == expected


def test_a_tenant_never_seen_checks_against_empty_windows() -> None:
    limits = only(requests_per_minute=1, tokens_per_minute=10)
    assert check(None, limits, now_ms=0, tokens=10) is None
    assert check(None, limits, now_ms=0, tokens=11) == refusal("tokens_per_minute", 10, MINUTE_MS)


def test_the_first_admission_creates_the_windows() -> None:
    limits = only(requests_per_minute=1)
    w = admit(None, limits, request_id="a", now_ms=5, tokens=0)
    assert admit(w, limits, request_id="b", now_ms=70_000, tokens=0) is w
    assert check(w, limits, now_ms=70_001, tokens=0) == refusal("requests_per_minute", 1, 59_999)
    settle(None, request_id="a", tokens=1)  # nothing to settle: no error


def test_tokens_count_the_estimate_until_settled_then_the_real_usage() -> None:
    limits = only(tokens_per_minute=1000)
    w = TenantWindows()
    admit(w, limits, request_id="a", now_ms=0, tokens=800)
    admit(w, limits, request_id="b", now_ms=5_000, tokens=100)
    # 900 in the window: 200 more do not fit until "a" (at 0) leaves at 60 000
    assert check(w, limits, now_ms=10_000, tokens=200) == refusal("tokens_per_minute", 1000, 50_000)
    settle(w, request_id="a", tokens=300)  # the answer used 300 of the 800 estimated
    assert check(w, limits, now_ms=10_000, tokens=600) is None
    assert check(w, limits, now_ms=10_000, tokens=601) == refusal("tokens_per_minute", 1000, 50_000)
    # settling is once: a second settle of "a" changes nothing
    settle(w, request_id="a", tokens=0)
    assert check(w, limits, now_ms=10_000, tokens=601) is not None
    # a cache hit or failure settles to 0 and frees its estimate
    settle(w, request_id="b", tokens=0)
    assert check(w, limits, now_ms=10_000, tokens=700) is None


def test_settled_usage_above_the_estimate_counts_in_full() -> None:
    limits = only(tokens_per_minute=1000)
    w = admitted(limits, [0], tokens=100)
    settle(w, request_id="r0", tokens=990)
    assert check(w, limits, now_ms=1, tokens=11) == refusal("tokens_per_minute", 1000, 59_999)
    assert check(w, limits, now_ms=1, tokens=10) is None


def test_token_wait_is_the_least_wait_for_enough_room() -> None:
    limits = only(tokens_per_minute=100)
    w = admitted(limits, [0, 0, 10_000, 20_000], tokens=25)
    # 100 in the window at 30 000; both admissions at 0 leave at 60 000, the next at 70 000
    assert check(w, limits, now_ms=30_000, tokens=25) == refusal("tokens_per_minute", 100, 30_000)
    assert check(w, limits, now_ms=30_000, tokens=50) == refusal("tokens_per_minute", 100, 30_000)
    assert check(w, limits, now_ms=30_000, tokens=75) == refusal("tokens_per_minute", 100, 40_000)
    assert check(w, limits, now_ms=60_000, tokens=50) is None
    assert check(w, limits, now_ms=69_999, tokens=75) == refusal("tokens_per_minute", 100, 1)
    assert check(w, limits, now_ms=70_000, tokens=75) is None


def test_the_longest_wait_is_reported_and_named() -> None:
    limits = only(burst=2, requests_per_minute=3, requests_per_hour=4)
    w = admitted(limits, [0, 30_000, 60_000, 60_001])
    # at 60 002 burst waits 998 ms, the minute 29 998 ms, the hour ~59 min: the hour is named
    assert check(w, limits, now_ms=60_002, tokens=0) == refusal(
        "requests_per_hour", 4, HOUR_MS - 60_002
    )
    one_hour = only(burst=2, requests_per_minute=3)
    w = admitted(one_hour, [0, 30_000, 60_000, 60_001])
    assert check(w, one_hour, now_ms=60_002, tokens=0) == refusal("requests_per_minute", 3, 29_998)
    # an over-size token request is refused even when the windows are empty
    huge = only(tokens_per_minute=10, burst=1)
    assert check(None, huge, now_ms=0, tokens=11) == refusal("tokens_per_minute", 10, MINUTE_MS)


def test_equal_waits_name_the_longer_window() -> None:
    limits = only(burst=1, requests_per_minute=1)
    w = admitted(limits, [59_000])
    assert check(w, limits, now_ms=59_000, tokens=0) == refusal("requests_per_minute", 1, MINUTE_MS)


def test_time_running_backwards_counts_as_the_latest_admission() -> None:
    limits = only(requests_per_minute=1)
    w = admitted(limits, [100_000])
    # a router with a slow clock cannot sneak in a minute "earlier"
    assert check(w, limits, now_ms=30_000, tokens=0) == refusal("requests_per_minute", 1, MINUTE_MS)
    assert check(w, limits, now_ms=160_000, tokens=0) is None


def test_memory_is_bounded_by_the_longest_window() -> None:
    limits = only(requests_per_minute=1000, tokens_per_minute=10**9)
    w = TenantWindows()
    for i in range(20_000):  # 20 000 admissions, 10 per second, over 2 000 s
        admit(w, limits, request_id=str(i), now_ms=i * 100, tokens=5)
    assert len(w.times) - w.start == 600  # only the last minute is kept
    assert len(w.times) < 600 + 4096 * 2
    assert len(w.spends) == 600 and len(w.unsettled) == 600
    snap = snapshot(w)
    assert snap["requests_last_minute"] == 600 and snap["tokens_last_minute"] == 3000


def test_the_rejection_event_carries_the_refusal() -> None:
    got = refusal("burst", 50, 120).event(request_id="r1", tenant="acme")
    assert got == ev.RatelimitExceeded(
        request_id="r1", tenant="acme", limit="burst", limit_value=50, retry_after_ms=120
    )


def test_token_estimate_uses_the_default_completion_allowance() -> None:
    limits = TenantLimits(default_max_tokens=512)
    assert token_estimate(100, 256, limits) == 356
    assert token_estimate(100, None, limits) == 612


def test_check_changes_nothing() -> None:
    limits = TenantLimits(burst=2, tokens_per_minute=100)
    w = admitted(limits, [0, 10], tokens=40)
    before = snapshot(w)
    for now in (10, 500, 70_000, 10**9):
        check(w, limits, now_ms=now, tokens=50)
    assert snapshot(w) == before


# --- the oracle: brute force over every admission ever made ---------------------

WINDOWS = {
    "requests_per_day": DAY_MS,
    "requests_per_hour": HOUR_MS,
    "requests_per_minute": MINUTE_MS,
    "burst": SECOND_MS,
}


@dataclass
class Admission:
    request_id: str
    at_ms: int
    tokens: int
    settled: bool = False


def oracle(limits: TenantLimits, log: list[Admission], now: int, tokens: int) -> Exceeded | None:
    """The specification, spelled out: count and sum the whole history each time."""
    best: Exceeded | None = None
    for name, window in WINDOWS.items():
        value = getattr(limits, name)
        if value is None:
            continue
        inside = [a.at_ms for a in log if now - window < a.at_ms <= now]
        wait = 0
        if value == 0:
            wait = window
        elif len(inside) >= value:  # least d leaving < value in (now + d - W, now + d]
            wait = min(
                d
                for d in {a + window - now for a in inside}
                if sum(1 for a in inside if a > now + d - window) < value
            )
        if wait and (best is None or wait > best.retry_after_ms):
            best = refusal(name, value, wait)
    tpm = limits.tokens_per_minute
    if tpm is not None:
        inside_t = [a for a in log if now - MINUTE_MS < a.at_ms <= now]
        wait = 0
        if tokens > tpm:
            wait = MINUTE_MS
        elif sum(a.tokens for a in inside_t) + tokens > tpm:
            wait = min(
                d
                for d in {a.at_ms + MINUTE_MS - now for a in inside_t}
                if sum(a.tokens for a in inside_t if a.at_ms > now + d - MINUTE_MS) + tokens <= tpm
            )
        if wait and (best is None or wait > best.retry_after_ms):
            best = refusal("tokens_per_minute", tpm, wait)
    return best


STEPS = st.one_of(
    st.integers(0, 50),
    st.integers(0, 1_500),
    st.integers(0, 70_000),
    st.sampled_from([SECOND_MS, MINUTE_MS - 1, MINUTE_MS, HOUR_MS - 1, HOUR_MS, DAY_MS]),
)


def maybe(lo: int, hi: int) -> st.SearchStrategy[int | None]:
    return st.none() | st.integers(lo, hi)


class LimiterMachine(RuleBasedStateMachine):
    """Random limits and arrivals: every verdict equals the brute-force oracle's."""

    def __init__(self) -> None:
        super().__init__()
        self.w = TenantWindows()
        self.log: list[Admission] = []
        self.calls: list[tuple[str, str, int, int]] = []  # ("admit"|"settle", id, now, tokens)
        self.now = 0

    @initialize(
        rpm=maybe(0, 8),
        rph=maybe(1, 16),
        rpd=maybe(1, 30),
        burst=maybe(1, 4),
        tpm=maybe(0, 300),
    )
    def limits(
        self, rpm: int | None, rph: int | None, rpd: int | None, burst: int | None, tpm: int | None
    ) -> None:
        self.limits_ = TenantLimits(
            requests_per_minute=rpm,
            requests_per_hour=rph,
            requests_per_day=rpd,
            burst=burst,
            tokens_per_minute=tpm,
        )

    @rule(step=STEPS, tokens=st.integers(0, 120))
    def request(self, step: int, tokens: int) -> None:
        self.now += step
        got = check(self.w, self.limits_, now_ms=self.now, tokens=tokens)
        assert got == oracle(self.limits_, self.log, self.now, tokens)
        if got is None:
            rid = f"r{len(self.log)}"
            admit(self.w, self.limits_, request_id=rid, now_ms=self.now, tokens=tokens)
            self.log.append(Admission(rid, self.now, tokens))
            self.calls.append(("admit", rid, self.now, tokens))
        elif not self.hopeless(tokens):  # waiting retry_after_ms is enough, any less is not
            wait = got.retry_after_ms
            assert oracle(self.limits_, self.log, self.now + wait, tokens) is None
            assert oracle(self.limits_, self.log, self.now + wait - 1, tokens) is not None

    def hopeless(self, tokens: int) -> bool:
        lim = self.limits_
        zero = any(getattr(lim, name) == 0 for name in WINDOWS)
        return zero or (lim.tokens_per_minute is not None and tokens > lim.tokens_per_minute)

    @precondition(lambda self: any(not a.settled for a in self.log))
    @rule(data=st.data(), tokens=st.integers(0, 200))
    def finish(self, data: st.DataObject, tokens: int) -> None:
        a = data.draw(st.sampled_from([a for a in self.log if not a.settled]))
        settle(self.w, request_id=a.request_id, tokens=tokens)
        a.settled, a.tokens = True, tokens
        self.calls.append(("settle", a.request_id, self.now, tokens))

    @invariant()
    def never_over_any_limit_in_any_window(self) -> None:
        times = [a.at_ms for a in self.log]
        for name, window in WINDOWS.items():
            value = getattr(self.limits_, name)
            if value is not None:
                assert all(sum(1 for u in times if t - window < u <= t) <= value for t in times)

    def teardown(self) -> None:
        """Folding the admissions and settlements again, in two halves, gives the same state
        (and the many `check` calls in between changed nothing)."""
        half = len(self.calls) // 2
        replayed = TenantWindows()
        for part in (self.calls[:half], self.calls[half:]):
            for op, rid, now, tokens in part:
                if op == "admit":
                    admit(replayed, self.limits_, request_id=rid, now_ms=now, tokens=tokens)
                else:
                    settle(replayed, request_id=rid, tokens=tokens)
        assert snapshot(replayed) == snapshot(self.w)


LimiterMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestLimiter = LimiterMachine.TestCase
