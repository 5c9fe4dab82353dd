"""Which provider serves a model, under which name, at which configured price.

    provider_of(cfg, model)     the name of the provider that serves `model`
    upstream_model(cfg, model)  the model name that provider is sent
    configured_prices(cfg)      `[providers.x.prices]`, as `Price`s per route model

Rules (docs/reference/contract.md, "Providers"):
- A model is served by the first `[providers.<name>]` (in the file's order) one of
  whose `models` globs matches it, else by `[upstream]` (`DEFAULT_PROVIDER`).
  A config with no `[providers]` sends every model to `[upstream]`, as before.
- Breakers, latency statistics and prices stay keyed by the route's model name:
  each name has exactly one provider, so the name says the provider too.
- A provider with `strip_prefix` is sent the name without that prefix
  (`local/llama-3.1-8b` -> `llama-3.1-8b`); other names go as they are.
- Pure: glob matching on strings, no I/O.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from turnout.service.core.config import DEFAULT_PROVIDER, Config
from turnout.service.core.pricing import Price, parse_price

__all__ = ["DEFAULT_PROVIDER", "configured_prices", "provider_of", "upstream_model"]


def provider_of(cfg: Config, model: str) -> str:
    for name, provider in cfg.providers.items():
        if any(fnmatchcase(model, glob) for glob in provider.models):
            return name
    return DEFAULT_PROVIDER


def upstream_model(cfg: Config, model: str) -> str:
    name = provider_of(cfg, model)
    if name == DEFAULT_PROVIDER:
        return model
    prefix = cfg.providers[name].strip_prefix
    return model.removeprefix(prefix) if prefix else model


def configured_prices(cfg: Config) -> dict[str, Price]:
    """Every `[providers.x.prices]` entry of the provider that serves that model."""
    out: dict[str, Price] = {}
    for name, provider in cfg.providers.items():
        for model, raw in provider.prices.items():
            price = parse_price(str(raw.prompt), str(raw.completion))
            if price is not None and provider_of(cfg, model) == name:
                out[model] = price
    return out
