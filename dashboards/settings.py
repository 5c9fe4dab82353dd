"""Where the dashboards read from: the archive, the config, the alert rules.

`turnout dashboard` hands these to Streamlit's process in the environment,
under the keys a user may also set by hand: `TURNOUT_DUCKDB_PATH` (the
config's `[duckdb] path`, like every `TURNOUT_<SECTION>_<KEY>`), `ENV_CONFIG`
(the config file) and `ENV_RULES` (the alert rules file; unset: the shipped
rules). No Streamlit here: the command line imports this before any server runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from turnout.service.core.config import Config
from turnout.service.runtime.config import load_config

__all__ = ["ENV_CONFIG", "ENV_RULES", "Settings"]

ENV_CONFIG: Final = "TURNOUT_DASHBOARD_CONFIG"
ENV_RULES: Final = "TURNOUT_DASHBOARD_RULES"


@dataclass(frozen=True, slots=True)
class Settings:
    archive: Path
    config: Config
    rules_path: str | None

    @classmethod
    def from_env(cls) -> Settings:
        """Raises ConfigError (every problem) for a bad config file."""
        cfg = load_config(os.environ.get(ENV_CONFIG) or None)
        return cls(Path(cfg.duckdb.path), cfg, os.environ.get(ENV_RULES) or None)
