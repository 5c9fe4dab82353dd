"""The simulator's ASGI application: routing and the small endpoints.

Job: serve OpenRouter's surface the router depends on, plus the simulator's
own controls:

    POST /api/v1/chat/completions   (chat.py)
    GET  /api/v1/models             built-ins, scenario-priced and seen models
    GET  /api/v1/generation?id=     stats of a past generation (404 once evicted)
    GET  /health                    200 {"status": "ok"}
    GET  /_sim/stats                chat requests per model and per outcome
    POST /_sim/reset[?restart=1]    zero the counters; restart=1 also restarts
                                    scenario time and the seeded random sequence

Rules:
- Raw ASGI with a dict of (method, path) -> handler: the simulator must never
  be the bottleneck, so there is no framework between uvicorn and a handler.
- Every error body has OpenRouter's shape (chat.error_body).
- `close()` wakes requests held by a "timeout" outcome so the server can stop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

import msgspec

from turnout.service.asgi import Receive, Scope, Send, read_body, respond

from .chat import chat_completions, error_body
from .state import SimulatorOptions, SimulatorState, Stats
from .wire import encode, generation_json, model_entry

__all__ = ["SimulatorApp"]

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
_MODELS_CREATED = 1_735_689_600  # 2025-01-01, a fixed "created" for listed models


class _ModelList(msgspec.Struct):
    data: list[msgspec.Struct]


class SimulatorApp:
    """An OpenRouter-compatible upstream as an ASGI 3 application."""

    def __init__(self, options: SimulatorOptions | None = None) -> None:
        self.state = SimulatorState(options or SimulatorOptions())
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/api/v1/chat/completions"): self._chat,
            ("GET", "/api/v1/models"): self._models,
            ("GET", "/api/v1/generation"): self._generation,
            ("GET", "/health"): self._health,
            ("GET", "/_sim/stats"): self._stats,
            ("POST", "/_sim/reset"): self._reset,
        }
        self._paths = {path for _, path in self._routes}
        self._models_cache: tuple[int, bytes] = (-1, b"")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._routes.get((scope["method"], scope["path"]))
            if handler is None:
                await self._no_route(scope, send)
            else:
                await handler(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    def close(self) -> None:
        """Release held requests; call from the server's loop as it stops."""
        self.state.closing.set()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _no_route(self, scope: Scope, send: Send) -> None:
        if scope["path"] in self._paths:
            await respond(send, 405, error_body(405, f"{scope['method']} is not allowed here"))
        else:
            await respond(send, 404, error_body(404, f"no such endpoint: {scope['path']}"))

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await chat_completions(self.state, scope, receive, send)

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, self._models_json())

    def _models_json(self) -> bytes:
        catalogue = self.state.catalogue
        version = catalogue.version
        if self._models_cache[0] != version:
            entries: list[msgspec.Struct] = [
                model_entry(
                    model_id=info.id,
                    name=info.name,
                    prompt=info.prompt,
                    completion=info.completion,
                    context_length=info.context_length,
                    created=_MODELS_CREATED,
                )
                for info in catalogue.listing()
            ]
            self._models_cache = (catalogue.version, encode(_ModelList(data=entries)))
        return self._models_cache[1]

    async def _generation(self, scope: Scope, receive: Receive, send: Send) -> None:
        ids = parse_qs(scope["query_string"].decode("latin-1")).get("id")
        if not ids:
            await respond(send, 400, error_body(400, "id: required, a generation id (gen-...)"))
            return
        generation = self.state.generations.get(ids[0])
        if generation is None:
            await respond(send, 404, error_body(404, f"Generation {ids[0]} not found"))
            return
        await respond(send, 200, generation_json(generation))

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, b'{"status":"ok"}')

    async def _stats(self, scope: Scope, receive: Receive, send: Send) -> None:
        snapshot = self.state.stats.snapshot()
        snapshot["generations"] = len(self.state.generations)
        snapshot["elapsed_s"] = round(self.state.elapsed_s(), 3)
        await respond(send, 200, encode(snapshot))

    async def _reset(self, scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive)
        query = parse_qs(scope["query_string"].decode("latin-1"))
        self.state.stats = Stats()
        restart = query.get("restart", ["0"])[0].lower() in ("1", "true", "yes")
        if restart:
            self.state.restart()
        await respond(send, 200, encode({"reset": True, "restarted": restart}))
