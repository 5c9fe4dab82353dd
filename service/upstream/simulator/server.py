"""Running a simulator: in the foreground (the CLI) or in a thread (tests, demo).

Job: put a `SimulatorApp` behind uvicorn on a socket we bind ourselves, so a
caller knows the port before the first request (port 0 = any free port).

Rules:
- uvicorn with uvloop and httptools when installed (else asyncio and h11),
  access log off, warnings only: the simulator must never be the bottleneck.
- Stopping is clean and bounded: held "timeout" requests are released first,
  in-flight ones get `GRACEFUL_S` to finish. In the foreground, SIGINT and
  SIGTERM stop the server and `run_foreground` returns (no re-raised signal).
- `start_in_thread` runs the server on its own event loop in a daemon thread,
  so sync and async clients in the calling thread both work against it.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator

import uvicorn

from turnout.service.serving import HAS_HTTPTOOLS, HAS_UVLOOP, ThreadedServer, bind_socket, run

from .app import SimulatorApp
from .state import SimulatorOptions

__all__ = ["GRACEFUL_S", "RunningSimulator", "bind_socket", "run_foreground", "start_in_thread"]

GRACEFUL_S = 3.0
_START_TIMEOUT_S = 10.0


class _Server(uvicorn.Server):
    """uvicorn.Server that releases held requests first and exits quietly on signals."""

    def __init__(self, config: uvicorn.Config, app: SimulatorApp) -> None:
        super().__init__(config)
        self._sim_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._sim_app.close()
        await super().shutdown(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def _server(app: SimulatorApp, sock: socket.socket, *, own_logging: bool) -> _Server:
    """A configured server; `own_logging=False` leaves the host's logging alone."""
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop" if HAS_UVLOOP else "asyncio",
        http="httptools" if HAS_HTTPTOOLS else "h11",
        lifespan="on",
        ws="none",
        access_log=False,
        log_level="warning",
        log_config=uvicorn.config.LOGGING_CONFIG if own_logging else None,
        timeout_keep_alive=60,
        timeout_graceful_shutdown=int(GRACEFUL_S),
    )
    return _Server(config, app)


def run_foreground(app: SimulatorApp, sock: socket.socket) -> None:
    """Serve on `sock` until SIGINT/SIGTERM; returns after a clean stop."""
    server = _server(app, sock, own_logging=True)
    try:
        run(server.serve(sockets=[sock]))
    finally:
        sock.close()


class RunningSimulator(ThreadedServer):
    """A simulator serving from a background thread; a context manager."""

    def __init__(self, app: SimulatorApp, sock: socket.socket) -> None:
        super().__init__(
            _server(app, sock, own_logging=False), sock, "simulator",
            start_timeout_s=_START_TIMEOUT_S, stop_timeout_s=GRACEFUL_S + 5,
        )  # fmt: skip
        self.app = app

    @property
    def base_url(self) -> str:
        """The OpenAI/OpenRouter base URL: `http://127.0.0.1:PORT/api/v1`."""
        return f"{self.url}/api/v1"


def start_in_thread(
    options: SimulatorOptions | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    """Start a simulator on `host:port` (0 = free port) and return once it serves.

    with start_in_thread(SimulatorOptions(scenario=parse_scenario(text))) as sim:
        client = AsyncOpenAI(base_url=sim.base_url, api_key="sk-test")
    """
    return RunningSimulator(SimulatorApp(options), bind_socket(host, port)).start()
