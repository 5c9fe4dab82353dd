"""`turnout alerts` on real parts: a DuckDB archive file written through `Archive`
(readers use its published snapshot), Kafka from the session fixture, and a
webhook receiver (aiohttp) on loopback. Time is real: rules use short `for`
and `every` (fractions of a second) and the test writes events between ticks.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from turnout.analytics.alerts.delivery import WebhookPolicy
from turnout.analytics.alerts.engine import Phase, phase_of
from turnout.analytics.alerts.rules import Rule, load_rules
from turnout.analytics.alerts.runner import AlertRunner, RunnerOptions, open_runner, serve
from turnout.analytics.archive import Archive
from turnout.analytics.rows import EventRow, KafkaPosition, event_row, record_row
from turnout.analytics.synthetic import MODELS, envelopes, story, workload
from turnout.service.clock import clock
from turnout.service.core import events as ev
from turnout.service.kafka.consumer import Reader, topic_partitions
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.wire.cloudevents import Envelope, decode, encode, wrap

REPO = Path(__file__).resolve().parents[2]
ERROR_RATE_SQL = """
SELECT count(*) FILTER (WHERE outcome = 'failed') / count(*) AS value
FROM requests
WHERE finished_at >= now() - INTERVAL 10 MINUTE AND outcome IN ('completed', 'failed')
"""
_SEED = itertools.count(1)


# --- the archive ------------------------------------------------------------------


def rows_of(envs: Sequence[Envelope]) -> list[EventRow]:
    out = []
    for env in envs:
        _, value, _ = encode(env)
        out.append(event_row(env, value, partition=0, offset=next(_SEED)))
    return out


def requests(kind: str, n: int, *, ago_ms: int = 1_000, step_ms: int = 1) -> list[EventRow]:
    """`n` requests of `kind` (see analytics.synthetic), their events `ago_ms` before now."""
    tag = uuid.uuid4().hex[:8]
    stories = [story(kind, f"req-{tag}-{i:04x}", f"t{i % 3}") for i in range(n)]
    return rows_of(
        list(envelopes(stories, t0_ms=clock.now_ms() - ago_ms, step_ms=step_ms, seed=next(_SEED)))
    )


def system_event(event: ev.Event, ago_ms: int = 1_000) -> list[EventRow]:
    time_ms = clock.now_ms() - ago_ms
    env = wrap(event, id=clock.new_id(), time_ms=time_ms, source="turnout/router/test")
    return rows_of([env])


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    with Archive.open(tmp_path / "turnout.duckdb") as a:
        yield a


def store(archive: Archive, rows: Sequence[EventRow]) -> None:
    """What the sink does: load a batch, then publish the readers' snapshot."""
    archive.load_batch(rows)
    archive.publish()


# --- webhook receiver and Kafka -----------------------------------------------------


@dataclass
class Receiver:
    url: str = ""
    posts: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    fail_first: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.attempts += 1
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=503)
        self.posts.append(body)
        return web.json_response({"ok": True})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    hook.url = f"http://{host}:{port}/hook"
    yield hook
    await runner.cleanup()


async def alert_envelopes(settings: KafkaSettings, n: int) -> list[Envelope]:
    """The first `n` records of the events topic, checking no more follow."""
    parts = await topic_partitions(settings, [settings.topics.events])
    async with Reader(settings, parts) as reader:
        records = await reader.read_until(_counter(n), timeout_s=15)
        extra = await reader.getmany(timeout_ms=300)
    assert not any(extra.values()), "more alert events than expected"
    for r in records:
        assert r.key == b"_system"
    return [decode(r.key, r.value, r.headers) for r in records]


def _counter(n: int) -> Callable[[object], bool]:
    seen = itertools.count(1)
    return lambda _record: next(seen) >= n


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 (polls state owned by other code)
            await asyncio.sleep(0.02)


def error_rate(url: str | None, *, for_ms: int = 1_000) -> Rule:
    return Rule(
        name="error_rate", sql=ERROR_RATE_SQL, op=">", threshold=0.05, for_ms=for_ms,
        every_ms=200, severity="critical", webhook=url, description="too many failures",
    )  # fmt: skip


def options(archive: Archive, kafka: KafkaSettings, instance: str = "test") -> RunnerOptions:
    policy = WebhookPolicy(first_delay_s=0.2, max_delay_s=1.0, timeout_s=2.0)
    return RunnerOptions(archive=archive.path, kafka=kafka, instance=instance, webhook=policy)


class Running:
    """A runner's `run` loop as a background task; `stop()` ends it."""

    def __init__(self, runner: AlertRunner) -> None:
        self.runner = runner
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(runner.run(self._stop))

    async def ticks(self, n: int) -> None:
        target = self.runner.ticks + n
        await until(lambda: self.runner.ticks >= target)

    def phase(self, rule: str = "error_rate") -> Phase:
        return phase_of(self.runner.state, rule, ())

    async def stop(self) -> None:
        self._stop.set()
        await self._task


# --- the tests -------------------------------------------------------------------------


async def test_error_rate_ok_pending_fires_once_resolves_once(
    archive: Archive, kafka_topics: Topics, kafka_settings: KafkaSettings, receiver: Receiver
) -> None:
    store(archive, requests("ok", 40))
    async with open_runner([error_rate(receiver.url)], options(archive, kafka_settings)) as r:
        run = Running(r)
        await run.ticks(3)
        assert run.phase() == Phase.OK and receiver.posts == []

        store(archive, requests("failed", 10))  # 10 / 50 = 20 %
        await until(lambda: run.phase() == Phase.PENDING)
        assert receiver.posts == []
        await until(lambda: len(receiver.posts) == 1)
        await run.ticks(4)  # still firing: no second POST
        assert run.phase() == Phase.FIRING and len(receiver.posts) == 1

        store(archive, requests("ok", 300))  # 10 / 350 < 5 %
        await until(lambda: len(receiver.posts) == 2)
        await run.ticks(3)
        await run.stop()
    assert len(receiver.posts) == 2

    fired, resolved = receiver.posts
    assert fired["status"] == "firing" and resolved["status"] == "resolved"
    assert fired["text"].startswith("[FIRING] error_rate (critical): value 0.2")
    assert {k: fired[k] for k in ("rule", "severity", "labels", "op", "threshold", "value")} == {
        "rule": "error_rate", "severity": "critical", "labels": {}, "op": ">",
        "threshold": 0.05, "value": 0.2,
    }  # fmt: skip
    assert resolved["value"] == pytest.approx(10 / 350)
    assert fired["time_ms"] - 1_000 >= _ms(fired["pending_since"])  # held for `for`
    assert resolved["fired_at"] == fired["time"]

    envs = await alert_envelopes(kafka_settings, 2)
    assert [e.type for e in envs] == ["turnout.alert.fired", "turnout.alert.resolved"]
    assert [e.id for e in envs] == [fired["event_id"], resolved["event_id"]]
    assert all(e.source == "turnout/alerts/test" and e.tenant == "_system" for e in envs)
    assert isinstance(envs[1].data, ev.AlertResolved)
    assert envs[1].data.fired_at_ms == envs[0].time_ms


def _ms(rfc3339: str) -> int:
    from turnout.service.wire.cloudevents import parse_time

    return parse_time(rfc3339)


async def test_state_survives_a_restart_by_folding_archived_alert_events(
    archive: Archive, kafka_topics: Topics, kafka_settings: KafkaSettings, receiver: Receiver
) -> None:
    rule = error_rate(receiver.url, for_ms=200)
    store(archive, requests("failed", 20))
    async with open_runner([rule], options(archive, kafka_settings, "first")) as r:
        run = Running(r)
        await until(lambda: len(receiver.posts) == 1)
        await run.stop()
    await archive_alert_events(archive, kafka_settings, 1)

    async with open_runner([rule], options(archive, kafka_settings, "second")) as r:
        run = Running(r)
        await run.ticks(5)  # the condition still holds: no new fire after the restart
        assert r.restored and run.phase() == Phase.FIRING and len(receiver.posts) == 1
        store(archive, requests("ok", 500))
        await until(lambda: len(receiver.posts) == 2)
        await run.stop()

    envs = await alert_envelopes(kafka_settings, 2)
    assert [(e.type, e.source) for e in envs] == [
        ("turnout.alert.fired", "turnout/alerts/first"),
        ("turnout.alert.resolved", "turnout/alerts/second"),
    ]
    assert isinstance(envs[1].data, ev.AlertResolved)
    assert envs[1].data.fired_at_ms == envs[0].time_ms


async def archive_alert_events(archive: Archive, settings: KafkaSettings, n: int) -> None:
    """What the sink does with the runner's events: read them from Kafka, store them."""
    parts = await topic_partitions(settings, [settings.topics.events])
    async with Reader(settings, parts) as reader:
        records = await reader.read_until(_counter(n), timeout_s=15)
    rows = []
    for rec in records:
        pos = KafkaPosition(rec.topic, rec.partition, rec.offset, rec.timestamp)
        row = record_row(rec.key, rec.value, rec.headers, pos)
        assert isinstance(row, EventRow)
        rows.append(row)
    store(archive, rows)


async def test_a_failing_rule_logs_one_line_per_period_and_others_go_on(
    archive: Archive,
    kafka_topics: Topics,
    kafka_settings: KafkaSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store(archive, requests("ok", 5))
    good = Rule(name="always", sql="SELECT 1 AS value", op=">", threshold=0, for_ms=0,
                every_ms=100, severity="info")  # fmt: skip
    bad = Rule(name="broken", sql="SELECT value FROM no_such_view", op=">", threshold=0,
               for_ms=0, every_ms=100, severity="info")  # fmt: skip
    caplog.set_level(logging.WARNING, logger="turnout.alerts")
    async with open_runner([good, bad], options(archive, kafka_settings)) as r:
        run = Running(r)
        await run.ticks(5)
        await run.stop()
    lines = [rec.getMessage() for rec in caplog.records if "broken" in rec.getMessage()]
    assert len(lines) == r.ticks and all("\n" not in line for line in lines)
    assert "no_such_view" in lines[0] and "retrying next period" in lines[0]
    assert run.phase("always") == Phase.FIRING
    assert [e.type for e in await alert_envelopes(kafka_settings, 1)] == ["turnout.alert.fired"]


async def test_a_failing_webhook_is_retried_in_order_without_blocking_evaluation(
    archive: Archive, kafka_topics: Topics, kafka_settings: KafkaSettings, receiver: Receiver
) -> None:
    receiver.fail_first = 3  # 503 three times: delivered after 0.2 + 0.4 + 0.8 s
    store(archive, requests("failed", 20))
    async with open_runner(
        [error_rate(receiver.url, for_ms=0)], options(archive, kafka_settings)
    ) as r:
        run = Running(r)
        await until(lambda: receiver.attempts == 1)
        started = r.ticks
        store(archive, requests("ok", 1000))  # resolves while the fire is still retrying
        await until(lambda: run.phase() in (Phase.RESOLVED, Phase.OK))
        assert receiver.posts == []
        await until(lambda: len(receiver.posts) == 2)
        assert r.ticks - started >= 5  # evaluation went on during the retries
        await run.stop()
    assert [p["status"] for p in receiver.posts] == ["firing", "resolved"]
    assert receiver.attempts == 5


@pytest.fixture
def busy_archive(archive: Archive) -> Archive:
    """A mixed workload of the last few minutes, plus a stuck request, an open
    breaker, a tenant near its budget and an hour-old cache baseline."""
    now = clock.now_ms()
    stories = workload(900)
    rows = rows_of(list(envelopes(stories, t0_ms=now - 230_000, step_ms=40, seed=next(_SEED))))
    rows += requests("in_flight", 7, ago_ms=600_000)
    rows += requests("cached", 60, ago_ms=1_800_000)
    rows += system_event(ev.BreakerOpened(model=MODELS[2], reason="failures", failures=5,
                                          calls=5, open_until_ms=now + 60_000))  # fmt: skip
    rows += system_event(ev.BudgetExceeded(tenant="t1", period="day", level="soft",
                                           limit_micros=1_000_000, spent_micros=850_000,
                                           reserved_micros=0, requested_micros=1_000))  # fmt: skip
    store(archive, rows)
    return archive


async def test_every_default_rule_runs_against_an_archive(
    busy_archive: Archive, kafka_topics: Topics, kafka_settings: KafkaSettings
) -> None:
    rules = load_rules()
    async with open_runner(rules, options(busy_archive, kafka_settings)) as r:
        rows = await r.evaluate(rules)
    assert [row for row in rows if row.error] == []
    values = {(row.rule, tuple(sorted(row.labels.items()))): row.value for row in rows}
    assert values[("error_rate", (("model", MODELS[0]),))] == 0.0
    assert values[("error_rate", (("model", MODELS[1]),))] == 0.5
    assert values[("latency_p99", (("model", MODELS[0]),))] == pytest.approx(204, abs=1)
    assert values[("breaker_open", (("model", MODELS[2]),))] == 1.0
    assert values[("breaker_open", (("model", MODELS[0]),))] == 0.0
    assert values[("fallback_rate", (("task_type", "general"),))] == pytest.approx(1 / 3)
    assert values[("budget_near_limit", (("period", "day"), ("tenant", "t1")))] == 0.851
    assert values[("cache_hit_ratio_drop", ())] == pytest.approx(0.2)
    assert values[("dlq_rate", ())] == 20.0
    assert values[("stuck_requests", ())] == 7.0
    states = {row.rule: row.state for row in rows}
    assert states["budget_near_limit"] == "firing"  # for = 0
    assert states["stuck_requests"] == "pending"


async def test_once_prints_the_table_and_exits_0(
    busy_archive: Archive, kafka_topics: Topics, kafka_settings: KafkaSettings
) -> None:
    out = io.StringIO()
    code = await serve(load_rules(), options(busy_archive, kafka_settings), once=True, out=out)
    assert code == 0
    table = out.getvalue().splitlines()
    assert table[0].split() == ["RULE", "LABELS", "VALUE", "STATE"]
    assert any(line.split()[:4] == ["stuck_requests", "-", "7", "pending"] for line in table)
    assert any(line.startswith("budget_near_limit") and "firing" in line for line in table)
    envs = await alert_envelopes(kafka_settings, 1)
    assert [(e.type, e.data.rule) for e in envs] == [  # type: ignore[union-attr]
        ("turnout.alert.fired", "budget_near_limit")
    ]


async def test_once_from_the_command_line(
    busy_archive: Archive, kafka_topics: Topics, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nname = "dlq"\nsql = "SELECT count(*) AS value FROM requests '
        'WHERE outcome = \'deadlettered\'"\nop = ">"\nthreshold = 10\nfor = 0\n'
        'every = "1s"\nseverity = "warning"\n'
    )
    env = {
        **os.environ,
        "TURNOUT_KAFKA_BOOTSTRAP": kafka_settings.bootstrap,
        "TURNOUT_KAFKA_TOPIC_PREFIX": kafka_settings.topic_prefix,
    }
    args = ["alerts", "--once", "--rules", str(rules), "--duckdb", str(busy_archive.path)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "turnout", *args, cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines()[1].split() == ["dlq", "-", "100", "firing"]
