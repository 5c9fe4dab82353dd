"""Loading the configuration: the file, the environment, and nothing half-applied.

`load_config(path)` reads `path` (or `turnout.toml` in the working directory
when present, else the built-in defaults), applies `TURNOUT_<SECTION>_<KEY>`
overrides from the environment and returns a validated `Config`, or raises
`ConfigError` with every problem listed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from turnout.service.core.config import Config, ConfigError, parse_config

__all__ = ["DEFAULT_CONFIG_FILE", "load_config"]

DEFAULT_CONFIG_FILE = "turnout.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{path}: not valid TOML: {err}"]) from None


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """The configuration in force: file (explicit or ./turnout.toml) + environment."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(Path(path))
    elif Path(DEFAULT_CONFIG_FILE).is_file():
        raw = _read_toml(Path(DEFAULT_CONFIG_FILE))
    return parse_config(raw, os.environ if env is None else env)
