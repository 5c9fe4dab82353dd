"""What pyproject.toml declares, what the lock files pin and what the code imports.

Read by the packaging tests (tests/unit/test_packaging.py, test_compose.py and
tests/e2e/test_install.py). Nothing here is mocked: requirements come from
pyproject.toml, pins from locks/*.txt, the distributions behind a module and
their own requirements from the metadata of the test environment (the dev
lock installed by `make install`), imports from the AST of the source tree.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "locks"
SOURCES = ("service", "analytics", "dashboards")  # turnout/<name> links to each
LOCK_OF_EXTRA = {"router": "router.txt", "demo": "demo.txt", "dev": "dev.txt"}
"""The deployable sets with a lock file: the router image, the full image, make test."""


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def project_name() -> str:
    return str(canonicalize_name(pyproject()["project"]["name"]))


def requirements(extra: str | None = None) -> list[Requirement]:
    """The base requirements, plus those of `extra` with its `turnout[...]` references
    followed: everything `pip install 'turnout[extra]'` asks for, the project aside."""
    project = pyproject()["project"]
    out = [Requirement(r) for r in project["dependencies"]]
    todo, seen = [extra] if extra else [], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in project["optional-dependencies"][name]:
            req = Requirement(line)
            if canonicalize_name(req.name) == project_name():
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def declared(extra: str | None = None) -> set[str]:
    return {str(canonicalize_name(r.name)) for r in requirements(extra)}


def extras() -> list[str]:
    return list(pyproject()["project"]["optional-dependencies"])


def _applies(marker: Marker | None, extras: frozenset[str] = frozenset()) -> bool:
    """Whether a requirement with `marker` applies here, for the given extras."""
    if marker is None:
        return True
    return any(marker.evaluate({"extra": e}) for e in (extras or {""}))


def needed(extra: str | None = None) -> set[str]:
    """Every distribution `pip install 'turnout[extra]'` brings on this platform and
    Python: the declared requirements and, through the installed metadata, theirs."""
    todo = [(r.name, frozenset(r.extras)) for r in requirements(extra) if _applies(r.marker)]
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    while todo:
        name, wanted = todo.pop()
        key = (str(canonicalize_name(name)), wanted)
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        for line in metadata.distribution(name).requires or []:
            req = Requirement(line)
            if _applies(req.marker, wanted):
                todo.append((req.name, frozenset(req.extras)))
    return names


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    specifier: str
    marker: Marker | None
    hashes: tuple[str, ...]

    @property
    def applies(self) -> bool:
        return _applies(self.marker)


def read_lock(name: str) -> dict[str, Pin]:
    """The entries of locks/`name`: `name==version [; marker]`, each with its hashes."""
    text = (LOCKS / name).read_text()
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("#")]
    pins: dict[str, Pin] = {}
    for entry in "\n".join(lines).replace("\\\n", " ").splitlines():
        if not entry.strip():
            continue
        words = entry.split()
        hashes = tuple(w.removeprefix("--hash=") for w in words if w.startswith("--hash="))
        req = Requirement(" ".join(w for w in words if not w.startswith("--hash=")))
        spec = str(req.specifier)
        pin = Pin(str(canonicalize_name(req.name)), spec.removeprefix("=="), spec,
                  req.marker, hashes)  # fmt: skip
        pins[pin.name] = pin
    return pins


# --- what the code imports ---------------------------------------------------------------


def module_file(module: str) -> Path | None:
    """The source file of a `turnout.*` module, None for anything else."""
    parts = module.split(".")
    if parts[0] != "turnout" or len(parts) < 2:
        return REPO / "turnout" / "__init__.py" if parts == ["turnout"] else None
    base = REPO.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def all_modules() -> Iterator[str]:
    """Every module of the turnout package, from the source folders."""
    for source in SOURCES:
        for path in sorted((REPO / source).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield ".".join(("turnout", *parts))


def imports_of(module: str) -> list[list[str]]:
    """Each import statement of `module` (function-level and `TYPE_CHECKING` ones too) as
    the dotted names it may load: `from a.b import c` may load `a.b` and `a.b.c`."""
    path = module_file(module)
    assert path is not None, module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[list[str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend([alias.name] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            out.append([name, *(f"{name}.{alias.name}" for alias in node.names)])
    return out


def is_third_party(name: str) -> bool:
    top = name.partition(".")[0]
    return top not in ("turnout", "__future__") and top not in sys.stdlib_module_names


def closure(*roots: str) -> set[str]:
    """The turnout modules `roots` can load, through every import statement."""
    todo, seen = list(roots), set[str]()
    while todo:
        module = todo.pop()
        if module in seen or module_file(module) is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        for names in imports_of(module):
            todo.extend(n for n in names if n.startswith("turnout"))
    return seen


@cache
def module_owners() -> dict[str, frozenset[str]]:
    """Each module (dotted name) the installed distributions hold → those distributions."""
    owners: dict[str, set[str]] = {}
    for dist in metadata.distributions():
        name = str(canonicalize_name(dist.metadata["Name"]))
        for file in dist.files or []:
            parts = file.parts
            if not parts or parts[0] == ".." or not parts[-1].endswith((".py", ".so", ".pyd")):
                continue
            stem = parts[-1].split(".")[0]
            dotted = parts[:-1] if stem == "__init__" else (*parts[:-1], stem)
            if dotted:
                owners.setdefault(".".join(dotted), set()).add(name)
    return {m: frozenset(d) for m, d in owners.items()}


def owners_of(names: list[str]) -> set[str]:
    """The distributions an import statement loads from: for each name it may load, the
    distribution holding its longest dotted prefix (`opentelemetry` itself is a namespace
    held by none; `opentelemetry.trace` is opentelemetry-api's)."""
    owners = module_owners()
    found: set[str] = set()
    for name in names:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if (prefix := ".".join(parts[:i])) in owners:
                found |= owners[prefix]
                break
    return found


def third_party_imports(module: str) -> list[list[str]]:
    return [names for names in imports_of(module) if is_third_party(names[0])]
