"""Model prices from the upstream's `GET /models`, fetched over the shared client and cached.

Job: turn OpenRouter's model listing (`data[].id`, `data[].pricing.prompt`
and `.completion`, USD per token as decimal strings) into `{model: Price}`,
and keep that table fresh for routing (`cheapest`) and budgets.

Rules:
- Entries without an id or with a missing, negative or unparsable price are
  skipped, never priced at zero (OpenRouter lists `"-1"` for variable-price
  routers such as `openrouter/auto`). A listing with no usable entry is a
  failed fetch.
- `fetch_prices` raises `PricesUnavailable` (with the classified `CallResult`
  when the upstream answered badly); the HTTP and transport errors themselves
  were already translated by the client.
- `PriceCache` refreshes once the table is `ttl_s` old; a failed refresh keeps
  the last good table and is retried after `retry_s`, not on every request.
  Concurrent refreshes share one fetch. Time is an argument (`now_ms`) or
  comes from `turnout.service.clock`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import msgspec

from turnout.service.clock import Clock
from turnout.service.clock import clock as system_clock
from turnout.service.core.pricing import Price, parse_price
from turnout.service.upstream.client import CallResult, UpstreamClient

__all__ = [
    "PriceBook",
    "PriceCache",
    "PriceCacheStats",
    "PricesUnavailable",
    "fetch_prices",
    "parse_models",
]


class PricesUnavailable(Exception):
    """No price table could be fetched; `result` is the failed call, when there was one."""

    def __init__(self, message: str, result: CallResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def parse_models(listing: Mapping[str, Any]) -> dict[str, Price]:
    """`{model id: Price}` from an OpenRouter `/models` body; unusable entries are skipped."""
    entries = listing.get("data")
    if not isinstance(entries, list):
        return {}
    prices: dict[str, Price] = {}
    for entry in entries:
        parsed = _entry_price(entry)
        if parsed is not None:
            prices[parsed[0]] = parsed[1]
    return prices


def _entry_price(entry: object) -> tuple[str, Price] | None:
    if not isinstance(entry, Mapping):
        return None
    model, pricing = entry.get("id"), entry.get("pricing")
    if not isinstance(model, str) or not model or not isinstance(pricing, Mapping):
        return None
    prompt, completion = _decimal(pricing.get("prompt")), _decimal(pricing.get("completion"))
    if prompt is None or completion is None:
        return None
    price = parse_price(prompt, completion)
    return None if price is None else (model, price)


def _decimal(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


async def fetch_prices(
    client: UpstreamClient, *, timeout_s: float | None = None
) -> dict[str, Price]:
    """The upstream's current price table; raises `PricesUnavailable`."""
    result = await client.get_json("/models", timeout_s=timeout_s)
    if not result.ok or result.response is None:
        raise PricesUnavailable(f"GET /models: {result.error_class}: {result.message}", result)
    prices = parse_models(result.response)
    if not prices:
        raise PricesUnavailable("GET /models: no model with a usable price", result)
    return prices


class PriceCacheStats(msgspec.Struct, frozen=True, kw_only=True):
    models: int
    fetched_at_ms: int | None
    next_refresh_ms: int
    fetches: int
    failures: int
    last_error: str | None


class PriceCache:
    """The last good price table, refreshed `ttl_s` after it was fetched.

    cache = PriceCache(client, ttl_s=cfg.upstream.pricing_ttl_s)
    prices = await cache.refresh()      # fetches only when due
    cache.price("openai/gpt-4o-mini")   # Price | None, no I/O
    """

    def __init__(
        self,
        client: UpstreamClient,
        *,
        ttl_s: float,
        retry_s: float = 30.0,
        clock: Clock = system_clock,
        keep: Callable[[str], bool] | None = None,
        rename: Callable[[str], str] | None = None,
    ) -> None:
        """`keep`: which fetched models this table may price (None: all);
        `rename`: a listed name as the routes name it (a provider's prefix put back)."""
        self._client = client
        self._keep = keep
        self._rename = rename
        self._ttl_ms = round(ttl_s * 1000)
        self._retry_ms = round(min(retry_s, ttl_s) * 1000)
        self._clock = clock
        self._lock = asyncio.Lock()
        self._table: Mapping[str, Price] = MappingProxyType({})
        self._fetched_at_ms: int | None = None
        self._next_ms = 0
        self._fetches = 0
        self._failures = 0
        self._last_error: str | None = None

    @property
    def table(self) -> Mapping[str, Price]:
        """The last good table (read-only; empty before the first good fetch)."""
        return self._table

    def price(self, model: str) -> Price | None:
        return self._table.get(model)

    def due(self, now_ms: int) -> bool:
        return now_ms >= self._next_ms

    async def refresh(
        self, now_ms: int | None = None, *, force: bool = False
    ) -> Mapping[str, Price]:
        """Fetch when due (or forced); on failure keep the last good table. Never raises."""
        now = self._clock.now_ms() if now_ms is None else now_ms
        if not (force or self.due(now)):
            return self._table
        async with self._lock:
            if force or self.due(now):
                await self._fetch(now)
        return self._table

    async def _fetch(self, now_ms: int) -> None:
        self._fetches += 1
        try:
            table = await fetch_prices(self._client)
        except PricesUnavailable as err:
            self._failures += 1
            self._last_error = str(err)
            self._next_ms = now_ms + self._retry_ms
            return
        keep, rename = self._keep, self._rename
        named = table if rename is None else {rename(m): p for m, p in table.items()}
        kept = {m: p for m, p in named.items() if keep is None or keep(m)}
        self._table = MappingProxyType(kept)
        self._fetched_at_ms = now_ms
        self._last_error = None
        self._next_ms = now_ms + self._ttl_ms

    def stats(self) -> PriceCacheStats:
        return PriceCacheStats(
            models=len(self._table),
            fetched_at_ms=self._fetched_at_ms,
            next_refresh_ms=self._next_ms,
            fetches=self._fetches,
            failures=self._failures,
            last_error=self._last_error,
        )


class PriceBook:
    """The price table of every provider, merged: each provider's `/models` (when it
    publishes OpenRouter-style pricing) for the models it serves, then the configured
    `[providers.x.prices]`. The merged table keeps its identity until a part changes."""

    def __init__(self, caches: Mapping[str, PriceCache], fixed: Mapping[str, Price]) -> None:
        self.caches = dict(caches)
        self._fixed = dict(fixed)
        self._parts: tuple[Mapping[str, Price], ...] = ()
        self._table: Mapping[str, Price] = MappingProxyType(dict(self._fixed))

    @property
    def table(self) -> Mapping[str, Price]:
        """Read for every decision (`Context.prices`): the unchanged case is a plain loop."""
        caches, kept = self.caches.values(), self._parts
        if len(caches) == len(kept):
            for cache, part in zip(caches, kept, strict=True):
                if cache.table is not part:
                    break
            else:
                return self._table
        parts = tuple(c.table for c in caches)
        merged: dict[str, Price] = {}
        for part in parts:
            merged.update(part)
        merged.update(self._fixed)
        self._parts, self._table = parts, MappingProxyType(merged)
        return self._table

    def price(self, model: str) -> Price | None:
        return self.table.get(model)

    async def refresh(
        self, now_ms: int | None = None, *, force: bool = False
    ) -> Mapping[str, Price]:
        await asyncio.gather(*(c.refresh(now_ms, force=force) for c in self.caches.values()))
        return self.table

    def stats(self) -> PriceCacheStats:
        """The default provider's (`[upstream]`) fetches, with the merged table's size."""
        first = next(iter(self.caches.values()))
        return msgspec.structs.replace(first.stats(), models=len(self.table))

    def provider_stats(self) -> dict[str, PriceCacheStats]:
        return {name: c.stats() for name, c in self.caches.items()}
