"""The fault-injection suite: requests through routers, the sink and the simulator on Apache
Kafka, with one fault per round (and all of them in the last), then the invariants checked.

    .venv/bin/python -m tests.faults.suite [--requests 10000] [--routers 3] [--rate 250]
        [--rounds router_kill,broker_kill,...|all] [--json FILE]

What runs (every process started here is stopped here): one Apache Kafka broker (its
data in a temporary directory, kept across its own restarts), the simulator in this
process, N routers (`python -m turnout router`) and `turnout sink` as child processes.
Each round gets its own topic prefix and consumer group. This process is the client
(an idempotent producer keyed by tenant, a consumer of the responses) and the
supervisor: a router that exits unexpectedly is started again a second later, as
systemd or Kubernetes would.

Rounds (the fault is injected when a third of the requests are sent):
- router_kill: SIGKILL of a router (started again 2 s later);
- router_restart: SIGTERM of a router, then started again;
- router_join: one more router joins (a rebalance);
- broker_kill: SIGKILL of the broker, started again 2 s later on the same data;
- upstream_storm: for 8 s, 60% of calls answer 503 with Retry-After: 1;
- slow_upstream: for 3 s, calls take 12 s (longer than the 10 s revoke drain), and a
  router joins meanwhile;
- hostile: 2,000 malformed or hostile records among the requests (not JSON, not an
  object, bad schema, illegal, internal and missing `reply_to` topics, huge and odd
  tenants, near the record size limit);
- produce_failures: for 3 s the events topic refuses every batch (max.message.bytes=256):
  routers stop (their state no longer matches the log) and are started again;
- all: every one of the above, one after another, in one round.

Each round prints a table; every cell marked "must be 0" must be 0 (exit 1 otherwise):
- lost: valid requests never answered; answered twice: request ids with more than one
  response; terminal > 1: request ids with more than one terminal event;
- budget overshoot: USD charged over a tenant's daily budget (tenant `capped`, whose
  budget is about half of what its requests would cost);
- rate over limit: windows in which tenant `limited` had more admissions than its burst
  (1 s) or per-minute limit, over the admission times in the log;
- hostile answered != 1: hostile records naming a request id without exactly one answer;
- DLQ without a reason; non-CloudEvents records in the events topic; archive
  missing/duplicated: events not stored exactly once by the sink.
And for information: DLQ records, router restarts, the worst wait of a request sent in
the 5 s after the fault (time to recover), and the outcomes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from rich.console import Console
from rich.table import Table

from turnout.service.core import events as ev
from turnout.service.kafka.apache import ApacheKafkaBroker
from turnout.service.kafka.local import free_port
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.kafka.topics import ensure_topics, existing_topics
from turnout.service.upstream.simulator import SimulatorOptions, parse_scenario, start_in_thread
from turnout.service.upstream.simulator.server import RunningSimulator
from turnout.service.wire import cloudevents as ce

REPO = Path(__file__).resolve().parents[2]
ROUNDS = (
    "router_kill", "router_restart", "router_join", "broker_kill", "upstream_storm",
    "slow_upstream", "hostile", "produce_failures", "all",
)  # fmt: skip
TENANTS = ("t-0", "t-1", "t-2", "t-3", "t-4", "t-5", "limited", "capped")
LIMITED = {"burst": 10, "requests_per_minute": 300}
CAPPED_USD_PER_REQUEST = 0.000015  # about half of what its requests cost on the simulator
BASE_LATENCY = "latency_ms = {median = 30, p99 = 120}\n"
MUST_BE_ZERO = (
    "lost", "answered twice", "terminal > 1", "budget overshoot (USD)", "rate over limit",
    "hostile answered != 1", "DLQ without a reason", "non-CloudEvents in events",
    "archive missing or twice",
)  # fmt: skip
_TERMINALS = {
    ev.RequestCompleted.TYPE, ev.RequestFailed.TYPE, ev.RequestRejected.TYPE,
    ev.RequestDeadlettered.TYPE,
}  # fmt: skip


@dataclass
class Options:
    requests: int = 10_000
    routers: int = 3
    rate: float = 250.0
    rounds: Sequence[str] = ROUNDS
    hostile: int = 2_000
    answer_timeout_s: float = 240.0
    seed: int = 7


@dataclass
class RoundResult:
    name: str
    cells: dict[str, float | int | str] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few ids per failing cell

    @property
    def failures(self) -> list[str]:
        return [k for k in MUST_BE_ZERO if self.cells.get(k, 0) not in (0, 0.0)]


# --------------------------------------------------------------------------- processes


class Cluster:
    """The broker (restartable on the same port and data), the simulator, the routers and
    the sink of one round; the supervisor that starts crashed routers again."""

    def __init__(self, work: Path, broker: ApacheKafkaBroker, sim: RunningSimulator) -> None:
        self.work = work
        self.broker = broker
        self.sim = sim
        self.routers: dict[str, subprocess.Popen[bytes]] = {}
        self.planned_down: set[str] = set()  # stopped on purpose: not restarted by the watch
        self.restarts = 0
        self.sink: subprocess.Popen[bytes] | None = None
        self.settings = KafkaSettings()
        self.config_path = work / "turnout.toml"
        self.capped_usd = 0.0  # tenant `capped`'s daily budget this round

    def new_round(self, name: str, capped_usd: float) -> KafkaSettings:
        tag = uuid.uuid4().hex[:6]
        self.settings = KafkaSettings.from_env().replace(
            bootstrap=self.broker.bootstrap, topic_prefix=f"f{tag}", group_id=f"g{tag}"
        )
        self.config_path = self.work / f"{name}.toml"
        self.capped_usd = capped_usd
        self.config_path.write_text(_config_toml(self.settings, self.sim.base_url, capped_usd))
        self.restarts = 0
        return self.settings

    def env(self) -> dict[str, str]:
        return os.environ | {
            "TURNOUT_KAFKA_BOOTSTRAP": self.broker.bootstrap,
            "TURNOUT_KAFKA_TOPIC_PREFIX": self.settings.topic_prefix,
            "TURNOUT_KAFKA_GROUP_ID": self.settings.group_id,
            "TURNOUT_DUCKDB_PATH": str(self.work / f"{self.settings.topic_prefix}.duckdb"),
        }

    def start_router(self, name: str) -> None:
        log = self.work / f"{self.settings.topic_prefix}-{name}.log"
        with log.open("ab") as err:
            self.routers[name] = subprocess.Popen(
                [sys.executable, "-m", "turnout", "router", "--config", str(self.config_path),
                 "--health-port", "0", "--instance", name],
                cwd=REPO, env=self.env(), stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        self.planned_down.discard(name)

    def router_log(self, name: str) -> Path:
        return self.work / f"{self.settings.topic_prefix}-{name}.log"

    def wait_serving(self, names: Sequence[str], timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        for name in names:
            while "serving partitions" not in self.router_log(name).read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"router {name} never served: see {self.router_log(name)}")
                time.sleep(0.1)

    def start_sink(self) -> None:
        with (self.work / f"{self.settings.topic_prefix}-sink.log").open("ab") as out:
            self.sink = subprocess.Popen(
                [sys.executable, "-m", "turnout", "sink"],
                cwd=REPO, env=self.env(), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def kill_router(self, name: str, sig: int) -> None:
        self.planned_down.add(name)
        proc = self.routers[name]
        proc.send_signal(sig)
        proc.wait(60)

    async def watch(self) -> None:
        """The supervisor: a router that exited without being asked is started again."""
        while True:
            await asyncio.sleep(0.5)
            for name, proc in list(self.routers.items()):
                if proc.poll() is not None and name not in self.planned_down:
                    await asyncio.sleep(1.0)
                    self.restarts += 1
                    self.start_router(name)

    def restart_broker(self, down_s: float = 2.0) -> None:
        port, data = self.broker.port, self.broker.data_dir
        self.broker.kill()
        time.sleep(down_s)
        self.broker = ApacheKafkaBroker(port, data_dir=data)
        self.broker.start()

    def stop_round(self) -> None:
        for name, proc in self.routers.items():
            self.planned_down.add(name)
            if proc.poll() is None:
                proc.terminate()
        for proc in self.routers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
            if proc.poll() is None:
                proc.kill()
        self.routers.clear()
        if self.sink is not None and self.sink.poll() is None:
            self.sink.terminate()
            try:
                self.sink.wait(60)
            except subprocess.TimeoutExpired:
                self.sink.kill()
        self.sink = None


def _config_toml(settings: KafkaSettings, base_url: str, capped_usd: float) -> str:
    limited = "\n".join(f"{k} = {v}" for k, v in LIMITED.items())
    return f"""
[kafka]
bootstrap = "{settings.bootstrap}"
topic_prefix = "{settings.topic_prefix}"
group_id = "{settings.group_id}"

[upstream]
base_url = "{base_url}"
timeout_s = 30

[tenants.default]
requests_per_minute = 1000000
requests_per_hour = 100000000
requests_per_day = 1000000000
burst = 1000000
tokens_per_minute = 1000000000000
budget_usd_per_day = 1000000.0
budget_usd_per_month = 10000000.0

[tenants.limited]
{limited}

[tenants.capped]
budget_usd_per_day = {capped_usd}
"""


# --------------------------------------------------------------------------- traffic


def request(rid: str, tenant: str, i: int) -> bytes:
    body = {"request_id": rid, "tenant": tenant, "max_tokens": 64,
            "messages": [{"role": "user", "content": f"question {rid} #{i}"}]}  # fmt: skip
    return json.dumps(body).encode()


def hostile_records(
    n: int, prefix: str, rng: random.Random
) -> list[tuple[bytes | None, bytes, str | None]]:
    """`n` malformed or hostile records: (key, value, the request id it names or None)."""
    out: list[tuple[bytes | None, bytes, str | None]] = []
    for i in range(n):
        rid = f"evil-{i}"  # never a round name: request ids are <round>-<n>
        ok = {"request_id": rid, "tenant": "t-0", "messages": [{"role": "user", "content": "x"}]}
        kind = i % 10
        if kind == 0:
            out.append((b"t-0", b"\xff\x00 not json " + os.urandom(8), None))
        elif kind == 1:
            out.append((b"t-0", b"[1, 2, 3]", None))
        elif kind == 2:
            out.append((b"t-0", json.dumps({"request_id": rid, "tenant": "t-0"}).encode(), rid))
        elif kind == 3:
            out.append((b"t-0", json.dumps(ok | {"reply_to": "bad topic name!"}).encode(), rid))
        elif kind == 4:
            internal = f"{prefix}.events"
            out.append((b"t-0", json.dumps(ok | {"reply_to": internal}).encode(), rid))
        elif kind == 5:
            out.append((None, json.dumps(ok | {"tenant": "x" * 5000}).encode(), rid))
        elif kind == 6:
            odd = rng.choice(["tenant with spaces", "ünïcödé", "a/b", "", "../etc", "\x00"])
            out.append((None, json.dumps(ok | {"tenant": odd}).encode(), rid))
        elif kind == 7:
            out.append((b"t-0", json.dumps(ok | {"messages": "not a list"}).encode(), rid))
        elif kind == 8:
            out.append((b"t-0", json.dumps(ok | {"max_tokens": -5}).encode(), rid))
        elif i % 20 == 19:  # a legal reply topic that does not exist: once a poison record
            nobody = f"{prefix}.nobody-{i}"
            out.append((b"t-0", json.dumps(ok | {"reply_to": nobody}).encode(), rid))
        elif i % 100 == 9:  # near Kafka's record size limit
            big = ok | {"messages": [{"role": "user", "content": "y" * 900_000}]}
            out.append((b"t-0", json.dumps(big).encode(), rid))
        else:
            out.append((b"t-0", json.dumps(ok | {"temperature": "hot"}).encode(), rid))
    return out


class Responses:
    """Every record of the responses topic, with when it arrived, read from the start."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.by_id: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.settings.topics.responses, bootstrap_servers=self.settings.bootstrap,
            auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50,
            request_timeout_ms=10_000, metadata_max_age_ms=5_000,
        )  # fmt: skip
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                now = time.monotonic()
                for records in batch.values():
                    for r in records:
                        key = r.key.decode("utf-8", "replace") if r.key else ""
                        self.by_id[key].append((now, msgspec.json.decode(r.value)))
        finally:
            await consumer.stop()


# --------------------------------------------------------------------------- faults


async def _topic_dynamic_configs(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str]:
    (described,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    dynamic = 1  # DYNAMIC_TOPIC_CONFIG
    return {e[0]: e[1] for e in described.resources[0][4] if e[3] == dynamic}


async def refuse_events(settings: KafkaSettings, seconds: float) -> None:
    """The events topic refuses every batch for `seconds` (then its configs come back)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        topic = settings.topics.events
        kept = await _topic_dynamic_configs(admin, topic)
        tiny = kept | {"max.message.bytes": "256"}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, tiny)])
        await asyncio.sleep(seconds)
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, kept)])
    finally:
        await admin.close()


def set_scenario(sim: RunningSimulator, toml_text: str) -> None:
    """What the simulated upstream does from now on (its scenario clock restarts at 0)."""
    state = sim.app.state
    state.scenario = parse_scenario(toml_text)
    state.restart()


STORM = (
    BASE_LATENCY
    + """
[[rule]]
from_s = 0
to_s = 8
outcome = 503
rate = 0.6
retry_after_s = 1
"""
)
SLOW = (
    BASE_LATENCY
    + """
[[rule]]
from_s = 0
to_s = 3
latency_ms = 12000
"""
)


async def inject(kind: str, cluster: Cluster, ctx: dict[str, Any]) -> None:
    """Inject one fault; returns once it is in place (a restart may still be under way)."""
    names = sorted(cluster.routers)
    if kind == "router_kill":
        victim = names[0]
        await asyncio.to_thread(cluster.kill_router, victim, signal.SIGKILL)
        await asyncio.sleep(2.0)
        cluster.start_router(victim)
    elif kind == "router_restart":
        victim = names[-1]
        await asyncio.to_thread(cluster.kill_router, victim, signal.SIGTERM)
        cluster.start_router(victim)
    elif kind == "router_join":
        cluster.start_router(f"joiner-{len(cluster.routers)}")
    elif kind == "broker_kill":
        await asyncio.to_thread(cluster.restart_broker)
    elif kind == "upstream_storm":
        set_scenario(cluster.sim, STORM)
    elif kind == "slow_upstream":
        set_scenario(cluster.sim, SLOW)
        await asyncio.sleep(1.0)
        cluster.start_router(f"joiner-{len(cluster.routers)}")
    elif kind == "produce_failures":
        await refuse_events(cluster.settings, 3.0)
    elif kind == "hostile":
        ctx["hostile_now"] = True
    else:
        raise ValueError(kind)


# --------------------------------------------------------------------------- one round


async def run_round(name: str, cluster: Cluster, opts: Options, out: Console) -> RoundResult:
    capped = round(opts.requests / len(TENANTS) * CAPPED_USD_PER_REQUEST, 6)
    settings = cluster.new_round(name, capped)
    await ensure_topics(settings)
    set_scenario(cluster.sim, BASE_LATENCY)
    faults = [f for f in ROUNDS[:-1]] if name == "all" else [name]
    routers = [f"r{i}" for i in range(opts.routers)]
    for r in routers:
        cluster.start_router(r)
    cluster.start_sink()
    await asyncio.to_thread(cluster.wait_serving, routers)
    rng = random.Random(opts.seed)
    hostile = (
        hostile_records(opts.hostile, settings.topic_prefix, rng) if "hostile" in faults else []
    )
    responses = Responses(settings)
    reader = asyncio.create_task(responses.run())
    watch = asyncio.create_task(cluster.watch())
    sent_at: dict[str, float] = {}
    injected_at: list[float] = []
    ctx: dict[str, Any] = {}
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True,
        linger_ms=5, request_timeout_ms=30_000, max_request_size=1_000_000,
    )  # fmt: skip
    await producer.start()
    started = time.monotonic()
    try:
        # faults start at a third of the way; in `all`, one every 1/(3·len) of it
        marks = [
            opts.requests // 3 + k * opts.requests // (2 * len(faults)) for k in range(len(faults))
        ]
        pending: list[asyncio.Task[None]] = []
        futures = []
        hostile_left = list(hostile)
        for i in range(opts.requests):
            for k, mark in enumerate(marks):
                if i == mark:
                    out.print(f"  [{time.monotonic() - started:5.1f} s] inject {faults[k]}")
                    injected_at.append(time.monotonic())
                    pending.append(asyncio.create_task(inject(faults[k], cluster, ctx)))
            tenant = TENANTS[i % len(TENANTS)]
            rid = f"{name}-{i}"
            sent_at[rid] = time.monotonic()
            futures.append(await producer.send(settings.topics.requests, request(rid, tenant, i),
                                               key=tenant.encode()))  # fmt: skip
            if ctx.get("hostile_now") and hostile_left:
                for _ in range(max(1, len(hostile) // (opts.requests // 3 or 1))):
                    if hostile_left:
                        key, value, _rid = hostile_left.pop()
                        futures.append(
                            await producer.send(settings.topics.requests, value, key=key)
                        )
            delay = started + (i + 1) / opts.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        for key, value, _rid in hostile_left:  # whatever the pacing left over
            futures.append(await producer.send(settings.topics.requests, value, key=key))
        await asyncio.gather(*futures)
        await asyncio.gather(*pending)
        sent_done = time.monotonic()
        named_hostile = [rid for _, _, rid in hostile if rid is not None]
        wanted = set(sent_at) | set(named_hostile)
        deadline = time.monotonic() + opts.answer_timeout_s
        await wait_answered(cluster, responses, wanted, deadline, out)
        await asyncio.sleep(3.0)  # a second answer would have come by now
        answered_s = time.monotonic() - sent_done
    finally:
        await producer.stop()
        watch.cancel()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await asyncio.to_thread(cluster.stop_round)
    result = await check(name, cluster, responses, sent_at, named_hostile, injected_at)
    result.cells["router restarts (supervisor)"] = cluster.restarts
    result.cells["drain after last send (s)"] = round(answered_s, 1)
    return result


async def wait_answered(
    cluster: Cluster, responses: Responses, wanted: set[str], deadline: float, out: Console
) -> None:
    """Wait until every wanted id is answered (or the deadline). When answers stop coming
    for 20 s with some still missing, every router logs its asyncio tasks (SIGUSR1) once,
    so a stalled run shows in the routers' logs where they wait."""
    seen, progress_at, dumped = -1, time.monotonic(), False
    while not wanted <= responses.by_id.keys() and time.monotonic() < deadline:
        now = len(responses.by_id)
        if now != seen:
            seen, progress_at = now, time.monotonic()
        elif not dumped and time.monotonic() - progress_at > 20:
            missing = len(wanted - responses.by_id.keys())
            out.print(f"  no answer for 20 s, {missing} missing: routers dump their tasks")
            for proc in cluster.routers.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGUSR1)
            dumped = True
        await asyncio.sleep(0.5)


async def check(
    name: str,
    cluster: Cluster,
    responses: Responses,
    sent_at: dict[str, float],
    hostile_ids: list[str],
    injected_at: list[float],
) -> RoundResult:
    settings = cluster.settings
    r = RoundResult(name)
    by_id = responses.by_id
    r.cells["sent"] = len(sent_at)
    r.cells["answered"] = sum(1 for rid in sent_at if rid in by_id)
    r.cells["lost"] = sum(1 for rid in sent_at if rid not in by_id)
    twice = [rid for rid, got in by_id.items() if len(got) > 1]
    r.cells["answered twice"] = len(twice)
    r.examples["answered twice"] = [
        f"{rid}: " + " | ".join(json.dumps(doc)[:160] for _, doc in by_id[rid]) for rid in twice[:3]
    ]
    outcomes = Counter(
        (got[0][1].get("status"), (got[0][1].get("error") or {}).get("code"))
        for rid, got in by_id.items() if rid in sent_at
    )  # fmt: skip
    events, non_ce = await read_topic(settings, settings.topics.events, decode_events=True)
    terminals: Counter[str] = Counter()
    charged: dict[tuple[str, str], int] = defaultdict(int)
    admitted: dict[str, list[int]] = defaultdict(list)
    for env in events:
        rid = getattr(env.data, "request_id", None)
        if env.type in _TERMINALS and rid:
            terminals[rid] += 1
        if env.type == ev.BudgetCharged.TYPE:
            charged[(env.data.tenant, env.data.day)] += env.data.amount_micros  # type: ignore[union-attr]
        if env.type == ev.RequestAccepted.TYPE and env.data.tenant == "limited":  # type: ignore[union-attr]
            admitted["limited"].append(env.time_ms)
    r.cells["terminal > 1"] = sum(1 for n in terminals.values() if n > 1)
    trails: dict[str, list[str]] = defaultdict(list)
    lost = [rid for rid in sent_at if rid not in by_id]
    for env in events:
        rid = getattr(env.data, "request_id", None)
        if rid in lost[:5]:
            trails[rid].append(
                f"{env.type.removeprefix('turnout.')}@{env.source.rsplit('/', 1)[-1]}"
            )
    r.examples["lost"] = [f"{rid}: events {' '.join(trails[rid]) or 'none'}" for rid in lost[:5]]
    limit = round(cluster.capped_usd * 1_000_000)
    over = sum(max(0, v - limit) for (tenant, _), v in charged.items() if tenant == "capped")
    r.cells["budget overshoot (USD)"] = over / 1_000_000
    r.cells["rate over limit"] = windows_over(admitted["limited"], LIMITED)
    wrong = [rid for rid in hostile_ids if len(by_id.get(rid, [])) != 1]
    r.cells["hostile answered != 1"] = len(wrong)
    r.examples["hostile answered != 1"] = [
        f"{rid}: {len(by_id.get(rid, []))} answers" for rid in wrong[:5]
    ]
    dlq, _ = await read_topic(settings, settings.topics.dlq, decode_events=False)
    r.cells["DLQ records"] = len(dlq)
    r.cells["DLQ without a reason"] = sum(
        1 for rec in dlq if dict(rec.headers).get("turnout-error", b"") == b""
    )
    r.cells["non-CloudEvents in events"] = non_ce
    r.cells["archive missing or twice"] = archive_mismatch(
        cluster, {e.id for e in events}, len(events)
    )
    first = injected_at[0] if injected_at else None
    waits = [
        got[0][0] - sent_at[rid] for rid, got in by_id.items()
        if rid in sent_at and first is not None and first <= sent_at[rid] <= first + 5
    ]  # fmt: skip
    r.cells["worst wait after the fault (s)"] = round(max(waits), 1) if waits else "-"
    r.cells["outcomes"] = ", ".join(
        f"{s}{'/' + c if c else ''} {n}" for (s, c), n in outcomes.most_common()
    )
    return r


def windows_over(times_ms: list[int], limits: dict[str, int]) -> int:
    """How many admissions found more than the limit admitted in the window ending at them
    (windows (t - W, t], times clamped never to run backwards, as the limiter does)."""
    spans = {"burst": 1_000, "requests_per_minute": 60_000}
    clamped, latest = [], 0
    for t in times_ms:
        latest = max(latest, t)
        clamped.append(latest)
    over = 0
    for key, span in spans.items():
        n, lo = limits[key], 0
        for hi, t in enumerate(clamped):
            while clamped[lo] <= t - span:
                lo += 1
            if hi - lo + 1 > n:
                over += 1
    return over


async def read_topic(
    settings: KafkaSettings, topic: str, *, decode_events: bool
) -> tuple[list[Any], int]:
    """Every record of `topic` up to its end now (decoded envelopes for the events topic),
    and how many could not be decoded."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_wait_ms=50,
    )  # fmt: skip
    await consumer.start()
    out: list[Any] = []
    bad = 0
    try:
        counts = await existing_topics(settings)
        parts = [TopicPartition(topic, p) for p in range(counts[topic])]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        left = {tp for tp in parts if ends[tp] > 0}
        while left:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    if not decode_events:
                        out.append(rec)
                        continue
                    try:
                        out.append(ce.decode(rec.key, rec.value, rec.headers))
                    except Exception:
                        bad += 1
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()
    return out, bad


def archive_mismatch(cluster: Cluster, ids: set[str], count: int) -> int:
    """Events of the topic the sink did not store exactly once (it has stopped by now)."""
    path = cluster.work / f"{cluster.settings.topic_prefix}.duckdb"
    if not path.exists():
        return count
    with duckdb.connect(str(path), read_only=True) as db:
        stored = {row[0] for row in db.execute("select id from events").fetchall()}
        total = db.execute("select count(*) from events").fetchone()
    twice = (total[0] if total else 0) - len(stored)
    return len(ids - stored) + twice


# --------------------------------------------------------------------------- the run


def table(result: RoundResult) -> Table:
    t = Table(title=f"round: {result.name}", show_header=True)
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("must be")
    for key, value in result.cells.items():
        t.add_row(key, str(value), "0" if key in MUST_BE_ZERO else "")
    return t


def summary(results: Sequence[RoundResult]) -> Table:
    t = Table(title="fault suite", show_header=True)
    cols = ["sent", "answered", *MUST_BE_ZERO[:5], "DLQ records", "router restarts (supervisor)",
            "worst wait after the fault (s)"]  # fmt: skip
    t.add_column("round")
    for c in cols:
        t.add_column(c, justify="right")
    for r in results:
        t.add_row(r.name, *(str(r.cells.get(c, "")) for c in cols))
    return t


@contextlib.contextmanager
def infrastructure(work: Path) -> Iterator[tuple[ApacheKafkaBroker, RunningSimulator]]:
    broker = ApacheKafkaBroker(free_port(), data_dir=work / "kafka")
    broker.start()
    try:
        with start_in_thread(SimulatorOptions(scenario=parse_scenario(BASE_LATENCY))) as sim:
            yield broker, sim
    finally:
        broker.stop()


async def run_suite(opts: Options, out: Console, work: Path | None = None) -> list[RoundResult]:
    with contextlib.ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="turnout-faults-")))
        broker, sim = stack.enter_context(infrastructure(work))
        cluster = Cluster(work, broker, sim)
        stack.callback(lambda: cluster.broker.stop())  # the one running after restarts
        results = []
        for name in opts.rounds:
            out.print(f"round {name}: {opts.requests:,} requests, {opts.routers} routers, "
                      f"{opts.rate:g}/s")  # fmt: skip
            result = await run_round(name, cluster, opts, out)
            out.print(table(result))
            results.append(result)
        return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--routers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=250.0, help="requests sent per second")
    parser.add_argument("--hostile", type=int, default=2_000)
    parser.add_argument(
        "--rounds",
        default="all-rounds",
        help=f"comma-separated, of {', '.join(ROUNDS)} (default: every one)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the cells here")
    parser.add_argument("--work", type=Path, default=None, help="keep logs and data here")
    args = parser.parse_args(argv)
    rounds = ROUNDS if args.rounds == "all-rounds" else tuple(args.rounds.split(","))
    unknown = [r for r in rounds if r not in ROUNDS]
    if unknown:
        parser.error(f"unknown round(s) {', '.join(unknown)}: pick from {', '.join(ROUNDS)}")
    opts = Options(requests=args.requests, routers=args.routers, rate=args.rate,
                   rounds=rounds, hostile=args.hostile)  # fmt: skip
    out = Console(width=None if sys.stdout.isatty() else 160)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(run_suite(opts, out, args.work))
    out.print(summary(results))
    if args.json:
        args.json.write_text(json.dumps({r.name: r.cells for r in results}, indent=2))
    failed = [f for r in results for f in r.failures]
    for r in results:
        for cell in r.failures:
            out.print(f"[red]FAILED[/red] {r.name}: {cell} = {r.cells[cell]}")
            for example in r.examples.get(cell, []):
                out.print(f"  e.g. {example}", markup=False, highlight=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
