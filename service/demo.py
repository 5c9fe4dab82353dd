"""`turnout demo`: every part of Turnout on one machine, started, watched and stopped as one.

Job: start the local broker (Apache Kafka, or Tansu without Java), the upstream
simulator (or use OpenRouter when OPENROUTER_API_KEY is set), two routers, the
OpenAI-compatible gateway, the sink, the alert evaluator, the dashboard and the
traffic generator (part of it streamed); say what
runs where; show progress until Ctrl-C, SIGTERM or `--duration`; then stop
everything.

Rules:
- Every part is a child process, `sys.executable -m service ...` (no venv on
  PATH needed), in its own session (a terminal's Ctrl-C reaches only the demo,
  which stops the children in order) with PR_SET_PDEATHSIG=SIGKILL on Linux
  (a SIGKILLed demo takes them along). Output goes to `<data>/logs/<name>.log`.
- Parts start in stages (broker; simulator; routers and sink; alerts and
  dashboard; traffic) and each must be ready before the next stage starts.
- A part that exits before it is ready, is not ready in time or exits while
  the demo runs: the demo names it, prints its log's last lines, stops the
  rest and exits 1.
- Stopping: SIGTERM to the stages in reverse order, each given its time, then
  SIGKILL to the process group of any straggler; last, every process recorded
  in `<data>/pids.json` (the children and their descendants, with their start
  times) that is somehow still there is killed. No process outlives the demo.
- `<data>` (default `data/demo`) is emptied at the start of every run, but only
  when it is empty or was made by an earlier demo (a marker file says so).
- Ports: the defaults (Kafka 9092, simulator 8089, routers 8080/8081, gateway 8000,
  dashboard 8501) are used when free, else a free port (and the demo says so); a port
  given on the command line is used as given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from turnout.service.kafka.broker import free_port, port_is_open
from turnout.service.procs import Child, ChildFailure, Supervisor, stop_requested

__all__ = [
    "DEMO_FILES",
    "ArchiveView",
    "DemoPaths",
    "Plan",
    "Ports",
    "child_env",
    "choose_ports",
    "cli_main",
    "fresh_data_dir",
    "pick_port",
    "plan_children",
    "progress_lines",
    "read_archive",
    "run_demo",
]

DEMO_FILES: Final = Path(__file__).resolve().parent / "demo_files"
"""The demo's configuration, simulator scenario and alert rules (package data)."""

_MARKER: Final = ".turnout-demo"
_OPENROUTER_RATE: Final = 0.2
_OPENROUTER_MAX_TOKENS: Final = 16


@dataclass(frozen=True)
class Ports:
    kafka: int
    simulator: int
    routers: tuple[int, int]
    dashboard: int
    gateway: int = 8000
    backup: int = 8090  # the second provider's simulator
    notes: tuple[str, ...] = ()


def pick_port(preferred: int, explicit: int | None, *, what: str) -> tuple[int, str | None]:
    """The port to use for `what`, and a note when the preferred one was taken."""
    if explicit == 0:  # as for any server: 0 asks for a free port
        return free_port(), None
    if explicit is not None:
        return explicit, None
    if not port_is_open("127.0.0.1", preferred):
        return preferred, None
    port = free_port()
    return port, f"port {preferred} is taken: {what} uses {port} instead"


def choose_ports(args: argparse.Namespace) -> Ports:
    picks = [
        pick_port(9092, args.kafka_port, what="Kafka"),
        pick_port(8089, args.sim_port, what="the simulator"),
        pick_port(8080, None, what="router-1's health endpoints"),
        pick_port(8081, None, what="router-2's health endpoints"),
        pick_port(8501, args.dashboard_port, what="the dashboard"),
        pick_port(8000, getattr(args, "gateway_port", None), what="the gateway"),
        pick_port(8090, None, what="the backup provider's simulator"),
    ]
    (kafka, _), (sim, _), (r1, _), (r2, _), (dash, _), (gw, _), (backup, _) = picks
    if r2 == r1:  # both fell back to free ports at once: ask again
        r2 = free_port()
    if backup in (sim, r1, r2, dash, gw, kafka):
        backup = free_port()
    return Ports(kafka=kafka, simulator=sim, routers=(r1, r2), dashboard=dash, gateway=gw,
                 backup=backup, notes=tuple(note for _, note in picks if note))  # fmt: skip


@dataclass(frozen=True)
class DemoPaths:
    data: Path
    config: Path = DEMO_FILES / "turnout.toml"
    scenario: Path = DEMO_FILES / "scenario.toml"
    rules: Path = DEMO_FILES / "alerts.toml"

    @property
    def logs(self) -> Path:
        return self.data / "logs"

    @property
    def archive(self) -> Path:
        return self.data / "turnout.duckdb"

    @property
    def kafka(self) -> Path:
        """Apache Kafka's data dir (when the broker is Apache Kafka)."""
        return self.data / "kafka"

    @property
    def pids(self) -> Path:
        return self.data / "pids.json"

    @property
    def traffic(self) -> Path:
        return self.data / "traffic.json"


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What the demo runs: the children in start order and how traffic is shaped."""

    children: tuple[Child, ...]
    openrouter: bool
    rate: float
    notes: tuple[str, ...] = ()


def _dashboard_flags() -> set[str] | None:
    """The options of `turnout dashboard`, or None when this version has no dashboard."""
    from turnout.service.cli import build_parser

    for action in build_parser()._subparsers._group_actions:  # type: ignore[union-attr]
        choices = getattr(action, "choices", None) or {}
        if "dashboard" in choices:
            return {s for a in choices["dashboard"]._actions for s in a.option_strings}
    return None


def plan_children(
    ports: Ports,
    paths: DemoPaths,
    *,
    openrouter: bool,
    rate: float,
    dashboard_flags: set[str] | None,
    seed: int = 7,
    engine: str = "kafka",
) -> Plan:
    """The children to start, in stages (pure: no process is started here).

    `engine` is the broker's: `kafka` (Apache Kafka, data under `<data>/kafka`)
    or `tansu` (memory-only).
    """
    cfg = ("--config", str(paths.config))
    duck = ("--duckdb", str(paths.archive))
    broker: tuple[str, ...] = ("broker", "--port", str(ports.kafka), "--engine", engine)
    if engine == "kafka":
        broker += ("--data", str(paths.kafka))
        where = f"127.0.0.1:{ports.kafka} (Apache Kafka, data in {paths.kafka})"
    else:
        where = f"127.0.0.1:{ports.kafka} (embedded Tansu, memory-only)"
    kids: list[Child] = [
        Child(name="broker", stage=0, argv=broker, ready_text="Kafka broker ready",
              start_timeout_s=90, stop_timeout_s=35, where=where),
    ]  # fmt: skip
    if not openrouter:
        kids.append(Child(
            name="simulator", stage=1,
            argv=("simulate", "--port", str(ports.simulator), "--scenario", str(paths.scenario)),
            ready_text="simulator listening",
            where=f"http://127.0.0.1:{ports.simulator}/api/v1 (gpt-4o-mini fails 20-50 s)",
        ))  # fmt: skip
        kids.append(Child(  # a second provider: the general route's fallback lives there
            name="simulator-2", stage=1,  # the same latencies (its models have no outage)
            argv=("simulate", "--port", str(ports.backup), "--scenario", str(paths.scenario)),
            ready_text="simulator listening",
            where=f"http://127.0.0.1:{ports.backup}/api/v1 (provider backup: Claude 3.5 Haiku)",
        ))  # fmt: skip
    for i, port in enumerate(ports.routers, start=1):
        kids.append(Child(
            name=f"router-{i}", stage=2,
            argv=("router", *cfg, "--health-port", str(port), "--instance", f"demo-router-{i}"),
            ready_url=f"http://127.0.0.1:{port}/readyz", start_timeout_s=90, stop_timeout_s=20,
            where=f"http://127.0.0.1:{port}/healthz",
        ))  # fmt: skip
    kids.append(Child(name="sink", stage=2, argv=("sink", *cfg, *duck), ready_text="readers use",
                      where=str(paths.archive)))  # fmt: skip
    kids.append(Child(
        name="gateway", stage=3, argv=("gateway", *cfg, "--port", str(ports.gateway)),
        ready_url=f"http://127.0.0.1:{ports.gateway}/readyz", start_timeout_s=60,
        where=f"http://127.0.0.1:{ports.gateway}/v1 (OpenAI-compatible; open: no keys)",
    ))  # fmt: skip
    rules = ("--rules", str(paths.rules))
    kids.append(Child(name="alerts", stage=3, argv=("alerts", *cfg, *duck, *rules),
                      ready_text="rule(s) on", where=f"rules {paths.rules}"))  # fmt: skip
    if dashboard_flags is not None:
        extra = [*cfg] if "--config" in dashboard_flags else []
        extra += [*duck] if "--duckdb" in dashboard_flags else []
        extra += ["--rules", str(paths.rules)] if "--rules" in dashboard_flags else []
        kids.append(Child(
            name="dashboard", stage=3, argv=("dashboard", "--port", str(ports.dashboard), *extra),
            ready_url=f"http://127.0.0.1:{ports.dashboard}/", start_timeout_s=90,
            where=f"http://127.0.0.1:{ports.dashboard}",
        ))  # fmt: skip
    traffic = ["traffic", *cfg, "--rate", f"{rate:g}", "--seed", str(seed),
               "--stats", str(paths.traffic)]  # fmt: skip
    if openrouter:
        traffic += ["--max-tokens", str(_OPENROUTER_MAX_TOKENS)]
    kids.append(Child(name="traffic", stage=4, argv=tuple(traffic), ready_text="traffic:",
                      where=f"{rate:g} requests/s: tenants acme, globex, initech (rate limit), "
                            "penny (budget)"))  # fmt: skip
    return Plan(children=tuple(kids), openrouter=openrouter, rate=rate, notes=ports.notes)


def child_env(ports: Ports, paths: DemoPaths, *, openrouter: bool) -> dict[str, str]:
    """The environment every child runs with."""
    env = dict(os.environ)
    env.update(
        TURNOUT_KAFKA_BOOTSTRAP=f"127.0.0.1:{ports.kafka}",
        TURNOUT_DUCKDB_PATH=str(paths.archive),
        PYTHONUNBUFFERED="1",
        STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
    )
    if not openrouter:
        env["TURNOUT_UPSTREAM_BASE_URL"] = f"http://127.0.0.1:{ports.simulator}/api/v1"
        env["TURNOUT_PROVIDERS_BACKUP_BASE_URL"] = f"http://127.0.0.1:{ports.backup}/api/v1"
    return env


# ---------------------------------------------------------------- data directory


def fresh_data_dir(data: Path) -> None:
    """Empty `data` for a new run; refuse a directory an earlier demo did not make."""
    if data.exists():
        if not data.is_dir() or (any(data.iterdir()) and not (data / _MARKER).exists()):
            from turnout.service.errors import TurnoutError

            raise TurnoutError(
                f"{data} exists and was not made by `turnout demo`: move it away "
                "or pass another --data directory"
            )
        shutil.rmtree(data)
    (data / "logs").mkdir(parents=True)
    (data / _MARKER).write_text("made by `turnout demo`; emptied at every run\n")


# ---------------------------------------------------------------- what people see


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


def _turnout_command() -> str:
    """How the user types `turnout` here: the bare name when it is on PATH."""
    script = Path(sys.executable).parent / "turnout"
    found = shutil.which("turnout")
    if found and Path(found).resolve() == script.resolve():
        return "turnout"
    return _shown(script) if script.exists() else f"{sys.executable} -m service"


def _python() -> str:
    """How the user runs this Python (the venv's, where the openai SDK is installed)."""
    return _shown(Path(sys.executable))


def print_table(plan: Plan, supervisor: Supervisor, paths: DemoPaths, ports: Ports) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    table = Table(title="turnout demo: what runs where", title_justify="left")
    for column in ("part", "pid", "where", "log"):
        table.add_column(column)
    for run in supervisor.running:
        table.add_row(run.child.name, str(run.pid), run.child.where, _shown(run.log))
    console.print(table)
    cmd = _turnout_command()
    upstream = "the simulator (OPENROUTER_API_KEY is not set)"
    if plan.openrouter:
        upstream = (
            "OpenRouter (OPENROUTER_API_KEY is set: real calls, kept small and cheap: "
            f"{plan.rate:g} requests/s, at most {_OPENROUTER_MAX_TOKENS} completion tokens each)"
        )
    lines = [
        f"Upstream: {upstream}.",
        *plan.notes,
        "",
        "Try it in another terminal:",
        f"  export TURNOUT_KAFKA_BOOTSTRAP=127.0.0.1:{ports.kafka} "
        f"TURNOUT_DUCKDB_PATH={paths.archive.resolve()}",
        f'  {cmd} submit "hello" --wait',
        f'  {cmd} sql "SELECT tenant, outcome, count(*) FROM requests GROUP BY ALL ORDER BY ALL"',
        "The OpenAI-compatible gateway, streamed with curl and called with the openai SDK:",
        f"  curl -N http://127.0.0.1:{ports.gateway}/v1/chat/completions "
        "-H 'Content-Type: application/json' -H 'X-Turnout-Tenant: acme' -d '{\"model\": "
        '"turnout/general", "stream": true, "messages": [{"role": "user", '
        '"content": "Say hello"}]}\'',
        f"  {_python()} -c 'from openai import OpenAI; c = OpenAI(base_url="
        f'"http://127.0.0.1:{ports.gateway}/v1", api_key="demo", '
        'default_headers={"X-Turnout-Tenant": "acme"}); '
        'print(c.chat.completions.create(model="turnout/general", messages=[{"role": '
        '"user", "content": "Say hello"}]).choices[0].message.content)\'',
        f"Processes: {_shown(paths.pids)}. Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)  # plain: commands must not wrap


@dataclass
class ArchiveView:
    """What the archive shows so far (None: nothing readable yet)."""

    events: int | None = None
    alerts: list[tuple[str, str, str]] = field(default_factory=list)  # rule, labels, state


def read_archive(path: Path) -> ArchiveView:
    """Events stored and the alerts' latest states, from the published snapshot."""
    from turnout.analytics.snapshot import open_reader

    try:
        con = open_reader(path)
    except Exception:
        return ArchiveView()
    try:
        (events,) = con.execute("SELECT count(*) FROM events").fetchone() or (0,)
        rows = con.execute(
            "SELECT rule, coalesce(labels::VARCHAR, ''), arg_max(state, time) FROM alerts "
            "GROUP BY ALL ORDER BY min(time)"
        ).fetchall()
    except Exception:
        return ArchiveView()
    finally:
        con.close()
    return ArchiveView(events=int(events), alerts=[(str(a), str(b), str(c)) for a, b, c in rows])


def _labels(text: str) -> str:
    try:
        doc = json.loads(text) if text else {}
    except ValueError:
        return text
    if not isinstance(doc, dict) or not doc:
        return ""
    return "{" + ",".join(f"{k}={v}" for k, v in doc.items()) + "}"


def progress_lines(
    stats: Mapping[str, Any] | None, archive: ArchiveView, elapsed_s: float
) -> list[str]:
    """The live progress, as lines (pure)."""
    from turnout.service.traffic import summary_line

    clock = f"{int(elapsed_s) // 60}:{int(elapsed_s) % 60:02d}"
    traffic = summary_line(stats) if stats else "starting"
    lines = [f"[{clock}] traffic: {traffic}"]
    if archive.events is None:
        lines.append("        archive: waiting for the sink's first snapshot")
        return lines
    alerts = ", ".join(f"{rule}{_labels(labels)} {'firing' if state == 'fired' else state}"
                       for rule, labels, state in archive.alerts) or "none yet"  # fmt: skip
    lines.append(f"        archive: {archive.events:,} events; alerts: {alerts}")
    return lines


def _read_stats(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


# ---------------------------------------------------------------- the run


def _report_failure(failure: ChildFailure) -> None:
    print(f"turnout: error: {failure}", file=sys.stderr)
    for line in failure.tail:
        print(f"  | {line}", file=sys.stderr)
    sys.stderr.flush()


class _Progress:
    """Live lines on a terminal (rich), else a plain line every 10 s."""

    def __init__(self, paths: DemoPaths) -> None:
        self.paths = paths
        self.started = time.monotonic()
        self.archive = ArchiveView()
        self._archive_at = 0.0
        self._printed_at = 0.0
        self._live: Any = None
        if sys.stdout.isatty():
            from rich.live import Live

            self._live = Live(auto_refresh=False, transient=False)
            self._live.start()

    def update(self) -> None:
        now = time.monotonic()
        if now - self._archive_at >= 5:
            self.archive, self._archive_at = read_archive(self.paths.archive), now
        lines = progress_lines(_read_stats(self.paths.traffic), self.archive, now - self.started)
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text("\n".join(lines)), refresh=True)
        elif now - self._printed_at >= 10:
            self._printed_at = now
            print("\n".join(lines), flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()


def _watch(supervisor: Supervisor, stop: threading.Event, paths: DemoPaths,
           duration_s: float | None) -> ChildFailure | None:  # fmt: skip
    """Show progress until stopped; a child that exits meanwhile is a failure."""
    progress = _Progress(paths)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    last_pids = 0.0
    try:
        while not stop.wait(0.5):
            if (failure := supervisor.first_exited()) is not None:
                return failure
            if deadline is not None and time.monotonic() >= deadline:
                return None
            if time.monotonic() - last_pids >= 5:
                supervisor.write_pids(paths.pids)
                last_pids = time.monotonic()
            progress.update()
        return None
    finally:
        progress.update()
        progress.close()


def _start_all(plan: Plan, supervisor: Supervisor, stop: threading.Event,
               paths: DemoPaths) -> ChildFailure | None:  # fmt: skip
    stages = sorted({c.stage for c in plan.children})
    for stage in stages:
        batch = [c for c in plan.children if c.stage == stage]
        print("starting " + ", ".join(c.name for c in batch) + " ...", flush=True)
        for child in batch:
            supervisor.start(child)
        supervisor.write_pids(paths.pids)
        failure = supervisor.wait_ready(batch, stop)
        if failure is not None or stop.is_set():
            return failure
    supervisor.write_pids(paths.pids)
    return None


def run_demo(args: argparse.Namespace) -> int:
    paths = DemoPaths(data=Path(args.data))
    fresh_data_dir(paths.data)
    openrouter = bool(os.environ.get("OPENROUTER_API_KEY")) and not args.simulator
    rate = args.rate if args.rate is not None else (_OPENROUTER_RATE if openrouter else 5.0)
    ports = choose_ports(args)
    flags = None if args.no_dashboard else _dashboard_flags()
    engine = _engine()
    plan = plan_children(ports, paths, openrouter=openrouter, rate=rate,
                         dashboard_flags=flags, seed=args.seed, engine=engine)  # fmt: skip
    started = time.monotonic()
    env = child_env(ports, paths, openrouter=openrouter)
    supervisor = Supervisor((sys.executable, "-m", "turnout"), env=env, logs=paths.logs)
    failure: ChildFailure | None = None
    with stop_requested() as stop:
        try:
            failure = _start_all(plan, supervisor, stop, paths)
            if failure is None and not stop.is_set():
                print_table(plan, supervisor, paths, ports)
                print(f"turnout demo: ready in {time.monotonic() - started:.1f} s", flush=True)
                failure = _watch(supervisor, stop, paths, args.duration)
        finally:
            if failure is not None:
                _report_failure(failure)
            print("stopping ...", flush=True)
            stopping = time.monotonic()
            ended = supervisor.stop_all()
            supervisor.write_pids(paths.pids)
            left = [f"{name} pid {info.pid}" for name, info in supervisor.left_behind()]
            print(f"stopped in {time.monotonic() - stopping:.1f} s: {ended} processes ended, "
                  + (f"still running: {', '.join(left)}" if left else "none left behind"),
                  flush=True)  # fmt: skip
    stats = _read_stats(paths.traffic)
    if stats:
        from turnout.service.traffic import summary_line

        print(f"traffic: {summary_line(stats)}", flush=True)
    return 1 if failure is not None else 0


def _engine() -> str:
    """The broker engine, fetching Kafka's jars now (with progress) rather than in a child."""
    from turnout.service.kafka.broker import choose_engine

    choice = choose_engine()
    if choice.reason:
        print(f"warning: the demo runs on Tansu, not Apache Kafka: {choice.reason}", flush=True)
    return choice.engine


def cli_main(args: argparse.Namespace) -> int:
    """`turnout demo [--duration S] [--no-dashboard] [--rate R] ...`."""
    if not DEMO_FILES.is_dir():
        from turnout.service.errors import TurnoutError

        raise TurnoutError(
            f"the demo's files are missing ({DEMO_FILES}): reinstall Turnout "
            "(`pip install -e .`, or `make demo` in a clone)"
        )
    return run_demo(args)
