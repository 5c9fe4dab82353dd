"""Every upstream Turnout calls: `[upstream]` and each `[providers.<name>]`, one pool each.

    ups = Upstreams(cfg)
    result = await ups.call("local/llama-3.1-8b", body)   # to `local`, as "llama-3.1-8b"
    ups.stats()                                          # {provider: ClientStats}

Which provider serves a model, and the name it is sent, is decided in the core
(`turnout.service.core.providers`); this is the shell: one `UpstreamClient` (its own
connection pool, timeouts, key and headers) per provider. The default client
(`[upstream]`) also fetches OpenRouter's price table (`default`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from turnout.service.core.config import DEFAULT_PROVIDER, Config
from turnout.service.core.providers import provider_of, upstream_model
from turnout.service.upstream.client import (
    ClientOptions,
    ClientStats,
    OnChunk,
    StreamOutcome,
    UpstreamClient,
)
from turnout.service.upstream.translate import CallResult

__all__ = ["Upstreams"]


class Upstreams:
    """The clients of every provider, chosen per model (see the module docstring)."""

    def __init__(self, cfg: Config, *, environ: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.default = UpstreamClient(
            ClientOptions.from_config(cfg.upstream, cfg.breaker), environ=environ
        )
        self.clients: dict[str, UpstreamClient] = {DEFAULT_PROVIDER: self.default}
        for name, provider in cfg.providers.items():
            self.clients[name] = UpstreamClient(
                ClientOptions.from_provider(provider, cfg.breaker), environ=environ
            )

    def provider(self, model: str) -> str:
        return provider_of(self.cfg, model)

    def _client(self, model: str) -> tuple[UpstreamClient, str]:
        return self.clients[provider_of(self.cfg, model)], upstream_model(self.cfg, model)

    async def call(
        self, model: str, body: Mapping[str, Any], *, timeout_s: float | None = None
    ) -> CallResult:
        client, sent = self._client(model)
        return await client.call(sent, body, timeout_s=timeout_s)

    async def stream(
        self, model: str, body: Mapping[str, Any], on_chunk: OnChunk, **options: Any
    ) -> StreamOutcome:
        client, sent = self._client(model)
        return await client.stream(sent, body, on_chunk, **options)

    def stats(self) -> dict[str, ClientStats]:
        return {name: client.stats() for name, client in self.clients.items()}

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()
