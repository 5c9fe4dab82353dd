"""Serving an ASGI app from a background thread (tests, the demo): the simulator's and
the gateway's shared shape.

    server = ThreadedServer(uvicorn.Server(config), bind_socket("127.0.0.1", 0), "gateway")
    with server.start():
        httpx.get(server.url + "/livez")

Rules:
- The socket is bound first (port 0 = any free port), so the caller knows the port
  before the first request.
- The server runs on its own event loop (uvloop when installed) in a daemon thread,
  so sync and async clients in the calling thread both work against it.
- `start` returns once the server serves, or raises with the reason it did not
  (a failed lifespan startup, a taken port); `stop` is bounded.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self

import uvicorn

from turnout.service.errors import TurnoutError

__all__ = ["HAS_HTTPTOOLS", "HAS_UVLOOP", "ThreadedServer", "bind_socket", "run"]

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None
HAS_HTTPTOOLS = importlib.util.find_spec("httptools") is not None


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket (port 0 = a free port); OSError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on a new event loop (uvloop where installed)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if HAS_UVLOOP:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


class ThreadedServer:
    """A uvicorn server on a bound socket, serving from a background thread."""

    def __init__(
        self,
        server: uvicorn.Server,
        sock: socket.socket,
        name: str,
        *,
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.host, self.port = sock.getsockname()[:2]
        self.name = name
        self._sock = sock
        self._server = server
        self._start_timeout_s, self._stop_timeout_s = start_timeout_s, stop_timeout_s
        self._thread = threading.Thread(target=self._serve, name=f"{name}-{self.port}", daemon=True)
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _serve(self) -> None:
        try:
            run(self._server.serve(sockets=[self._sock]))
        except BaseException as err:  # reported by start()
            self._error = err

    def start(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._server.should_exit = True
                self._sock.close()
                raise TurnoutError(f"the {self.name} did not start: {self._error!r}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread (bounded)."""
        self._server.should_exit = True
        self._thread.join(self._stop_timeout_s)
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
