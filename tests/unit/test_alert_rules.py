"""Loading alert rules: durations, the shipped defaults, every problem listed at once."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from turnout.analytics.alerts.rules import (
    ConfigError,
    Rule,
    default_rules_text,
    load_rules,
    parse_duration,
    parse_rules,
)
from turnout.service.cli import main

GOOD = """
[[rule]]
name = "error_rate"
sql = "SELECT count(*) AS value FROM requests"
op = ">="
threshold = 5
for = "1m30s"
every = 10
severity = "critical"
webhook = "http://127.0.0.1:9/hook"
description = "too many"
"""

BAD = """
title = "x"

[[rule]]
name = "dup"
sql = "SELECT 1"
op = "=="
threshold = "high"
for = "soon"
every = "0s"
severity = "page"
webhok = "http://x"

[[rule]]
name = "dup"
sql = "DROP TABLE events"
op = ">"
threshold = 1
for = "1m"
every = "1m"
severity = "info"
webhook = "ftp://nowhere"

[[rule]]
sql = "SELECT 1; SELECT 2"
op = ">"
threshold = 1
for = -5
every = "1m"
severity = "info"

[[rule]]
name = "broken sql"
sql = "SELEC value FROM requests"
op = ">"
threshold = 1
for = "1m"
every = "1m"
severity = "info"
"""


@pytest.mark.parametrize(
    ("text", "ms"),
    [(0, 0), (30, 30_000), (0.5, 500), ("30s", 30_000), ("5m", 300_000), ("1h", 3_600_000),
     ("1h30m", 5_400_000), ("250ms", 250), ("1.5s", 1_500), ("2d", 172_800_000), (" 1M ", 60_000)],
)  # fmt: skip
def test_durations(text: object, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "soon", "5", "m5", "-1s", "1x", True, -1, float("nan"), [1]])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match=r"duration|non-negative"):
        parse_duration(text)


def test_a_good_rule_loads(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(GOOD)
    assert load_rules(path) == [
        Rule(
            name="error_rate", sql="SELECT count(*) AS value FROM requests", op=">=",
            threshold=5.0, for_ms=90_000, every_ms=10_000, severity="critical",
            webhook="http://127.0.0.1:9/hook", description="too many",
        )
    ]  # fmt: skip


def test_every_problem_of_a_bad_file_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rules(tomllib.loads(BAD), source="bad.toml")
    problems = caught.value.problems
    expected = [
        "unknown top-level key 'title'",
        "rule 1 (dup): unknown key 'webhok' (did you mean 'webhook'?)",
        "rule 1 (dup): op: '==' is not one of",
        "rule 1 (dup): threshold: 'high' is not a finite number",
        "rule 1 (dup): for: 'soon' is not a duration",
        "rule 1 (dup): every: must be positive",
        "rule 1 (dup): severity: 'page' is not one of info, warning, critical",
        "rule 2 (dup): sql: is a DROP statement",
        "rule 2 (dup): webhook: 'ftp://nowhere' is not an http",
        "rule 3: missing key 'name'",
        "rule 3: sql: holds 2 statements",
        "rule 3: for: -5 is not a non-negative number",
        "rule 4 (broken sql): name: 'broken sql': use 1-100 letters",
        "rule 4 (broken sql): sql: does not parse",
        "rule name 'dup' is used 2 times",
    ]
    for text in expected:
        assert sum(text in p for p in problems) == 1, (text, problems)
    assert len(problems) == len(expected)
    assert all(p.startswith("bad.toml: ") for p in problems)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO events SELECT * FROM events",
        "UPDATE events SET type = 'x'",
        "DELETE FROM events",
        "CREATE TABLE x AS SELECT 1",
        "COPY events TO '/tmp/x.csv'",
        "ATTACH '/tmp/other.duckdb'",
        "PRAGMA version",
        "SET threads = 1",
        "CALL pragma_version()",
        "SELECT 1; DELETE FROM events",
    ],
)
def test_queries_that_are_not_one_select_are_refused(sql: str) -> None:
    doc = tomllib.loads(GOOD)
    doc["rule"][0]["sql"] = sql
    with pytest.raises(ConfigError, match="sql: "):
        parse_rules(doc)


@pytest.mark.parametrize(
    "sql", ["FROM requests SELECT count(*)", "WITH a AS (SELECT 1 AS value) SELECT * FROM a",
            "SELECT 1;", "VALUES (1)"],
)  # fmt: skip
def test_select_forms_are_accepted(sql: str) -> None:
    doc = tomllib.loads(GOOD)
    doc["rule"][0]["sql"] = sql
    assert parse_rules(doc)[0].sql == sql


def test_empty_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no \\[\\[rule\\]\\] tables"):
        parse_rules({})
    (tmp_path / "x.toml").write_text("[[rule]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_rules(tmp_path / "x.toml")
    with pytest.raises(ConfigError, match="no such rules file"):
        load_rules(tmp_path / "missing.toml")


def test_the_shipped_default_rules_load() -> None:
    rules = load_rules()
    assert [r.name for r in rules] == [
        "error_rate", "latency_p99", "breaker_open", "fallback_rate",
        "budget_near_limit", "cache_hit_ratio_drop", "dlq_rate", "stuck_requests",
    ]  # fmt: skip
    assert all(r.description and r.webhook is None for r in rules)
    assert "[[rule]]" in default_rules_text()


def test_the_cli_refuses_a_bad_rules_file_listing_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    assert main(["alerts", "--rules", str(path), "--once"]) == 1
    err = capsys.readouterr().err
    assert "15 configuration problem(s)" in err
    assert "rule name 'dup' is used 2 times" in err
