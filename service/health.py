"""The router's health endpoints: `/livez`, `/readyz`, `/healthz` (JSON, 200 or 503).

`/livez`: the event loop answers. `/readyz`: partitions assigned and state
rebuilt from the events topic. `/healthz`: the details an operator needs —
config hash, feature switches, breaker states, work in flight, upstream pool
statistics, memory, consumer lag (Apache Kafka only) — and 503 when not
ready. `/state`: the router's projection (`RouterState.snapshot()`, the partitions it owns, the
configuration it folds with, a summary of the finished requests) for
`turnout replay verify` to compare with the log.
"""

from __future__ import annotations

import hashlib
import resource
from typing import Any

import msgspec
from aiohttp import web

from turnout.service.core.config import config_hash, config_to_dict
from turnout.service.core.state import RouterState
from turnout.service.kafka.topics import broker_engine
from turnout.service.runtime.router import Router

__all__ = ["consumer_lag", "finished_outcomes", "health_app", "start_health", "state_view"]


def _json(body: dict[str, Any], ok: bool) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body), status=200 if ok else 503, content_type="application/json"
    )


def _ready(router: Router) -> bool:
    """Serving, and no background part (commits, the `_system` tail) is failing."""
    return router.ready.is_set() and not router.faults


def _status(router: Router) -> str:
    if not router.ready.is_set():
        return "starting"
    return "degraded" if router.faults else "ready"


def _details(router: Router) -> dict[str, Any]:
    return {
        "status": _status(router),
        "faults": router.faults,
        "broker_history_lost": router.history_lost,
        "instance": router.instance,
        "config_hash": config_hash(router.cfg),
        "features": config_to_dict(router.cfg)["features"],
        "broker": router.kafka.bootstrap,
        "partitions": sorted(tp.partition for tp in router.consumer.assignment),
        "breakers": {m: b.status for m, b in sorted(router.state.breakers.items())},
        "in_flight": router.offsets.in_progress(),
        "requests_in_flight": len(router.state.inflight),
        "upstream": msgspec.to_builtins(router.upstream.default.stats()),
        "providers": _providers(router),
        "prices": msgspec.to_builtins(router.prices.stats()),
        "intake": router.intake_stats.as_dict(),
        "rebuild": router.rebuild_stats,
        "snapshots": router.schedule.as_dict() if router.schedule is not None else None,
        "cache": _cache(router),
        "tenants": {"rate_limited": len(router.state.limits), "budgets": len(router.state.budgets)},
        "memory_max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def _providers(router: Router) -> dict[str, Any]:
    """Each provider's pool, and the breakers of the models it served (keys: never)."""
    out: dict[str, Any] = {}
    for name, stats in router.upstream.stats().items():
        prices = router.prices.provider_stats().get(name)
        out[name] = {
            "pool": msgspec.to_builtins(stats),
            "breakers": {},
            "prices": msgspec.to_builtins(prices) if prices is not None else None,
        }
    for model, b in sorted(router.state.breakers.items()):
        served = out.get(router.upstream.provider(model))
        if served is not None:
            served["breakers"][model] = b.status
    return out


async def consumer_lag(router: Router) -> dict[str, Any]:
    """Intake records not yet read, per owned partition; on Apache Kafka only (Tansu's end
    offsets are wrong, so there it says so instead of a number)."""
    engine = await broker_engine(router.kafka)
    if engine != "kafka":
        return {"engine": engine, "total": None, "note": "Tansu reports wrong end offsets"}
    partitions = await router.consumer.lag()
    return {"engine": engine, "total": sum(partitions.values()), "partitions": partitions}


def _cache(router: Router) -> dict[str, Any]:
    """Entries and bytes over every owned partition's index, and the compression ratio."""
    indexes = router.state.cache.values()
    stored = sum(i.total_bytes for i in indexes)
    size = sum(i.total_size_bytes for i in indexes)
    return {
        "enabled": router.cfg.features.caching,
        "encoding": router.cache_encoding,
        "entries": sum(len(i) for i in indexes),
        "stored_bytes": stored,
        "uncompressed_bytes": size,
        "compression_ratio": round(size / stored, 3) if stored else None,
        "max_bytes": router.cfg.cache.max_bytes,
    }


def finished_outcomes(state: RouterState) -> dict[str, Any]:
    """The finished requests in brief: a count per outcome, and a digest of every
    (request id, outcome) pair, so two states agree on them without listing them."""
    by_outcome: dict[str, int] = {}
    lines = []
    for request_id, kind in state.finished.kinds():
        outcome = kind.rsplit(".", 1)[1]
        by_outcome[outcome] = by_outcome.get(outcome, 0) + 1
        lines.append(f"{request_id}\t{outcome}\n")
    digest = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
    return {"by_outcome": dict(sorted(by_outcome.items())), "digest": digest}


def state_view(router: Router) -> dict[str, Any]:
    """`GET /state`: what `turnout replay verify` compares with the log."""
    return {
        "instance": router.instance,
        "ready": router.ready.is_set(),
        "config_hash": config_hash(router.cfg),
        "config": config_to_dict(router.cfg),  # what it folds with (no secrets: /healthz)
        "partitions": sorted(tp.partition for tp in router.consumer.assignment),
        "system_partition": router.system.partition,
        "state": router.state.snapshot(),
        "finished_outcomes": finished_outcomes(router.state),
    }


def health_app(router: Router) -> web.Application:
    async def livez(_: web.Request) -> web.Response:
        return _json({"status": "alive"}, True)

    async def readyz(_: web.Request) -> web.Response:
        ready = _ready(router)
        body: dict[str, Any] = {"status": "ready" if ready else "not ready"}
        if router.faults:
            body["failing"] = sorted(router.faults)
        return _json(body, ready)

    async def healthz(_: web.Request) -> web.Response:
        details = _details(router)
        details["consumer_lag"] = await consumer_lag(router)
        return _json(details, _ready(router))

    async def state(_: web.Request) -> web.Response:
        return _json(state_view(router), router.ready.is_set())

    app = web.Application()
    app.add_routes(
        [web.get("/livez", livez), web.get("/readyz", readyz), web.get("/healthz", healthz)]
    )
    app.add_routes([web.get("/state", state)])
    return app


async def start_health(router: Router, port: int, host: str = "127.0.0.1") -> web.AppRunner:
    runner = web.AppRunner(health_app(router), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
