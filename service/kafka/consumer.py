"""The consumer adapters: a group member for the router, a reader for replays.

`GroupConsumer` joins a consumer group, hands out `getmany` batches and
commits only when told to (offsets are committed after the work is
acknowledged). Its `on_assigned` / `on_revoked` hooks (called only with a
non-empty set) let the router rebuild per-partition state before serving and
drop it when partitions leave. A hook that fails is re-raised from the next
`getmany`, never swallowed (aiokafka would only log it). `stop()` runs
`on_revoked` for what is still assigned, then leaves the group.

`Reader` is not a group member: it reads explicit partitions from the
beginning (or given offsets) until a condition holds, for catch-up and replay.

docs/reference/broker.md rules followed here:
- 3: `subscribe` auto-creates missing topics on Tansu, so create them first
  (`topics.ensure_topics`); `topic_partitions` finds partitions without probing.
- 4 and 5: `auto_offset_reset="earliest"` always; no end offsets, no
  seek_to_end, no offsets_for_times. "Until the end" is a caller's condition
  on what it reads (for example a sentinel record it produced).
- 11: heartbeat 1 s; the session is 30 s on Apache Kafka (a single broker's restart
  takes ~15 s here, and a member expired meanwhile hands its partitions over while its
  own writes are still on their way) but at most 6 s on Tansu, which joins in
  session/2; `wait_for_assignment` before relying on a group member.
- A named member (`evict_predecessors`) removes, on Apache Kafka, the members of its
  group that carry its client id when it starts: its own earlier process that died
  without leaving. The rebalance its join starts then need not wait a whole session
  for that dead member.
- 12: short `fetch_max_wait_ms` (Tansu never answers a waiting fetch early). On Apache
  Kafka, which answers as soon as a record arrives, a consumer that got nothing for
  IDLE_AFTER_S waits `idle_fetch_max_wait_ms` instead, until records come (`_pace`):
  idle processes stop polling a hundred times a second.
- 13: no static membership; committed offsets are read with `committed(tp)`.
- 15: every commit runs under `commit_timeout_ms` and raises `CommitTimeout`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from types import TracebackType
from typing import Any, Self, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest
from aiokafka.structs import ConsumerRecord, TopicPartition

from turnout.service.errors import TurnoutError
from turnout.service.kafka import codec, fetch
from turnout.service.kafka.errors import CommitTimeout, kafka_errors, start_client
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.kafka.topics import admin_client, broker_engine, existing_topics

codec.install()  # aiokafka's produce and fetch messages, compiled (codec.py)
fetch.install()  # aiokafka's per-partition fetch bookkeeping, leaner (fetch.py)

__all__ = [
    "Batch",
    "ConsumerRecord",
    "GroupConsumer",
    "PartitionsHook",
    "Reader",
    "TopicPartition",
    "consumer_config",
    "next_offsets",
    "topic_partitions",
]

log = logging.getLogger("turnout.kafka")

TANSU_SESSION_MS = 6_000  # Tansu joins a group in session/2: keep rebalances short there
IDLE_AFTER_S = 1.0  # no record this long: fetches wait `idle_fetch_max_wait_ms` (Apache Kafka)
EVICT_TIMEOUT_S = 5.0  # how long a start looks for a dead predecessor (see GroupConsumer._evict)

Record: TypeAlias = ConsumerRecord  # ConsumerRecord[bytes, bytes]
Batch: TypeAlias = dict[TopicPartition, list[Record]]
PartitionsHook: TypeAlias = Callable[[frozenset[TopicPartition]], Awaitable[None] | None]


def consumer_config(settings: KafkaSettings, *, group_id: str | None) -> dict[str, Any]:
    """The AIOKafkaConsumer keyword arguments every Turnout consumer uses."""
    return {
        "bootstrap_servers": settings.bootstrap,
        "client_id": settings.client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "rebalance_timeout_ms": settings.rebalance_timeout_ms,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "max_poll_records": settings.max_poll_records,
        "max_partition_fetch_bytes": settings.max_partition_fetch_bytes,
        "fetch_max_bytes": settings.fetch_max_bytes,
        "request_timeout_ms": settings.request_timeout_ms,
    }


def next_offsets(batch: Batch) -> dict[TopicPartition, int]:
    """The offsets to commit once every record of `batch` is done."""
    return {tp: records[-1].offset + 1 for tp, records in batch.items() if records}


async def topic_partitions(settings: KafkaSettings, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of `topics`, read without auto-creating anything (rule 3)."""
    counts = await existing_topics(settings)
    missing = [t for t in topics if t not in counts]
    if missing:
        raise TurnoutError(
            f"topic(s) {', '.join(missing)} do not exist on {settings.bootstrap}: "
            "run `turnout topics ensure`"
        )
    return [TopicPartition(t, p) for t in topics for p in range(counts[t])]


class _Client:
    """Start/stop, context management and the idle fetch wait shared by both adapters."""

    def __init__(self, settings: KafkaSettings, *, group_id: str | None) -> None:
        self.settings = settings
        self._consumer = AIOKafkaConsumer(**consumer_config(settings, group_id=group_id))
        self._idle_wait_ms: int | None = None  # Apache Kafka: known at start
        self._last_records = 0.0
        self.idle = False  # no record for IDLE_AFTER_S: fetches wait idle_fetch_max_wait_ms

    async def _start(self) -> None:
        c, s = self._consumer, self.settings
        if s.idle_fetch_max_wait_ms > s.fetch_max_wait_ms:
            try:
                engine = await broker_engine(s)
            except BaseException:  # never started: keeps its __del__ from warning
                await c.stop()
                raise
            # Tansu never answers a waiting fetch early: a long wait would delay records
            self._idle_wait_ms = s.idle_fetch_max_wait_ms if engine == "kafka" else None
        await start_client(c.start, c.stop, bootstrap=s.bootstrap, timeout_ms=s.connect_timeout_ms)
        self._last_records = time.monotonic()

    def _pace(self, got_records: bool) -> None:
        """Switch the fetch wait between busy and idle (aiokafka's fetcher reads it for
        each fetch request it makes). Records that come while an idle fetch waits are
        answered at once by Apache Kafka; the fetches after them wait the short time
        again, so partitions left out of a fetch in flight are not held up long."""
        fetcher = getattr(self._consumer, "_fetcher", None)
        if self._idle_wait_ms is None or fetcher is None:
            return
        now = time.monotonic()
        if got_records:
            self._last_records = now
            if self.idle:
                self.idle = False
                fetcher._fetch_max_wait_ms = self.settings.fetch_max_wait_ms
        elif not self.idle and now - self._last_records >= IDLE_AFTER_S:
            self.idle = True
            fetcher._fetch_max_wait_ms = self._idle_wait_ms

    @property
    def fetch_max_wait_ms(self) -> int:
        """The wait of this consumer's next fetch request."""
        fetcher = getattr(self._consumer, "_fetcher", None)
        return int(getattr(fetcher, "_fetch_max_wait_ms", self.settings.fetch_max_wait_ms))

    async def start(self) -> None:
        await self._start()

    async def stop(self) -> None:
        with kafka_errors(self.settings.bootstrap):
            await self._consumer.stop()

    async def getmany(self, *, timeout_ms: int = 100, max_records: int | None = None) -> Batch:
        """The records fetched so far, by partition; waits up to `timeout_ms` for some."""
        with kafka_errors(self.settings.bootstrap):
            batch: Batch = await self._consumer.getmany(
                timeout_ms=timeout_ms, max_records=max_records
            )
        self._pace(bool(batch))
        return batch

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:  # e.g. cancelled after connecting, while seeking
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _leave_even_at_generation_zero(consumer: AIOKafkaConsumer) -> None:
    """Make a stopping member send LeaveGroup also in generation 0.

    Tansu numbers a group's first generation 0, and aiokafka sends LeaveGroup
    only for generations above 0. Without this, the first member of a group
    never leaves it, and the next member's join waits until that member's
    session expires: 11 s instead of 3 s with a 6 s session. Kafka starts at
    generation 1, where this changes nothing.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    leave = getattr(coordinator, "_maybe_leave_group", None)
    if coordinator is None or leave is None:  # another aiokafka: leave it alone
        return

    async def maybe_leave_group() -> None:
        if coordinator.generation == 0 and coordinator.member_id:
            request = LeaveGroupRequest(coordinator.group_id, coordinator.member_id)
            with suppress(KafkaError):
                await coordinator._send_req(request)
        await leave()

    coordinator._maybe_leave_group = maybe_leave_group


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, owner: GroupConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._revoked(frozenset(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner._assigned(frozenset(assigned))


class GroupConsumer(_Client):
    """A member of `group_id` (default `settings.group_id`) reading `topics`."""

    def __init__(
        self,
        settings: KafkaSettings,
        topics: Sequence[str],
        *,
        group_id: str | None = None,
        on_assigned: PartitionsHook | None = None,
        on_revoked: PartitionsHook | None = None,
        evict_predecessors: bool = False,
    ) -> None:
        self.group_id = group_id or settings.group_id
        self.evict_predecessors = evict_predecessors
        self.evicted: list[str] = []  # member ids removed at start (see _evict)
        super().__init__(settings, group_id=self.group_id)
        self.topics = tuple(topics)
        self.on_assigned = on_assigned
        self.on_revoked = on_revoked
        self._ready = asyncio.Event()
        self._hook_error: BaseException | None = None

    async def start(self) -> None:
        """Connect, then join the group in the background (see `wait_for_assignment`)."""
        try:
            engine = await broker_engine(self.settings)
        except BaseException:  # the client made in __init__ must still be closed
            await _Client.stop(self)
            raise
        if engine == "tansu" and self.settings.session_timeout_ms > TANSU_SESSION_MS:
            # read by aiokafka when start() makes the group coordinator
            self._consumer._session_timeout_ms = TANSU_SESSION_MS
        await self._start()  # subscribing first would make start() wait for the join
        if engine == "kafka" and self.evict_predecessors:
            await self._evict()
        _leave_even_at_generation_zero(self._consumer)
        self._consumer.subscribe(self.topics, listener=_Listener(self))

    async def stop(self) -> None:
        """Run `on_revoked` for the partitions still assigned, then leave the group.

        A hook failure not yet raised elsewhere is raised here, after leaving.
        """
        if self.assignment:
            await self._revoked(self.assignment)
        await super().stop()
        self._raise_hook_error()

    async def _evict(self) -> None:
        """Remove the group's members that carry this member's client id: an earlier
        process under the same name that died without leaving (SIGKILL, OOM, a lost
        machine). Until its session expired, the rebalance this member's join starts
        would wait for it, with every partition of the group unserved.

        Best effort: while the group's coordinator is not available yet (a new broker
        makes `__consumer_offsets` on the first group's first request) it asks again for
        up to EVICT_TIMEOUT_S, then leaves the predecessor to its session timeout."""
        deadline = asyncio.get_running_loop().time() + EVICT_TIMEOUT_S
        while True:
            try:
                stale = await self._evict_once()
                break
            except (KafkaError, TurnoutError) as err:
                retriable = getattr(err, "retriable", False)
                if not retriable or asyncio.get_running_loop().time() > deadline:
                    log.info("could not look for an earlier member named %s: %r",
                             self.settings.client_id, err)  # fmt: skip
                    return
                await asyncio.sleep(0.2)
        if not stale:
            return
        self.evicted = stale
        log.warning(
            "removed %d member(s) of group %s named %s: an earlier process of this name "
            "that did not leave (two live members must never share a name)",
            len(stale), self.group_id, self.settings.client_id,
        )  # fmt: skip

    async def _evict_once(self) -> list[str]:
        async with admin_client(self.settings) as admin:
            (described,) = await admin.describe_consumer_groups([self.group_id])
            groups = described.to_object()["groups"]
            stale = [m["member_id"] for g in groups for m in g["members"]
                     if m["client_id"] == self.settings.client_id]  # fmt: skip
            if stale:
                node = await admin.find_coordinator(self.group_id)
                for member_id in stale:
                    await admin._send_request(LeaveGroupRequest(self.group_id, member_id), node)
            return stale

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self._consumer.assignment())

    async def wait_for_assignment(self, timeout_s: float = 30.0) -> frozenset[TopicPartition]:
        """Wait until partitions are assigned and `on_assigned` has finished for them."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        except TimeoutError:
            raise TurnoutError(
                f"no partitions assigned to group {self.group_id!r} within "
                f"{timeout_s:g} s: is Kafka at {self.settings.bootstrap} healthy?"
            ) from None
        self._raise_hook_error()
        return self.assignment

    async def getmany(self, *, timeout_ms: int = 100, max_records: int | None = None) -> Batch:
        self._raise_hook_error()
        return await super().getmany(timeout_ms=timeout_ms, max_records=max_records)

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit `offsets` (next offset to read, per partition; default: all consumed)."""
        seconds = self.settings.commit_timeout_ms / 1000
        try:
            async with asyncio.timeout(seconds):
                with kafka_errors(self.settings.bootstrap):
                    await self._consumer.commit(dict(offsets) if offsets is not None else None)
        except TimeoutError:
            raise CommitTimeout(
                f"offset commit to Kafka at {self.settings.bootstrap} did not finish within "
                f"{seconds:g} s: if the broker restarted, run `turnout topics ensure` and "
                "restart the consumer",
                retriable=True,
            ) from None

    async def lag(self) -> dict[int, int]:
        """Records behind the end, per assigned partition (end: the last fetch's high watermark).

        Needs no request of its own. Only right on Apache Kafka: Tansu reports
        wrong end offsets (docs/reference/broker.md rule 4). A partition not fetched yet is
        left out.
        """
        behind: dict[int, int] = {}
        for tp in sorted(self.assignment):
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            with suppress(Exception):  # revoked meanwhile, or no position yet
                async with asyncio.timeout(1):
                    behind[tp.partition] = max(0, high - await self._consumer.position(tp))
        return behind

    @property
    def dropped(self) -> bool:
        """True once the group no longer knows this member (its heartbeat was refused: its
        session expired, e.g. while it drained a revoke): what it holds may be someone
        else's already. Read from aiokafka's coordinator, which resets its member id."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        member = getattr(coordinator, "member_id", None)
        return coordinator is not None and member == JoinGroupRequest.UNKNOWN_MEMBER_ID

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset for `tp` (None when nothing is committed)."""
        with kafka_errors(self.settings.bootstrap):
            offset: int | None = await self._consumer.committed(tp)
        return offset

    async def _assigned(self, partitions: frozenset[TopicPartition]) -> None:
        await self._run_hook(self.on_assigned, partitions)
        if partitions:
            self._ready.set()

    async def _revoked(self, partitions: frozenset[TopicPartition]) -> None:
        self._ready.clear()
        await self._run_hook(self.on_revoked, partitions)

    async def _run_hook(
        self, hook: PartitionsHook | None, partitions: frozenset[TopicPartition]
    ) -> None:
        if hook is None or not partitions:
            return
        try:
            result = hook(partitions)
            if inspect.isawaitable(result):
                await result
        except Exception as err:  # aiokafka would log and go on: keep it for getmany
            self._hook_error = err
            self._ready.set()  # wake wait_for_assignment, which raises it

    def _raise_hook_error(self) -> None:
        err, self._hook_error = self._hook_error, None
        if err is not None:
            raise err


class Reader(_Client):
    """Reads explicit partitions from the beginning (or `start_offsets`); no group.

    The partitions must exist (find them with `topic_partitions`): reading a
    missing topic would auto-create it on Tansu.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        partitions: Iterable[TopicPartition],
        *,
        start_offsets: Mapping[TopicPartition, int] | None = None,
    ) -> None:
        super().__init__(settings, group_id=None)
        self.partitions = tuple(partitions)
        self.start_offsets = dict(start_offsets or {})

    async def start(self) -> None:
        await self._start()
        self._consumer.assign(list(self.partitions))
        with kafka_errors(self.settings.bootstrap):
            await self._consumer.seek_to_beginning(*self.partitions)
        for tp, offset in self.start_offsets.items():
            self._consumer.seek(tp, offset)

    async def beginning_offsets(
        self, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The first offset still in the log of each partition (after retention deleted
        older segments, more than 0)."""
        with kafka_errors(self.settings.bootstrap):
            return dict(await self._consumer.beginning_offsets(list(partitions)))

    async def offsets_for_times(
        self, times_ms: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, int | None]:
        """The first offset of each partition whose record timestamp is at or after its
        time; None when there is none. Apache Kafka only (docs/reference/broker.md rule 5:
        Tansu)."""
        with kafka_errors(self.settings.bootstrap):
            found = await self._consumer.offsets_for_times(dict(times_ms))
        return {tp: (hit.offset if hit is not None else None) for tp, hit in found.items()}

    async def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset after the last record of each partition. Apache Kafka only
        (docs/reference/broker.md rule 4: Tansu gets it wrong when a batch holds more than one
        record)."""
        with kafka_errors(self.settings.bootstrap):
            return dict(await self._consumer.end_offsets(list(partitions)))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read `tp` from `offset` on."""
        self._consumer.seek(tp, offset)

    async def position(self, tp: TopicPartition) -> int:
        """The offset of the next record the reader returns from `tp`."""
        with kafka_errors(self.settings.bootstrap):
            return int(await self._consumer.position(tp))

    async def read_until(
        self, done: Callable[[Record], bool], *, timeout_s: float = 30.0
    ) -> list[Record]:
        """Records in arrival order up to and including the first one where `done` holds.

        Records fetched after that one are not lost: the next read returns them.
        Raises TimeoutError if `done` never holds within `timeout_s`.
        """
        out: list[Record] = []
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    if self._take_until(await self.getmany(timeout_ms=200), done, out):
                        return out
        except TimeoutError:
            raise TimeoutError(
                f"condition not met within {timeout_s:g} s ({len(out)} records read)"
            ) from None

    def _take_until(self, batch: Batch, done: Callable[[Record], bool], out: list[Record]) -> bool:
        """Append records of `batch` to `out` until `done`; rewind past the rest."""
        found = False
        for tp, records in batch.items():
            for record in records:
                if found:  # fetched but not returned: read it again next time
                    self._consumer.seek(tp, record.offset)
                    break
                out.append(record)
                found = done(record)
        return found
