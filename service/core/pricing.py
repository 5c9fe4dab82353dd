"""Prices and costs in integer micro-dollars.

Upstreams publish prices as USD per token (decimal strings, e.g. OpenRouter's
`/models`). Money in the core is always an integer number of micro-dollars
(1e-6 USD); conversions round half up once, at the edge.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache

import msgspec

__all__ = [
    "Price", "call_cost_micros", "cost_micros", "micros_half_up", "parse_price", "ratio_of",
    "usd_to_micros",
]  # fmt: skip

_MICRO = Decimal(1_000_000)


class Price(msgspec.Struct, frozen=True, kw_only=True):
    """USD per token, for the prompt and the completion."""

    prompt: float
    completion: float

    @property
    def per_mtok(self) -> float:
        """USD per million tokens, prompt and completion averaged."""
        return (self.prompt + self.completion) * 500_000


@lru_cache(maxsize=4096)
def decimal_of(value: float) -> Decimal:
    """A float as the decimal it prints as (`Decimal(str(value))`), remembered: a
    handful of prices are converted several times per request."""
    return Decimal(str(value))


@lru_cache(maxsize=4096)
def ratio_of(value: float) -> tuple[int, int]:
    """A float as the decimal it prints as, an exact fraction (numerator, denominator),
    remembered: money sums over prices in integers (~10x faster than in `Decimal`)."""
    return decimal_of(value).as_integer_ratio()


def micros_half_up(numerator: int, denominator: int) -> int:
    """USD `numerator / denominator` in micro-dollars, rounded half up (away from 0)."""
    n = abs(numerator) * 2_000_000
    micros = (n + denominator) // (2 * denominator)
    return micros if numerator >= 0 else -micros


def usd_to_micros(usd: float | str | Decimal) -> int:
    value = (usd if isinstance(usd, Decimal) else Decimal(str(usd))) * _MICRO
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def parse_price(prompt: str, completion: str) -> Price | None:
    """A price from decimal strings, or None when either is not a non-negative number."""
    try:
        p, c = Decimal(prompt), Decimal(completion)
    except (InvalidOperation, TypeError):
        return None
    if not (p.is_finite() and c.is_finite()) or p < 0 or c < 0:
        return None
    price = Price(prompt=float(p), completion=float(c))
    if not (math.isfinite(price.prompt) and math.isfinite(price.completion)):
        return None  # e.g. "1e400": finite as a decimal, not as a float
    return price


def cost_micros(price: Price, prompt_tokens: int, completion_tokens: int) -> int:
    pn, pd = ratio_of(price.prompt)
    cn, cd = ratio_of(price.completion)
    return micros_half_up(pn * prompt_tokens * cd + cn * completion_tokens * pd, pd * cd)


def call_cost_micros(
    reported_usd: float | None, price: Price | None, prompt_tokens: int, completion_tokens: int
) -> int:
    """What one call cost: the upstream's own figure when it reports one (OpenRouter's
    `usage.cost`), else tokens at the published price, else nothing known (0)."""
    if reported_usd is not None:
        return usd_to_micros(reported_usd)
    if price is not None:
        return cost_micros(price, prompt_tokens, completion_tokens)
    return 0
