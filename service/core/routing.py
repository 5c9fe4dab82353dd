"""Routing: which models a request tries, in which order, and what was skipped.

Rules:
- Candidates are the route's models; a request's `model` pins the first one.
- Strategies order the (unpinned) candidates:
  `priority` as configured; `weighted` picks the first by weight with a
  sample derived from the request id (then the rest by priority);
  `lowest_latency` by projected EWMA latency (models never measured first, so
  they get measured); `cheapest` by published price (unknown prices last).
- A candidate is skipped when its breaker is open (and not yet due for a
  probe) or when it costs more than `max_price_per_mtok`. The decision lists
  what was skipped and why, so `turnout.route.decided` explains itself and a
  replay never needs to decide again.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from turnout.service.core.breaker import Breaker, can_call
from turnout.service.core.config import RouteConfig
from turnout.service.core.pricing import Price
from turnout.service.core.sampling import uniform
from turnout.service.core.stats import LatencyStat

__all__ = ["RouteDecision", "decide_route"]


class RouteDecision(msgspec.Struct, frozen=True, kw_only=True):
    strategy: str
    candidates: tuple[str, ...]
    order: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (model, reason)
    sample: float | None = None


def _weighted(models: tuple[str, ...], weights: tuple[float, ...], sample: float) -> list[str]:
    total = sum(weights)
    point, acc = sample * total, 0.0
    for model, weight in zip(models, weights, strict=True):
        acc += weight
        if point < acc and weight > 0:
            return [model, *(m for m in models if m != model)]
    return list(models)


def _order(
    route: RouteConfig,
    models: tuple[str, ...],
    sample: float | None,
    latency: Mapping[str, LatencyStat],
    prices: Mapping[str, Price],
) -> list[str]:
    if route.strategy == "weighted" and route.weights is not None and sample is not None:
        return _weighted(models, route.weights, sample)
    if route.strategy == "lowest_latency":
        return sorted(models, key=lambda m: latency[m].ewma_ms if m in latency else -1.0)
    if route.strategy == "cheapest":
        return sorted(
            models,
            key=lambda m: (m not in prices, prices[m].per_mtok if m in prices else 0.0),
        )
    return list(models)


def decide_route(
    route: RouteConfig,
    *,
    request_id: str,
    pinned: str | None,
    now_ms: int,
    breakers: Mapping[str, Breaker],
    latency: Mapping[str, LatencyStat],
    prices: Mapping[str, Price],
) -> RouteDecision:
    """Order the candidates for one request and say which were skipped and why."""
    rest = tuple(m for m in route.models if m != pinned)
    sample = uniform(request_id, "route") if route.strategy == "weighted" else None
    ordered = _order(route, rest, sample, latency, prices)
    if pinned is not None:
        ordered.insert(0, pinned)
    order: list[str] = []
    skipped: list[tuple[str, str]] = []
    for model in ordered:
        breaker = breakers.get(model)
        price = prices.get(model)
        if breaker is not None and not can_call(breaker, now_ms):
            skipped.append((model, "breaker_open"))
        elif (
            route.max_price_per_mtok is not None
            and price is not None
            and price.per_mtok > route.max_price_per_mtok
        ):
            skipped.append((model, "over_price"))
        else:
            order.append(model)
    return RouteDecision(
        strategy=route.strategy,
        candidates=tuple(ordered),
        order=tuple(order),
        skipped=tuple(skipped),
        sample=sample,
    )
