"""The `turnout replay` handlers: read the log, call the pure parts, print.

Each handler loads the configuration (`--config`), reads what it needs from
the archive's published snapshot (`--duckdb`, default `[duckdb] path`) or,
with `--source kafka`, from the events topic itself, and prints a rich table
(or JSON with `--format json`). Exit codes: 0 done, 1 failed (one line on
stderr: `TurnoutError`), 2 bad usage (a TIME that cannot be read).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from turnout.analytics.archive import open_reader
from turnout.analytics.replay.redrive import NO_PROMPT, Redrive, encode_body, plan
from turnout.analytics.replay.snapshot_check import check_snapshots
from turnout.analytics.replay.source import (
    BREAKER_TYPES,
    ArchiveStream,
    Loaded,
    Query,
    Recorded,
    from_archive,
    from_kafka,
)
from turnout.analytics.replay.state_at import (
    Folded,
    config_warnings,
    fold_until,
    parse_when,
    plain,
    render_snapshot,
)
from turnout.analytics.replay.trail import steps, trail_json, trail_table
from turnout.analytics.replay.verify import (
    Difference,
    LiveState,
    comparable,
    diff,
    diff_table,
    fold_config,
    parse_live,
)
from turnout.service.clock import clock
from turnout.service.core import events as ev
from turnout.service.core.config import Config
from turnout.service.core.providers import provider_of
from turnout.service.core.state import RouterState
from turnout.service.errors import TurnoutError
from turnout.service.health import finished_outcomes
from turnout.service.kafka.errors import quiet_client_logs
from turnout.service.kafka.producer import OutRecord, Producer
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.kafka.topics import TOPIC_SPECS, ensure_topic, existing_topics
from turnout.service.runtime.config import load_config
from turnout.service.wire.cloudevents import format_time

__all__ = ["redrive_main", "state_main", "trail_main", "verify_main"]

_KAFKA_TIMEOUT_S = 300.0


def _out() -> Console:
    """stdout; piped, lines are not wrapped (unless COLUMNS says how wide to be)."""
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=10_000 if wide else None, highlight=False)


def _usage(command: str, message: str) -> int:
    print(f"turnout replay {command}: error: {message}", file=sys.stderr)
    return 2


def _settings(cfg: Config) -> KafkaSettings:
    return KafkaSettings.from_config(
        cfg.kafka, topics=cfg.topics, client_id=f"turnout-replay-{clock.new_id()}"
    )


def _where(args: argparse.Namespace, cfg: Config) -> str:
    if args.source == "kafka":
        return f"topic {_settings(cfg).topics.events}"
    return f"archive {args.duckdb or cfg.duckdb.path}"


@contextmanager
def _progress(what: str) -> Iterator[Callable[[int], None]]:
    """A status line on stderr (on a terminal only) that says how far `what` got."""
    err = Console(stderr=True, highlight=False)
    if not err.is_terminal:
        yield lambda n: None
        return
    with err.status(what) as status:
        yield lambda n: status.update(f"{what}: {n:,} events")


def _counted(events: Iterable[Recorded], show: Callable[[int], None]) -> Iterator[Recorded]:
    for n, rec in enumerate(events, 1):
        if n % 50_000 == 0:
            show(n)
        yield rec


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic GC off while a million events are decoded and folded: they make no
    cycles, and collections triggered by allocation counts doubled the time to read them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load(args: argparse.Namespace, cfg: Config, queries: Sequence[Query]) -> list[Loaded]:
    """Answer each query from the archive, or (`--source kafka`) one read of the topic."""
    if args.source == "kafka":
        return _from_topic(_settings(cfg), queries)
    con = open_reader(Path(args.duckdb or cfg.duckdb.path))
    try:
        return [from_archive(con, q) for q in queries]
    finally:
        con.close()


def folds(
    args: argparse.Namespace,
    cfg: Config,
    queries: Sequence[Query],
    until_ms: int | None = None,
    *,
    fold_cfgs: Sequence[Config] | None = None,
) -> list[Folded]:
    """The state each query's events fold to, with `fold_cfgs` (default: `cfg` for each).

    Archived events are streamed from DuckDB into the fold, never all held at once."""
    configs = list(fold_cfgs or [cfg] * len(queries))
    with _gc_paused():
        if args.source == "kafka":
            loaded = _from_topic(_settings(cfg), queries)
            _warn_unreadable(loaded)
            return [fold_until(x.events, c, until_ms) for x, c in zip(loaded, configs, strict=True)]
        con = open_reader(Path(args.duckdb or cfg.duckdb.path))
        try:
            out = []
            for query, fold_cfg in zip(queries, configs, strict=True):
                stream = ArchiveStream(con, query, attributes=False)
                with _progress("folding the archive") as show:
                    out.append(fold_until(_counted(stream, show), fold_cfg, until_ms))
                _warn_unreadable([Loaded(unreadable=stream.unreadable)])
            return out
        finally:
            con.close()


def _from_topic(settings: KafkaSettings, queries: Sequence[Query]) -> list[Loaded]:
    quiet_client_logs()
    with _progress(f"reading {settings.topics.events}") as show:
        try:
            return asyncio.run(
                from_kafka(
                    settings, queries, instance=f"replay-{clock.new_id()[-12:]}",
                    new_id=clock.new_id, now_ms=clock.now_ms, progress=show,
                    timeout_s=_KAFKA_TIMEOUT_S,
                )
            )  # fmt: skip
        except TimeoutError:
            raise TurnoutError(
                f"the replay's markers did not come back on {settings.topics.events} within "
                f"{_KAFKA_TIMEOUT_S:g} s: is Kafka at {settings.bootstrap} healthy?"
            ) from None


def _warn_unreadable(loaded: Sequence[Loaded]) -> None:
    bad = sum(x.unreadable for x in loaded)
    if bad:
        print(f"turnout: warning: {bad} record(s) could not be decoded and were skipped "
              "(the archive keeps them in sink_errors)", file=sys.stderr)  # fmt: skip


# --- trail ------------------------------------------------------------------


def trail_main(args: argparse.Namespace) -> int:
    """`turnout replay trail REQUEST_ID`."""
    cfg = load_config(args.config)
    rid = args.request_id
    if args.source == "kafka":
        request, breakers = load(args, cfg, [Query(request_id=rid), Query(types=BREAKER_TYPES)])
    else:
        (request,) = load(args, cfg, [Query(request_id=rid)])
        times = [r.time_ms for r in request.events] or [0]
        span = Query(types=BREAKER_TYPES, since_ms=min(times), until_ms=max(times))
        (breakers,) = load(args, cfg, [span]) if request.events else (Loaded(),)
    _warn_unreadable([request, breakers])
    trail = steps(request.events, breakers.events)
    if not trail:
        raise TurnoutError(
            f"no events for request {rid} in the {_where(args, cfg)}: check the id "
            '(`turnout sql "select request_id from requests order by started_at desc '
            'limit 10"`); events reach the archive about a second after they happen'
        )
    if args.format == "json":
        sys.stdout.write(trail_json(trail).decode() + "\n")
        return 0
    out = _out()
    out.print(trail_table(rid, trail))
    own = [s for s in trail if not s.system]
    out.print(
        f"{len(own)} events of the request over {own[-1].offset_ms - own[0].offset_ms:,} ms, "
        f"and {len(trail) - len(own)} global; last: {own[-1].rec.type.removeprefix('turnout.')}",
        style="dim",
    )
    return 0


# --- state --at -------------------------------------------------------------


def state_main(args: argparse.Namespace) -> int:
    """`turnout replay state --at TIME`."""
    try:
        at = parse_when(args.at, now_ms=clock.now_ms())
    except ValueError as err:
        return _usage("state", f"--at: {err}")
    cfg = load_config(args.config)
    (folded,) = folds(args, cfg, [Query(until_ms=at)], at)
    for line in config_warnings(folded.configs, cfg):
        print(f"turnout: warning: {line}", file=sys.stderr)
    snapshot = folded.state.snapshot()
    if cfg.providers:  # which provider serves each model the state knows (by this config)
        breakers, latency = snapshot["breakers"], snapshot["latency"]
        assert isinstance(breakers, dict) and isinstance(latency, dict)
        known = sorted({*breakers, *latency})
        snapshot["providers"] = {m: provider_of(cfg, m) for m in known}
    if args.format == "json":
        doc = {"at": format_time(at), "events": folded.events, "state": plain(snapshot)}
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
        return 0
    out = _out()
    last = f", the last at {format_time(folded.last_ms)}" if folded.last_ms is not None else ""
    out.print(
        f"[bold]Router state at {format_time(at)}[/bold]: {folded.events:,} events folded"
        f"{last} ({_where(args, cfg)})"
    )
    out.print(render_snapshot(snapshot))
    return 0


# --- verify -----------------------------------------------------------------


def _fetch_state(url: str) -> bytes:
    import httpx

    target = url.rstrip("/")
    target = target if target.endswith("/state") else f"{target}/state"
    try:
        response = httpx.get(target, timeout=30)
    except httpx.HTTPError as err:
        raise TurnoutError(
            f"cannot reach the router at {target}: {err or type(err).__name__}; is it running "
            "with --health-port, and is the URL right (--health URL)?"
        ) from None
    if response.status_code == 404:
        raise TurnoutError(f"{target} answered 404: is that a Turnout router's health port?")
    return response.content


def _live_states(args: argparse.Namespace) -> list[LiveState]:
    try:
        if args.snapshot is not None:
            try:
                body = Path(args.snapshot).read_bytes()
            except OSError as err:
                raise TurnoutError(f"cannot read {args.snapshot}: {err.strerror}") from None
            return [parse_live(body, args.snapshot)]
        return [parse_live(_fetch_state(url), url) for url in args.health or [_DEFAULT_HEALTH]]
    except ValueError as err:
        raise TurnoutError(str(err)) from None


_DEFAULT_HEALTH = "http://127.0.0.1:8080"


def _ranges(numbers: Sequence[int]) -> str:
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ",".join(out)


def _compare(state: RouterState, live: LiveState) -> list[Difference]:
    outcomes = finished_outcomes(state) if live.finished_outcomes is not None else None
    return diff(
        comparable(state.snapshot(), outcomes), comparable(live.state, live.finished_outcomes)
    )


def verify_main(args: argparse.Namespace) -> int:
    """`turnout replay verify [--health URL ... | --snapshot FILE | --snapshots]`."""
    cfg = load_config(args.config)
    if getattr(args, "snapshots", False):
        return _verify_snapshots(cfg)
    lives = _live_states(args)
    queries = [Query(partitions=tuple({*x.partitions, x.system_partition})) for x in lives]
    try:
        fold_cfgs = [fold_config(live, cfg) for live in lives]
    except ValueError as err:
        raise TurnoutError(str(err)) from None
    rebuilt = folds(args, cfg, queries, fold_cfgs=fold_cfgs)
    later = lives if args.snapshot is not None else _live_states(args)
    out, failed = _out(), 0
    for live, again, folded in zip(lives, later, rebuilt, strict=True):
        who = f"router {live.instance} ({live.origin}, partitions {_ranges(live.partitions)})"
        differences = _compare(folded.state, live)
        if differences:
            failed += 1
            out.print(diff_table(differences, title=f"{who}: the log rebuilds another state"))
            moved = diff(
                comparable(live.state, live.finished_outcomes),
                comparable(again.state, again.finished_outcomes),
            )
            if args.snapshot is not None:
                why = "The log does not rebuild the saved state."
            elif moved:
                why = "The router's state changed while this ran: it is busy; run again when idle."
            elif args.source == "kafka":
                why = "Read from the topic itself: the router's state is not the fold of its log."
            else:
                why = (
                    "The archive lags the log by about a second: if the router was busy just "
                    "now, run again (or use --source kafka)."
                )
            out.print(f"{len(differences)} difference(s) over {folded.events:,} events. {why}")
            continue
        snap = comparable(folded.state.snapshot())
        parts = sorted(snap) + (["finished_outcomes"] if live.finished_outcomes is not None else [])
        out.print(
            f"[green]OK[/green] {who}: the log rebuilds its state exactly from "
            f"{folded.events:,} events ({_where(args, cfg)}): "
            f"{len(snap.get('breakers', {}))} breaker(s), "
            f"{snap.get('finished', 0)} finished, {len(snap.get('inflight', []))} in flight; "
            f"compared: {', '.join(parts)}"
        )
    if failed:
        raise TurnoutError(f"{failed} of {len(lives)} router state(s) differ from the log")
    return 0


def _verify_snapshots(cfg: Config) -> int:
    """Every stored snapshot against the fold of the events it covers (topic only)."""
    settings = _settings(cfg)
    quiet_client_logs()
    with _progress(f"checking {settings.topics.snapshots}") as show:
        checked = asyncio.run(check_snapshots(
            settings, cfg, instance=f"verify-{clock.new_id()[-12:]}", marker_id=clock.new_id(),
            progress=show,
        ))  # fmt: skip
    out = _out()
    if not checked:
        out.print(f"No snapshots in {settings.topics.snapshots}: nothing to check.")
        return 0
    title = f"snapshots in {settings.topics.snapshots}"
    table = Table("partition", "offset", "taken", "writer", "events folded", "result",
                  title=title, title_justify="left")  # fmt: skip
    style = {"ok": "green", "different": "red", "unreadable": "red", "not checkable": "yellow"}
    for c in checked:
        result = f"[{style[c.outcome]}]{c.outcome}[/]" + (f": {c.reason}" if c.reason else "")
        if c.base is not None and c.outcome != "not checkable":
            result += f" (from the snapshot at {c.base:,})"
        table.add_row(str(c.partition), f"{c.offset:,}", format_time(c.taken_at_ms), c.writer,
                      f"{c.events:,}", result)  # fmt: skip
    out.print(table)
    bad = [c for c in checked if c.outcome in ("different", "unreadable")]
    for c in bad:
        if c.differences:
            out.print(diff_table(
                c.differences, title=f"partition {c.partition}, snapshot at offset {c.offset:,}",
                live="stored snapshot",
            ))  # fmt: skip
    ok = sum(c.outcome == "ok" for c in checked)
    out.print(f"{ok} of {len(checked)} snapshot(s) are the fold of the events they cover.")
    if bad:
        raise TurnoutError(
            f"{len(bad)} snapshot(s) differ from the log or cannot be read; a router skips an "
            "unreadable one, but a different one means the state it restores is not the log's"
        )
    return 0


# --- redrive ----------------------------------------------------------------


def redrive_main(args: argparse.Namespace) -> int:
    """`turnout replay redrive --from T --to T [--topic TOPIC] [--tenant T]`."""
    now = clock.now_ms()
    try:
        since, until = parse_when(args.from_, now_ms=now), parse_when(args.to, now_ms=now)
    except ValueError as err:
        return _usage("redrive", str(err))
    if since > until:
        return _usage("redrive", "--from is after --to")
    cfg = load_config(args.config)
    window = f"between {format_time(since)} and {format_time(until)}"
    window += f" for tenant {args.tenant}" if args.tenant else ""
    accepted = Query(
        types=(ev.RequestAccepted.TYPE,), since_ms=since, until_ms=until, tenant=args.tenant
    )
    (loaded,) = load(args, cfg, [accepted])
    todo = plan(loaded.events, new_id=clock.new_id)
    if not todo.found:
        raise TurnoutError(f"no requests were accepted {window} ({_where(args, cfg)})")
    if not todo.redrives:
        raise TurnoutError(
            f"none of the {todo.found} request(s) accepted {window} can be redriven: {NO_PROMPT}"
        )
    settings = _settings(cfg)
    topic = args.topic or settings.topics.requests
    if not args.dry_run:
        asyncio.run(_send(settings, topic, todo.redrives, scratch=args.topic is not None))
    _print_redrives(todo.redrives, topic, dry_run=args.dry_run)
    if todo.without_prompt:
        print(f"turnout: warning: {len(todo.without_prompt)} of {todo.found} request(s) "
              f"could not be redriven: {NO_PROMPT}", file=sys.stderr)  # fmt: skip
    return 0


async def _send(
    settings: KafkaSettings, topic: str, redrives: Sequence[Redrive], *, scratch: bool
) -> None:
    quiet_client_logs()
    if topic not in await existing_topics(settings):
        if not scratch:
            raise TurnoutError(
                f"intake topic {topic} does not exist on {settings.bootstrap}: run "
                "`turnout topics ensure` (or start a router)"
            )
        await ensure_topic(settings, topic, TOPIC_SPECS["requests"])
    records = [OutRecord(topic, encode_body(r.body), key=r.tenant.encode()) for r in redrives]
    async with Producer(settings) as producer:
        await producer.send_batch(records)


def _print_redrives(redrives: Sequence[Redrive], topic: str, *, dry_run: bool) -> None:
    table = Table("original request", "new request", "tenant", "task type", "model")
    for r in redrives:
        table.add_row(r.original_id, r.request_id, r.tenant, r.body["task_type"],
                      r.body.get("model") or "")  # fmt: skip
    out = _out()
    out.print(table)
    verb = "would redrive" if dry_run else "redrove"
    out.print(f"{verb} {len(redrives)} request(s) to {topic}")
