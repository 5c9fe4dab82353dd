"""`turnout replay whatif --config NEW.toml`: re-decide a recorded window under NEW.

Reads the log (the archive's snapshot, or `--source kafka`) in log order,
streams it through the engine (`turnout.analytics.whatif.engine`) and prints the
side-by-side table, the changed requests (`--diff`), one request's what-if
trail (`--trail`), or all of it as JSON (`--format json`). Exit codes: 0 done,
1 failed (one line on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from turnout.analytics.archive import open_reader
from turnout.analytics.replay.cli import _gc_paused, _out, _usage, _warn_unreadable, load
from turnout.analytics.replay.source import ArchiveStream, Loaded, Query, Recorded, from_archive
from turnout.analytics.replay.state_at import parse_when
from turnout.analytics.replay.trail import describe
from turnout.analytics.whatif.engine import HORIZON_MS, WhatIf
from turnout.analytics.whatif.outcomes import Assumption, OutcomeModel, UnknownModel, parse_assume
from turnout.analytics.whatif.report import Verdict, render, report_json
from turnout.service.clock import clock
from turnout.service.core import events as ev
from turnout.service.core.config import Config, ConfigError, parse_config
from turnout.service.errors import TurnoutError
from turnout.service.runtime.config import load_config
from turnout.service.wire.cloudevents import format_time

__all__ = ["applied_config", "on_archive", "whatif_main"]

_DIFF_ROWS = 200  # the table lists this many changed requests; JSON lists them all


def applied_config(records: Iterable[Recorded]) -> Config | None:
    """The configuration the recording's routers applied last (None: none recorded, or
    written by a version whose config this one cannot read)."""
    applied = [r.data for r in records if isinstance(r.data, ev.ConfigApplied)]
    if not applied:
        return None
    try:
        return parse_config(applied[-1].config, {})
    except ConfigError:
        return None


def _recorded_config(args: argparse.Namespace, cfg: Config, until: int | None) -> Config | None:
    (loaded,) = load(args, cfg, [Query(types=(ev.ConfigApplied.TYPE,), until_ms=until)])
    return applied_config(loaded.events)


def on_archive(
    path: str | Path, cfg: Config, *, since_ms: int | None, until_ms: int | None,
    tenant: str | None = None, assumptions: Mapping[str, Assumption] | None = None,
) -> tuple[WhatIf, list[Verdict]]:  # fmt: skip
    """A what-if run over the archive at `path` (read-only), and its changed requests in
    arrival order (the dashboard's page). Raises `UnknownModel` like the command."""
    diffs: list[Verdict] = []
    con = open_reader(Path(path))
    try:
        configs = from_archive(con, Query(types=(ev.ConfigApplied.TYPE,), until_ms=until_ms))
        query = Query(until_ms=None if until_ms is None else until_ms + HORIZON_MS)
        with _gc_paused():
            run = WhatIf(
                cfg, iter(ArchiveStream(con, query)), OutcomeModel(assumptions),
                since_ms=since_ms, until_ms=until_ms, tenant=tenant,
                recorded_cfg=applied_config(configs.events), on_verdict=diffs.append,
            )  # fmt: skip
            run.run()
    finally:
        con.close()
    diffs.sort(key=lambda v: (v.time_ms, v.request_id))
    return run, diffs


@contextmanager
def _records(args: argparse.Namespace, cfg: Config, query: Query) -> Iterator[Iterator[Recorded]]:
    if args.source == "kafka":
        (loaded,) = load(args, cfg, [query])
        _warn_unreadable([loaded])
        yield iter(loaded.events)
        return
    con = open_reader(Path(args.duckdb or cfg.duckdb.path))
    try:
        stream = ArchiveStream(con, query)  # with ids: they order decisions
        yield iter(stream)
        _warn_unreadable([Loaded(unreadable=stream.unreadable)])
    finally:
        con.close()


@contextmanager
def _progress() -> Iterator[Callable[[int], None]]:
    err = Console(stderr=True, highlight=False)
    if not err.is_terminal:
        yield lambda n: None
        return
    with err.status("re-deciding") as status:
        yield lambda n: status.update(f"re-deciding: {n:,} requests")


def whatif_main(args: argparse.Namespace) -> int:
    """`turnout replay whatif --config NEW.toml [--from T] [--to T] [--tenant T] [--diff]`."""
    now = clock.now_ms()
    try:
        since = parse_when(args.from_, now_ms=now) if args.from_ else None
        until = parse_when(args.to, now_ms=now) if args.to else None
        assumptions = parse_assume(args.assume or [])
    except ValueError as err:
        return _usage("whatif", str(err))
    if since is not None and until is not None and since > until:
        return _usage("whatif", "--from is after --to")
    cfg = load_config(args.config)
    recorded_cfg = _recorded_config(args, cfg, until)
    # requests of the window may end after it: read a horizon past its end
    query = Query(until_ms=None if until is None else until + HORIZON_MS)
    diffs: list[Verdict] = []
    with _gc_paused(), _records(args, cfg, query) as records, _progress() as show:
        run = WhatIf(
            cfg, records, OutcomeModel(assumptions), since_ms=since, until_ms=until,
            tenant=args.tenant, recorded_cfg=recorded_cfg, trail=args.trail,
            on_verdict=diffs.append if (args.diff or args.format == "json") else None,
            progress=show,
        )  # fmt: skip
        try:
            stats = run.run()
        except UnknownModel as err:
            raise TurnoutError(
                f"the new config calls {err}, which the recording never called: say how it "
                f"behaves with --assume {err}=latency_ms:P50,P99,ERROR_RATE "
                f"(e.g. --assume {err}=latency_ms:800,2500,0.01)"
            ) from None
    diffs.sort(key=lambda v: (v.time_ms, v.request_id))
    if stats.requests == 0:
        raise TurnoutError("no requests arrived in the window: check --from/--to (and --tenant)")
    if args.trail and not run.trail and not run.trail_recorded:
        who = f" of tenant {args.tenant}" if args.tenant else ""
        raise TurnoutError(
            f"request {args.trail} did not arrive in the window{who}: check the id and "
            "--from/--to (`turnout replay trail ID` shows a request's recorded events)"
        )
    for model in sorted(set(assumptions) & run.outcomes.recorded_models):
        print(f"turnout: warning: --assume {model}: the recording has calls of {model}; "
              "what-if draws from them, and uses the assumption only where none is "
              f"within {HORIZON_MS // 60_000} minutes", file=sys.stderr)  # fmt: skip
    if recorded_cfg is None:
        print("turnout: warning: the recording has no turnout.config.applied: the config in "
              "force is unknown", file=sys.stderr)  # fmt: skip
    if not run.rec.prices:
        print("turnout: warning: the recording has no turnout.prices.updated (recorded by an "
              "older Turnout): reservations use each tenant's default price, so budget "
              "decisions may differ from the recorded ones", file=sys.stderr)  # fmt: skip
    first, last = stats.first_ms or 0, stats.last_ms or 0
    window = {"from": format_time(first), "to": format_time(last), "tenant": args.tenant}
    if args.format == "json":
        doc = report_json(
            requests=stats.requests, changed=stats.changed, recorded=run.recorded,
            whatif=run.whatif, calls_recorded=stats.calls_recorded,
            calls_modelled=stats.calls_modelled, diff=diffs if args.diff else None, window=window,
        )  # fmt: skip
        sys.stdout.write(doc.decode() + "\n")
        return 0
    out = _out()
    who = f" of tenant {args.tenant}" if args.tenant else ""
    out.print(
        f"[bold]What-if[/bold] {args.config}: {stats.requests:,} requests{who} arrived between "
        f"{format_time(first)} and {format_time(last)}; {stats.changed:,} changed "
        f"(outcome, model, attempts or cost)"
    )
    out.print(render(run.recorded, run.whatif))
    out.print(
        f"upstream outcomes: {stats.calls_recorded:,} recorded, {stats.calls_modelled:,} "
        f"modelled; {stats.replayed:,} request(s) kept as recorded; "
        f"{stats.events_read:,} events read",
        style="dim",
    )
    if args.diff:
        out.print(_diff_table(diffs))
    if args.trail:
        out.print(_trail_table(args.trail, run.trail, run.trail_recorded))
    return 0


def _diff_table(diffs: list[Verdict]) -> Table:
    t = Table(title=f"Changed requests ({len(diffs):,})", title_justify="left")
    for col in ("request", "tenant", "recorded", "what-if", "why"):
        t.add_column(col)
    for v in diffs[:_DIFF_ROWS]:
        r, w = v.side("recorded"), v.side("whatif")
        t.add_row(v.request_id, v.tenant, _side(r), _side(w), v.reason)
    if len(diffs) > _DIFF_ROWS:
        t.caption = f"first {_DIFF_ROWS} shown; --format json lists all"
    return t


def _side(s: dict[str, object]) -> str:
    model = f" {s['model']}" if s["model"] else ""
    return f"{s['outcome']}{model} x{s['attempts']} ${s['cost_usd']:.6f}"


def _trail_table(
    rid: str, whatif: list[tuple[int, object]], recorded: list[tuple[int, object]]
) -> Table:
    t = Table(title=f"Request {rid}: recorded, then what-if", title_justify="left")
    for col in ("side", "+ms", "event", "model", "detail"):
        t.add_column(col)
    for side, trail in (("recorded", recorded), ("what-if", whatif)):
        start = trail[0][0] if trail else 0
        for time_ms, event in trail:
            kind = getattr(event, "TYPE", type(event).__name__).removeprefix("turnout.")
            model, words = describe(event)
            t.add_row(side, f"{time_ms - start:,}", kind, model or "", words)
    if not whatif and not recorded:
        t.caption = "no such request in the window"
    return t
