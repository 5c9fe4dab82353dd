"""Alert rules: the TOML file read, every rule checked, every problem listed at once.

A rules file holds `[[rule]]` tables:

    [[rule]]
    name = "error_rate"                  # unique; letters, digits, `_`, `-`, `.`
    sql = "SELECT ... AS value"          # one read-only query (see below)
    op = ">"                             # > | >= | < | <=
    threshold = 0.05
    for = "2m"                           # how long it must hold before it fires
    every = "30s"                        # evaluation period
    severity = "critical"                # info | warning | critical
    webhook = "https://hooks.example/x"  # optional: POSTed JSON on fire and resolve
    description = "..."                  # optional: shown in webhook text

Durations are a number of seconds (`30`, `0.5`) or a string of number+unit
parts, units `ms`, `s`, `m`, `h`, `d` (`"30s"`, `"5m"`, `"1h30m"`). `for = 0`
fires on the first evaluation that holds; `every` must be positive.

The query returns either one number (one column, at most one row; no row or
NULL means "not holding"), or rows with a `value` column whose other columns
are labels: the rule then alerts per label set (e.g. per model).

Rules:
- `load_rules` / `parse_rules` return every rule or raise `ConfigError` with
  every problem of the file (unknown keys, bad types, duplicate names, SQL
  that does not parse), never the first one only;
- a query must be exactly one SELECT statement (`WITH`, `FROM`-first and
  `VALUES` are SELECTs): DDL, DML, COPY, ATTACH, PRAGMA, SET, CALL and
  several statements are refused here; whatever passes still runs on a
  read-only connection, so this check is a courtesy, not the guard;
- names and tables are not resolved at load (the archive may not exist yet):
  a query that names a missing view fails at run time, is logged and retried.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from turnout.service.core.config import ConfigError

__all__ = [
    "OPS",
    "SEVERITIES",
    "ConfigError",
    "Rule",
    "default_rules_text",
    "load_rules",
    "parse_duration",
    "parse_rules",
]

OPS: Final = (">", ">=", "<", "<=")
SEVERITIES: Final = ("info", "warning", "critical")
_REQUIRED: Final = ("name", "sql", "op", "threshold", "for", "every", "severity")
_OPTIONAL: Final = ("webhook", "description")
_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_READ_ONLY_TYPES: Final = ("SELECT",)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One checked alert rule; durations in integer milliseconds."""

    name: str
    sql: str
    op: str
    threshold: float
    for_ms: int
    every_ms: int
    severity: str
    webhook: str | None = None
    description: str = ""


def parse_duration(value: object) -> int:
    """Milliseconds of `value`: seconds as a number, or `"1h30m"`-style text.

    Raises ValueError (saying what is accepted) for anything else or a negative.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a duration (use seconds or text like '30s', '5m')")
    if isinstance(value, str):
        return _duration_text(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{value!r} is not a non-negative number of seconds")
    return round(value * 1000)


def _duration_text(text: str) -> int:
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration (use e.g. '500ms', '30s', '5m', '1h30m')")
    return round(sum(float(n) * _UNIT_MS[u] for n, u in parts))


def parse_rules(doc: Mapping[str, Any], *, source: str = "rules") -> list[Rule]:
    """Every rule of a parsed rules document, or ConfigError listing every problem."""
    problems = [
        f"{source}: unknown top-level key {k!r} (expected [[rule]])" for k in doc if k != "rule"
    ]
    tables = doc.get("rule")
    if not isinstance(tables, list) or not tables:
        raise ConfigError([*problems, f"{source}: no [[rule]] tables"])
    rules: list[Rule] = []
    for i, table in enumerate(tables):
        where = f"{source}: rule {i + 1}"
        if not isinstance(table, dict):
            problems.append(f"{where}: not a table")
            continue
        if isinstance(table.get("name"), str) and table["name"]:
            where += f" ({table['name']})"
        rule, found = _parse_rule(table)
        problems += [f"{where}: {p}" for p in found]
        if rule is not None:
            rules.append(rule)
    problems += _duplicate_names(tables, source)
    if problems:
        raise ConfigError(problems)
    return rules


def _duplicate_names(tables: list[Any], source: str) -> list[str]:
    names: list[str] = [
        t["name"] for t in tables if isinstance(t, dict) and isinstance(t.get("name"), str)
    ]
    dupes = sorted({n for n in names if names.count(n) > 1})
    return [f"{source}: rule name {n!r} is used {names.count(n)} times" for n in dupes]


def _parse_rule(table: Mapping[str, Any]) -> tuple[Rule | None, list[str]]:
    problems = _unknown_keys(table)
    problems += [f"missing key {k!r}" for k in _REQUIRED if k not in table]
    checks = (
        ("name", _name), ("sql", _sql), ("op", _op), ("threshold", _threshold),
        ("for", parse_duration), ("every", _every), ("severity", _severity),
        ("webhook", _webhook), ("description", _description),
    )  # fmt: skip
    values: dict[str, Any] = {}
    for key, check in checks:
        if key not in table:
            continue
        try:
            values[key] = check(table[key])
        except ValueError as err:
            problems.append(f"{key}: {err}")
    if problems:
        return None, problems
    return _rule(values), []


def _rule(v: dict[str, Any]) -> Rule:
    return Rule(
        name=v["name"],
        sql=v["sql"],
        op=v["op"],
        threshold=v["threshold"],
        for_ms=v["for"],
        every_ms=v["every"],
        severity=v["severity"],
        webhook=v.get("webhook"),
        description=v.get("description", ""),
    )


def _unknown_keys(table: Mapping[str, Any]) -> list[str]:
    known = (*_REQUIRED, *_OPTIONAL)
    out = []
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(f"unknown key {key!r}{hint}")
    return out


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string ({what}), not {type(value).__name__}")
    return value


def _name(value: object) -> str:
    name = _text(value, "the rule's name")
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r}: use 1-100 letters, digits, '_', '-' or '.'")
    return name


def _op(value: object) -> str:
    if value not in OPS:
        raise ValueError(f"{value!r} is not one of {', '.join(OPS)}")
    return str(value)


def _threshold(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    return float(value)


def _every(value: object) -> int:
    ms = parse_duration(value)
    if ms <= 0:
        raise ValueError("must be positive")
    return ms


def _severity(value: object) -> str:
    if value not in SEVERITIES:
        raise ValueError(f"{value!r} is not one of {', '.join(SEVERITIES)}")
    return str(value)


def _webhook(value: object) -> str:
    url = _text(value, "an http(s) URL")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return url


def _description(value: object) -> str:
    return _text(value, "free text")


def _sql(value: object) -> str:
    sql = _text(value, "one SELECT query").strip()
    if not sql:
        raise ValueError("is empty")
    import duckdb  # the parser only: no connection, no file

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise ValueError(f"does not parse: {_first_line(err)}") from None
    if len(statements) != 1:
        raise ValueError(f"holds {len(statements)} statements; give exactly one SELECT")
    kind = statements[0].type.name
    if kind not in _READ_ONLY_TYPES:
        raise ValueError(f"is a {kind} statement; only one read-only SELECT is allowed")
    return sql


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def default_rules_text() -> str:
    """The TOML text of the rules shipped with Turnout (`analytics/rules/default.toml`)."""
    rules = resources.files("turnout.analytics").joinpath("rules/default.toml")
    return rules.read_text(encoding="utf-8")


def load_rules(path: str | os.PathLike[str] | None = None) -> list[Rule]:
    """The rules of the TOML file at `path` (None: the shipped defaults)."""
    if path is None:
        return _parse_text(default_rules_text(), "default rules")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{p}: no such rules file"]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"{p}: cannot read: {err}"]) from None
    return _parse_text(text, str(p))


def _parse_text(text: str, source: str) -> list[Rule]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{source}: not valid TOML: {err}"]) from None
    return parse_rules(doc, source=source)
