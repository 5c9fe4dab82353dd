"""The pure core's extra bans (service/core/ruff.toml, service/wire/ruff.toml), as ruff runs.

The core must be replayable, so besides the root's bans (`time.time`, `datetime.now`,
`random`, `uuid4`) it may not read the monotonic clock, today's date or the
environment: those reach it as arguments from the shell. The nested files extend the
root configuration; these tests run the project's ruff on real paths and check that a
root run still applies every root rule there, with the core's bans on top.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUFF = Path(sys.executable).with_name("ruff")
CORE_BANS = ("time.monotonic", "time.monotonic_ns", "datetime.date.today", "os.environ",
             "os.getenv")  # fmt: skip
PROBE = """\
import datetime
import json
import os
import time
from datetime import date

a = time.monotonic()
b = time.monotonic_ns()
c = date.today()
d = os.environ["TURNOUT_X"]
e = os.getenv("TURNOUT_X")
f = time.time()
g = datetime.datetime.now()
"""


def lint(path: str) -> list[str]:
    """`ruff check` of PROBE as if it were the file `path` (its config found from there)."""
    out = subprocess.run(
        [RUFF, "check", "--no-cache", "--output-format", "concise", "--stdin-filename", path, "-"],
        cwd=REPO, input=PROBE, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode in (0, 1), out.stderr
    return [line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith(path)]


def settings(path: str) -> set[str]:
    out = subprocess.run([RUFF, "check", "--show-settings", path], cwd=REPO,
                         capture_output=True, text=True, check=True)  # fmt: skip
    return set(out.stdout.splitlines())


@pytest.mark.parametrize("folder", ["service/core", "service/wire"])
def test_the_core_may_read_neither_the_clock_nor_the_environment(folder: str) -> None:
    found = lint(f"{folder}/probe.py")
    for name in (*CORE_BANS, "time.time", "datetime.datetime.now"):
        assert any(f"TID251 `{name}` is banned" in line for line in found), (name, found)
    assert any("F401 [*] `json` imported but unused" in line for line in found)  # root rules
    assert all("read it in the shell" in line for line in found if "monotonic" in line)


def test_the_shell_may_and_the_root_bans_still_hold_there() -> None:
    found = lint("service/runtime/probe.py")
    assert not [line for line in found if any(f"`{name}`" in line for name in CORE_BANS)]
    assert any("`time.time` is banned" in line for line in found)
    assert any("`datetime.datetime.now` is banned" in line for line in found)


@pytest.mark.parametrize("folder", ["service/core", "service/wire"])
def test_a_nested_config_is_the_root_config_plus_the_core_bans(folder: str) -> None:
    """Every root setting (rules, per-file ignores, isort sections, line length) holds in
    the folder; only its own paths differ, and the banned-api table grows by CORE_BANS."""
    root, nested = settings("service/runtime/router.py"), settings(f"{folder}/__init__.py")
    assert f'Settings path: "{REPO / folder / "ruff.toml"}"' in nested
    where = ("Resolved settings for:", "Settings path:", "project_root =", f'"{REPO / "src"}"')
    assert [ln for ln in root - nested if not any(w in ln for w in where)] == []
    added = [ln for ln in nested - root if not any(w in ln for w in where)]
    assert sorted(ln.strip().split(" = ")[0] for ln in added) == sorted(CORE_BANS)
