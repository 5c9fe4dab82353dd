"""aiokafka's fetch bookkeeping in fewer Python calls: the same decisions, made leaner.

Before each fetch aiokafka's `Fetcher._get_actions_per_node` looks at every assigned
partition (its state, its preferred read replica, its leader, a `log.debug`), and after
each fetch `Fetcher._proc_fetch_request` does the same for every partition of the
response (a `TopicPartition` built twice, an error class looked up, a `log.debug`).
With the router's 12 intake partitions and about one record per fetch at moderate load
that is ~500 Python calls per request, most of them for partitions with nothing in
them: a relay that fetched without them used ~200 us less CPU per request at 500
requests/s (tests/benchmarks/bench_kafka_clients.py).

`install()` replaces those two methods with versions that read the partition states
directly (`TopicPartitionState._position`, the cluster's partition table), key
partitions by `(topic, partition)` (equal to a `TopicPartition`, which is a named
tuple) and build a `TopicPartition` only for a partition with records or an error.
They take the same decisions: which partitions are fetched from which node, which
wait for a reset, a paused partition's resume future, the backoff while records are
still unconsumed, and after a fetch the same positions, high-water marks, buffered
records, errors, offset resets and metadata refreshes (tests/unit/test_kafka_fetch.py
compares them with aiokafka's own, with hypothesis). Two differences, both invisible
to a caller: the partitions of a fetch request to a node take turns at coming first (a
count per fetcher and node) instead of being shuffled, so each still comes first as
often (what keeps one busy partition from starving the others under
`fetch_max_bytes`); and `log.debug` is called only when debug logging is on. A
consumer reading from preferred replicas (`client_rack`, KIP-392) keeps aiokafka's own
method for the actions, whose replica cache this does not read.

aiokafka is pinned to 0.14 (pyproject.toml): this module knows its internals.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import aiokafka.errors as Errors
from aiokafka.consumer import fetcher as _fetcher
from aiokafka.consumer.fetcher import FetchResult, OffsetResetStrategy, PartitionRecords
from aiokafka.errors import RecordTooLargeError
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from turnout.service.clock import SystemClock

__all__ = ["get_actions_per_node", "install", "proc_fetch_request", "uninstall"]

log = _fetcher.log  # aiokafka's own logger: the same records, when debug is on
_now_ms = SystemClock().now_ms


def get_actions_per_node(self: Any, assignment: Any) -> tuple[Any, ...]:
    """`Fetcher._get_actions_per_node`, leaner (see the module docstring)."""
    if self._preferred_read_replica:  # KIP-392 reads from a follower: aiokafka's own
        actions: tuple[Any, ...] = _ORIGINAL["_get_actions_per_node"](self, assignment)
        return actions
    debug = log.isEnabledFor(logging.DEBUG)
    topics = self._client.cluster._partitions  # topic -> {partition: PartitionMetadata}
    records = self._records
    in_flight = self._in_flight
    fetchable: dict[int, list[tuple[TopicPartition, int]]] = {}
    awaiting_reset: dict[int, list[TopicPartition]] = {}
    backoff_by_nodes: dict[int | None, list[float]] = {}
    resume_futures = []
    invalid_metadata = False

    for tp, tp_state in assignment._tp_state.items():
        partitions = topics.get(tp.topic)
        meta = partitions.get(tp.partition) if partitions is not None else None
        node_id = meta.leader if meta is not None else None
        if tp in records:
            # records not yet consumed: wait for the consumer, with a timeout
            backoff = records[tp].calculate_backoff()
            if backoff:
                backoff_by_nodes.setdefault(node_id, []).append(backoff)
        elif node_id in in_flight:
            continue
        elif node_id is None or node_id == -1:
            if debug:
                log.debug("No leader found for partition %s. Waiting metadata update", tp)
            invalid_metadata = True
        elif tp_state._position is None:  # ListOffsets goes to the leader: node_id is it
            awaiting_reset.setdefault(node_id, []).append(tp)
        elif tp_state._paused:
            resume_futures.append(tp_state._resume_fut)
        else:
            position = tp_state._position
            fetchable.setdefault(node_id, []).append((tp, position))
            if debug:
                log.debug("Adding fetch request for partition %s at offset %d", tp, position)

    fetch_requests = []
    max_bytes = self._max_partition_fetch_bytes
    turns = self.__dict__.setdefault("_turnout_turns", {})  # node -> its fetch requests so far
    for node_id, partition_data in fetchable.items():
        if node_id in backoff_by_nodes or node_id in awaiting_reset:
            continue
        if len(partition_data) > 1:  # each partition first in turn (aiokafka shuffles)
            k = turns.get(node_id, 0)
            turns[node_id] = k + 1
            k %= len(partition_data)
            partition_data = partition_data[k:] + partition_data[:k]
        by_topics: dict[str, list[tuple[int, int, int]]] = {}
        for tp, position in partition_data:
            by_topics.setdefault(tp.topic, []).append((tp.partition, position, max_bytes))
        request = FetchRequest(
            self._fetch_max_wait_ms, self._fetch_min_bytes, self._fetch_max_bytes,
            self._isolation_level, list(by_topics.items()), rack_id=self._client_rack or "",
        )  # fmt: skip
        fetch_requests.append((node_id, request))

    if backoff_by_nodes:  # the soonest a node may be fetched from again
        backoff = min(map(max, backoff_by_nodes.values()))
    else:
        backoff = self._fetcher_timeout
    return fetch_requests, awaiting_reset, backoff, invalid_metadata, resume_futures


async def proc_fetch_request(self: Any, assignment: Any, node_id: int, request: Any) -> bool:
    """`Fetcher._proc_fetch_request`, leaner (see the module docstring)."""
    needs_wakeup = False
    try:
        response = await self._client.send(node_id, request)
    except Errors.KafkaError as err:
        log.error("Failed fetch messages from %s: %s", node_id, err)
        self._invalidate_preferred_read_replica_for_node(node_id, request)
        await asyncio.sleep(self._retry_backoff)
        return False
    except asyncio.CancelledError:  # closed, or the partitions were unassigned
        return False

    if not assignment.active:
        log.debug("Discarding fetch response since the assignment changed during fetch")
        return False

    fetch_offsets = {
        (topic, partition): offset
        for topic, partitions in request.topics
        for partition, offset, _ in partitions
    }
    states = assignment._tp_state
    now_ms = _now_ms()
    version = response.API_VERSION
    rack_aware = bool(self._client_rack) and version >= 11
    if self._client_rack and not rack_aware and not self._rack_warning_logged:
        log.warning(
            "client_rack is set to %r but broker only supports FetchRequest v%d (v11+ "
            "required for KIP-392 rack-aware fetching). The consumer will fall back to "
            "fetching from the partition leader.", self._client_rack, version,
        )  # fmt: skip
        self._rack_warning_logged = True
    debug = log.isEnabledFor(logging.DEBUG)

    for topic, partitions in response.topics:
        for partition, error_code, highwater, *part_data in partitions:
            key = (topic, partition)
            tp_state = states.get(key)
            fetch_offset = fetch_offsets[key]
            position = tp_state._position
            if position is None or position != fetch_offset:
                if debug:
                    log.debug(
                        "Discarding fetch response for partition %s since its offset %s "
                        "does not match the current position", TopicPartition(*key),
                        fetch_offset,
                    )  # fmt: skip
                continue

            if error_code == 0:
                if version >= 11:  # [lso, log_start_offset, aborted, preferred replica, records]
                    lso = part_data[0]
                    aborted_transactions = part_data[2]
                    if rack_aware:
                        self._update_preferred_read_replica(TopicPartition(*key), part_data[3])
                elif version >= 4:  # lso first, aborted transactions next to last
                    lso = part_data[0]
                    aborted_transactions = part_data[-2]
                else:
                    aborted_transactions = None
                    lso = None
                tp_state.highwater = highwater
                tp_state.lso = lso
                tp_state.timestamp = now_ms

                records = MemoryRecords(part_data[-1])
                if records.has_next():
                    tp = TopicPartition(topic, partition)
                    if debug:
                        log.debug(
                            "Adding fetched record for partition %s with offset %d to "
                            "buffered record list", tp, fetch_offset,
                        )  # fmt: skip
                    partition_records = PartitionRecords(
                        tp, records, aborted_transactions, fetch_offset,
                        self._key_deserializer, self._value_deserializer, self._check_crcs,
                        self._isolation_level,
                    )  # fmt: skip
                    self._records[tp] = FetchResult(
                        tp, partition_records=partition_records, assignment=assignment,
                        backoff=self._prefetch_backoff,
                    )  # fmt: skip
                    needs_wakeup = True
                elif records.size_in_bytes() > 0:
                    # a record larger than the fetch size: it can never be returned
                    tp = TopicPartition(topic, partition)
                    too_large = RecordTooLargeError(
                        "There are some messages at [Partition=Offset]: %s=%s whose size "
                        "is larger than the fetch size %s and hence cannot be ever "
                        "returned. Increase the fetch size, or decrease the maximum "
                        "message size the broker will allow.", tp, fetch_offset,
                        self._max_partition_fetch_bytes,
                    )  # fmt: skip
                    self._set_error(tp, too_large)
                    tp_state.consumed_to(tp_state.position + 1)
                    needs_wakeup = True
            else:
                tp = TopicPartition(topic, partition)
                error_type = Errors.for_code(error_code)
                # any error drops a cached preferred replica: the leader is asked next
                self._preferred_read_replica.pop(tp, None)
                if error_type in (
                    Errors.NotLeaderForPartitionError,
                    Errors.UnknownTopicOrPartitionError,
                ):
                    self._client.force_metadata_update()
                elif error_type is Errors.OffsetOutOfRangeError:
                    if self._default_reset_strategy != OffsetResetStrategy.NONE:
                        tp_state.await_reset(self._default_reset_strategy)
                    else:
                        self._set_error(tp, Errors.OffsetOutOfRangeError({tp: fetch_offset}))
                        needs_wakeup = True
                    log.info(
                        "Fetch offset %s is out of range for partition %s, resetting offset",
                        fetch_offset, tp,
                    )  # fmt: skip
                elif error_type is Errors.TopicAuthorizationFailedError:
                    log.warning("Not authorized to read from topic %s.", tp.topic)
                    self._set_error(tp, Errors.TopicAuthorizationFailedError(tp.topic))
                    needs_wakeup = True
                else:
                    log.warning("Unexpected error while fetching data: %s", error_type.__name__)
    return needs_wakeup


_LEAN = {"_get_actions_per_node": get_actions_per_node, "_proc_fetch_request": proc_fetch_request}
_ORIGINAL: dict[str, Any] = {name: vars(_fetcher.Fetcher)[name] for name in _LEAN}
_LOCK = threading.Lock()


def install() -> None:
    """Give aiokafka's `Fetcher` the lean methods (idempotent; fetchers already running
    pick them up at their next fetch)."""
    with _LOCK:
        for name, method in _LEAN.items():
            setattr(_fetcher.Fetcher, name, method)


def uninstall() -> None:
    """Restore aiokafka's own methods (for comparisons: bench_kafka_clients.py)."""
    with _LOCK:
        for name, method in _ORIGINAL.items():
            setattr(_fetcher.Fetcher, name, method)
