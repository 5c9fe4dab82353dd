"""`turnout alerts`: the shell around the alert engine (schedule, query, publish, POST).

Each rule runs on its own `every` period. A tick opens one read-only
connection on the archive's published snapshot (`turnout.analytics.archive.open_reader`,
never the sink's writer), runs the due rules' queries in a worker thread,
feeds the rows to `engine.evaluate` with the tick's wall-clock `now_ms`, and
hands the fired/resolved events to two background senders
(`turnout.analytics.alerts.delivery`):

- Kafka: CloudEvents on `<prefix>.events`, key `_system`, source
  `turnout/alerts/<host>-<pid>`, `ce_time` = the evaluation time. An outbox
  keeps events in order and retries while Kafka is away; evaluation goes on.
- Webhooks: the rule's `webhook` gets a JSON POST per fire and per resolve
  (Slack-compatible `text` plus rule, status, severity, labels, value, op,
  threshold, time, event_id). Failures (connection, timeout, 408/429/5xx) are
  retried with exponential backoff in the background; one alert's POSTs stay
  in order; evaluation never waits for them.

Failures never stop the runner: a rule whose query fails (or returns a shape
the engine cannot read) logs one line and is tried again next period; an
archive that cannot be opened logs one line per tick.

State across restarts: firing episodes are rebuilt on the first tick by
folding the archived alert events (`events` rows of type turnout.alert.*, in
time order, through `engine.evolve`), so a restarted runner neither fires an
alert again nor forgets to resolve it. Pending episodes are not events and
start over. The archive lags the topic by the sink's publish interval (about
a second): an event published just before a crash may not be archived yet,
and that alert may fire once more. Receivers can dedupe on `event_id`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import aiohttp
import duckdb
import msgspec

from turnout.analytics.alerts.delivery import Outbox, WebhookPolicy, Webhooks, webhook_payload
from turnout.analytics.alerts.engine import (
    AlertEvent,
    AlertState,
    Labels,
    Phase,
    Sample,
    evaluate,
    evolve,
    labels_key,
    phase_of,
    to_samples,
)
from turnout.analytics.alerts.rules import Rule, load_rules
from turnout.analytics.archive import open_reader
from turnout.service.clock import Clock, clock
from turnout.service.core.events import AlertFired, AlertResolved
from turnout.service.errors import TurnoutError
from turnout.service.kafka.producer import OutRecord, Producer
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.wire.cloudevents import encode, wrap

__all__ = [
    "AlertRunner",
    "ResultRow",
    "RunnerOptions",
    "cli_main",
    "format_table",
    "next_due",
    "open_runner",
    "serve",
]

log = logging.getLogger("turnout.alerts")

MAX_ROWS: Final = 10_000
"""A rule query returning more label sets than this is refused (a missing GROUP BY)."""


# --- value objects -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerOptions:
    """Where the runner reads and writes, and its timings."""

    archive: Path
    kafka: KafkaSettings
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    webhook: WebhookPolicy = field(default_factory=WebhookPolicy)
    query_timeout_s: float = 30.0
    drain_timeout_s: float = 10.0

    @property
    def source(self) -> str:
        return f"turnout/alerts/{self.instance}"


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One line of an evaluation: a rule's label set, its value and phase (or the error)."""

    rule: str
    labels: Mapping[str, str]
    value: float | None
    state: str
    error: str | None = None


# --- pure helpers ------------------------------------------------------------


def next_due(previous: float, every_s: float, now: float) -> float:
    """The next evaluation time: one period after the last, or after `now` if that passed."""
    due = previous + every_s
    return due if due > now else now + every_s


def format_table(rows: Sequence[ResultRow]) -> str:
    """A plain-text table: rule, labels, value, state (errors in the state column)."""
    header = ("RULE", "LABELS", "VALUE", "STATE")
    body = [
        (
            r.rule,
            " ".join(f"{k}={v}" for k, v in sorted(r.labels.items())) or "-",
            "-" if r.value is None else f"{r.value:.6g}",
            f"error: {r.error}" if r.error else r.state,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(3)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(line[:3], widths, strict=True)), line[3]])
        for line in (header, *body)
    )


# --- archive (runs in a worker thread) ---------------------------------------

_RESTORE_SQL: Final = """
    SELECT epoch_ms(time), type, CAST(data AS VARCHAR) FROM events
    WHERE type IN ('turnout.alert.fired', 'turnout.alert.resolved')
    ORDER BY time, id
"""
_DECODERS: Final[Mapping[str, msgspec.json.Decoder[AlertEvent]]] = {
    AlertFired.TYPE: msgspec.json.Decoder(AlertFired),
    AlertResolved.TYPE: msgspec.json.Decoder(AlertResolved),
}

QueryResult = list[Sample] | str
"""A rule query's samples, or the one-line reason it failed."""


@dataclass(slots=True)
class _Reading:
    results: dict[str, QueryResult]
    restored: AlertState | None = None


def _read_archive(
    path: Path, rules: Sequence[Rule], *, restore: bool, timeout_s: float
) -> _Reading:
    """Open the snapshot read-only, rebuild state if asked, run every rule's query."""
    con = open_reader(path)
    try:
        reading = _Reading({r.name: _run_query(con, r, timeout_s) for r in rules})
        if restore:
            reading.restored = _restore(con)
        return reading
    finally:
        con.close()


def _run_query(con: duckdb.DuckDBPyConnection, rule: Rule, timeout_s: float) -> QueryResult:
    try:
        with _interrupt_after(con, timeout_s):
            cursor = con.execute(rule.sql)
            columns = [d[0] for d in cursor.description or ()]
            rows = cursor.fetchmany(MAX_ROWS + 1)
        if len(rows) > MAX_ROWS:
            return f"returns more than {MAX_ROWS} rows: group by fewer label columns"
        return to_samples(columns, rows)
    except duckdb.InterruptException:
        return f"did not finish within {timeout_s:g} s"
    except (duckdb.Error, ValueError) as err:
        return _one_line(err)


@contextmanager
def _interrupt_after(con: duckdb.DuckDBPyConnection, seconds: float) -> Iterator[None]:
    timer = threading.Timer(seconds, con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _restore(con: duckdb.DuckDBPyConnection) -> AlertState:
    state: AlertState = {}
    try:
        rows = con.execute(_RESTORE_SQL).fetchall()
    except duckdb.Error as err:
        log.warning("cannot rebuild alert state from the archive: %s", _one_line(err))
        return state
    for time_ms, type_, data in rows:
        try:
            event = _DECODERS[type_].decode(data)
        except msgspec.DecodeError:
            continue  # an unreadable archived event cannot be folded: skip it
        state = evolve(state, event, int(time_ms))
    return state


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


# --- the runner --------------------------------------------------------------


class AlertRunner:
    """Evaluates rules against the archive and sends what the engine emits."""

    def __init__(
        self,
        rules: Sequence[Rule],
        options: RunnerOptions,
        *,
        outbox: Outbox,
        webhooks: Webhooks,
        clock: Clock = clock,
    ) -> None:
        self.rules = {r.name: r for r in rules}
        self.options = options
        self.state: AlertState = {}
        self.restored = False
        self.ticks = 0
        """Evaluations run so far (each reads the archive once for the rules due)."""
        self._outbox = outbox
        self._webhooks = webhooks
        self._clock = clock

    async def evaluate(self, rules: Sequence[Rule]) -> list[ResultRow]:
        """One tick for `rules`; raises TurnoutError only if the archive cannot be opened."""
        now_ms = self._clock.now_ms()
        reading = await asyncio.to_thread(
            _read_archive, self.options.archive, rules,
            restore=not self.restored, timeout_s=self.options.query_timeout_s,
        )  # fmt: skip
        self.ticks += 1
        if reading.restored is not None:
            self._adopt(reading.restored)
        rows: list[ResultRow] = []
        for rule in rules:
            rows += self._apply(rule, reading.results[rule.name], now_ms)
        return rows

    def _adopt(self, restored: AlertState) -> None:
        for name in restored.keys() - self.rules.keys():
            log.warning("rule %s is firing in the archive but no longer defined: ignored", name)
        self.state = {k: v for k, v in restored.items() if k in self.rules}
        self.restored = True
        firing = sum(len(v) for v in self.state.values())
        log.info("rebuilt alert state from the archive: %d alert(s) firing", firing)

    def _apply(self, rule: Rule, result: QueryResult, now_ms: int) -> list[ResultRow]:
        if isinstance(result, str):
            log.warning("rule %s failed, retrying next period: %s", rule.name, result)
            return [ResultRow(rule.name, {}, None, "error", result)]
        before = self.state.get(rule.name, {})
        self.state, events = evaluate(self.state, rule, result, now_ms)
        self._send(rule, events, now_ms)
        return _rows(rule, result, before, self.state)

    def _send(self, rule: Rule, events: Sequence[AlertEvent], now_ms: int) -> None:
        records = []
        for event in events:
            env = wrap(event, id=self._clock.new_id(), time_ms=now_ms, source=self.options.source)
            key, value, headers = encode(env)
            records.append(OutRecord(self.options.kafka.topics.events, value, key, headers))
            _log_event(event)
            if rule.webhook:
                payload = webhook_payload(event, rule, time_ms=now_ms, event_id=env.id)
                self._webhooks.post(
                    rule.webhook, payload, key=(rule.name, labels_key(event.labels))
                )
        self._outbox.put(records)

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate each rule every `every` until `stop` is set."""
        loop = asyncio.get_running_loop()
        due = dict.fromkeys(self.rules, loop.time())
        while not stop.is_set():
            now = loop.time()
            ready = [r for name, r in self.rules.items() if due[name] <= now]
            if ready:
                await self._tick(ready)
                for r in ready:
                    due[r.name] = next_due(due[r.name], r.every_ms / 1000, loop.time())
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, min(due.values()) - loop.time()))

    async def _tick(self, rules: Sequence[Rule]) -> None:
        try:
            await self.evaluate(rules)
        except TurnoutError as err:
            log.warning("archive unavailable, retrying next period: %s", err)


def _rows(
    rule: Rule, samples: Sequence[Sample], before: Mapping[Labels, Any], state: AlertState
) -> list[ResultRow]:
    rows = [
        ResultRow(rule.name, dict(labels), value, phase_of(state, rule.name, labels_key(labels)))
        for labels, value in samples
    ]
    seen = {labels_key(labels) for labels, _ in samples}
    rows += [
        ResultRow(rule.name, dict(k), None, phase_of(state, rule.name, k))
        for k in before
        if k not in seen
    ]
    return rows or [ResultRow(rule.name, {}, None, Phase.OK)]


def _log_event(event: AlertEvent) -> None:
    what = "fired" if isinstance(event, AlertFired) else "resolved"
    labels = " ".join(f"{k}={v}" for k, v in sorted(event.labels.items()))
    log.info("%s %s %s value=%g", what, event.rule, labels or "-", event.value)


# --- composition root --------------------------------------------------------


@asynccontextmanager
async def open_runner(rules: Sequence[Rule], options: RunnerOptions) -> AsyncIterator[AlertRunner]:
    """A runner with a started producer, outbox and webhook session; all closed on exit
    (the outbox and webhooks get `drain_timeout_s` to deliver what is queued)."""
    async with AsyncExitStack() as stack:
        producer = Producer(options.kafka)
        await producer.start()
        stack.push_async_callback(producer.stop)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        outbox, webhooks = Outbox(producer), Webhooks(session, options.webhook)
        outbox.start()
        stack.push_async_callback(outbox.close, options.drain_timeout_s)
        stack.push_async_callback(webhooks.close, options.drain_timeout_s)
        yield AlertRunner(rules, options, outbox=outbox, webhooks=webhooks)


async def serve(rules: Sequence[Rule], options: RunnerOptions, *, once: bool, out: TextIO) -> int:
    """Run the alert runner until SIGINT/SIGTERM, or evaluate once and print the table."""
    async with open_runner(rules, options) as runner:
        if once:
            return _report(await runner.evaluate(list(rules)), out)
        async with AsyncExitStack() as signals:
            await runner.run(_stop_on_signals(signals))
    return 0


def _report(rows: Sequence[ResultRow], out: TextIO) -> int:
    print(format_table(rows), file=out, flush=True)
    failed = sorted({r.rule for r in rows if r.error})
    if failed:
        print(f"turnout: error: {len(failed)} rule(s) failed: {', '.join(failed)} "
              "(see the table; fix their SQL)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _stop_on_signals(stack: AsyncExitStack) -> asyncio.Event:
    loop, stop = asyncio.get_running_loop(), asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            stack.callback(loop.remove_signal_handler, sig)
    return stop


def cli_main(args: argparse.Namespace) -> int:
    """`turnout alerts [--rules FILE] [--once] [--duckdb PATH] [--config FILE]`."""
    from turnout.service.kafka.errors import quiet_client_logs
    from turnout.service.runtime.config import load_config

    cfg = load_config(args.config)
    rules = load_rules(args.rules)
    _setup_logging(logging.WARNING if args.once else logging.INFO)
    quiet_client_logs()
    options = RunnerOptions(
        archive=Path(args.duckdb or cfg.duckdb.path),
        kafka=KafkaSettings.from_config(cfg.kafka, topics=cfg.topics, client_id="turnout-alerts"),
    )
    if not args.once:
        log.info("%d rule(s) on %s; publishing to %s", len(rules), options.archive,
                 options.kafka.topics.events)  # fmt: skip
    return asyncio.run(serve(rules, options, once=args.once, out=sys.stdout))


def _setup_logging(level: int) -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s turnout alerts: %(message)s"))
        log.addHandler(handler)
    log.setLevel(level)
