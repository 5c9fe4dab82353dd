"""The router's health endpoints: `/livez`, `/readyz`, `/healthz` (JSON, 200 or 503).

`/livez`: the event loop answers. `/readyz`: partitions assigned and state
rebuilt from the events topic. `/healthz`: the details an operator needs —
config hash, feature switches, breaker states, work in flight, upstream pool
statistics, memory — and 503 when not ready.
"""

from __future__ import annotations

import resource
from typing import Any

import msgspec
from aiohttp import web

from service.core.config import config_hash, config_to_dict
from service.runtime.router import Router

__all__ = ["health_app", "start_health"]


def _json(body: dict[str, Any], ok: bool) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body), status=200 if ok else 503, content_type="application/json"
    )


def _details(router: Router) -> dict[str, Any]:
    return {
        "status": "ready" if router.ready.is_set() else "starting",
        "instance": router.instance,
        "config_hash": config_hash(router.cfg),
        "features": config_to_dict(router.cfg)["features"],
        "broker": router.kafka.bootstrap,
        "partitions": sorted(tp.partition for tp in router.consumer.assignment),
        "breakers": {m: b.status for m, b in sorted(router.state.breakers.items())},
        "in_flight": router.offsets.in_progress(),
        "requests_in_flight": len(router.state.inflight),
        "upstream": msgspec.to_builtins(router.upstream.stats()),
        "memory_max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def health_app(router: Router) -> web.Application:
    async def livez(_: web.Request) -> web.Response:
        return _json({"status": "alive"}, True)

    async def readyz(_: web.Request) -> web.Response:
        ready = router.ready.is_set()
        return _json({"status": "ready" if ready else "not ready"}, ready)

    async def healthz(_: web.Request) -> web.Response:
        return _json(_details(router), router.ready.is_set())

    app = web.Application()
    app.add_routes(
        [web.get("/livez", livez), web.get("/readyz", readyz), web.get("/healthz", healthz)]
    )
    return app


async def start_health(router: Router, port: int, host: str = "127.0.0.1") -> web.AppRunner:
    runner = web.AppRunner(health_app(router), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
