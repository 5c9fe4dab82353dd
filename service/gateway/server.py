"""Running the gateway: `turnout gateway` in the foreground, or in a thread (tests, demo).

Job: put a `GatewayApp` behind uvicorn (uvloop + httptools, no access log) on a
socket bound first, so a caller knows the port; `key create` prints a new API key.

Rules:
- The app's lifespan starts its Kafka client before the first request is served; a
  gateway that cannot reach Kafka does not start (exit 1, the reason on stderr).
- `start_in_thread` serves on its own event loop in a daemon thread, so sync and
  async clients in the calling thread both work against it.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path
from typing import Any

import uvicorn

from turnout.service.core.config import TENANT, Config
from turnout.service.errors import TurnoutError
from turnout.service.gateway.app import GatewayApp
from turnout.service.gateway.keys import create_key
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.serving import ThreadedServer, bind_socket, run

__all__ = ["RunningGateway", "cli_main", "start_in_thread"]

_START_TIMEOUT_S = 30.0
GRACEFUL_S = 5


def _server(app: GatewayApp, sock: socket.socket, *, own_logging: bool) -> uvicorn.Server:
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app, host=host, port=port, loop="uvloop", http="httptools", lifespan="on", ws="none",
        access_log=False, log_level="warning",
        log_config=uvicorn.config.LOGGING_CONFIG if own_logging else None,
        timeout_keep_alive=60, timeout_graceful_shutdown=GRACEFUL_S,
    )  # fmt: skip
    return uvicorn.Server(config)


class RunningGateway(ThreadedServer):
    """A gateway serving from a background thread; a context manager."""

    def __init__(self, app: GatewayApp, sock: socket.socket) -> None:
        super().__init__(
            _server(app, sock, own_logging=False), sock, "gateway",
            start_timeout_s=_START_TIMEOUT_S, stop_timeout_s=GRACEFUL_S + 15,
        )  # fmt: skip
        self.app = app

    @property
    def base_url(self) -> str:
        """What an OpenAI SDK takes as `base_url`: `http://127.0.0.1:PORT/v1`."""
        return f"{self.url}/v1"


def start_in_thread(
    cfg: Config,
    *,
    settings: KafkaSettings | None = None,
    host: str | None = None,
    port: int | None = None,
    tracer_provider: Any | None = None,
) -> RunningGateway:
    """Start a gateway (default `[gateway] host`/`port`; 0 = a free port) and return once it
    serves. `settings` replaces the Kafka settings `cfg` gives (tests)."""
    sock = bind_socket(host or cfg.gateway.host, cfg.gateway.port if port is None else port)
    app = GatewayApp(cfg, settings=settings, tracer_provider=tracer_provider)
    return RunningGateway(app, sock).start()


def cli_main(args: argparse.Namespace) -> int:
    if getattr(args, "gateway_command", None) == "key":
        return _key_create(args)
    from turnout.service.runtime.config import load_config

    cfg = load_config(Path(args.config) if args.config else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host = args.host or cfg.gateway.host
    port = cfg.gateway.port if args.port is None else args.port
    try:
        sock = bind_socket(host, port)
    except OSError as err:
        raise TurnoutError(f"cannot listen on {host}:{port}: {err}") from None
    server = _server(GatewayApp(cfg), sock, own_logging=True)
    print(f"turnout gateway: OpenAI-compatible API on http://{host}:{port}/v1", file=sys.stderr)
    try:
        run(server.serve(sockets=[sock]))
    finally:
        sock.close()
    return 0 if server.started else 1


def _key_create(args: argparse.Namespace) -> int:
    if not TENANT.fullmatch(args.tenant):
        raise TurnoutError(f"{args.tenant!r} is not a tenant id (1-128 of A-Z a-z 0-9 . _ : @ -)")
    key, line = create_key(args.tenant)
    print(f"API key for tenant {args.tenant} (shown once; keep it secret):\n\n    {key}\n")
    print("Add this line under [gateway.keys] in turnout.toml (it holds only the key's hash):\n")
    print(f"    {line}")
    return 0
