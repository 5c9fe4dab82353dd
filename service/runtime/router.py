"""`turnout router`: the shell around the pure request decider.

Job: read intake records as a consumer-group member, turn each into an input
for `turnout.service.core.request`, fold the decided events into `RouterState`,
publish them, carry out the effects (upstream calls, retry timers, responses)
and commit offsets only once a record's work is acknowledged.

Rules:
- State is the fold of `turnout.events`. On every assignment the router
  rebuilds it for the event partitions of its request partitions (requests
  and events are co-partitioned by tenant) plus the `_system` partition
  (breakers): the newest good snapshot of each (`turnout.service.runtime.snapshots`),
  then the events after it, read until a marker it wrote itself comes back —
  never end offsets, which the embedded broker gets wrong. A request left in
  flight by a router that died is resumed when its uncommitted intake record
  comes again (not admitted or reserved a second time; one terminal event).
- Only the owner of a partition publishes for its tenants: after a revoke's
  drain, a late decision for a partition that moved is dropped (fencing).
- A request task that fails ends its request with `internal_error`; events
  folded but not published stop the router (`StateDiverged`), so a restart
  rebuilds the state from the log.
- Breakers are global: their transitions are keyed `_system`, and every
  router tails that partition to fold other routers' transitions as they happen.
- Decide and fold happen with no `await` in between, so concurrent requests
  always decide on the state that includes every earlier decision.
- A request's response is acknowledged before its terminal event is sent, and
  both before its offset can be committed; a redelivered record is answered
  from state without a new upstream call. A router that died between the two
  leaves an orphan already answered: on Apache Kafka its next owner finds the
  response on the reply topic and records the terminal event from it
  (`turnout.service.runtime.deliveries`), so it is not called or answered again.
- A record off its tenant's home partition (another client's partitioner, or
  no key) is forwarded to the home partition before anything is decided.
- Bad records go to the DLQ with `turnout-error` headers and a
  `turnout.request.deadlettered` event; nothing a producer sends stops the loop.
  A record too large for Kafka keeps its first 900 kB there, with a
  `turnout-error-truncated-from` header giving its size.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from typing import Any, Final

import msgspec
from aiokafka import TopicPartition

from turnout.service.clock import Clock, clock
from turnout.service.core import events as ev
from turnout.service.core import snapshot
from turnout.service.core.admission import cache_index
from turnout.service.core.budget import completion_allowance
from turnout.service.core.cache import encoding_for
from turnout.service.core.config import BatchingConfig, Config, config_hash, config_to_dict
from turnout.service.core.partitioning import PARTITIONS, home_partition
from turnout.service.core.pricing import Price, call_cost_micros
from turnout.service.core.providers import configured_prices, provider_of
from turnout.service.core.request import (
    Call,
    CallResult,
    Context,
    Decision,
    IntakeRequest,
    Resend,
    Respond,
    Streamed,
    Wait,
    admission_key,
    decide_cancel,
    decide_delivered,
    decide_first_token,
    decide_intake,
    decide_internal_error,
    decide_result,
    decide_retry_due,
    shares_its_answer,
)
from turnout.service.core.state import RouterState, Terminal, evolve, request_holder
from turnout.service.errors import TurnoutError
from turnout.service.kafka.consumer import GroupConsumer, Reader
from turnout.service.kafka.errors import GroupMovedOn
from turnout.service.kafka.producer import BatchedProducer, acked
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.kafka.topics import (
    broker_engine,
    delete_topics,
    ensure_topics,
    existing_topics,
    topic_specs,
)
from turnout.service.runtime import snapshots
from turnout.service.runtime.cachecodec import CacheCodecError, default_codec
from turnout.service.runtime.deliveries import (
    STREAM_BEGUN,
    STREAMED_CHARS,
    STREAMED_CHUNKS,
    Orphan,
    find_delivered,
    reply_partition,
)
from turnout.service.runtime.streaming import CutShort, Relay, StaleAttempt, replay
from turnout.service.telemetry import Telemetry
from turnout.service.upstream import client as upstream
from turnout.service.upstream.pricing import PriceBook, PriceCache
from turnout.service.upstream.providers import Upstreams
from turnout.service.wire import cloudevents as ce
from turnout.service.wire import stream as streams
from turnout.service.wire.errors import WireError
from turnout.service.wire.intake import (
    REQUEST_ID_HEADER,
    REQUEST_ID_TAKEN,
    TENANT_ID,
    Cancel,
    decode_cancel,
    decode_intake,
    estimate_tokens,
)
from turnout.service.wire.response import encode_response, terminal_from_response
from turnout.service.wire.stream import STREAM_HEADER

__all__ = ["PARTITIONS", "Router", "home_partition"]

log = logging.getLogger("turnout.router")

EVENT_PRODUCERS = 3
IDLE_POLL_MS = 100  # the intake poll of an idle consumer (records still return at once)
TAIL_FETCH_WAIT_MS = 100  # the _system tail: other routers' breaker transitions
SUPERVISE_MIN_S, SUPERVISE_MAX_S = 0.2, 10.0  # restart backoff of a failed background part
PRICES_AT_START_S = 5.0  # how long a start waits for the upstream's price table
DLQ_VALUE_LIMIT = 900_000  # an oversized record's first bytes, leaving room for headers
RECORD_HEADROOM = 64 * 1024  # an answer's envelope in events and responses: ids, usage
# an intake record being worked on: its partition, its offset, and the ownership epoch of
# that partition it was started in (see Offsets)
Position = tuple[TopicPartition, int, int]


_ONE_AT_A_TIME: Final = BatchingConfig(max_records=1, max_wait_ms=100)


_END: Final = [(STREAM_HEADER, b"end")]  # a streamed request's last record
_REPLY_OK_S: Final = 60.0  # a client reply topic seen to exist is trusted this long
_REPLY_CHECK_S: Final = 2.0  # how long to look for one (metadata) before giving up

TANSU_SETTLE_S: Final = 2.0
"""How long Tansu needs after creating a topic before produces to it succeed."""


class BrokerHistoryLost(Exception):
    """The broker lost Turnout's topics and clients made them again wrongly: stop, so the
    restart makes them right before it subscribes."""


REBUILD_STALL_S: Final = 30.0
"""A rebuild that writes no marker, or reads nothing, for this long has failed."""


class StateDiverged(Exception):
    """Events already folded into the live state could not be published: the state is no
    longer the fold of the log. Fatal: the router stops (exit 1) without committing the
    records concerned or snapshotting, and a restart rebuilds the state from the log."""


class IntakeStats:
    """How intake is read: batches and their sizes (for /healthz)."""

    def __init__(self) -> None:
        self.batches = 0
        self.records = 0
        self.largest = 0

    def batch(self, size: int) -> None:
        self.batches += 1
        self.records += size
        self.largest = max(self.largest, size)

    def as_dict(self) -> dict[str, float]:
        mean = self.records / self.batches if self.batches else 0.0
        return {"batches": self.batches, "records": self.records, "largest_batch": self.largest,
                "mean_batch": round(mean, 2)}  # fmt: skip


class Offsets:
    """Which intake offsets are done, and how far each partition may be committed.

    Each partition's bookkeeping lives for one ownership epoch: `drop` (a revoke, a fence)
    ends it. A position started in an earlier epoch never counts again: its record comes
    again from the committed offset to whoever owns the partition now, so a late finish of
    it (a task fenced after the drop) must neither clear a record of the new epoch at the
    same offset nor move the commit point past a record nobody decided.

    Each record being worked on holds one of the router's in-flight slots: `finish`
    says whether to give it back (True once per started position of the current epoch),
    and `drop` returns how many its partitions held, which the router gives back at once
    (work handed over holds no slot, whether or not its task ever ends)."""

    def __init__(self) -> None:
        self.busy: dict[TopicPartition, Counter[int]] = {}
        self.seen: dict[TopicPartition, int] = {}
        self.epochs: dict[TopicPartition, int] = {}

    def start(self, tp: TopicPartition, offset: int) -> Position:
        self.busy.setdefault(tp, Counter())[offset] += 1
        self.seen[tp] = max(self.seen.get(tp, -1), offset)
        return (tp, offset, self.epochs.get(tp, 0))

    def finish(self, pos: Position) -> bool:
        tp, offset, epoch = pos
        busy = self.busy.get(tp)
        if self.epochs.get(tp, 0) != epoch or busy is None or busy[offset] <= 0:
            return False
        busy[offset] -= 1
        if not busy[offset]:
            del busy[offset]
        return True

    def committable(self) -> dict[TopicPartition, int]:
        return {tp: min(self.busy.get(tp) or {hi + 1}) for tp, hi in self.seen.items()}

    def in_progress(self, tps: Iterable[TopicPartition] | None = None) -> int:
        keys = self.busy if tps is None else tps
        return sum(self.busy[tp].total() for tp in keys if tp in self.busy)

    def drop(self, tps: Iterable[TopicPartition]) -> int:
        held = 0
        for tp in tps:
            held += (self.busy.pop(tp, None) or Counter()).total()
            self.seen.pop(tp, None)
            self.epochs[tp] = self.epochs.get(tp, 0) + 1
        return held


def _estimated_usage(messages: list[dict[str, Any]] | None, chars: int) -> ev.Usage:
    """A stream's usage when the upstream never reported it: the prompt's estimate, and
    what was relayed at 4 characters a token."""
    prompt = estimate_tokens(messages or [])
    completion = -(-chars // 4)
    return ev.Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _serves(cfg: Config, provider: str) -> Callable[[str], bool]:
    """Whether `provider` serves a model (its price table may price only those)."""
    return lambda model: provider_of(cfg, model) == provider


def _prefixed(cfg: Config, provider: str) -> Callable[[str], str] | None:
    """How a provider's `/models` names become route names: its `strip_prefix` put back."""
    table = cfg.providers.get(provider)
    prefix = table.strip_prefix if table is not None else None
    return (lambda m: m if m.startswith(prefix) else prefix + m) if prefix else None


class Router:
    """One router instance; several form one consumer group."""

    def __init__(
        self, cfg: Config, *, instance: str, time: Clock = clock, telemetry: Telemetry | None = None
    ) -> None:
        self.cfg = cfg
        self.telemetry = telemetry or Telemetry()  # no-op unless the composition root says so
        self.instance = instance
        self.clock = time
        self.source = f"turnout/router/{instance}"
        self.kafka = KafkaSettings.from_config(
            cfg.kafka, topics=cfg.topics, client_id=f"turnout-router-{instance}"
        )
        self.topics = self.kafka.topics
        self.internal_topics = frozenset(self.topics.as_dict().values())
        self.state = RouterState()
        self.offsets = Offsets()
        self.bodies: dict[str, dict[str, Any]] = {}
        self.unacked: dict[str, list[asyncio.Future[Any]]] = {}  # sent, ack not yet awaited
        self.positions: dict[str, list[Position]] = {}
        # a copy of a request in flight sent by another client (an SDK's retry through
        # another gateway): where else its answer goes, with the copies' intake positions,
        # held (not committed) until the copy is answered: a router that dies first
        # leaves the copy to come again to the next owner, which answers it
        self.also_reply: dict[str, dict[str, list[Position]]] = {}
        self.answering: set[str] = set()  # requests whose answer is being recorded
        self.orphans: set[str] = set()
        # responses the last owner delivered for orphans it did not record as ended
        self.delivered: dict[str, dict[str, Any]] = {}
        self.engine = "kafka"  # the broker's, found at start: `kafka` or `tansu`
        self.codec = default_codec()
        self.cache_encoding = encoding_for(cfg)
        self.ready = asyncio.Event()
        self.system = TopicPartition(self.topics.events, home_partition(ev.SYSTEM_TENANT))
        self._system_next = 0  # the _system offset just after the last rebuild's marker
        self._tail: asyncio.Task[None] | None = None
        self.slots = asyncio.Semaphore(cfg.batching.max_in_flight)
        self.drain_timeout_s = 30.0  # on stop: how long work in flight may take to finish
        self._stopping = False
        self._pricing: asyncio.Task[Any] | None = None
        self._prices_said: Mapping[str, Price] | None = None  # the table last published
        self._prices_last: dict[str, list[float]] = {}
        self.intake_stats = IntakeStats()
        self.tasks: set[asyncio.Task[None]] = set()
        self.producer = BatchedProducer(self.kafka)  # DLQ, forwards, markers, snapshots:
        # what one loop step sends leaves in one batch per partition (linger 0)
        # aiokafka keeps one produce request in flight per broker connection: events go
        # out on their own connections (by partition, so each partition keeps its order),
        # and a response never queues behind a batch of events. No response waits for an
        # event's ack, so events linger to leave in fewer, larger batches: fewer produce
        # requests for the broker (and on Tansu, whose fetches slow down with every batch
        # in a partition, cheaper reads). Batching off means one event per request.
        linger = self.kafka.events_linger_ms if cfg.features.batching else 0
        events = self.kafka.replace(linger_ms=linger)
        self.event_producers = [BatchedProducer(events) for _ in range(EVENT_PRODUCERS)]
        # answers: every response and every streamed chunk record, one batch stream per
        # reply partition. Responses and a stream's first chunk are urgent (they leave at
        # the end of the loop step, taking what lingers along: a first token never
        # waits); a stream's later chunks linger `[streaming] linger_ms` to share produce
        # requests across streams. One producer keeps them in order without waiting for
        # acks between them, in fewer produce requests than a producer for each kind.
        self.answers = BatchedProducer(self.kafka.replace(linger_ms=cfg.streaming.linger_ms))
        self._partitions: dict[str, int] = {}  # reply topic -> its partition count
        self._reply_ok: dict[str, float] = {}  # client reply topic -> when it was seen
        self.streams: set[str] = set()  # request ids answered as streams (last record's header)
        self.replays: dict[str, list[dict[str, Any]]] = {}  # a stream's cached chunks, to send
        self.relays: dict[str, Relay] = {}  # leader request id -> its stream, while it runs
        self.calls: dict[str, asyncio.Task[None]] = {}  # request id -> its running call
        self.cancelling: dict[str, str] = {}  # request id -> why its call is being stopped
        self.consumer = GroupConsumer(
            self.kafka, [self.topics.requests],
            on_assigned=self._on_assigned, on_revoked=self._on_revoked,
            evict_predecessors=True,  # a restart under this name need not wait for its
        )  # fmt: skip                  # crashed predecessor's session to expire
        self.upstream = Upstreams(cfg)  # one pool per provider ([upstream] and [providers])
        self.configured_prices = configured_prices(cfg)
        self._unpriced: set[str] = set()  # models warned about: no price, no reported cost
        # each provider's /models prices the models it serves (OpenRouter's: [upstream]'s);
        # [providers.x.prices] win; a model with neither: the tenant's default price
        self.prices = PriceBook({
            name: PriceCache(
                client, ttl_s=cfg.upstream.pricing_ttl_s,
                keep=_serves(cfg, name),
                rename=_prefixed(cfg, name),
            )
            for name, client in self.upstream.clients.items()
        }, self.configured_prices)  # fmt: skip
        # snapshots (service.runtime.snapshots): events folded per partition but not yet
        # handed to a producer, the delivery of the last one that was, and the offset the
        # rebuild reached; a snapshot is captured only when nothing folded is unsent
        self.schedule = snapshots.Schedule(cfg.snapshots) if cfg.features.snapshots else None
        self._unsent: dict[int, int] = {}
        self._last_event: dict[int, asyncio.Future[Any]] = {}
        self._rebuilt_to: dict[int, int] = {}
        self._snapshot_tasks: set[asyncio.Task[None]] = set()
        self.rebuild_stats: dict[str, Any] = {}
        # background parts that failed and are being restarted: part -> since, error, restarts
        self.faults: dict[str, dict[str, Any]] = {}
        self.fatal: BaseException | None = None  # set: the router is stopping because of it
        self.owned: set[int] = set()  # events partitions this router may publish for
        self.history_lost: dict[str, Any] | None = None  # set when the broker lost our topics
        self._revoking: set[int] = set()  # being handed over (drained, then fenced)
        self._generation = 0  # counts revokes and assigns: a batch fetched before one
        # is not served
        self._floor: dict[TopicPartition, int] = {}  # committed offsets when assigned
        # the revoke drain ends well before the group's rebalance timeout: a member still
        # draining past it would be dropped and its partitions given out meanwhile
        self.revoke_drain_s = max(0.0, min(10.0, self.kafka.rebalance_timeout_ms / 1000 - 5.0))
        self.fenced = 0  # decisions dropped because their partition had moved on
        self._stop: asyncio.Event | None = None
        # the running loop, kept: asyncio.create_task and current_task without one ask
        # get_running_loop, which makes a getpid() system call each time
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._loop = asyncio.get_running_loop()
        try:  # every client is made in __init__: a failed start must still close them all
            self.engine = await broker_engine(self.kafka)
            await self._check_topics(starting=True)  # before any client asks about them
            await self.producer.start()
            for producer in self.event_producers:
                await producer.start()
            await self.answers.start()
            await self.consumer.start()
            await self._check_snapshots_topic()
            await self._publish([self._config_applied()])
            if self._needs_prices():  # bounded: a slow /models must not hold the start
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.prices.refresh(), PRICES_AT_START_S)
                await self._record_prices()
            await self._serve(stop)
        finally:
            self._stopping = True
            # diverged: what is still in flight cannot be recorded either; go at once, and
            # the next owner resumes (or records) it from the log
            await self._drain(0.0 if self.fatal else self.drain_timeout_s)
            await self._snapshot_all(10.0)
            await self._stop_tail()
            await self.consumer.stop()
            for producer in self.event_producers:
                await producer.stop()
            await self.answers.stop()
            await self.producer.stop()
            await self.upstream.aclose()

    async def _serve(self, stop: asyncio.Event) -> None:
        committer = asyncio.create_task(self._supervise("commits", lambda: self._commit_every(0.2)))
        watcher = asyncio.create_task(self._supervise("topics", lambda: self._watch_topics(5.0)))
        freer = asyncio.create_task(self._free_slots_on_stop(stop))
        try:
            batching = self.cfg.batching if self.cfg.features.batching else _ONE_AT_A_TIME
            while not stop.is_set():
                # a poll returns as soon as records are fetched: an idle consumer (no
                # record for a second, Apache Kafka) polls seldom, a busy one often
                wait_ms = batching.max_wait_ms
                if self.consumer.idle:
                    wait_ms = max(wait_ms, IDLE_POLL_MS)
                batch = await self.consumer.getmany(
                    timeout_ms=wait_ms, max_records=batching.max_records
                )
                generation = self._generation  # the assignment this batch was fetched in
                if batch:
                    self.intake_stats.batch(sum(len(r) for r in batch.values()))
                    # fetching may run ahead of a rebuild: decide on rebuilt state only
                    # (and never wait for a rebuild that failed: that stops the router)
                    if not await self._rebuilt_or_stopped(stop):
                        break
                    if generation != self._generation:  # a rebalance meanwhile: the new
                        continue  # assignment reads these records again from its offsets
                for record in (r for records in batch.values() for r in records):
                    if not await self._slot(stop):  # stopping: never wait for a slot then
                        break
                    if generation != self._generation:  # a rebalance while this batch
                        # waited for slots: the rest comes again from the committed offset
                        self.slots.release()
                        break
                    self._spawn(self._handle(record))
        finally:
            committer.cancel()
            watcher.cancel()
            freer.cancel()
            if self._pricing is not None:
                self._pricing.cancel()
                with suppress(asyncio.CancelledError):
                    await self._pricing

    async def _slot(self, stop: asyncio.Event) -> bool:
        """Take an in-flight slot (True), or give up once the router is stopping (False).
        A router stopped by a fault while every slot was taken used to wait here for
        ever, alive and serving nothing (the fault suite's combined round: 555 lost):
        `_free_slots_on_stop` wakes it (cheaper than racing every wait for a slot
        against the stop event: two tasks per record whenever every slot was busy)."""
        await self.slots.acquire()
        if stop.is_set():
            self.slots.release()
            return False
        return True

    async def _free_slots_on_stop(self, stop: asyncio.Event) -> None:
        """Once the router stops, give back enough slots to wake the serve loop if it
        waits for one (it then sees the stop and gives its slot back). The count is
        wrong from then on, which nothing after the stop reads."""
        await stop.wait()
        for _ in range(self.cfg.batching.max_in_flight + 1):
            self.slots.release()

    async def _rebuilt_or_stopped(self, stop: asyncio.Event) -> bool:
        """Wait until the state is rebuilt (True) or the router is stopping (False)."""
        if self.ready.is_set():
            return not stop.is_set()
        waits = [asyncio.ensure_future(self.ready.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        return self.ready.is_set() and not stop.is_set()

    async def _drain(self, timeout_s: float = 30.0) -> None:
        """Finish the work in flight (bounded), then commit what is done."""
        await self._settle(None, timeout_s)
        await self._commit()
        self.telemetry.abandon(list(self.positions), "stopped")

    async def _settle(self, tps: Iterable[TopicPartition] | None, timeout_s: float) -> None:
        """Wait (bounded) until no record of `tps` (None: any) is in progress."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        # polled, not an Event: records finish in many places
        while self.offsets.in_progress(tps) and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = (self._loop or asyncio.get_running_loop()).create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("router task failed", exc_info=task.exception())

    # ------------------------------------------------------------ state

    async def _on_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        """Rebuild the assigned partitions' state, then serve them. A rebuild that fails
        (the broker refused a marker, a read failed) stops the router at once, loudly: the
        supervisor's restart rebuilds from the log. (It used to be kept for the consumer's
        next fetch, which never came while the serve loop waited for this rebuild: the
        router went silent with its partitions served by nobody.)"""
        try:
            await self._assign(assigned)
        except Exception as err:
            self._fail_fatally(StateDiverged(f"the rebuild after a rebalance failed: {err!r}"))
            raise

    async def _assign(self, assigned: frozenset[TopicPartition]) -> None:
        self.ready.clear()
        self._generation += 1
        partitions = {tp.partition for tp in assigned} | {home_partition(ev.SYSTEM_TENANT)}
        state = await self._rebuild(sorted(partitions), owns={tp.partition for tp in assigned})
        if self.fatal is not None:  # stopping (the broker lost its history): serve nothing
            return
        # the rebuilt state at once, with no await after the rebuild: a snapshot due
        # meanwhile must capture this state, the one its offset (the marker) belongs to
        self.state = state
        self._unsent.clear()
        self._last_event.clear()
        # in flight in the log, but no task here works on it (its router died): its
        # redelivered record resumes it, without admitting or reserving it again
        self.orphans = {rid for rid in state.inflight if rid not in self.positions}
        self._floor = {tp: await self.consumer.committed(tp) or 0 for tp in assigned}
        self.delivered = await self._find_delivered(state, assigned)
        # again, with no await before the ownership changes: a late result dropped
        # meanwhile (fenced: nothing was owned yet) left its request to be resumed
        self.orphans = {rid for rid in state.inflight if rid not in self.positions}
        self.owned = {tp.partition for tp in assigned}
        await self._stop_tail()
        self._tail = asyncio.create_task(  # a restart goes on where the last one got to
            self._supervise("system_tail", lambda: self._tail_system(self._system_next))
        )
        self.ready.set()
        log.info("serving partitions %s", sorted(tp.partition for tp in assigned))

    async def _find_delivered(
        self, state: RouterState, assigned: frozenset[TopicPartition]
    ) -> dict[str, dict[str, Any]]:
        """Responses already on their topics for this assignment's orphans (answered by a
        router that died before recording it): recorded when their records come again,
        never answered twice."""
        if self.engine != "kafka":  # see service.runtime.deliveries
            return {}
        owned = {tp.partition for tp in assigned}
        wanted = [
            Orphan(rid, flight.reply_to or self.topics.responses, flight.accepted_at_ms)
            for rid in self.orphans
            if (flight := state.inflight[rid]) and home_partition(flight.tenant) in owned
        ]
        try:
            async with asyncio.timeout(10.0):
                wanted += await self._unrecorded(state, assigned)
        except Exception as err:
            log.warning("could not read the records the last owner left uncommitted: %r", err)
        if not wanted:
            return {}
        found = await find_delivered(self.kafka, wanted)
        if found:
            log.warning(
                "%d of %d requests in flight or unrecorded were answered by a router that "
                "died before recording it: recorded now, not answered again",
                len(found), len(wanted),
            )  # fmt: skip
        return found

    async def _unrecorded(
        self, state: RouterState, assigned: frozenset[TopicPartition]
    ) -> list[Orphan]:
        """Intake records after the committed offset (up to the end now) whose request the
        log does not know: the last owner may have answered them in the same decision
        that accepted or rejected them, and died before its events were written. A
        partition with no commit yet is read from its start (consumers start at the
        earliest record): its last owner may have answered records and died before its
        first commit."""
        starts = {tp: offset for tp, offset in self._floor.items() if tp in assigned}
        out: list[Orphan] = []
        if not starts:
            return out
        async with Reader(self.kafka, starts, start_offsets=starts) as reader:
            ends = await reader.end_offsets(starts)
            left = {tp for tp, offset in starts.items() if offset < ends[tp]}
            while left:
                batch = await reader.getmany(timeout_ms=200)
                for tp, records in batch.items():
                    for record in records:
                        if record.offset < ends[tp]:
                            orphan = self._unrecorded_orphan(state, record)
                            if orphan is not None:
                                out.append(orphan)
                for tp in list(left):
                    if await reader.position(tp) >= ends[tp]:
                        left.discard(tp)
        return out

    def _decode(self, record: Any) -> IntakeRequest:
        """The intake record as a request; WireError when it is not a valid one."""
        return decode_intake(
            record.value, key=record.key, topic=record.topic,
            partition=record.partition, offset=record.offset,
            request_id=dict(record.headers).get(REQUEST_ID_HEADER),
            internal_topics=self.internal_topics,
        )  # fmt: skip

    def _unrecorded_orphan(self, state: RouterState, record: Any) -> Orphan | None:
        try:
            req = self._decode(record)
            rid, reply_to = req.request_id, req.reply_to
        except WireError as err:
            if err.request_id is None:
                return None
            rid, reply_to = err.request_id, err.reply_to
        if rid in state.inflight or rid in state.finished:
            return None
        return Orphan(rid, reply_to or self.topics.responses, record.timestamp)

    async def _on_revoked(self, revoked: frozenset[TopicPartition]) -> None:
        try:
            await self._revoke(revoked)
        except Exception as err:  # as for a failed rebuild: stop, never hang
            self._fail_fatally(
                StateDiverged(
                    f"the revoke of {sorted(tp.partition for tp in revoked)} failed: {err!r}"
                )
            )
            raise

    async def _revoke(self, revoked: frozenset[TopicPartition]) -> None:
        self.ready.clear()
        self._generation += 1
        if self.schedule is not None:
            self.schedule.owned -= {tp.partition for tp in revoked}
        self._revoking = {tp.partition for tp in revoked}
        await self._settle(revoked, 0.0 if self._stopping else self.revoke_drain_s)
        try:
            await self._commit()
        except TurnoutError as err:  # the group moved on meanwhile (the drain outlasted it)
            log.warning(
                "could not commit before handing partitions over (%s): their last records "
                "come again to the next owner, which answers finished ones from the log", err,
            )  # fmt: skip
        # fenced from now on: what is still in flight there is the next owner's to resume
        self.owned -= {tp.partition for tp in revoked}
        self._revoking = set()
        self._release(self.offsets.drop(revoked))
        handed = [rid for rid, ps in self.positions.items() if any(p[0] in revoked for p in ps)]
        self.telemetry.abandon(handed, "handed_over")

    async def _rebuild(self, partitions: Sequence[int], owns: Iterable[int] = ()) -> RouterState:
        """The newest good snapshot of each partition, then its events after the snapshot's
        offset up to a marker this router writes to each of them.

        The cyclic GC is paused meanwhile (a restore makes hundreds of thousands of
        long-lived objects and no cycles: collections triggered by their allocation
        doubled the time), and what the rebuild made is then frozen out of its scans."""
        paused = gc.isenabled()
        gc.disable()
        try:
            return await self._rebuild_state(partitions, owns)
        finally:
            if paused:
                gc.enable()
            gc.freeze()

    async def _rebuild_state(self, partitions: Sequence[int], owns: Iterable[int]) -> RouterState:
        started = asyncio.get_running_loop().time()
        marker_id = self.clock.new_id()
        if self.rebuild_stats:  # not the first: a broker that lost our topics meanwhile
            await self._check_topics()  # (Tansu restarted) is said so, and they are made
        found = None
        if self.schedule is not None:
            found = await snapshots.read_snapshots(
                self.kafka, self.producer, instance=self.instance, marker_id=marker_id
            )
        chosen = {p: snap for p in partitions if found and (snap := found.best(p)) is not None}
        state = snapshot.restore(chosen.values())
        tps = {p: TopicPartition(self.topics.events, p) for p in partitions}
        waiting, folded = set(partitions), 0
        starts = {tps[p]: snap.offset for p, snap in chosen.items()}
        async with Reader(self.kafka, tps.values(), start_offsets=starts) as reader:
            self._warn_of_retention(await reader.beginning_offsets(tps.values()), chosen)
            # bounded: a rebuild that cannot finish stops the router (its restart
            # rebuilds), never leaves it waiting with its partitions served by nobody
            await asyncio.wait_for(self._write_markers(partitions, marker_id), REBUILD_STALL_S)
            loop = asyncio.get_running_loop()
            heard = loop.time()
            while waiting:
                batch = await reader.getmany(timeout_ms=200)
                if batch:
                    heard = loop.time()
                elif loop.time() - heard > REBUILD_STALL_S:
                    raise TimeoutError(
                        f"the rebuild read nothing for {REBUILD_STALL_S:g} s and the markers "
                        f"of partitions {sorted(waiting)} did not come back"
                    )
                for records in batch.values():
                    folded += len(records)
                    for record in records:
                        self._fold_record(state, record, marker_id, waiting)
        if self.schedule is not None:  # what the rebuild folded counts toward the next one
            since = {p: self._rebuilt_to[p] - (snap.offset if (snap := chosen.get(p)) else 0)
                     for p in partitions}  # fmt: skip
            owned = {p for p in partitions if p in owns}
            self.schedule.own(owned, found, asyncio.get_running_loop().time(), since)
        self.rebuild_stats = {
            "seconds": round(asyncio.get_running_loop().time() - started, 3),
            "events_folded": folded,
            "from_snapshot": {str(p): snap.offset for p, snap in sorted(chosen.items())},
        }
        log.info(
            "rebuilt partitions %s in %.2f s: %d events folded, snapshots of %s",
            list(partitions), self.rebuild_stats["seconds"], folded, sorted(chosen) or "none",
        )  # fmt: skip
        return state

    async def _write_markers(self, partitions: Sequence[int], marker_id: str) -> None:
        sent = []
        for p in partitions:
            marker = ev.RouterMarker(
                tenant=ev.SYSTEM_TENANT, instance=self.instance, marker_id=marker_id, partition=p
            )
            key, value, headers = ce.encode_event(
                marker, id=self.clock.new_id(), time_ms=self.clock.now_ms(), source=self.source
            )
            # on the producer of that partition's events: the marker cannot overtake
            # events of ours still in its buffer, so the fold up to it holds them all
            producer = self.event_producers[p % EVENT_PRODUCERS]
            topic = self.topics.events
            sent.append(await producer.send(topic, value, key=key, headers=headers, partition=p))
        await asyncio.gather(*sent)  # together: each waits out its producer's linger once

    @staticmethod
    def _warn_of_retention(
        starts: dict[TopicPartition, int], chosen: dict[int, snapshot.Snapshot]
    ) -> None:
        """Say so when events a rebuild needs were deleted by the topic's retention."""
        for tp, start in starts.items():
            covered = chosen[tp.partition].offset if tp.partition in chosen else 0
            if start > covered:
                log.warning(
                    "events partition %d starts at offset %d (retention), but the state needs "
                    "it from %d: events %d..%d are gone, so state rebuilt from them is too",
                    tp.partition, start, covered, covered, start - 1,
                )  # fmt: skip

    def _fold_record(
        self, state: RouterState, record: Any, marker_id: str, waiting: set[int]
    ) -> None:
        try:
            env = ce.decode(record.key, record.value, record.headers)
        except WireError:
            return  # not ours to judge here: the sink records unreadable events
        data = env.data
        if isinstance(data, ev.RouterMarker) and data.marker_id == marker_id:
            waiting.discard(record.partition)
            self._rebuilt_to[record.partition] = record.offset + 1
            if record.partition == self.system.partition:
                self._system_next = record.offset + 1
        evolve(state, data, env.time_ms, self.cfg)

    async def _tail_system(self, offset: int) -> None:
        """Fold other routers' breaker transitions as they happen (global breakers).

        Restarted from the rebuild's marker on every assignment, so nothing the
        rebuilt state already holds is folded twice; our own transitions are
        folded when decided, so only other sources count here.
        """
        # another router's breaker transition may arrive a little late: fetch seldom
        wait = max(self.kafka.fetch_max_wait_ms, TAIL_FETCH_WAIT_MS)
        settings = self.kafka.replace(fetch_max_wait_ms=wait)
        # `async with` closes the reader also when a rebalance cancels it while it starts
        async with Reader(settings, [self.system], start_offsets={self.system: offset}) as reader:
            while True:
                batch = await reader.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        self._fold_breaker(record)
                        self._system_next = record.offset + 1
                self._working("system_tail")

    async def _stop_tail(self) -> None:
        if self._tail is not None:
            self._tail.cancel()
            with suppress(asyncio.CancelledError):
                await self._tail
            self._tail = None

    def _fold_breaker(self, record: Any) -> None:
        try:
            if not ce.decode_type(record.headers).startswith("turnout.breaker."):
                return
            env = ce.decode(record.key, record.value, record.headers)
        except WireError:
            return
        if env.source != self.source:
            evolve(self.state, env.data, env.time_ms, self.cfg)

    # ------------------------------------------------------------ intake

    async def _handle(self, record: Any) -> None:
        tp = TopicPartition(record.topic, record.partition)
        if record.partition not in self.owned:  # fetched before a revoke or a fence: its
            # record comes again from the committed offset to the partition's owner
            self.fenced += 1
            self.slots.release()
            return
        pos = self.offsets.start(tp, record.offset)
        try:
            await self._intake(record, pos)
        except StateDiverged as err:
            self._fail_fatally(err)  # its offset stays uncommitted: a restart decides it again
        except Exception as err:
            log.exception("failed on %s[%d]@%d", record.topic, record.partition, record.offset)
            await self._recover(record, pos, err)

    async def _intake(self, record: Any, pos: Position) -> None:
        try:
            cancel = decode_cancel(record.value, key=record.key)
            if cancel is not None:
                await self._cancel(cancel, record, pos)
                return
            req = self._decode(record)
            if req.task_type not in self.cfg.routes:
                err = WireError(
                    "unknown_task_type", f"no route for task type {req.task_type!r}", "$.task_type"
                )
                err.request_id, err.tenant, err.reply_to = req.request_id, req.tenant, req.reply_to
                raise err
            if self._foreign(req.request_id, req.tenant):
                err = WireError(
                    REQUEST_ID_TAKEN, f"request id {req.request_id!r} names another tenant's "
                    "request: use ids no other tenant uses (e.g. UUIDs)", "$.request_id",
                )  # fmt: skip
                err.request_id, err.tenant, err.reply_to = req.request_id, req.tenant, req.reply_to
                raise err
        except WireError as err:
            if self._foreign(err.request_id, err.tenant):  # not answered: the one answer to
                err.request_id = None  # that id is the other tenant's, and so is its recovery
            if err.request_id is None or self.delivered.pop(err.request_id, None) is None:
                try:
                    await self._deadletter(record, err)
                except Exception as failed:  # its copy or answer may be out already: never
                    # dead-letter it twice here; the next owner checks its reply topic
                    raise StateDiverged(f"could not dead-letter {pos}: {failed!r}") from failed
            # else: the last owner dead-lettered and answered it before it died
            self._finish(pos)
            return
        if await self._forwarded(record, req.tenant, req.request_id, pos):
            return
        ctx = self._ctx()
        resume = req.request_id in self.orphans
        self.orphans.discard(req.request_id)
        delivered = self.delivered.pop(req.request_id, None)
        streamed = None
        if delivered is not None and delivered.get(STREAM_BEGUN):  # its chunks went out
            if resume:
                await self._stream_begun(req.request_id)
                ctx = self._ctx()
                streamed = self._streamed(req, delivered)
            delivered = None
        if delivered is not None and (resume or req.request_id not in self.state.inflight):
            terminal = terminal_from_response(delivered, reply_to=req.reply_to)
            p, o = req.intake_partition, req.intake_offset
            intake = (p, o) if p is not None and o is not None else None
            decision = decide_delivered(self.state, terminal, ctx, intake=intake)
        else:
            key, answer = self._cached(req, ctx)
            decision = decide_intake(
                self.state, req, ctx, cached_response=answer, cache_key=key, resume=resume,
                streamed=streamed,
            )  # fmt: skip
        if any(isinstance(e, Call) for e in decision.effects) or not decision.effects:
            self.bodies.setdefault(req.request_id, {"messages": req.messages, **req.params})
        if req.stream:
            self.streams.add(req.request_id)
        self.positions.setdefault(req.request_id, []).append(pos)
        if decision.events:  # accepted: its span opens before its first event is published
            self.telemetry.start_request(req, record.headers, topic=record.topic)
        await self._apply(decision, req.request_id, ctx.now_ms, copy=pos)
        if not decision.events:  # a duplicate: the first record answers (or answered)
            if not decision.effects:
                self._also_answer(req, pos)
            self._finish_one(req.request_id, pos)  # unless held until its copy is answered
        for event in decision.events:  # a streamed follower joins its leader's stream
            if isinstance(event, ev.RequestCoalesced) and req.stream:
                relay = self.relays.get(event.leader_request_id)
                if relay is not None and req.request_id in self.state.inflight:
                    await self._follow(relay, req.request_id, req.reply_to)

    def _foreign(self, request_id: str | None, tenant: str | None) -> bool:
        """Whether `request_id` names another tenant's request (in flight, or answered)."""
        holder = None if request_id is None else request_holder(self.state, request_id)
        return holder is not None and holder != tenant

    async def _forwarded(self, record: Any, tenant: str, request_id: str, pos: Position) -> bool:
        """Forward a record off its tenant's home partition there (True), keeping its id,
        so a second forward is a duplicate."""
        home = home_partition(tenant)
        if home == record.partition:
            return False
        headers = [(k, v) for k, v in record.headers if k != REQUEST_ID_HEADER]
        headers.append((REQUEST_ID_HEADER, request_id.encode()))
        await (await self.producer.send(
            self.topics.requests, record.value, key=tenant.encode(), headers=headers,
            partition=home,
        ))  # fmt: skip
        self._finish(pos)
        return True

    async def _cancel(self, cancel: Cancel, record: Any, pos: Position) -> None:
        """A cancel record: stop the request's running call (its task ends the request
        `cancelled` with what it used), or end it at once when no call runs (waiting for a
        retry). A request not in flight, or another tenant's, is left alone."""
        rid = cancel.request_id
        if await self._forwarded(record, cancel.tenant, f"cancel:{rid}", pos):
            return
        flight = self.state.inflight.get(rid)
        task = self.calls.get(rid)
        if flight is None or flight.tenant != cancel.tenant:
            log.info("cancel of %s ignored: not in flight for tenant %s", rid, cancel.tenant)
        elif shares_its_answer(self.state, flight):  # aborted, it would leave them waiting
            log.info("cancel of %s ignored: coalesced requests wait on its answer", rid)
        elif task is not None and not task.done():
            self.cancelling[rid] = cancel.reason
            task.cancel()
        else:
            ctx = self._ctx()
            decision = decide_cancel(self.state, rid, cancel.tenant, cancel.reason, ctx)
            await self._apply(decision, rid, ctx.now_ms)
            for relay in self.relays.values():  # a follower of a stream: no more records
                relay.drop(rid)
        self._finish(pos)

    async def _recover(self, record: Any, pos: Position, err: Exception) -> None:
        """The router failed on an intake record: an accepted request fails with
        `internal_error`; one not yet decided goes to the DLQ (answered `rejected` when it
        names its request). Either way it ends, once."""
        accepted = next((rid for rid, ps in self.positions.items() if pos in ps), None)
        try:
            if accepted is not None and accepted in self.state.inflight:
                await self._fail_internally(accepted, err)
                return
            if accepted is not None:  # answered already (a resend failed): nothing to end
                self._finish_one(accepted, pos)
                return
            wire = WireError("internal_error", f"the router failed on this record: {err!r}")
            with suppress(Exception):  # a record that names its request is answered too
                decoded = msgspec.json.decode(record.value or b"{}")
                if isinstance(decoded, dict) and isinstance(decoded.get("request_id"), str):
                    wire.request_id = decoded["request_id"]
                    tenant = decoded.get("tenant")
                    if isinstance(tenant, str) and TENANT_ID.fullmatch(tenant):
                        wire.tenant = tenant
            await self._deadletter(record, wire)
            self._finish(pos)
        except Exception as again:
            self._fail_fatally(StateDiverged(f"could not end a failed request: {again!r}"))

    async def _fail_internally(self, request_id: str, err: BaseException) -> None:
        ctx = self._ctx()
        message = f"the router failed on this request ({type(err).__name__}); it was not retried"
        decision = decide_internal_error(self.state, request_id, message, ctx)
        await self._apply(decision, request_id, ctx.now_ms)

    async def _guarded(self, request_id: str, work: Awaitable[None]) -> None:
        """A request task: if it fails, its request fails with `internal_error` (never left in
        flight holding a slot, a reservation and its partition's commit point)."""
        try:
            await work
        except StateDiverged as err:
            self._fail_fatally(err)
        except Exception as err:
            log.exception("request %s: a request task failed", request_id)
            try:
                await self._fail_internally(request_id, err)
            except Exception as again:
                self._fail_fatally(StateDiverged(f"could not fail {request_id}: {again!r}"))

    def _fail_fatally(self, err: BaseException) -> None:
        if self.fatal is None:
            log.critical("stopping: %s (a restart rebuilds the state from the log)", err)
            self.fatal = err
        if self._stop is not None:
            self._stop.set()

    def _cached(self, req: IntakeRequest, ctx: Context) -> tuple[str | None, dict[str, Any] | None]:
        """The request's cache key, and the decoded answer of its live entry, if any."""
        key = admission_key(req, ctx.cfg)
        entry = cache_index(self.state, req.tenant).lookup(key, ctx.now_ms) if key else None
        if entry is None:
            return key, None
        try:
            answer = self.codec.decode_response(entry)
        except CacheCodecError:
            log.warning("cache entry %s is unreadable: answering from the upstream", key)
            return key, None
        if not req.stream:
            return key, answer
        chunks, whole = answer.get("chunks"), answer.get("completion")
        if not isinstance(chunks, list) or not isinstance(whole, dict):
            log.warning("cache entry %s is not a stream's: answering from the upstream", key)
            return key, None
        self.replays[req.request_id] = chunks  # the hit answers with these, then `whole`
        return key, whole

    async def _deadletter(self, record: Any, err: WireError) -> None:
        """The DLQ copy and the terminal `deadlettered` event; a record that names its
        request is also answered `rejected` / `invalid_request`, on its `reply_to` when
        that is valid, else on the responses topic (docs/reference/records.md, intake
        request)."""
        headers = [*record.headers, ("turnout-error", err.code.encode()),
                   ("turnout-error-detail", str(err).encode())]  # fmt: skip
        value = record.value
        if value is not None and len(value) > DLQ_VALUE_LIMIT:  # Kafka would refuse it whole
            headers.append(("turnout-error-truncated-from", str(len(value)).encode()))
            value = value[:DLQ_VALUE_LIMIT]
        sends = [await self.producer.send(self.topics.dlq, value, key=record.key, headers=headers)]
        tenant = err.tenant or _tenant_of_key(record.key)
        if err.request_id is not None:
            answer = ev.RequestRejected(
                request_id=err.request_id, tenant=tenant, code="invalid_request",
                message=str(err), reply_to=err.reply_to,
            )  # fmt: skip
            sends.append(await self._send_response(answer))
        await asyncio.gather(*sends)
        await self._publish([ev.RequestDeadlettered(
            request_id=err.request_id, tenant=tenant, code=err.code, detail=err.detail,
            path=err.path, topic=record.topic, partition=record.partition, offset=record.offset,
        )])  # fmt: skip

    # ------------------------------------------------------------ effects

    def _ctx(self) -> Context:
        return Context(now_ms=self.clock.now_ms(), cfg=self.cfg, prices=self.prices.table)

    async def _apply(
        self, decision: Decision, request_id: str, now: int, copy: Position | None = None
    ) -> None:
        """Fold the decision's events at `now` (the time it was decided at, also each
        event's `ce_time`, so replaying the log folds them at the same instant), then
        publish them and carry out the effects. A decision for a partition this router no
        longer owns is dropped, unfolded and unpublished (fencing: only the owner speaks
        for a tenant; the new owner resumes the request from the log). `copy`: the intake
        position of the record decided, when it is a resend."""
        if not self._fold(decision, request_id, now):
            return
        try:
            await self._publish_decision(decision, request_id, now)
        except Exception as err:
            raise StateDiverged(f"events of {request_id} were not published: {err!r}") from err
        for effect in decision.effects:
            match effect:
                case Call():
                    task = self._spawn(self._guarded(effect.request_id, self._call(effect)))
                    self.calls[effect.request_id] = task
                case Wait():
                    asyncio.get_running_loop().call_later(
                        effect.delay_ms / 1000,
                        lambda: self._spawn(self._guarded(request_id, self._retry_due(request_id))),
                    )
                case Respond():
                    self._finish_request(effect.terminal.request_id)
                case Resend() if effect.terminal.request_id in self.answering:
                    # once its answer is recorded
                    self._also_reply(effect.terminal.request_id, effect.terminal.reply_to, copy)
                case Resend():
                    await self._respond(effect.terminal)

    def _fold(self, decision: Decision, request_id: str, now: int) -> bool:
        """`_apply`'s first step: fold the decision's events; False (nothing folded) when
        this router no longer owns the request's partition."""
        if not self._owns(decision, request_id):
            self.fenced += 1
            log.info("request %s: its partition moved to another router; dropped", request_id)
            self._finish_request(request_id)
            return False
        for event in decision.events:  # fold before any await: the next decision sees it
            evolve(self.state, event, now, self.cfg)
            p = home_partition(event.tenant)
            self._unsent[p] = self._unsent.get(p, 0) + 1
            if self.schedule is not None:  # counts toward the partition's next snapshot
                self.schedule.folded(p)
        return True

    def _apply_at_once(self, decision: Decision, request_id: str, now: int) -> None:
        """`_apply` for a decision of events only, with batching on: folded and handed to
        the producers in one step, no await (nothing can stop it between the two, and
        nothing waits a loop turn for it); the acks join the request's unacked ones."""
        assert not decision.effects and self.cfg.features.batching
        if not self._fold(decision, request_id, now):
            return
        try:
            futures = self._enqueue_events(decision.events, now, folded=True)
        except Exception as err:  # as in `_apply`: folded but not published
            raise StateDiverged(f"events of {request_id} were not published: {err!r}") from err
        self.unacked.setdefault(request_id, []).extend(futures)
        self.telemetry.published(decision.events)

    def _owns(self, decision: Decision, request_id: str) -> bool:
        flight = self.state.inflight.get(request_id)
        tenant = flight.tenant if flight is not None else next(
            (e.tenant for e in decision.events if e.tenant != ev.SYSTEM_TENANT), None
        )  # fmt: skip
        if tenant is None:
            return True
        partition = home_partition(tenant)
        if partition in self._revoking and self.consumer.dropped:
            self._fence_revoking()
        return partition in self.owned

    async def _publish_decision(self, decision: Decision, request_id: str, now: int) -> None:
        """Publish a folded decision's events, and its response before its terminal event."""
        events = decision.events
        responds = [e for e in decision.effects if isinstance(e, Respond)]
        if responds:  # every earlier event and the response are acked before the terminal
            terminals = [e for e in events if isinstance(e, Terminal)]
            early = [e for e in events if not isinstance(e, Terminal)]
            # sent together, acks awaited together: the response does not wait for the
            # events' round trip (the terminal, which records it, still comes after both)
            await self._publish(early, request_id, wait=False, time_ms=now, folded=True)
            for r in responds:  # a streamed cache hit: its recorded chunks come first
                chunks = self.replays.pop(r.terminal.request_id, None)
                if chunks is not None and isinstance(r.terminal, ev.RequestCompleted):
                    await self._replay(r.terminal, chunks)
            answering = {r.terminal.request_id for r in responds}
            self.answering |= answering
            try:
                sent = [await self._send_response(r.terminal) for r in responds if not r.delivered]
                await acked([*self.unacked.pop(request_id, []), *sent])
                await self._publish(terminals, time_ms=now, folded=True)
            finally:
                self.answering -= answering
            # copies from other clients (that came while it ran, or while it was being
            # answered): answered once the answer is recorded, and on their own: a copy's
            # topic that is gone fails only that copy
            copies = [
                (msgspec.structs.replace(r.terminal, reply_to=topic), held)
                for r in responds
                for topic, held in self.also_reply.pop(r.terminal.request_id, {}).items()
            ]
            if copies:
                self._spawn(self._answer_copies(copies))
        else:  # not awaited: acks are collected before the request's response
            await self._publish(events, request_id, wait=False, time_ms=now, folded=True)

    async def _call(self, call: Call) -> None:
        body = self.bodies.get(call.request_id)
        if body is None:
            return
        flight = self.state.inflight.get(call.request_id)
        attempt = self.telemetry.start_attempt(call.request_id, call.model, call.attempt)
        stats: ev.StreamStats | None = None
        cut: str | None = None
        chunks: list[dict[str, Any]] | None = None
        try:
            if flight is not None and flight.stream:
                streamed = await self._stream(call, body, flight.reply_to, attempt)
                if streamed is None:  # stale: the request moved on while it streamed
                    return
                result, stats, cut, chunks = streamed
            else:
                result = await self.upstream.call(call.model, body)
        except asyncio.CancelledError:
            if call.request_id not in self.cancelling:
                raise
            _uncancel()
            result = upstream.CallResult(ok=False, error_class="cancelled", message="cancelled")
        finally:
            if self.calls.get(call.request_id) is asyncio.current_task(self._loop):
                del self.calls[call.request_id]
        self.telemetry.end_attempt(attempt, result)
        reason = self.cancelling.pop(call.request_id, None)
        if reason is not None:
            outcome = msgspec.structs.replace(self._result(call, result), stream=stats)
            ctx = self._ctx()
            decision = decide_cancel(
                self.state, call.request_id, flight.tenant if flight else "", reason, ctx,
                stopped=outcome,
            )  # fmt: skip
            await self._apply(decision, call.request_id, ctx.now_ms)
            return
        if call.request_id not in self.state.inflight:  # its partition moved, and the state
            # was rebuilt without it meanwhile: the new owner resumed it (fencing)
            self.fenced += 1
            log.info("request %s: its partition moved to another router; dropped", call.request_id)
            self._finish_request(call.request_id)
            return
        outcome = self._result(call, result)
        if stats is not None:
            outcome = msgspec.structs.replace(outcome, stream=stats, cut=cut)
        if result.ok and result.response is not None:
            outcome = self._refuse_oversized(outcome, result.response)
        flight = self.state.inflight.get(call.request_id)
        if result.ok and result.response and flight is not None and flight.cache_key:
            # a whole stream is kept as its chunk records and its assembled answer
            stored = result.response if chunks is None else {
                "completion": result.response, "chunks": chunks,
            }  # fmt: skip
            encoded = self.codec.encode_response(stored, self.cache_encoding)
            outcome = msgspec.structs.replace(outcome, cache_body=encoded)
        ctx = self._ctx()
        decision = decide_result(self.state, call.request_id, outcome, ctx)
        await self._apply(decision, call.request_id, ctx.now_ms)

    async def _stream(
        self, call: Call, body: dict[str, Any], reply_to: str | None, attempt: Any = None
    ) -> tuple[upstream.CallResult, ev.StreamStats, str | None, list[dict[str, Any]]] | None:
        """Call the upstream streamed, relaying its chunks past the first-token gate; the
        call's result, what was relayed and why it was cut short (budget, max_tokens) if it
        was, or None when the attempt went stale."""
        started = self.clock.monotonic()
        topic = reply_to or self.topics.responses
        if topic != self.topics.responses and not await self._reply_topic_ok(topic):
            topic = self.topics.responses  # its client's topic is gone (see _send_response)
        relay = Relay(
            producer=self.answers, topic=topic,
            partition=await self._reply_partition(topic, call.request_id),
            request_id=call.request_id, model=call.model, attempt=call.attempt,
            first_token=lambda ttft: self._first_token(call, ttft),
            flush_ms=self.cfg.streaming.flush_ms, flush_tokens=self.cfg.streaming.flush_tokens,
            clock=self.clock, limit_tokens=self._allowance(call, body),
            timed=self.telemetry.metrics,
        )  # fmt: skip
        self.relays[call.request_id] = relay
        flight = self.state.inflight.get(call.request_id)
        index = cache_index(self.state, flight.tenant) if flight is not None else None
        for follower in index.followers(call.request_id) if index is not None else ():
            joined = self.state.inflight.get(follower)
            if joined is not None and joined.stream:  # it came while the leader waited
                await self._follow(relay, follower, joined.reply_to)
        try:
            streamed = await self.upstream.stream(
                call.model, body, relay.chunk, ttft_timeout_s=self.cfg.streaming.ttft_timeout_s,
                assemble=False,
            )  # fmt: skip
            result = streamed.result
            if result.ok:  # the answer is what the client saw: all of it, the last
                # coalesced deltas and the usage chunk included, once they are published
                await relay.finish()
                result = upstream.assembled(
                    relay.merged or {}, latency_ms=result.latency_ms, slow=result.slow
                )
        except StaleAttempt:
            await relay.close()
            return None
        except CutShort:  # at its allowance: the answer is what was relayed, "length"
            await relay.finish()
            result = upstream.CallResult(
                ok=True, status=200, response=streams.completion(relay.merged or {}),
                latency_ms=(self.clock.monotonic() - started) * 1000,
            )  # fmt: skip
        except asyncio.CancelledError:  # a cancel record: the upstream call is closed
            if call.request_id not in self.cancelling:
                raise
            _uncancel()
            result = upstream.CallResult(ok=False, error_class="cancelled", message="cancelled")
        if not result.ok:
            await relay.close()
        estimated = relay.opened and result.usage is None
        if estimated:  # cut short before the upstream said: count what was relayed
            usage = _estimated_usage(body.get("messages"), relay.chars)
            result = msgspec.structs.replace(result, usage=usage)
        stats = ev.StreamStats(chunks=relay.seq, ttft_ms=relay.ttft_ms, usage_estimated=estimated)
        capped = body.get("max_tokens") or body.get("max_completion_tokens")
        cut = ("max_tokens" if capped else "budget") if relay.cut else None
        self.telemetry.streamed(attempt, relay.ttft_ms, relay.intervals or ())
        return result, stats, cut, relay.published

    async def _follow(self, relay: Relay, request_id: str, reply_to: str | None) -> None:
        topic = reply_to or self.topics.responses
        await relay.follow(request_id, topic, await self._reply_partition(topic, request_id))

    async def _reply_partition(self, topic: str, request_id: str) -> int:
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = self._partitions[topic] = await self.producer.partitions(topic)
            if len(self._partitions) > 10_000:
                self._partitions.clear()
        return reply_partition(request_id, partitions)

    async def _replay(self, terminal: ev.RequestCompleted, chunks: list[dict[str, Any]]) -> None:
        """A streamed cache hit: the recorded chunk records again, at once, in order."""
        topic = terminal.reply_to or self.topics.responses
        partition = await self._reply_partition(topic, terminal.request_id)
        await replay(self.answers, topic, partition, terminal.request_id, terminal.model,
                     chunks)  # fmt: skip

    def _allowance(self, call: Call, body: dict[str, Any]) -> int | None:
        """Completion tokens the request's budget reservation pays for at this model's price
        (None: no reservation, budgets off): a stream is cut there."""
        flight = self.state.inflight.get(call.request_id)
        tenant = self.state.budgets.get(flight.tenant) if flight is not None else None
        held = tenant.open.get(call.request_id) if tenant is not None else None
        if held is None or flight is None or not self.cfg.features.budgets:
            return None
        prompt = estimate_tokens(body.get("messages") or [])
        return completion_allowance(
            held.amount_micros, prompt, self.prices.price(call.model),
            limits=self.cfg.tenant(flight.tenant),
        )  # fmt: skip

    async def _stream_begun(self, request_id: str) -> None:
        """An orphan whose chunk records are on its reply topic although the log has no
        first token for it (its router died before that event was written): record the
        first token now, so it is resumed as a stream that had begun (ended `partial`),
        never streamed again from `seq` 1."""
        flight = self.state.inflight.get(request_id)
        if flight is None or flight.first_token_attempt or flight.model is None:
            return
        ctx = self._ctx()
        decision = decide_first_token(
            self.state, request_id, flight.model, flight.attempt, 0.0, ctx
        )
        await self._apply(decision, request_id, ctx.now_ms)

    def _streamed(self, req: IntakeRequest, delivered: dict[str, Any]) -> Streamed | None:
        """What an orphan's dead router had streamed (its chunk records on the reply topic),
        as the usage and cost its request is charged: estimated as for any stream cut
        before the upstream reported its usage (4 characters a token)."""
        flight = self.state.inflight.get(req.request_id)
        if flight is None or flight.model is None:
            return None
        usage = _estimated_usage(req.messages, int(delivered.get(STREAMED_CHARS) or 0))
        cost = self._cost_micros(flight.model, flight.tenant, usage)
        chunks = int(delivered.get(STREAMED_CHUNKS) or 0)
        return Streamed(chunks=chunks, usage=usage, cost_micros=cost)

    async def _first_token(self, call: Call, ttft_ms: float) -> bool:
        """Record an attempt's first token (closing its first-token gate); False if stale."""
        ctx = self._ctx()
        decision = decide_first_token(
            self.state, call.request_id, call.model, call.attempt, round(ttft_ms, 3), ctx
        )
        if not decision.events:
            return False
        if decision.effects or not self.cfg.features.batching:
            # shielded: a cancel arriving meanwhile must not stop it between fold and publish
            await asyncio.shield(self._apply(decision, call.request_id, ctx.now_ms))
        else:  # the usual case, at once: the first chunk does not wait a loop turn for it
            self._apply_at_once(decision, call.request_id, ctx.now_ms)
        flight = self.state.inflight.get(call.request_id)
        return flight is not None and flight.first_token_attempt == call.attempt

    def _refuse_oversized(self, outcome: CallResult, response: dict[str, Any]) -> CallResult:
        """An answer too large for a Kafka record cannot be recorded or sent: it is a failed
        call (`response_too_large`, no retry, no fallback), decided before anything is
        folded, so the request still ends with one terminal event and one response."""
        size = len(msgspec.json.encode(response))
        limit = self.kafka.max_record_bytes - RECORD_HEADROOM
        if size <= limit:
            return outcome
        return msgspec.structs.replace(
            outcome, ok=False, response=None, cache_body=None, error_class="response_too_large",
            message=f"the upstream's answer is {size:,} bytes; a Kafka record holds at most "
            f"{limit:,} with its envelope: ask for fewer max_tokens",
        )  # fmt: skip

    async def _retry_due(self, request_id: str) -> None:
        ctx = self._ctx()
        await self._apply(decide_retry_due(self.state, request_id, ctx), request_id, ctx.now_ms)

    def _result(self, call: Call, r: upstream.CallResult) -> CallResult:
        usage = r.usage or ev.Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        # a price the operator configured for the model's provider wins over a reported cost
        reported = None if call.model in self.configured_prices else r.cost_usd
        flight = self.state.inflight.get(call.request_id)
        cost = self._cost_micros(
            call.model, flight.tenant if flight else "default", usage, reported
        )
        return CallResult(
            model=call.model, attempt=call.attempt, ok=r.ok, latency_ms=r.latency_ms,
            status=r.status, response=r.response, usage=usage, cost_micros=cost,
            generation_id=r.generation_id, error_class=r.error_class or "http_error",
            message=r.message or "", retry_after_ms=r.retry_after_ms, slow=r.slow,
        )  # fmt: skip

    def _cost_micros(
        self, model: str, tenant: str, usage: ev.Usage, reported: float | None = None
    ) -> int:
        """What `usage` of `model` costs: the cost the upstream reported, else the model's
        price, else the tenant's default price."""
        price = self.prices.price(model)
        if reported is None and price is None and usage.total_tokens:
            price = self._default_price(model, tenant)
        return call_cost_micros(reported, price, usage.prompt_tokens, usage.completion_tokens)

    def _default_price(self, model: str, tenant: str) -> Price:
        """A model with no price anywhere and no reported cost is charged at its tenant's
        `default_price_per_mtok` (as its reservation was), and said once per model."""
        limits = self.cfg.tenant(tenant)
        if model not in self._unpriced:
            self._unpriced.add(model)
            log.warning(
                "no price for %s (provider %s) and no cost reported: charging the tenant's "
                "default_price_per_mtok (%g USD); set [providers.<name>.prices] to fix",
                model, self.upstream.provider(model), limits.default_price_per_mtok,
            )  # fmt: skip
        per_token = limits.default_price_per_mtok / 1e6
        return Price(prompt=per_token, completion=per_token)

    async def _respond(self, terminal: Terminal) -> None:
        await (await self._send_response(terminal))

    async def _send_response(self, terminal: Terminal) -> asyncio.Future[Any]:
        """Send the response (to `reply_to` or the responses topic); the ack's future.

        A `reply_to` topic that does not exist (never made, or deleted by a client that
        went away, as a stopping gateway deletes its own) gets nothing: the response goes
        to the responses topic instead, with a warning. It used to fail the request's
        publish and stop the router, and again after each restart (a poison record)."""
        topic = terminal.reply_to or self.topics.responses
        value = encode_response(terminal)
        headers = _END if terminal.request_id in self.streams else ()
        key = terminal.request_id.encode()
        if topic != self.topics.responses and not await self._reply_topic_ok(topic):
            self._reply_elsewhere(terminal, topic, "does not exist")
            topic = self.topics.responses
        ack = await self.answers.send(topic, value, key=key, headers=headers, urgent=True)
        if topic == self.topics.responses:
            return ack
        # the ack, unless it fails because the client's topic went away since it was
        # checked: then the response's ack on the responses topic (a task only then)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def acked(f: asyncio.Future[Any]) -> None:
            err = None if f.cancelled() else f.exception()
            if err is None or done.done():
                _chain(f, done)
            else:
                fallback = asyncio.ensure_future(self._or_default(err, terminal, value, headers))
                fallback.add_done_callback(lambda g: _chain(g, done))

        ack.add_done_callback(acked)
        return done

    async def _or_default(
        self, err: BaseException, terminal: Terminal, value: bytes, headers: Any
    ) -> Any:
        """A response to a client's topic failed (`err`): if the topic is gone it goes to
        the responses topic (its ack), else the failure stands (a broker failure)."""
        topic = terminal.reply_to or ""
        self._reply_ok.pop(topic, None)
        if await self._reply_topic_ok(topic):
            raise err
        self._reply_elsewhere(terminal, topic, f"failed ({err})")
        key = terminal.request_id.encode()
        return await (await self.answers.send(
            self.topics.responses, value, key=key, headers=headers, urgent=True
        ))  # fmt: skip

    async def _reply_topic_ok(self, topic: str) -> bool:
        """Whether a client's reply topic exists (kept for `_REPLY_OK_S` once seen; a
        missing one is asked about again each time, for at most `_REPLY_CHECK_S`)."""
        seen = self._reply_ok.get(topic)
        now = self.clock.monotonic()
        if seen is not None and now - seen < _REPLY_OK_S:
            return True
        try:
            async with asyncio.timeout(_REPLY_CHECK_S):
                exists = await self.answers.topic_exists(topic)
        except (TimeoutError, TurnoutError):
            exists = False
        if not exists:
            self._reply_ok.pop(topic, None)
            return False
        if len(self._reply_ok) > 10_000:
            self._reply_ok.clear()
        self._reply_ok[topic] = now
        return True

    def _reply_elsewhere(self, terminal: Terminal, topic: str, why: str) -> None:
        log.warning(
            "reply topic %s of request %s %s: its response goes to %s",
            topic, terminal.request_id, why, self.topics.responses,
        )  # fmt: skip

    def _also_answer(self, req: IntakeRequest, pos: Position) -> None:
        """A copy of a request in flight (its tenant's: `_foreign` saw to that): if its
        sender listens elsewhere than the first record's, its answer goes there too."""
        flight = self.state.inflight.get(req.request_id)
        default = self.topics.responses
        if flight is not None and (req.reply_to or default) != (flight.reply_to or default):
            self._also_reply(req.request_id, req.reply_to, pos)

    def _also_reply(self, request_id: str, reply_to: str | None, pos: Position | None) -> None:
        """Answer `request_id` on `reply_to` too, once its answer is recorded; the copy's
        record (`pos`) is done, and may be committed, once that answer is sent."""
        topics = self.also_reply.setdefault(request_id, {})
        held = topics.setdefault(reply_to or self.topics.responses, [])
        positions = self.positions.get(request_id, [])
        if pos is not None and pos in positions:
            positions.remove(pos)
            held.append(pos)

    async def _answer_copies(self, copies: list[tuple[Terminal, list[Position]]]) -> None:
        for copy, held in copies:
            try:
                await self._respond(copy)
            except Exception as err:  # its client went away with its topic: it alone
                log.warning(
                    "could not answer a copy of %s on %s: %s",
                    copy.request_id, copy.reply_to, err,
                )  # fmt: skip
            for pos in held:
                self._finish(pos)

    def _finish_request(self, request_id: str) -> None:
        """The request has its terminal event and response: its records are done."""
        for held in self.also_reply.pop(request_id, {}).values():  # fenced: not answered
            for pos in held:  # here; their records come again to the partition's owner
                self._finish(pos)
        for pos in self.positions.pop(request_id, []):
            self._finish(pos)
        self.bodies.pop(request_id, None)
        self.unacked.pop(request_id, None)
        self.streams.discard(request_id)
        self.replays.pop(request_id, None)
        self.relays.pop(request_id, None)

    def _finish_one(self, request_id: str, pos: Position) -> None:
        positions = self.positions.get(request_id, [])
        if pos in positions:
            positions.remove(pos)
            self._finish(pos)
        if not positions:
            self.positions.pop(request_id, None)
            self.streams.discard(request_id)

    def _finish(self, pos: Position) -> None:
        if self.offsets.finish(pos):  # else its slot went back when it was handed over
            self.slots.release()

    # ------------------------------------------------------------ events, commits

    async def _publish(
        self,
        events: Sequence[Any],
        request_id: str | None = None,
        *,
        wait: bool = True,
        time_ms: int | None = None,
        folded: bool = False,
    ) -> None:
        """Send events in order, stamped `time_ms` (default: now); with `wait`, await their
        acks and the request's earlier ones. `folded`: the live state holds them already
        (counted unsent since their fold; a snapshot waits until none is)."""
        if time_ms is None:
            time_ms = self.clock.now_ms()
        if self.cfg.features.batching:
            futures = self._enqueue_events(events, time_ms, folded=folded)
        else:  # one record per produce request, in order
            futures = []
            for event in events:
                futures += self._enqueue_events([event], time_ms, folded=folded)
                await futures[-1]
        if not wait and request_id is not None:
            self.unacked.setdefault(request_id, []).extend(futures)
        else:
            earlier = self.unacked.pop(request_id, []) if request_id is not None else []
            if futures or earlier:
                await acked([*earlier, *futures])
        if events:
            self.telemetry.published(events)

    def _enqueue_events(
        self, events: Sequence[Any], time_ms: int, *, folded: bool
    ) -> list[asyncio.Future[Any]]:
        """Hand events to their partitions' producers (no await); their delivery futures."""
        futures = []
        for event in events:
            traceparent = self.telemetry.traceparent(getattr(event, "request_id", None))
            key, value, headers = ce.encode_event(
                event, id=self.clock.new_id(), time_ms=time_ms, source=self.source,
                traceparent=traceparent,
            )  # fmt: skip
            # explicit (the event's key is its tenant): aiokafka's partitioner is pure Python
            partition = home_partition(event.tenant)
            producer = self.event_producers[partition % EVENT_PRODUCERS]
            future = producer.enqueue(
                self.topics.events, value, key=key, headers=headers, partition=partition
            )
            self._last_event[partition] = future
            if folded:
                left = self._unsent[partition] = self._unsent[partition] - 1
                if not left and self.schedule is not None:
                    self._maybe_snapshot(partition)
            futures.append(future)
        return futures

    def _config_applied(self) -> ev.ConfigApplied:
        return ev.ConfigApplied(
            instance=self.instance, config_hash=config_hash(self.cfg),
            config=config_to_dict(self.cfg),
            features={k: bool(v) for k, v in config_to_dict(self.cfg)["features"].items()},
        )  # fmt: skip

    async def _refresh_prices(self) -> None:
        await self.prices.refresh()
        try:
            await self._record_prices()
        except Exception as err:  # said again after the next refresh that changes it
            self._prices_said = None
            log.warning("could not record the new price table: %r", err)

    async def _record_prices(self) -> None:
        """Publish the price table (`turnout.prices.updated`) when it changed since this
        router last said it: `turnout replay whatif` reserves and routes by it."""
        table = self.prices.table
        if table is self._prices_said or not table:
            return
        self._prices_said = table
        prices = {m: [p.prompt, p.completion] for m, p in sorted(table.items())}
        if prices != self._prices_last:
            await self._publish([ev.PricesUpdated(instance=self.instance, prices=prices)])
            self._prices_last = prices

    def _needs_prices(self) -> bool:
        """Prices matter for `cheapest`, price caps and budget reservations."""
        if self.cfg.features.budgets:
            return True
        routes = self.cfg.routes.values()
        return any(r.strategy == "cheapest" or r.max_price_per_mtok is not None for r in routes)

    # ------------------------------------------------------------ snapshots

    async def _check_snapshots_topic(self) -> None:
        if self.schedule is None:
            return
        if self.topics.snapshots not in await existing_topics(self.kafka):
            log.warning(
                "topic %s does not exist: no snapshots (every rebuild folds the whole events "
                "topic); run `turnout topics ensure`", self.topics.snapshots,
            )  # fmt: skip
            self.schedule = None

    def _maybe_snapshot(self, partition: int, *, force: bool = False) -> None:
        """Capture `partition`'s state now if it is due and nothing folded is unsent (no
        await in here: the capture and the offset it will cover belong together)."""
        assert self.schedule is not None
        now = (self._loop or asyncio.get_running_loop()).time()
        if self.fatal is not None:
            return  # the state may hold events the log does not: never snapshot it
        if self._unsent.get(partition) or not self.schedule.due(partition, now, force=force):
            return
        events = self.schedule.since.get(partition, 0)
        part = snapshot.capture(self.state, partition)
        covers: asyncio.Future[Any] | int = self._last_event.get(
            partition, self._rebuilt_to.get(partition, 0)
        )
        self.schedule.taken(partition, now)
        task = asyncio.create_task(self._write_snapshot(part, covers, self.clock.now_ms(), events))
        self._snapshot_tasks.add(task)
        task.add_done_callback(self._snapshot_tasks.discard)

    async def _write_snapshot(
        self, part: snapshot.PartitionState, covers: asyncio.Future[Any] | int, taken_at_ms: int,
        events: int,
    ) -> None:  # fmt: skip
        """Write one captured snapshot, once the last event it covers is acknowledged."""
        assert self.schedule is not None
        p = part.partition
        try:
            offset = covers if isinstance(covers, int) else (await covers).offset + 1
            snapshot_id = self.clock.new_id()
            manifest, chunks = await asyncio.to_thread(
                _pack, part, snapshot_id=snapshot_id, offset=offset, taken_at_ms=taken_at_ms,
                writer=self.instance,
            )  # fmt: skip
            await snapshots.write_snapshot(
                self.producer, self.topics.snapshots, manifest, chunks, self.schedule.older(p)
            )
        except Exception as err:  # a lost snapshot only costs rebuild time
            log.warning("snapshot of events partition %d not written: %r", p, err)
            self.schedule.lost(p, events)
            return
        self.schedule.done(p, snapshot_id, len(chunks), manifest.size, offset)

    async def _snapshot_all(self, timeout_s: float) -> None:
        """On stop: a last snapshot of every owned partition (a restart rebuilds from it),
        then every snapshot write finished (bounded)."""
        if self.schedule is None:
            return
        deadline = asyncio.get_running_loop().time() + timeout_s
        if self._snapshot_tasks:  # one being written covers less: let it finish first
            await asyncio.wait(self._snapshot_tasks, timeout=timeout_s)
        for p in sorted(self.schedule.owned):
            self._maybe_snapshot(p, force=True)
        left = deadline - asyncio.get_running_loop().time()
        if self._snapshot_tasks and left > 0:
            await asyncio.wait(self._snapshot_tasks, timeout=left)

    async def _supervise(self, part: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` until it returns; when it fails, say so (`faults`: /readyz turns 503,
        /healthz names the part and since when) and start it again, backing off."""
        delay = SUPERVISE_MIN_S
        while True:
            try:
                await work()
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:
                fault = self.faults.get(part)
                if fault is None:  # a new fault (or the last one was over): back off anew
                    delay = SUPERVISE_MIN_S
                    fault = self.faults[part] = {"since_ms": self.clock.now_ms(), "restarts": 0}
                fault["restarts"] += 1
                fault["error"] = repr(err)[:500]
                log.error("%s failed (%r): restarting it in %.1f s", part, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, SUPERVISE_MAX_S)

    async def _watch_topics(self, period_s: float) -> None:
        """Every `period_s`: are Turnout's topics still there? A broker that lost them (Tansu
        keeps nothing across a restart; on Kafka, someone deleted them) lost the history
        they held: say so in the log and /healthz (`broker_history_lost`), and create them
        again so serving goes on."""
        while True:
            await asyncio.sleep(period_s)
            await self._check_topics()
            self._working("topics")

    async def _check_topics(self, *, starting: bool = False) -> None:
        """Turnout's topics missing, or with another partition count than theirs: the
        broker lost them (a Tansu restart keeps nothing, and Tansu auto-creates a topic a
        client asks about, with 4 partitions: docs/reference/broker.md rule 1). Say so in the
        log and /healthz. Missing ones are made again and serving goes on; wrongly auto-created
        ones cannot be fixed under a subscribed consumer (it makes them again at once):
        the router stops (exit 1), and its restart remakes them before it subscribes.
        `starting`: before the consumer starts, topics not made yet are made quietly."""
        specs = {t.name: t.partitions for t in topic_specs(self.kafka)}
        present = await existing_topics(self.kafka)
        missing = sorted(t for t in specs if t not in present)
        wrong = sorted(t for t, n in specs.items() if t in present and present[t] != n)
        if not missing and not wrong:
            return
        tansu = self.engine == "tansu"
        if starting:
            if wrong and tansu:
                log.error(
                    "topics %s have other partition counts than Turnout's (auto-created "
                    "by a client after Tansu lost them): made again",
                    ", ".join(wrong),
                )
                await delete_topics(self.kafka, wrong)
            await ensure_topics(self.kafka)
            if tansu:  # it answers UnknownError to produces just after a create
                await asyncio.sleep(TANSU_SETTLE_S)
            return
        self.history_lost = {
            "since_ms": self.clock.now_ms(), "missing_topics": missing,
            "wrong_topics": wrong, "broker": self.kafka.bootstrap,
        }  # fmt: skip
        log.error(
            "the broker at %s lost topics %s (a Tansu restart keeps nothing): their records, "
            "group offsets and snapshots are gone. State held here lives on, but a restart "
            "cannot rebuild it from the log",
            self.kafka.bootstrap, ", ".join(missing + wrong),
        )  # fmt: skip
        await ensure_topics(self.kafka)
        if wrong:
            self._fail_fatally(BrokerHistoryLost(
                f"topics {', '.join(wrong)} were auto-created with other partition counts "
                "after the broker lost them; a restart of the router makes them again"
            ))  # fmt: skip

    def _working(self, part: str) -> None:
        """`part` did its work: it is no longer failing."""
        if part in self.faults:
            fault = self.faults.pop(part)
            log.info("%s works again after %d restart(s)", part, fault["restarts"])

    async def _commit_every(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            await self._commit()
            self._working("commits")
            if self.schedule is not None:  # quiet partitions are due by time
                for p in list(self.schedule.owned):
                    self._maybe_snapshot(p)
            if self._needs_prices() and (self._pricing is None or self._pricing.done()):
                # its own task: a slow /models never holds up the commits
                self._pricing = asyncio.create_task(self._refresh_prices())

    async def _commit(self) -> None:
        pinned = self._pinned()
        offsets = {
            tp: min(o, pinned.get(tp, o))
            for tp, o in self.offsets.committable().items()
            if tp in self.consumer.assignment
        }
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except GroupMovedOn:
            self._fence_revoking()
            raise

    def _pinned(self) -> dict[TopicPartition, int]:
        """Per intake partition, the lowest record offset of a request the log shows in
        flight (from this assignment's committed offset on): never committed past, so a
        request no router finished comes again to its partition's owner, whatever
        happened to the router that had it (a net under the offset bookkeeping)."""
        pinned: dict[TopicPartition, int] = {}
        for rid in self.state.inflight:
            pos = self.state.intake.get(rid)
            if pos is None:
                continue
            tp = TopicPartition(self.topics.requests, pos[0])
            if pos[1] >= self._floor.get(tp, 0) and pos[1] < pinned.get(tp, pos[1] + 1):
                pinned[tp] = pos[1]
        return pinned

    def _fence_revoking(self) -> None:
        """The group went on without this router while it drained a revoke: fence those
        partitions at once, not at the drain's end."""
        if not self._revoking & self.owned:
            return
        log.warning(
            "the group rebalanced without this router while it drained partitions %s: "
            "their late results are dropped from now on", sorted(self._revoking),
        )  # fmt: skip
        self.owned -= self._revoking
        # and nothing of theirs may be committed any more: a dropped request's record must
        # come again to whoever owns its partition now
        self._release(
            self.offsets.drop(TopicPartition(self.topics.requests, p) for p in self._revoking)
        )

    def _release(self, slots: int) -> None:
        """Give back the in-flight slots of work handed over (see Offsets)."""
        for _ in range(slots):
            self.slots.release()


def _pack(
    part: snapshot.PartitionState, *, snapshot_id: str, offset: int, taken_at_ms: int, writer: str
) -> tuple[snapshots.Manifest, list[bytes]]:
    """Encode and compress (in a thread: a big partition takes milliseconds)."""
    frame = snapshot.encode(part, offset=offset, taken_at_ms=taken_at_ms, writer=writer)
    return snapshots.pack(
        frame, snapshot_id=snapshot_id, partition=part.partition, offset=offset,
        taken_at_ms=taken_at_ms, writer=writer,
    )  # fmt: skip


def _uncancel() -> None:
    """A cancellation we asked for was handled: the task goes on (to record it)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _chain(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    """Settle `target` as `source` settled (if it is still waiting)."""
    if source.cancelled():
        if not target.done():
            target.cancel()
        return
    err = source.exception()  # retrieved even when no one waits any more
    if target.done():
        return
    if err is not None:
        target.set_exception(err)
    else:
        target.set_result(source.result())


def _tenant_of_key(key: bytes | None) -> str:
    """The events key for a record whose tenant is missing or not a valid tenant id."""
    tenant = key.decode("utf-8", "replace") if key else ""
    return tenant if TENANT_ID.fullmatch(tenant) else "_unknown"
