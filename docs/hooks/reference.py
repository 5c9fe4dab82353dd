"""MkDocs hook: the reference pages generated from the code, so they cannot drift from it.

A page asks for generated Markdown with a marker line of its own:

    <!-- turnout:reference cli -->      every command of `build_parser()`: options, --help
    <!-- turnout:reference config -->   every section and key of the config structs, defaults
    <!-- turnout:reference events -->   every event type of `EVENT_TYPES`, with its fields
    <!-- turnout:reference archive -->  every table and view of an empty archive, columns
    <!-- turnout:reference topics -->   the topics `turnout topics ensure` creates
    <!-- turnout:reference failure-classes -->  how a failed upstream call is classified
    <!-- turnout:include PATH -->       a repository file, verbatim (PATH from the repo root)

`on_page_markdown` replaces each marker; an unknown marker or a missing file fails the
build. The `render_*` functions take what they render as arguments (a parser, a config
struct, ...), so tests/unit/test_docs_reference.py checks them against the real parser
and structs, and against ones with an option added.

`--help` is rendered `HELP_COLUMNS` wide (argparse reads `COLUMNS`): run
`COLUMNS=80 turnout <command> --help` to get exactly what the CLI page shows.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import msgspec

__all__ = [
    "HELP_COLUMNS",
    "NAMED_PLACEHOLDERS",
    "cli_help",
    "config_rows",
    "example_comments",
    "on_page_markdown",
    "render_archive",
    "render_cli",
    "render_config",
    "render_events",
    "render_failure_classes",
    "render_topics",
    "walk_commands",
]

HELP_COLUMNS = 80
MARKER = re.compile(r"^<!-- turnout:(reference|include) ([^ ]+) -->$", re.MULTILINE)
NAMED_PLACEHOLDERS: Mapping[str, str] = {
    "routes": "<task_type>",
    "tenants": "<id>",
    "providers": "<name>",
}
"""How the reference names the tables of a section keyed by name."""

# ---------------------------------------------------------------- shared helpers


def _cell(text: object) -> str:
    """Text for one Markdown table cell: on one line, pipes escaped, and `<` too outside
    code spans (so `<name>` is shown, not taken for HTML)."""
    parts = " ".join(str(text).split()).split("`")
    parts[::2] = [p.replace("<", "&lt;") for p in parts[::2]]
    return "`".join(parts).replace("|", "\\|")


def _code(text: str) -> str:
    """`text` as inline code (a pipe inside is escaped for the table)."""
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def _breakable(name: str) -> str:
    """A long `NAME_WITH_PARTS` as code that may wrap after each underscore (`<wbr>`)."""
    if not name:
        return ""
    parts = [
        p.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") for p in name.split("_")
    ]
    return "<code>" + "_<wbr>".join(parts) + "</code>"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _doc(obj: object) -> str:
    """An object's own docstring (not an inherited one), as one paragraph."""
    raw = obj.__dict__.get("__doc__") if isinstance(obj, type) else inspect.getdoc(obj)
    return " ".join(inspect.cleandoc(raw).split()) if raw else ""


def field_comments(cls: type) -> dict[str, str]:
    """The comments written next to (or on the lines just above) each field of a class."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in source.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"(\w+)\s*:[^#]*?(?:#\s*(.*))?$", stripped)
        if match and not stripped.startswith(("def ", "class ", "@")):
            text = " ".join([*above, match.group(2) or ""]).strip()
            if text and "fmt:" not in text:
                comments[match.group(1)] = text
        above = []
    return comments


# ---------------------------------------------------------------- the command line


@contextmanager
def _columns(width: int) -> Iterator[None]:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def walk_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("turnout",)
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser under `parser`, depth first, with its command words."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk_commands(sub, (*path, name))


def cli_help(parser: argparse.ArgumentParser, columns: int = HELP_COLUMNS) -> str:
    """What `<command> --help` prints in a terminal `columns` wide."""
    with _columns(columns):
        return parser.format_help()


def _option_name(action: argparse.Action) -> str:
    if not action.option_strings:
        return str(action.metavar or action.dest)
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return names
    if action.metavar is not None:
        metavar = str(action.metavar)
    elif action.choices is not None:
        metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        metavar = action.dest.upper()
    return f"{names} {metavar}"


def _option_default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
        return ""
    if isinstance(action.default, Path | str | int | float):
        return _code(str(action.default))
    return _code(repr(action.default))


def _options(parser: argparse.ArgumentParser) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        help_text = (action.help or "") if action.help != argparse.SUPPRESS else ""
        if action.choices is not None and action.metavar is not None:
            help_text = f"{help_text} (one of {', '.join(map(str, action.choices))})".strip()
        rows.append((_code(_option_name(action)), _option_default(action), _cell(help_text)))
    return rows


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                rows.append((_code(choice.dest), _cell(choice.help or "")))
    return rows


def render_cli(parser: argparse.ArgumentParser, *, columns: int = HELP_COLUMNS) -> str:
    """The CLI reference: one section per command, with its options and its `--help`."""
    out: list[str] = []
    for path, sub in walk_commands(parser):
        name = " ".join(path)
        level = "#" * max(len(path), 2)  # turnout and its commands: ##; sub-commands: ###
        out += [f"{level} {name}", ""]
        if sub.description:
            out += [sub.description, ""]
        commands = _subcommands(sub)
        if commands:
            out += [*_table(("command", "what it does"), commands), ""]
        options = _options(sub)
        if options:
            out += [*_table(("argument", "default", "what"), options), ""]
        out += [f"`{name} --help`:", "", "```text", cli_help(sub, columns).rstrip(), "```", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- configuration


def example_comments(text: str) -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    """The comments of an example TOML file: per (section, key), and per section.

    A key's comment is the one at the end of its line (also of a commented-out
    `# key = value  # comment` line) and the comment-only lines indented under it.
    A table keyed by name (`[tenants.acme]`) counts as its section's (`tenants`),
    the first such table only.
    """
    keys: dict[tuple[str, str], str] = {}
    sections: dict[str, str] = {}
    section, last, seen = "", None, set()
    header = re.compile(r"\[([A-Za-z0-9_.]+)\]\s*(?:#\s*(.*))?$")
    entry = re.compile(r"#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*[^#]*?(?:#\s*(.*))?$")
    for raw in text.splitlines():
        line = raw.strip()
        if raw[:1].isspace() and line.startswith("#") and last is not None:
            keys[last] = f"{keys[last]} {line.lstrip('#').strip()}".strip()
            continue
        last = None
        if match := header.match(line):
            parts = match.group(1).split(".")
            if parts[0] in NAMED_PLACEHOLDERS:
                parts[1] = NAMED_PLACEHOLDERS[parts[0]]
            section = ".".join(parts)
            skip = section in seen
            seen.add(section)
            if match.group(2) and not skip:
                sections[section] = match.group(2).strip()
            if skip:
                section = ""
            continue
        if section and (match := entry.match(line)):
            key = (section, match.group(1))
            if key not in keys:
                keys[key] = (match.group(2) or "").strip()
                last = key
    return keys, sections


def _is_struct(tp: object) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _toml_type(tp: object) -> str:
    if get_origin(tp) in (Union, types.UnionType):
        kinds = [a for a in get_args(tp) if a is not type(None)]
        text = " or ".join(_toml_type(a) for a in kinds)
        return f"{text}, optional" if len(kinds) < len(get_args(tp)) else text
    origin, args = get_origin(tp), get_args(tp)
    if origin in (tuple, list):
        return f"array of {_toml_type(args[0])}s"
    if origin is dict:
        return f"table of {_toml_type(args[1])}s"
    if get_origin(tp) is not None and hasattr(tp, "__metadata__"):
        return _toml_type(args[0])
    names = {str: "string", int: "integer", float: "float", bool: "boolean"}
    if isinstance(tp, type) and tp in names:
        return names[tp]
    if _is_struct(tp):
        return "table"
    return str(tp)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return msgspec.json.encode(value).decode()
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    return str(value)


def _default(field: msgspec.structs.FieldInfo) -> str:
    if field.default is not msgspec.NODEFAULT:
        value = field.default
    elif field.default_factory is not msgspec.NODEFAULT:
        value = field.default_factory()
    else:
        return "required"
    if value is None:
        return "unset"
    return _code(_toml_value(value))


def _env_name(section: str, key: str) -> str:
    parts = section.split(".")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].startswith("<")):
        return ""
    words = [("<" + p.strip("<>").upper() + ">") if p.startswith("<") else p.upper() for p in parts]
    return "TURNOUT_" + "_".join([*words, key.upper()])


def config_rows(
    config_cls: type[msgspec.Struct],
) -> list[tuple[str, type[msgspec.Struct], list[msgspec.structs.FieldInfo]]]:
    """Every section of the config, in order: (`name`, its struct, its keys).

    A field whose type is a struct is a section (`[kafka]`); a table of structs is a
    section keyed by name (`[tenants.<id>]`); a table of structs inside a section is
    a section of its own (`[providers.<name>.prices]`).
    """
    out: list[tuple[str, type[msgspec.Struct], list[msgspec.structs.FieldInfo]]] = []

    def visit(name: str, cls: type[msgspec.Struct]) -> None:
        fields = list(msgspec.structs.fields(cls))
        out.append((name, cls, fields))
        for field in fields:
            if get_origin(field.type) is dict and _is_struct(get_args(field.type)[1]):
                visit(f"{name}.{field.name}", get_args(field.type)[1])

    for field in msgspec.structs.fields(config_cls):
        if _is_struct(field.type):
            visit(field.name, field.type)
        elif get_origin(field.type) is dict and _is_struct(get_args(field.type)[1]):
            placeholder = NAMED_PLACEHOLDERS.get(field.name, "<name>")
            visit(f"{field.name}.{placeholder}", get_args(field.type)[1])
    return out


def render_config(config_cls: type[msgspec.Struct], example: str = "") -> str:
    """The configuration reference: each section's keys, types, defaults, env names and
    explanations (from the comments of `example`, else from those in the struct's source)."""
    key_notes, section_notes = example_comments(example)
    out: list[str] = []
    for name, cls, fields in config_rows(config_cls):
        out += [f"### `[{name}]`", ""]
        intro = " ".join(t for t in (section_notes.get(name, ""), _doc(cls)) if t)
        if intro:
            out += [_cell(intro[0].upper() + intro[1:]), ""]
        source_notes = field_comments(cls)
        rows = []
        for field in fields:
            if get_origin(field.type) is dict and _is_struct(get_args(field.type)[1]):
                note = f"a table per name: see `[{name}.{field.name}]`"
                rows.append((_code(field.name), "table", "", "", note))
                continue
            note = key_notes.get((name, field.name)) or source_notes.get(field.name, "")
            env = _env_name(name, field.name)
            if note == f"or {env}":  # the environment column says it already
                note = ""
            rows.append(
                (
                    _code(field.name),
                    _cell(_toml_type(field.type)),
                    _default(field),
                    _breakable(env),
                    _cell(note),
                )
            )
        out += [*_table(("key", "type", "default", "environment", "what"), rows), ""]
    return "\n".join(out)


# ---------------------------------------------------------------- events


def _field_type(tp: object) -> str:
    if get_origin(tp) in (Union, types.UnionType):
        return " \\| ".join(_field_type(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    origin, args = get_origin(tp), get_args(tp)
    if origin in (list, tuple):
        return f"list[{_field_type(args[0])}]"
    if origin is dict:
        return f"object[{_field_type(args[1])}]"
    names = {str: "string", bytes: "base64 string", float: "number", int: "integer",
             bool: "boolean"}  # fmt: skip
    if tp is Any:
        return "any"
    if isinstance(tp, type):
        return names.get(tp, tp.__name__)
    return str(tp)


def _struct_table(cls: type[msgspec.Struct]) -> list[str]:
    notes = field_comments(cls)
    rows = []
    for field in msgspec.structs.fields(cls):
        default = "" if field.required else _default(field)
        if default == "unset":
            default = "`null`"
        rows.append(
            (_code(field.name), _field_type(field.type), default, _cell(notes.get(field.name, "")))
        )
    return _table(("field", "type", "default", "note"), rows)


def _nested(cls: type[msgspec.Struct]) -> Iterator[type[msgspec.Struct]]:
    def walk(tp: object) -> Iterator[type[msgspec.Struct]]:
        if _is_struct(tp):
            yield tp  # type: ignore[misc]
        for arg in get_args(tp):
            yield from walk(arg)

    for field in msgspec.structs.fields(cls):
        yield from walk(field.type)


def render_events(event_types: Mapping[str, type[msgspec.Struct]]) -> str:
    """Every event type: its struct's docstring and its data fields; then the values
    they share (usage, skipped models, ...)."""
    out: list[str] = []
    shared: dict[str, type[msgspec.Struct]] = {}
    group = ""
    for type_name, cls in event_types.items():
        noun = type_name.split(".")[1]
        if noun != group:
            group = noun
            out += [f"## {noun}", ""]
        out += [f"### {type_name}", ""]
        doc = _doc(cls)
        out += [f"`{cls.__name__}`" + (f": {_cell(doc)}" if doc else ""), ""]
        out += [*_struct_table(cls), ""]
        for nested in _nested(cls):
            shared.setdefault(nested.__name__, nested)
    if shared:
        out += ["## Shared values", ""]
        for name, cls in sorted(shared.items()):
            out += [f"### {name}", ""]
            if _doc(cls):
                out += [_cell(_doc(cls)), ""]
            out += [*_struct_table(cls), ""]
    return "\n".join(out)


# ---------------------------------------------------------------- archive and topics


def _sql_comments(sql: str) -> tuple[str, dict[str, str]]:
    """A SQL file's leading comment block, and the `-- comment` after each column."""
    lead: list[str] = []
    for line in sql.splitlines():
        if not line.startswith("--"):
            break
        lead.append(line.removeprefix("--").strip())
    columns: dict[str, str] = {}
    for match in re.finditer(r"^\s+(\w+)\s+[A-Z][^\n]*?--\s*(.*)$", sql, re.MULTILINE):
        columns.setdefault(match.group(1), match.group(2).strip())
    return " ".join(lead).strip(), columns


def render_archive(
    describe: Callable[[str], list[tuple[str, str]]],
    relations: list[tuple[str, str, str]],
) -> str:
    """Every table and view: `relations` is (name, kind, its SQL file's text);
    `describe(name)` gives its (column, type) pairs."""
    out: list[str] = []
    for name, kind, sql in relations:
        lead, notes = _sql_comments(sql)
        intro = f"A {kind}." + (f" {lead}" if kind == "view" and lead else "")
        out += [f"### {name}", "", _cell(intro), ""]
        rows = [(_code(c), _code(t), _cell(notes.get(c, ""))) for c, t in describe(name)]
        out += [*_table(("column", "type", "note"), rows), ""]
    return "\n".join(out)


def _archive() -> str:
    import duckdb

    from turnout.analytics import archive

    con = duckdb.connect(":memory:")
    try:
        archive._prepare(con, Path("reference.duckdb"))  # in memory: nothing sealed
        schema = archive._sql("schema.sql")
        tables = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", schema)
        relations = [(t, "table", schema) for t in tables]
        relations += [(v, "view", archive._sql(f"views/{v}.sql")) for v in archive.view_names()]

        def describe(name: str) -> list[tuple[str, str]]:
            return [(row[0], row[1]) for row in con.execute(f"DESCRIBE {name}").fetchall()]

        return render_archive(describe, relations)
    finally:
        con.close()


def render_topics(specs: list[tuple[str, int, Mapping[str, str]]]) -> str:
    """The topics `turnout topics ensure` creates: name, partitions, configs."""
    rows = [
        (_code(name), str(count), ", ".join(_code(f"{k}={v}") for k, v in configs.items()))
        for name, count, configs in specs
    ]
    return "\n".join(_table(("topic", "partitions", "configs (defaults)"), rows))


def _topics() -> str:
    from turnout.service.core.config import Config
    from turnout.service.kafka.settings import KafkaSettings
    from turnout.service.kafka.topics import topic_specs

    cfg = Config()
    settings = KafkaSettings(  # the defaults, not this machine's TURNOUT_KAFKA_* variables
        topic_prefix=cfg.kafka.topic_prefix,
        replication_factor=cfg.kafka.replication_factor,
        **msgspec.structs.asdict(cfg.topics),
    )
    return render_topics([(s.name, s.partitions, s.configs) for s in topic_specs(settings)])


def render_failure_classes(classes: Mapping[str, Any], by_status: Mapping[int, str]) -> str:
    """The classification table of failed upstream calls (`turnout.service.core.outcomes`)."""
    statuses: dict[str, list[str]] = {}
    for status, name in sorted(by_status.items()):
        statuses.setdefault(name, []).append(str(status))
    statuses.setdefault("bad_request", []).append("other 4xx")
    statuses.setdefault("http_error", []).append("other 5xx")
    yes = {True: "yes", False: "no"}
    rows = [
        (
            _code(c.name),
            ", ".join(statuses.get(c.name, [])),
            yes[c.retryable],
            yes[c.breaker_failure],
            yes[c.fallback],
            _code(c.code),
        )
        for c in classes.values()
    ]
    header = ("error class", "HTTP status", "retried", "breaker failure", "falls back", "code")
    return "\n".join(_table(header, rows))


def _failure_classes() -> str:
    from turnout.service.core import outcomes

    return render_failure_classes(outcomes.CLASSES, outcomes._BY_STATUS)


# ---------------------------------------------------------------- the hook


def _reference(name: str, root: Path) -> str:
    if name == "cli":
        from turnout.service.cli import build_parser

        return render_cli(build_parser())
    if name == "config":
        from turnout.service.core.config import Config

        return render_config(Config, (root / "turnout.example.toml").read_text(encoding="utf-8"))
    if name == "events":
        from turnout.service.core.events import EVENT_TYPES

        return render_events(EVENT_TYPES)
    if name == "archive":
        return _archive()
    if name == "topics":
        return _topics()
    if name == "failure-classes":
        return _failure_classes()
    raise ValueError(f"unknown generated reference {name!r}")


def expand(markdown: str, root: Path) -> str:
    """`markdown` with every marker replaced by what it asks for."""

    def replace(match: re.Match[str]) -> str:
        kind, arg = match.groups()
        if kind == "include":
            return (root / arg).read_text(encoding="utf-8").rstrip("\n")
        return _reference(arg, root)

    expanded = MARKER.sub(replace, markdown)
    leftover = re.search(r"<!-- turnout:.*", MARKER.sub("", markdown))
    if leftover:
        raise ValueError(f"unknown marker {leftover.group(0)!r} (see docs/hooks/reference.py)")
    return expanded


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: expand the markers of a page before it is rendered."""
    return expand(markdown, Path(config["config_file_path"]).parent)
