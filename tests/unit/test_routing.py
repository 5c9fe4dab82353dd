"""Routing strategies, pinning and skips; prices in micro-dollars; latency stats."""

from __future__ import annotations

from collections import Counter
from decimal import ROUND_HALF_UP, Decimal, localcontext

from hypothesis import given
from hypothesis import strategies as st

from turnout.service.core.breaker import Breaker
from turnout.service.core.config import RouteConfig
from turnout.service.core.pricing import (
    Price,
    call_cost_micros,
    cost_micros,
    parse_price,
    usd_to_micros,
)
from turnout.service.core.routing import RouteDecision, decide_route
from turnout.service.core.stats import LatencyStat, observe_latency

MODELS = ("a/one", "b/two", "c/three")


def route(strategy: str = "priority", **kw: object) -> RouteConfig:
    return RouteConfig(strategy=strategy, models=MODELS, **kw)


def decide(
    cfg: RouteConfig, request_id: str = "r1", pinned: str | None = None, **kw: object
) -> RouteDecision:
    args = {"now_ms": 0, "breakers": {}, "latency": {}, "prices": {}} | kw
    return decide_route(cfg, request_id=request_id, pinned=pinned, **args)


def test_priority_keeps_the_configured_order_and_a_pinned_model_goes_first() -> None:
    assert decide(route()).order == MODELS
    assert decide(route(), pinned="c/three").order == ("c/three", "a/one", "b/two")
    assert decide(route(), pinned="x/new").order == ("x/new", *MODELS)


def test_open_breakers_are_skipped_with_a_reason_until_their_probe_is_due() -> None:
    breakers = {"a/one": Breaker(status="open", open_until_ms=1_000)}
    early = decide(route(), breakers=breakers, now_ms=500)
    assert early.order == ("b/two", "c/three")
    assert early.skipped == (("a/one", "breaker_open"),)
    assert decide(route(), breakers=breakers, now_ms=1_000).order == MODELS


def test_weighted_follows_the_weights_and_replays_the_same_choice() -> None:
    cfg = route("weighted", weights=(3.0, 1.0, 0.0))
    firsts = Counter(decide(cfg, request_id=f"req-{i}").order[0] for i in range(4_000))
    assert firsts["c/three"] == 0
    assert 0.70 < firsts["a/one"] / 4_000 < 0.80
    one = decide(cfg, request_id="fixed")
    assert one == decide(cfg, request_id="fixed") and one.sample is not None


def test_lowest_latency_measures_unknown_models_first_then_fastest() -> None:
    latency = {
        "a/one": LatencyStat(count=5, ewma_ms=300),
        "b/two": LatencyStat(count=5, ewma_ms=90),
    }
    assert decide(route("lowest_latency"), latency=latency).order == ("c/three", "b/two", "a/one")


def test_cheapest_orders_by_price_and_puts_unknown_prices_last() -> None:
    prices = {
        "a/one": Price(prompt=5e-6, completion=15e-6),
        "c/three": Price(prompt=1e-7, completion=2e-7),
    }
    assert decide(route("cheapest"), prices=prices).order == ("c/three", "a/one", "b/two")


def test_models_over_the_price_cap_are_skipped() -> None:
    prices = {"a/one": Price(prompt=5e-6, completion=15e-6)}  # $10 per Mtok
    decision = decide(route(max_price_per_mtok=5.0), prices=prices)
    assert decision.skipped == (("a/one", "over_price"),)


def test_money_is_integer_micro_dollars() -> None:
    assert usd_to_micros("0.05") == 50_000
    assert usd_to_micros(0.0000005) == 1  # half a micro-dollar rounds up
    price = parse_price("0.00000015", "0.0000006")
    assert price is not None
    assert cost_micros(price, 1_000, 500) == 450
    assert parse_price("free", "0") is None and parse_price("-1", "0") is None
    assert parse_price("1e400", "0") is None  # a finite decimal, an infinite float


# prices as upstreams publish them (per token: 1e-12 .. 1e-3 USD, a few digits) and as
# floats that print long (0.1 + 0.2); token counts up to a 2 M context
PRICES = st.one_of(
    st.decimals(min_value="0", max_value="0.001", places=12).map(float),
    st.floats(min_value=0, max_value=1e-3, allow_nan=False, allow_infinity=False),
)
TOKENS = st.integers(min_value=0, max_value=2_000_000)


@given(PRICES, PRICES, TOKENS, TOKENS)
def test_cost_is_exactly_what_decimal_arithmetic_gives(
    prompt_price: float, completion_price: float, prompt: int, completion: int
) -> None:
    """Costs are summed in integer fractions for speed; the decimal sum is the oracle."""
    with localcontext(prec=800):  # exact: float prices go down to 5e-324 (~350 digits)
        usd = Decimal(str(prompt_price)) * prompt + Decimal(str(completion_price)) * completion
        expected = int((usd * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    price = Price(prompt=prompt_price, completion=completion_price)
    assert cost_micros(price, prompt, completion) == expected


@given(st.lists(st.floats(min_value=1, max_value=10_000), min_size=1, max_size=50))
def test_latency_ewma_stays_within_the_observed_range(samples: list[float]) -> None:
    stat = LatencyStat()
    for s in samples:
        stat = observe_latency(stat, s)
    assert stat.count == len(samples)
    assert min(samples) - 1e-6 <= stat.ewma_ms <= max(samples) + 1e-6


def test_a_call_costs_what_the_upstream_reports_else_tokens_at_the_published_price() -> None:
    price = Price(prompt=1e-6, completion=2e-6)
    assert call_cost_micros(0.000123, price, 1_000, 1_000) == 123
    assert call_cost_micros(None, price, 1_000, 1_000) == 3_000
    assert call_cost_micros(None, None, 1_000, 1_000) == 0
