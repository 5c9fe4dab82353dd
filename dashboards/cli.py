"""`turnout dashboard`: serve the Streamlit dashboards (dashboards/app.py).

Checks what it can before anything starts, so a mistake is one line and
exit 1: the config file, the rules file, the port. Then it runs Streamlit's
server (`python -m streamlit run`) in a child process: headless (no browser
opened, no e-mail prompt), no usage statistics, no file watcher. The archive
path, config file and rules file reach the app through the environment
(`turnout.dashboards.settings`), under the keys a user may also set by hand.

A missing archive is not an error: the pages say "no events yet" and fill in
once `turnout sink` runs. Ctrl-C or SIGTERM stops the server and waits for
it, so no process is left behind; Ctrl-C exits 130, SIGTERM 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Final

from turnout.analytics.alerts.rules import load_rules
from turnout.dashboards.settings import ENV_CONFIG, ENV_RULES
from turnout.service.errors import TurnoutError
from turnout.service.procs import die_with_parent
from turnout.service.runtime.config import load_config

__all__ = ["APP", "STOP_TIMEOUT_S", "cli_main", "serve", "streamlit_command", "streamlit_env"]

APP: Final = Path(__file__).resolve().with_name("app.py")
STOP_TIMEOUT_S: Final = 10.0


def streamlit_command(*, port: int, host: str = "127.0.0.1") -> list[str]:
    """The command that serves the dashboards on `host:port`."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.port", str(port),
        "--server.address", host,
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false",
        "--client.toolbarMode", "viewer",
    ]  # fmt: skip


def streamlit_env(
    *,
    archive: str | os.PathLike[str] | None,
    config: str | None,
    rules: str | None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The server's environment: `base` (default: ours) plus where to read from.

    Paths are made absolute, so the server reads the same files whatever its
    working directory.
    """
    env = dict(os.environ if base is None else base)
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    if archive is not None:
        env["TURNOUT_DUCKDB_PATH"] = str(Path(archive).resolve())
    for key, value in ((ENV_CONFIG, config), (ENV_RULES, rules)):
        if value is not None:
            env[key] = str(Path(value).resolve())
    return env


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise TurnoutError(
                f"cannot serve the dashboards on {host}:{port} ({err.strerror}): "
                "stop what uses that port, or pass another --port"
            ) from None


def serve(command: list[str], env: Mapping[str, str]) -> int:
    """Run the server until it exits, Ctrl-C (130) or SIGTERM (0); never leave it running."""
    # the Streamlit server dies with us, also on SIGKILL (no orphan behind `turnout demo`)
    proc = subprocess.Popen(command, env=dict(env), preexec_fn=die_with_parent())
    terminated = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal terminated
        terminated = True
        proc.terminate()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)  # a terminal's Ctrl-C reached it too; `kill -INT` did not
        _stop(proc)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(proc)
    return 0 if terminated else code


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cli_main(args: argparse.Namespace) -> int:
    """`turnout dashboard [--port 8501] [--host H] [--duckdb PATH] [--config F] [--rules F]`."""
    cfg = load_config(args.config)  # ConfigError: every problem, exit 1
    if args.rules is not None:
        load_rules(args.rules)
    archive = Path(args.duckdb or cfg.duckdb.path)
    _check_port(args.host, args.port)
    shown = "localhost" if args.host in ("127.0.0.1", "0.0.0.0", "::") else args.host
    print(f"dashboard: http://{shown}:{args.port} (archive {archive}; "
          f"rules {args.rules or 'default'}); Ctrl-C stops it", flush=True)  # fmt: skip
    if not archive.exists():
        print(f"dashboard: no archive at {archive} yet: the pages fill in once "
              "`turnout sink` runs", flush=True)  # fmt: skip
    env = streamlit_env(archive=archive, config=args.config, rules=args.rules)
    return serve(streamlit_command(port=args.port, host=args.host), env)
