"""The generated reference pages (docs/hooks/reference.py) against the code they render.

The CLI page must hold, for every command, exactly what `turnout <command> --help`
prints (80 columns wide), and every option with its default; the configuration page
every section, key, default and environment variable of the config structs. The
renderers walk the parser and the structs, so an option or key added later shows up
by itself: tested here with a parser and a struct that have one more. Also: every
document a source file cites is in the repository, and README's links resolve.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest

from turnout.service.cli import build_parser, main
from turnout.service.core.config import Config, parse_config
from turnout.service.core.events import EVENT_TYPES

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = "80"


def _load_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "turnout_docs_reference", ROOT / "docs" / "hooks" / "reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_hook()
COMMANDS = [path for path, _ in ref.walk_commands(build_parser())]


def _help_from_main(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> str:
    """What the `turnout` entry point prints for `argv --help`, COLUMNS wide."""
    monkeypatch.setenv("COLUMNS", COLUMNS)
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _section(page: str, title: str) -> str:
    """One command's section of the CLI page: from its heading to the next one."""
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ turnout|\Z)", page, re.M | re.S)
    assert match, f"no section for {title!r}"
    return match.group(1)


# ---------------------------------------------------------------- the command line


def test_the_cli_page_has_every_command_and_sub_command() -> None:
    page = ref.render_cli(build_parser())
    assert len(COMMANDS) > 20
    for path in COMMANDS:
        assert re.search(rf"^#+ {re.escape(' '.join(path))}$", page, re.M), path
    for name in ("broker", "router", "gateway", "sql", "demo", "traffic"):
        assert ("turnout", name) in COMMANDS
    assert ("turnout", "replay", "whatif") in COMMANDS
    assert ("turnout", "gateway", "key", "create") in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p[1:]) or "turnout")
def test_the_cli_page_shows_exactly_what_help_prints(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    printed = _help_from_main(list(path[1:]), capsys, monkeypatch)
    section = _section(ref.render_cli(build_parser()), " ".join(path))
    assert f"```text\n{printed.rstrip()}\n```" in section


def test_the_installed_command_prints_the_same_help() -> None:
    """The console entry point as a user runs it, once (in-process above for the rest)."""
    argv = ["replay", "whatif"]
    done = subprocess.run(
        [sys.executable, "-m", "turnout", *argv, "--help"],
        capture_output=True,
        text=True,
        env={"COLUMNS": COLUMNS, "PATH": "/usr/bin:/bin"},
        check=True,
        timeout=60,
    )
    section = _section(ref.render_cli(build_parser()), "turnout replay whatif")
    assert f"```text\n{done.stdout.rstrip()}\n```" in section


def _option_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(name, default) as the page must show them, derived here from the parser."""
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        name = (
            action.option_strings[0]
            if action.option_strings
            else str(action.metavar or action.dest)
        )
        if action.required:
            default = "required"
        elif action.nargs == 0 or action.default is None:
            default = ""
        else:
            default = f"`{action.default}`"
        rows.append((name, default))
    return rows


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p[1:]) or "turnout")
def test_every_option_is_in_its_table_with_its_default(path: tuple[str, ...]) -> None:
    parser = dict(ref.walk_commands(build_parser()))[path]
    section = _section(ref.render_cli(build_parser()), " ".join(path))
    for name, default in _option_rows(parser):
        row = re.search(rf"^\| `{re.escape(name)}[^`]*` \| ([^|]*) \|", section, re.M)
        assert row, f"{' '.join(path)}: no row for {name}"
        assert row.group(1).strip() == default, (name, row.group(1))


def test_a_new_option_shows_up_without_touching_the_docs() -> None:
    parser = build_parser()
    router = dict(ref.walk_commands(parser))[("turnout", "router")]
    router.add_argument("--brand-new", type=int, default=7, help="an option added later")
    section = _section(ref.render_cli(parser), "turnout router")
    assert "| `--brand-new BRAND_NEW` | `7` | an option added later |" in section
    assert "--brand-new BRAND_NEW" in section.split("```text", 1)[1]


def test_a_new_command_shows_up_without_touching_the_docs() -> None:
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    subs.add_parser("frobnicate", help="a command added later", description="Frobnicate.")
    page = ref.render_cli(parser)
    assert "## turnout frobnicate\n\nFrobnicate." in page
    assert "| `frobnicate` | a command added later |" in page


# ---------------------------------------------------------------- configuration


def _plain(page: str) -> str:
    """The configuration page with its breakable variable names as plain code spans."""
    for html, text in (
        ("<wbr>", ""),
        ("<code>", "`"),
        ("</code>", "`"),
        ("&lt;", "<"),
        ("&gt;", ">"),
    ):
        page = page.replace(html, text)
    return page


def _expected_default(field: msgspec.structs.FieldInfo) -> str:
    if field.default is not msgspec.NODEFAULT:
        value = field.default
    elif field.default_factory is not msgspec.NODEFAULT:
        value = field.default_factory()
    else:
        return "required"
    return "unset" if value is None else f"`{json.dumps(msgspec.to_builtins(value))}`"


def _sections(config_cls: type[Any]) -> list[tuple[str, type[Any]]]:
    """Every section of a config struct, found here without the renderer's help."""
    named = {"routes": "<task_type>", "tenants": "<id>", "providers": "<name>"}
    out = []
    for field in msgspec.structs.fields(config_cls):
        tp, args = field.type, getattr(field.type, "__args__", ())
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            out.append((field.name, tp))
        elif args and isinstance(args[-1], type) and issubclass(args[-1], msgspec.Struct):
            name = f"{field.name}.{named.get(field.name, '<name>')}"
            out.append((name, args[-1]))
            for inner in msgspec.structs.fields(args[-1]):
                inner_args = getattr(inner.type, "__args__", ())
                last = inner_args[-1] if inner_args else None
                if isinstance(last, type) and issubclass(last, msgspec.Struct):
                    out.append((f"{name}.{inner.name}", last))
    return out


def test_every_config_key_is_on_the_page_with_its_default() -> None:
    page = ref.render_config(Config, (ROOT / "turnout.example.toml").read_text())
    sections = _sections(Config)
    assert {"kafka", "topics", "tenants.<id>", "providers.<name>.prices"} <= {
        name for name, _ in sections
    }
    for name, cls in sections:
        body = page.split(f"### `[{name}]`\n", 1)[1].split("\n### ", 1)[0]
        for field in msgspec.structs.fields(cls):
            row = re.search(rf"^\| `{field.name}` \| ([^|]*) \| ([^|]*) \|", body, re.M)
            assert row, f"[{name}] {field.name} is missing"
            if row.group(1).strip() == "table" and not row.group(2).strip():
                continue  # a table of tables: its own section, checked as such
            assert row.group(2).strip() == _expected_default(field), (name, field.name)


def test_the_environment_variables_shown_are_the_ones_the_loader_reads() -> None:
    page = _plain(ref.render_config(Config))
    for name, cls in _sections(Config):
        if "." in name:
            continue
        for field in msgspec.structs.fields(cls):
            default = _expected_default(field).strip("`")
            if default in ("unset", "required"):
                continue
            variable = f"TURNOUT_{name.upper()}_{field.name.upper()}"
            assert f"`{variable}`" in page
            read = getattr(parse_config({}, {variable: default}), name)
            assert getattr(read, field.name) == getattr(getattr(Config(), name), field.name)
    assert "`TURNOUT_TENANTS_<ID>_BURST`" in page
    assert parse_config({}, {"TURNOUT_TENANTS_ACME_BURST": "7"}).tenant("acme").burst == 7


def test_the_explanations_come_from_the_example_file() -> None:
    page = ref.render_config(Config, (ROOT / "turnout.example.toml").read_text())
    assert "a rebalance waits this long for routers to drain" in page  # a continued comment
    assert 'strategy = "weighted"' in page  # a commented-out key's comment
    assert "globs: which route models it serves" in page  # from the struct's source


class _Section(msgspec.Struct, frozen=True, kw_only=True):
    shiny: int = 42  # a key added later


class _Named(msgspec.Struct, frozen=True, kw_only=True):
    level: str = "high"


class _Bigger(msgspec.Struct, frozen=True, kw_only=True):
    extra: _Section = _Section()
    teams: dict[str, _Named] = {}


def test_a_new_config_key_shows_up_without_touching_the_docs() -> None:
    page = _plain(ref.render_config(_Bigger))
    assert "| `shiny` | integer | `42` | `TURNOUT_EXTRA_SHINY` | a key added later |" in page
    assert '| `level` | string | `"high"` | `TURNOUT_TEAMS_<NAME>_LEVEL` |' in page


# ---------------------------------------------------------------- events, topics


def test_every_event_type_and_field_is_on_the_events_page() -> None:
    page = ref.render_events(EVENT_TYPES)
    for type_name, cls in EVENT_TYPES.items():
        body = page.split(f"### {type_name}\n", 1)[1].split("\n### ", 1)[0]
        for field in msgspec.structs.fields(cls):
            assert f"| `{field.name}` |" in body, (type_name, field.name)


def test_the_topics_table_has_every_topic() -> None:
    from turnout.service.kafka.topics import TOPIC_SPECS

    table = ref._topics()
    for role, partitions in TOPIC_SPECS.items():
        assert f"| `turnout.{role}` | {partitions} |" in table


def test_an_unknown_marker_fails_the_build() -> None:
    with pytest.raises(ValueError, match="unknown"):
        ref.expand("<!-- turnout:refernce cli -->\n", ROOT)


# ---------------------------------------------------------------- citations and README

CITED = re.compile(r"\b(?:docs/[\w./-]+\.md|[A-Z]+\.md)\b")


def test_every_document_the_code_cites_is_in_the_repository() -> None:
    cited: set[str] = set()
    for folder in ("service", "analytics", "dashboards", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            cited |= set(CITED.findall(path.read_text(encoding="utf-8")))
    gone = {f"{name}.md" for name in ("CONTRACT", "BROKER", "PERFORMANCE")}  # moved to docs/
    assert not gone & cited
    assert {"docs/reference/broker.md", "docs/reference/contract.md"} <= cited
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, f"cited but not in the repository: {missing}"


def test_the_readme_is_short_and_its_links_resolve() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert local, "README links into docs/"
    assert not [link for link in local if not (ROOT / link).exists()]
