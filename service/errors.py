"""Errors the shell reports to a user as one line (CLI exit 1)."""

from __future__ import annotations

__all__ = ["TurnoutError"]


class TurnoutError(Exception):
    """A failure the user can act on; `str(err)` says what to do."""
