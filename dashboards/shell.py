"""The frame every dashboard page runs in: settings, the sidebar, the page body.

- `load_settings()`: the archive path, config and rules file
  (`turnout.dashboards.settings`), or an error on the page for a bad config.
- `sidebar()`: time range, window anchor, auto-refresh and the tenant / task
  type / model filters. Widgets keep their values in `st.session_state`
  under `KEYS`, so every page shares them.
- `run_page(title, render, applies=...)`: draws the title, then runs
  `render(ctx)` in a fragment that reruns every refresh period. Each run
  opens the newest snapshot, computes the window, and shows a friendly
  empty state (no archive, no events) instead of calling `render`. A query
  error shows one line, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import duckdb
import streamlit as st

from turnout.dashboards import fmt, queries
from turnout.dashboards.scope import ANCHORS, RANGES, REFRESH, Scope, make_scope, window
from turnout.dashboards.settings import Settings
from turnout.dashboards.source import Db, source_key
from turnout.service.clock import clock
from turnout.service.core.config import ConfigError
from turnout.service.errors import TurnoutError

__all__ = [
    "KEYS",
    "STALE_AFTER",
    "Context",
    "Settings",
    "load_settings",
    "run_page",
    "sidebar",
]

KEYS: Final = {
    "range": "f_range",
    "anchor": "f_anchor",
    "refresh": "f_refresh",
    "tenants": "f_tenants",
    "task_types": "f_task_types",
    "models": "f_models",
}
STALE_AFTER: Final = timedelta(minutes=5)
_DEFAULT_RANGE: Final = "Last hour"
_DEFAULT_REFRESH: Final = "15 s"
_ANCHOR_LABELS: Final = {"newest": "newest event", "now": "now"}
_FILTERS: Final = (
    ("tenants", "Tenants", "tenant"),
    ("task_types", "Task types", "task_type"),
    ("models", "Models", "model"),
)


@dataclass(frozen=True, slots=True)
class Context:
    """What a page renders from: one snapshot, one scope."""

    settings: Settings
    db: Db
    scope: Scope
    events: int
    oldest: datetime
    newest: datetime
    now: datetime


def load_settings() -> Settings:
    """The settings, or an error on the page and a stop (bad config or rules path)."""
    try:
        return Settings.from_env()
    except ConfigError as err:
        st.error(f"The dashboard's configuration is not valid: {err}")
        st.stop()
        raise  # st.stop raises; this is for the type checker


def _state(name: str, default: object) -> object:
    return st.session_state.get(KEYS[name], default)


def _filter_options(settings: Settings) -> dict[str, list[str]]:
    """The filters' choices; records whether the archive had events (`_sidebar_saw_events`)."""
    st.session_state["_sidebar_saw_events"] = False
    key = source_key(settings.archive)
    if key is None:
        return {kind: [] for _, _, kind in _FILTERS}
    try:
        db = Db(key)
        st.session_state["_sidebar_saw_events"] = bool(queries.archive_facts(db).get("events"))
        return queries.filter_options(db)
    except (TurnoutError, duckdb.Error):
        return {kind: [] for _, _, kind in _FILTERS}


def sidebar(settings: Settings) -> None:
    """The shared controls; their values live in st.session_state (KEYS)."""
    with st.sidebar:
        st.selectbox(
            "Time range",
            list(RANGES),
            index=list(RANGES).index(_DEFAULT_RANGE),
            key=KEYS["range"],
        )
        st.radio(
            "Window ends at",
            ANCHORS,
            format_func=_ANCHOR_LABELS.__getitem__,
            key=KEYS["anchor"],
            horizontal=True,
            help="The newest event in the archive (an old or replayed archive still shows "
            "data), or the current time.",
        )
        st.selectbox(
            "Auto-refresh",
            list(REFRESH),
            index=list(REFRESH).index(_DEFAULT_REFRESH),
            key=KEYS["refresh"],
        )
        options = _filter_options(settings)
        for name, label, kind in _FILTERS:
            chosen = list(st.session_state.get(KEYS[name], []))
            st.multiselect(
                label,
                sorted(set(options[kind]) | set(chosen)),
                key=KEYS[name],
                placeholder="all",
            )
        st.caption(f"Archive: `{settings.archive}`")


def _now() -> datetime:
    return datetime.fromtimestamp(clock.now_ms() / 1000, UTC)


def _empty(settings: Settings, message: str) -> None:
    st.info(message, icon=":material/hourglass_empty:")
    st.caption(f"Archive: `{settings.archive}` (set with `--duckdb` or `TURNOUT_DUCKDB_PATH`)")


def _context(settings: Settings) -> Context | None:
    """The page's context, or None after drawing an empty state."""
    key = source_key(settings.archive)
    if key is None:
        _empty(
            settings,
            "No archive yet: start `turnout sink` (it creates the archive and "
            "stores every event); this page fills in by itself.",
        )
        return None
    db = Db(key)
    facts = queries.archive_facts(db)
    if not facts.get("events"):
        _empty(
            settings,
            "No events yet: start `turnout sink` and send a request "
            '(`turnout submit "Hello"`); this page fills in by itself.',
        )
        return None
    if not st.session_state.get("_sidebar_saw_events", True):
        st.rerun()  # events arrived after the sidebar was drawn: fill in its filters
    now = _now()
    oldest, newest = facts["oldest"].to_pydatetime(), facts["newest"].to_pydatetime()
    w = window(
        RANGES[str(_state("range", _DEFAULT_RANGE))],
        oldest=oldest,
        newest=newest,
        now=now,
        anchor=str(_state("anchor", "newest")),
    )
    scope = make_scope(
        w,
        tenants=_chosen("tenants"),
        task_types=_chosen("task_types"),
        models=_chosen("models"),
    )
    return Context(settings, db, scope, int(facts["events"]), oldest, newest, now)


def _chosen(name: str) -> list[str]:
    value = _state(name, [])
    return [str(v) for v in value] if isinstance(value, list | tuple) else []


def _describe(ctx: Context, applies: str) -> str:
    w = ctx.scope.window
    anchor = str(_state("anchor", "newest"))
    span = f"{w.start:%Y-%m-%d %H:%M:%S} to {w.end:%H:%M:%S} UTC"
    if w.end.date() != w.start.date():
        span = f"{w.start:%Y-%m-%d %H:%M} to {w.end:%Y-%m-%d %H:%M} UTC"
    text = (
        f"{span} (ends at the {_ANCHOR_LABELS[anchor]}; newest event "
        f"{fmt.ago(ctx.newest, ctx.now)}) · {fmt.count(ctx.events)} events in the archive"
    )
    chosen = [
        f"{label.lower()}: {', '.join(getattr(ctx.scope, name))}"
        for name, label, _ in _FILTERS
        if getattr(ctx.scope, name)
    ]
    if chosen:
        text += " · " + "; ".join(chosen)
    return text + f" · filters here: {applies}"


def _render(ctx: Context, render: Callable[[Context], None], applies: str) -> None:
    st.caption(_describe(ctx, applies))
    if ctx.scope.window.start > ctx.newest:
        st.warning(
            f"Nothing in this window: the newest event is {fmt.ago(ctx.newest, ctx.now)}. "
            "Let the window end at the newest event (sidebar), or check that `turnout sink` runs."
        )
        return
    if ctx.now - ctx.newest > STALE_AFTER:
        st.caption(
            f":orange[The newest event is {fmt.ago(ctx.newest, ctx.now)}: "
            "is `turnout sink` running? (Fine for a replayed or old archive.)]"
        )
    render(ctx)


def run_page(title: str, render: Callable[[Context], None], *, applies: str) -> None:
    """Draw `title`, then `render(ctx)` in a fragment rerun every refresh period."""
    st.title(title)
    settings = load_settings()
    every = REFRESH[str(_state("refresh", _DEFAULT_REFRESH))]

    @st.fragment(run_every=every)
    def body() -> None:
        try:
            ctx = _context(settings)
            if ctx is not None:
                _render(ctx, render, applies)
        except TurnoutError as err:
            st.warning(str(err), icon=":material/lock_clock:")
        except duckdb.Error as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            st.error(f"A query on the archive failed: {first}")

    body()
