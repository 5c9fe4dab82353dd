"""Budgets: worst-case reservations, UTC periods, hard and soft limits, settling, replay."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal, localcontext

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from turnout.service.core import events as ev
from turnout.service.core.budget import (
    LIFETIME,
    BudgetEvent,
    TenantBudget,
    decide_reserve,
    decide_settle,
    evolve_budget,
    period_keys,
    reservation_micros,
    snapshot,
)
from turnout.service.core.config import TenantLimits
from turnout.service.core.pricing import Price

T = "acme"


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
       millis: int = 0) -> int:  # fmt: skip
    """Unix ms of a UTC date-time: ms(2026, 1, 31, 23, 59, 59, 999)."""
    when = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return int(when.timestamp()) * 1000 + millis


def usd(day: float | None = None, month: float | None = None, lifetime: float | None = None,
        soft: float = 80.0) -> TenantLimits:  # fmt: skip
    return TenantLimits(
        budget_usd_per_day=day,
        budget_usd_per_month=month,
        budget_usd_lifetime=lifetime,
        budget_soft_percent=soft,
    )


def fold(b: TenantBudget, events: list[BudgetEvent]) -> list[BudgetEvent]:
    for e in events:
        evolve_budget(b, e)
    return events


def reserve(
    b: TenantBudget, rid: str, amount: int, limits: TenantLimits, now_ms: int
) -> list[BudgetEvent]:
    events = decide_reserve(
        b, tenant=T, request_id=rid, amount_micros=amount, limits=limits, now_ms=now_ms
    )
    return fold(b, events)


def settle(
    b: TenantBudget, rid: str, actual: int | None, limits: TenantLimits
) -> list[BudgetEvent]:
    return fold(b, decide_settle(b, tenant=T, request_id=rid, actual_micros=actual, limits=limits))


# --- worst-case reservations ----------------------------------------------------

CHEAP = Price(prompt=0.000001, completion=0.000002)  # $1 / $2 per million tokens
DEAR = Price(prompt=0.00001, completion=0.00003)
RESERVATIONS = [
    # (prompt, max_tokens, prices) -> micros; default price $10/Mtok, default max_tokens 1024
    (100, 50, [CHEAP], 100 + 100),
    (100, 50, [None], 150 * 10),  # unknown price: $10 per million tokens, both ways
    (100, 50, [], 150 * 10),  # no candidate at all: one unpriced model
    (100, 50, [CHEAP, DEAR, None], 1_000 + 1_500),  # the dearest candidate
    (100, None, [CHEAP], 100 + 2 * 1024),  # no max_tokens: the default allowance
    (1, 0, [Price(prompt=1e-9, completion=0.0)], 1),  # 0.001 micros rounds up to 1
    (1_500, 0, [Price(prompt=1e-9, completion=0.0)], 2),  # 1.5 rounds up
    (10, 10, [Price(prompt=0.0, completion=0.0)], 1),  # never 0 when there are tokens
    (0, 0, [CHEAP], 0),
]


@pytest.mark.parametrize(("prompt", "max_tokens", "prices", "expected"), RESERVATIONS)
def test_reservation_is_the_worst_case_rounded_up(
    prompt: int, max_tokens: int | None, prices: list[Price | None], expected: int
) -> None:
    limits = TenantLimits(default_price_per_mtok=10.0, default_max_tokens=1024)
    assert reservation_micros(prompt, max_tokens, prices, limits=limits) == expected


PRICES = st.one_of(
    st.none(),
    st.decimals(min_value="0", max_value="0.001", places=12).map(float),
    st.floats(min_value=0, max_value=1e-3, allow_nan=False, allow_infinity=False),
)


@given(
    prompt=st.integers(min_value=0, max_value=2_000_000),
    max_tokens=st.none() | st.integers(min_value=0, max_value=200_000),
    candidates=st.lists(st.tuples(PRICES, PRICES), max_size=4),
    default_per_mtok=st.sampled_from([0.0, 0.3, 10.0, 123.456789]),
)
@example(prompt=1, max_tokens=None, candidates=[(0.001, 5e-324)], default_per_mtok=0.0)
def test_reservation_is_exactly_what_decimal_arithmetic_gives(
    prompt: int,
    max_tokens: int | None,
    candidates: list[tuple[float | None, float | None]],
    default_per_mtok: float,
) -> None:
    """Reservations are computed in integer fractions for speed; the decimal worst case
    rounded up is the oracle."""
    prices = [
        None if p is None or c is None else Price(prompt=p, completion=c) for p, c in candidates
    ]
    limits = TenantLimits(default_price_per_mtok=default_per_mtok, default_max_tokens=1024)
    completion = 1024 if max_tokens is None else max_tokens
    # exact: a float price goes down to 5e-324, so 1e7 .. 1e-340 takes ~350 digits (200
    # lost a subnormal completion price: 1000 + 5e-315 micros, rounded up, is 1001)
    with localcontext(prec=800):
        fallback = Decimal(str(default_per_mtok)) / 1_000_000
        worst = Decimal(0)
        for price in prices or [None]:
            p, c = (
                (fallback, fallback)
                if price is None
                else (Decimal(str(price.prompt)), Decimal(str(price.completion)))
            )
            worst = max(worst, p * prompt + c * completion)
        expected = int((worst * 1_000_000).to_integral_value(rounding=ROUND_CEILING))
    if prompt + completion > 0:
        expected = max(expected, 1)
    assert reservation_micros(prompt, max_tokens, prices, limits=limits) == expected


# --- periods --------------------------------------------------------------------

PERIODS = [
    (ms(2026, 11, 27, 0, 0, 0, 0), ("2026-11-27", "2026-11")),
    (ms(2026, 11, 27, 23, 59, 59, 999), ("2026-11-27", "2026-11")),
    (ms(2026, 11, 28, 0, 0, 0, 0), ("2026-11-28", "2026-11")),
    (ms(2026, 1, 31, 23, 59, 59, 999), ("2026-01-31", "2026-01")),
    (ms(2026, 2, 1), ("2026-02-01", "2026-02")),
    (ms(2028, 2, 29, 12, 0, 0, 0), ("2028-02-29", "2028-02")),
    (ms(2026, 12, 31, 23, 59, 59, 999), ("2026-12-31", "2026-12")),
    (ms(2027, 1, 1), ("2027-01-01", "2027-01")),
    (0, ("1970-01-01", "1970-01")),
]


@pytest.mark.parametrize(("now_ms", "keys"), PERIODS)
def test_periods_are_utc_calendar_days_and_months(now_ms: int, keys: tuple[str, str]) -> None:
    assert period_keys(now_ms) == keys


# --- hard limit -----------------------------------------------------------------

NOON = ms(2026, 11, 27, 12)


def test_reserve_up_to_the_limit_exactly_then_refuse() -> None:
    limits = usd(day=0.001)  # 1 000 micros
    b = TenantBudget()
    assert reserve(b, "a", 600, limits, NOON) == [
        ev.BudgetReserved(
            request_id="a", tenant=T, amount_micros=600, day="2026-11-27", month="2026-11"
        )
    ]
    settle(b, "a", 500, limits)  # spent 500
    reserve(b, "b", 300, limits, NOON)  # spent 500 + reserved 300
    assert reserve(b, "c", 201, limits, NOON) == [
        ev.BudgetExceeded(
            request_id="c",
            tenant=T,
            period="day",
            level="hard",
            limit_micros=1_000,
            spent_micros=500,
            reserved_micros=300,
            requested_micros=201,
        )
    ]
    assert "c" not in b.open  # a refusal holds nothing
    assert isinstance(reserve(b, "d", 200, limits, NOON)[0], ev.BudgetReserved)  # exactly 1 000


def test_the_refusal_names_the_longest_period_over_its_limit() -> None:
    limits = usd(day=0.001, month=0.0015, lifetime=0.002)
    b = TenantBudget()
    reserve(b, "a", 900, limits, NOON)
    settle(b, "a", 900, limits)
    got = reserve(b, "b", 700, limits, NOON)  # over the day and the month, not the lifetime
    assert [(e.period, e.level) for e in got if isinstance(e, ev.BudgetExceeded)] == [
        ("month", "hard")
    ]


def test_a_new_day_has_a_fresh_day_budget_but_the_same_month() -> None:
    limits = usd(day=0.001, month=0.0015)
    b = TenantBudget()
    reserve(b, "a", 1_000, limits, ms(2026, 11, 27, 23, 59, 59, 999))
    settle(b, "a", 1_000, limits)
    assert isinstance(
        reserve(b, "b", 1, limits, ms(2026, 11, 27, 23, 59, 59, 999))[0], ev.BudgetExceeded
    )
    # midnight UTC: the day is new, but the month has only 500 left
    assert reserve(b, "c", 600, limits, ms(2026, 11, 28))[0] == ev.BudgetExceeded(
        request_id="c",
        tenant=T,
        period="month",
        level="hard",
        limit_micros=1_500,
        spent_micros=1_000,
        reserved_micros=0,
        requested_micros=600,
    )
    assert isinstance(reserve(b, "d", 500, limits, ms(2026, 11, 28))[0], ev.BudgetReserved)
    # the month ends: everything is new again
    assert isinstance(reserve(b, "e", 1_000, limits, ms(2026, 12, 1))[0], ev.BudgetReserved)


def test_the_first_event_creates_the_budget_and_others_are_ignored() -> None:
    (reserved,) = decide_reserve(
        None, tenant=T, request_id="a", amount_micros=5, limits=usd(day=1.0), now_ms=NOON
    )
    b = evolve_budget(None, reserved)
    assert evolve_budget(b, ev.BreakerHalfOpened(model="m")) is b
    assert snapshot(b) == {
        "spent": {},
        "reserved": {"2026-11": 5, "2026-11-27": 5, LIFETIME: 5},
        "open": {"a": 5},
        "warned": [],
    }


def test_a_redelivered_reservation_is_not_reserved_twice() -> None:
    b = TenantBudget()
    reserve(b, "a", 100, usd(day=1.0), NOON)
    assert reserve(b, "a", 100, usd(day=1.0), NOON) == []
    assert snapshot(b)["reserved"] == {"2026-11-27": 100, "2026-11": 100, LIFETIME: 100}


# --- settling -------------------------------------------------------------------

SETTLES = [
    # (reserved, actual) -> (charged, released)
    (1_000, 400, 400, 600),
    (1_000, 999, 999, 1),
    (1_000, 1_000, 1_000, None),  # nothing left: no release
    (1_000, 1_300, 1_300, None),  # the upstream's own cost is charged honestly
    (1_000, 0, 0, 1_000),  # a cache hit costs nothing
    (1_000, None, None, 1_000),  # failed: release it all
    (0, None, None, 0),
]


@pytest.mark.parametrize(("reserved", "actual", "charged", "released"), SETTLES)
def test_settle_charges_the_real_cost_and_releases_the_rest(
    reserved: int, actual: int | None, charged: int | None, released: int | None
) -> None:
    b = TenantBudget()
    reserve(b, "a", reserved, usd(), NOON)
    got = settle(b, "a", actual, usd())
    period = {"request_id": "a", "tenant": T, "day": "2026-11-27", "month": "2026-11"}
    expected: list[BudgetEvent] = []
    if charged is not None:
        expected.append(ev.BudgetCharged(amount_micros=charged, **period))
    if released is not None:
        expected.append(ev.BudgetReleased(amount_micros=released, **period))
    assert got == expected
    assert b.reserved == {} and b.open == {}
    assert b.spent.get("2026-11-27", 0) == (charged or 0)


def test_settling_without_a_reservation_does_nothing() -> None:
    b = TenantBudget()
    assert settle(b, "ghost", 100, usd()) == []
    reserve(b, "a", 100, usd(), NOON)
    settle(b, "a", 50, usd())
    assert settle(b, "a", 50, usd()) == []  # settled once only
    assert decide_settle(None, tenant=T, request_id="a", actual_micros=1, limits=usd()) == []


def test_the_charge_goes_to_the_reservations_day_not_the_completions() -> None:
    limits = usd(day=0.001)
    b = TenantBudget()
    reserve(b, "late", 800, limits, ms(2026, 11, 27, 23, 59, 59, 0))
    charged = settle(b, "late", 700, limits)  # the answer arrives after midnight
    assert {e.day for e in charged if isinstance(e, ev.BudgetCharged)} == {"2026-11-27"}
    assert b.spent["2026-11-27"] == 700 and "2026-11-28" not in b.spent
    assert isinstance(reserve(b, "next", 1_000, limits, ms(2026, 11, 28))[0], ev.BudgetReserved)


# --- soft warning -----------------------------------------------------------------


def soft(events: list[BudgetEvent]) -> list[tuple[str, int]]:
    return [
        (e.period, e.spent_micros)
        for e in events
        if isinstance(e, ev.BudgetExceeded) and e.level == "soft"
    ]


def test_soft_warning_once_per_period_key() -> None:
    limits = usd(day=0.001, month=0.003, soft=80)  # warn at 800 a day, 2 400 a month
    b = TenantBudget()

    def spend(rid: str, actual: int, day: int, month: int = 11) -> list[tuple[str, int]]:
        assert isinstance(
            reserve(b, rid, actual, limits, ms(2026, month, day, 9))[0], ev.BudgetReserved
        )
        return soft(settle(b, rid, actual, limits))

    assert spend("a", 799, 27) == []
    assert spend("b", 1, 27) == [("day", 800)]  # crosses 800: warned
    assert spend("c", 100, 27) == []  # that day had its warning
    assert spend("d", 800, 28) == [("day", 800)]  # a new day warns again
    assert spend("e", 800, 29) == [("month", 2_500), ("day", 800)]
    assert spend("f", 500, 30) == []  # the month (now 3 000) had its warning
    assert spend("g", 800, 1, month=12) == [("day", 800)]  # a new month, under 2 400
    assert b.warned == {"2026-12-01", "2026-11"}  # days older than the two newest are pruned
    assert decide_settle(b, tenant=T, request_id="g", actual_micros=1, limits=limits) == []


def test_the_warning_comes_before_the_charge_it_announces() -> None:
    limits = usd(day=0.001, soft=80)
    b = TenantBudget()
    reserve(b, "a", 1_000, limits, NOON)
    got = settle(b, "a", 900, limits)
    assert [type(e) for e in got] == [ev.BudgetExceeded, ev.BudgetCharged, ev.BudgetReleased]
    assert got[0] == ev.BudgetExceeded(
        request_id="a",
        tenant=T,
        period="day",
        level="soft",
        limit_micros=1_000,
        spent_micros=900,
        reserved_micros=0,
        requested_micros=900,
    )


def test_soft_warning_folds_into_the_period_key_of_the_reservation() -> None:
    limits = usd(day=0.001, soft=50)
    b = TenantBudget()
    reserve(b, "a", 600, limits, ms(2026, 11, 27, 23, 59, 59, 0))
    assert soft(settle(b, "a", 600, limits)) == [("day", 600)]
    assert b.warned == {"2026-11-27"}
    reserve(b, "b", 600, limits, ms(2026, 11, 28, 0, 0, 1, 0))
    assert soft(settle(b, "b", 600, limits)) == [("day", 600)]
    assert b.warned == {"2026-11-27", "2026-11-28"}


def test_lifetime_limits_and_warnings() -> None:
    limits = usd(lifetime=0.002, soft=100)
    b = TenantBudget()
    reserve(b, "a", 2_000, limits, ms(2026, 1, 1))
    assert soft(settle(b, "a", 2_000, limits)) == [("lifetime", 2_000)]
    assert reserve(b, "b", 1, limits, ms(2031, 1, 1))[0] == ev.BudgetExceeded(
        request_id="b",
        tenant=T,
        period="lifetime",
        level="hard",
        limit_micros=2_000,
        spent_micros=2_000,
        reserved_micros=0,
        requested_micros=1,
    )


def test_old_days_and_months_are_pruned() -> None:
    b = TenantBudget()
    for i, day in enumerate([1, 2, 3, 4]):
        reserve(b, f"r{i}", 10, usd(), ms(2026, 11, day, 12))
        settle(b, f"r{i}", 10, usd())
    for i, month in enumerate([1, 2, 3]):
        reserve(b, f"m{i}", 10, usd(), ms(2027, month, 5))
        settle(b, f"m{i}", 10, usd())
    assert b.spent == {
        "2027-02-05": 10,
        "2027-03-05": 10,
        "2027-02": 10,
        "2027-03": 10,
        LIFETIME: 70,
    }


# --- stateful: never over the limit, reservations return, two halves equal once ---


class BudgetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.b = TenantBudget()
        self.log: list[BudgetEvent] = []
        self.now = ms(2026, 11, 27, 20)
        self.warned_keys: set[str] = set()

    @initialize(
        day=st.none() | st.integers(0, 3_000),
        month=st.none() | st.integers(0, 8_000),
        lifetime=st.none() | st.integers(0, 12_000),
        pct=st.sampled_from([0.0, 50.0, 80.0, 100.0]),
    )
    def limits(self, day: int | None, month: int | None, lifetime: int | None, pct: float) -> None:
        def micros(v: int | None) -> float | None:
            return None if v is None else v / 1_000_000

        self.limits_ = usd(micros(day), micros(month), micros(lifetime), soft=pct)
        self.caps = {"day": day, "month": month, "lifetime": lifetime}

    def run(self, events: list[BudgetEvent]) -> list[BudgetEvent]:
        self.log.extend(fold(self.b, events))
        return events

    @rule(step=st.sampled_from([0, 1, 3_600_000, 6 * 3_600_000, 20 * 86_400_000]))
    def time_passes(self, step: int) -> None:
        self.now += step

    @rule(amount=st.integers(0, 1_500))
    def reserve(self, amount: int) -> None:
        rid = f"r{len(self.log)}"
        self.run(
            decide_reserve(
                self.b,
                tenant=T,
                request_id=rid,
                amount_micros=amount,
                limits=self.limits_,
                now_ms=self.now,
            )
        )

    @precondition(lambda self: bool(self.b.open))
    @rule(data=st.data(), failed=st.booleans())
    def finish(self, data: st.DataObject, failed: bool) -> None:
        rid = data.draw(st.sampled_from(sorted(self.b.open)))
        res = self.b.open[rid]
        actual = None if failed else data.draw(st.integers(0, res.amount_micros))
        got = self.run(
            decide_settle(
                self.b, tenant=T, request_id=rid, actual_micros=actual, limits=self.limits_
            )
        )
        assert rid not in self.b.open and got
        charged = sum(e.amount_micros for e in got if isinstance(e, ev.BudgetCharged))
        released = sum(e.amount_micros for e in got if isinstance(e, ev.BudgetReleased))
        assert (charged, charged + released) == (actual or 0, res.amount_micros)
        for e in got:  # at most one soft warning per period key, ever
            if isinstance(e, ev.BudgetExceeded):
                key = {"day": res.day, "month": res.month, "lifetime": LIFETIME}[e.period]
                assert e.level == "soft" and key not in self.warned_keys
                self.warned_keys.add(key)

    @invariant()
    def never_over_the_limit(self) -> None:
        for key, spent in self.b.spent.items():
            period = "lifetime" if key == LIFETIME else "day" if len(key) == 10 else "month"
            cap = self.caps[period]
            if cap is not None:
                assert (
                    spent
                    + sum(
                        r.amount_micros
                        for r in self.b.open.values()
                        if key in (r.day, r.month, LIFETIME)
                    )
                    <= cap
                )

    @invariant()
    def reserved_is_the_sum_of_open_reservations(self) -> None:
        expected: dict[str, int] = {}
        for r in self.b.open.values():
            for key in (r.day, r.month, LIFETIME):
                expected[key] = expected.get(key, 0) + r.amount_micros
        assert self.b.reserved == {k: v for k, v in expected.items() if v}

    def teardown(self) -> None:
        """Settle everything: nothing stays reserved; then fold the log again in two halves."""
        for rid in sorted(self.b.open):
            self.run(
                decide_settle(
                    self.b, tenant=T, request_id=rid, actual_micros=None, limits=self.limits_
                )
            )
        assert self.b.reserved == {} and self.b.open == {}
        half = len(self.log) // 2
        replayed = TenantBudget()
        fold(replayed, self.log[:half])
        fold(replayed, self.log[half:])
        assert snapshot(replayed) == snapshot(self.b)


BudgetMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestBudget = BudgetMachine.TestCase
