"""`turnout simulate`: flags and scenario file to a running simulator.

Job: build `SimulatorOptions` from the command line (scenario file, then the
`--seed`, `--latency-ms`, `--error-rate` shorthands), bind the port, print
`simulator listening on http://HOST:PORT/api/v1` and serve until Ctrl-C or
SIGTERM (exit 0).

Rules:
- User mistakes (missing or invalid scenario, bad shorthand, port taken) are
  a `TurnoutError` with one line saying what to do; a scenario's problems are
  all listed at once.
- `--port 0` picks a free port; the printed line says which.
"""

from __future__ import annotations

import argparse
import sys

from turnout.service.errors import TurnoutError

from .app import SimulatorApp
from .scenario import Scenario, parse_scenario, with_overrides
from .server import bind_socket, run_foreground
from .state import SimulatorOptions

__all__ = ["cli_main", "load_scenario", "options_from_args"]


def load_scenario(path: str | None) -> Scenario:
    """The scenario in the TOML file at `path` (an empty scenario for None)."""
    if path is None:
        return Scenario()
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as err:
        raise TurnoutError(
            f"cannot read scenario file {path}: {err.strerror}; pass --scenario with a TOML file"
        ) from None
    return parse_scenario(text, source=path)


def options_from_args(args: argparse.Namespace) -> SimulatorOptions:
    scenario = with_overrides(
        load_scenario(args.scenario),
        seed=args.seed,
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
    )
    return SimulatorOptions(scenario=scenario, require_key=bool(args.require_key))


def cli_main(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as err:
        raise TurnoutError(
            f"cannot listen on {args.host}:{args.port}: {err.strerror}; "
            "pass --port with a free port (0 picks one)"
        ) from None
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"simulator listening on http://{shown}:{port}/api/v1", flush=True)
    run_foreground(SimulatorApp(options), sock)
    print("simulator stopped", file=sys.stderr, flush=True)
    return 0
