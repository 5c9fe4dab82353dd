"""A broker that Turnout runs itself as a child process: what both engines share.

`LocalBroker` starts a command on 127.0.0.1 (a given or a free port), waits
until it is ready, and stops it with SIGTERM, then SIGKILL after
`stop_timeout_s`. It is a plain (sync) context manager for tests and
`turnout demo`. Subclasses say what to run (`_command`), what to do before
(`_prepare`) and when it is ready (`_ready`).

No orphans: the broker runs in its own session (a Ctrl-C in the terminal
reaches only Turnout, which then stops it in order); on Linux it also gets
PR_SET_PDEATHSIG=SIGKILL when started from the main thread, so it dies with
its parent even if the parent is killed; `atexit` stops it on a normal exit.
A port that is already taken is refused before anything starts.
"""

from __future__ import annotations

import abc
import atexit
import os
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, Self

from turnout.service.errors import TurnoutError
from turnout.service.kafka.topics import forget_engine
from turnout.service.procs import die_with_parent

__all__ = ["LocalBroker", "check_port_free", "free_port", "port_is_open", "read_tail"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """True when something accepts TCP connections on `host:port`."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_port_free(host: str, port: int, *, flag: str = "--port") -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the broker binds
        try:
            sock.bind((host, port))
        except OSError:
            raise TurnoutError(
                f"port {port} on {host} is already in use: stop what listens there "
                f"or pick another port with {flag}"
            ) from None


class LocalBroker(abc.ABC):
    """One broker process on `host:port` (port 0: a free one)."""

    engine: ClassVar[str]
    """`kafka` or `tansu`."""
    title: ClassVar[str]
    """What the ready line calls it, e.g. `Apache Kafka 4.1.1`."""

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        start_timeout_s: float = 10.0,
        stop_timeout_s: float = 6.0,
    ) -> None:
        self.host = host
        self.port = port
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def persistent(self) -> bool:
        """True when records survive a stop (a data dir on disk)."""
        return False

    def describe(self) -> str:
        """One line for the ready message: engine and where its data lives."""
        return self.title

    def start(self) -> Self:
        """Start the broker and return once it is ready for clients."""
        if self._proc is not None:
            raise RuntimeError(f"this {type(self).__name__} was already started")
        self.port = self.port or free_port(self.host)
        check_port_free(self.host, self.port)
        forget_engine(self.bootstrap)  # an earlier broker there may have been another engine
        command, env = self._prepare()
        self._log = self._open_log()
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    @abc.abstractmethod
    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        """The command to run and its environment (after any set-up it needs)."""

    def _open_log(self) -> IO[bytes]:
        """Where the process's stdout and stderr go (read back by `log_tail`)."""
        return tempfile.TemporaryFile()  # closed by stop

    def _ready(self) -> bool:
        return port_is_open(self.host, self.port)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise self.failure("stopped while starting")
            if self._ready() and self.running:
                return
            time.sleep(0.02)
        raise self.failure(f"was not ready on port {self.port} within {self.start_timeout_s:g} s")

    def failure(self, what: str) -> TurnoutError:
        """An error saying the broker `what`, with its exit code and last output."""
        code = self._proc.poll() if self._proc else None
        exit_note = f" (exit code {code})" if code is not None else ""
        return TurnoutError(f"the {self.title} broker {what}{exit_note}: {self.log_tail()}")

    def log_tail(self, lines: int = 3) -> str:
        """The broker's last output lines, on one line, without colour codes."""
        if self._log is None or self._log.closed:
            return ""
        return _tail(self._log, lines)

    def stop(self) -> int | None:
        """Stop the broker (SIGTERM, then SIGKILL); return its exit code."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the broker at once (for fault tests): no shutdown at all."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tail(log: IO[bytes], lines: int) -> str:
    log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
    text = _ANSI.sub("", log.read().decode("utf-8", "replace"))
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(kept) or "no output"


def read_tail(path: Path, lines: int = 3) -> str:
    """`log_tail` for a log file on disk."""
    try:
        with path.open("rb") as log:
            return _tail(log, lines)
    except OSError:
        return ""
