"""Child processes that start in stages, are watched, and all stop: `turnout demo`'s supervisor.

Rules:
- A child runs `<command> ARGV...` (the demo: `python -m turnout ...`) in its
  own session (its own process group; a terminal's Ctrl-C does not reach it),
  stdin closed, stdout and stderr into `<logs>/<name>.log`; on Linux it also gets
  PR_SET_PDEATHSIG=SIGKILL, so it dies with the supervisor even when that is
  SIGKILLed.
- Ready means: its log contains `ready_text`, or `ready_url` answers 200.
  A child that exits first, or is not ready within `start_timeout_s`, is a
  `ChildFailure` (returned, not raised) naming it, with its log's last lines.
- Every process seen in the children's trees is remembered with its start
  time (from /proc), so a pid that the system reuses is never signalled.
- `stop_all` stops the stages in reverse order: SIGTERM to each child's process
  group, up to `stop_timeout_s` for it to exit, then SIGKILL; last, SIGKILL to
  every remembered process that is still there (a grandchild that ignored
  its parent's stop, or one that started its own session).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = [
    "Child",
    "ChildFailure",
    "ProcInfo",
    "Running",
    "Supervisor",
    "descendants",
    "die_with_parent",
    "is_alive",
    "log_tail",
    "proc_info",
    "proc_table",
    "stop_requested",
]

_PR_SET_PDEATHSIG = 1
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True, kw_only=True)
class Child:
    """One part to run (`python -m turnout <argv>` in the demo), and how to tell it is ready."""

    name: str
    argv: tuple[str, ...]
    stage: int = 0
    ready_text: str | None = None
    ready_url: str | None = None
    where: str = ""
    start_timeout_s: float = 30.0
    stop_timeout_s: float = 10.0


@dataclass(frozen=True)
class ChildFailure:
    """A child that stopped (or never got ready): who, what, and its last output."""

    name: str
    what: str
    log: Path
    tail: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.name} {self.what}; the last lines of {self.log}:"


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    start: int  # clock ticks after boot: with the pid, names one process for good
    state: str


def proc_info(pid: int) -> ProcInfo | None:
    """The process `pid` from /proc/<pid>/stat, or None when there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode("utf-8", "replace")
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return ProcInfo(pid=pid, ppid=int(fields[1]), pgid=int(fields[2]), start=int(fields[19]),
                    state=fields[0])  # fmt: skip


def proc_table() -> dict[int, ProcInfo]:
    """Every process on the machine, by pid."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := proc_info(int(entry))) is not None:
            table[info.pid] = info
    return table


def descendants(roots: Sequence[int], table: Mapping[int, ProcInfo]) -> list[ProcInfo]:
    """The processes below `roots` (not the roots themselves), parents first."""
    children: dict[int, list[ProcInfo]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info)
    found, todo = [], list(roots)
    while todo:
        for info in children.get(todo.pop(), []):
            found.append(info)
            todo.append(info.pid)
    return found


def is_alive(pid: int, start: int) -> bool:
    """True while process `pid`, started at `start`, runs (a zombie does not count)."""
    info = proc_info(pid)
    return info is not None and info.start == start and info.state not in ("Z", "X")


def log_tail(path: Path, lines: int = 12) -> tuple[str, ...]:
    """The last non-empty lines of a log, without colour codes."""
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ()
    kept = [ln.rstrip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
    return tuple(kept[-lines:]) or ("(no output)",)


@contextlib.contextmanager
def stop_requested() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs."""
    event = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: event.set()) for sig in signals}
    try:
        yield event
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn making the child die with this thread (Linux, main thread only)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _url_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Running:
    child: Child
    proc: subprocess.Popen[bytes]
    log: Path
    handle: IO[bytes]
    started: float = field(default_factory=time.monotonic)
    start: int = 0  # the leader's start time, from /proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def is_ready(self) -> bool:
        if self.child.ready_url is not None:
            return _url_ok(self.child.ready_url)
        if self.child.ready_text is not None:
            try:
                return self.child.ready_text in self.log.read_text("utf-8", "replace")
            except OSError:
                return False
        return True


class Supervisor:
    """Starts children in order, notices when one stops, and stops them all."""

    def __init__(self, command: Sequence[str], *, env: Mapping[str, str], logs: Path) -> None:
        self.command = tuple(command)  # what runs each child's argv: `python -m turnout`
        self.env = dict(env)
        self.logs = logs
        self.running: list[Running] = []
        self._seen: dict[int, tuple[str, ProcInfo]] = {}

    def start(self, child: Child) -> Running:
        log = self.logs / f"{child.name}.log"
        handle = log.open("wb")
        proc = subprocess.Popen(
            [*self.command, *child.argv],
            stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True, preexec_fn=die_with_parent(),
        )  # fmt: skip
        run = Running(child=child, proc=proc, log=log, handle=handle)
        if (info := proc_info(proc.pid)) is not None:
            run.start = info.start
            self._seen[proc.pid] = (child.name, info)
        self.running.append(run)
        return run

    def _failure(self, run: Running, what: str) -> ChildFailure:
        return ChildFailure(run.child.name, what, run.log, log_tail(run.log))

    def wait_ready(self, children: Sequence[Child], stop: threading.Event) -> ChildFailure | None:
        """Wait until every child of `children` is ready (None), or one fails (its failure)."""
        waiting = [r for r in self.running if r.child in children]
        while waiting and not stop.is_set():
            for run in list(waiting):
                if (code := run.proc.poll()) is not None:
                    return self._failure(run, f"exited while starting (exit code {code})")
                if run.is_ready():
                    waiting.remove(run)
                elif time.monotonic() - run.started > run.child.start_timeout_s:
                    return self._failure(
                        run, f"was not ready within {run.child.start_timeout_s:g} s"
                    )
            stop.wait(0.2)
        self.record()
        return None

    def first_exited(self) -> ChildFailure | None:
        """The first child that is no longer running, as a failure (None: all run)."""
        for run in self.running:
            if (code := run.proc.poll()) is not None:
                return self._failure(run, f"stopped unexpectedly (exit code {code})")
        return None

    def record(self) -> None:
        """Remember every process now in the children's trees."""
        table = proc_table()
        for run in self.running:
            for info in descendants([run.pid], table):
                self._seen.setdefault(info.pid, (run.child.name, info))

    def processes(self) -> list[dict[str, object]]:
        return [{"name": name, "pid": info.pid, "pgid": info.pgid, "start": info.start,
                 "child": any(r.pid == info.pid for r in self.running)}
                for name, info in self._seen.values()]  # fmt: skip

    def write_pids(self, path: Path) -> None:
        """`path` as JSON: this process and every process it started, directly or not."""
        self.record()
        doc = {"demo": os.getpid(), "processes": self.processes()}
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
        os.replace(tmp, path)

    def _stop_stage(self, batch: Sequence[Running]) -> None:
        for run in batch:
            if run.proc.poll() is None:  # not reaped yet: the pid and group are still ours
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.pid, signal.SIGTERM)
        for run in batch:
            try:
                run.proc.wait(max(0.0, run.child.stop_timeout_s))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.pid, signal.SIGKILL)
                run.proc.wait()

    def stop_all(self) -> int:
        """Stop every child, stages in reverse order; return how many processes ended."""
        self.record()
        for stage in sorted({r.child.stage for r in self.running}, reverse=True):
            self._stop_stage([r for r in self.running if r.child.stage == stage])
        deadline = time.monotonic() + 2.0  # grandchildren stopped by their parents
        while time.monotonic() < deadline and self.left_behind():
            time.sleep(0.05)
        for _, info in self.left_behind():
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)
        deadline = time.monotonic() + 2.0  # SIGKILL is not instant: let them go
        while time.monotonic() < deadline and self.left_behind():
            time.sleep(0.01)
        for run in self.running:
            run.handle.close()
        return len(self._seen)

    def left_behind(self) -> list[tuple[str, ProcInfo]]:
        """Remembered processes that still run: (owner child's name, process)."""
        return [(n, i) for n, i in self._seen.values() if is_alive(i.pid, i.start)]
