"""SQL alert rules on the DuckDB archive: `turnout alerts`.

- `rules`: the rules TOML file, loaded and checked (every problem listed at once);
- `engine`: the pure episode state machine (ok -> pending -> firing -> resolved);
- `runner`: the shell: schedule, read-only queries, state rebuilt at start, CLI;
- `delivery`: the Kafka outbox and the webhook POSTs, retried in the background.

The shipped default rules live in `analytics/rules/default.toml`.
"""

from __future__ import annotations

from turnout.analytics.alerts.engine import AlertState, Episode, Evaluation, Phase, evaluate, evolve
from turnout.analytics.alerts.rules import Rule, load_rules, parse_duration, parse_rules

__all__ = [
    "AlertState",
    "Episode",
    "Evaluation",
    "Phase",
    "Rule",
    "evaluate",
    "evolve",
    "load_rules",
    "parse_duration",
    "parse_rules",
]
