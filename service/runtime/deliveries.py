"""Responses already delivered for requests the log still shows in flight.

A router answers a request in two writes that Kafka cannot make atomic without
transactions: the response (to `reply_to` or the responses topic), acknowledged, then
the terminal event that records it. A router that dies between the two (SIGKILL, or its
events producer failing) leaves an orphan: accepted in the log, answered on the reply
topic. Its next owner must not call the upstream and answer a second time, so before it
resumes orphans it looks for their responses:

    found = await find_delivered(settings, orphans)   # request id -> response document

Rules:
- A response is keyed by its request id and goes to the partition aiokafka's default
  (murmur2) partitioner picks, so only that partition of the reply topic is read, from
  the record timestamp of the orphan's acceptance (minus `SKEW_MS` for clocks that
  differ between routers) to its end offset now. Everything the dead owner sent is
  before that end: it stopped sending before this router was assigned its partitions.
- Apache Kafka only: it needs `offsets_for_times` and end offsets, which Tansu gets
  wrong (docs/reference/broker.md rules 4 and 5). On Tansu nothing is looked up and an orphan is
  resumed as before (documented: a response delivered in that window may come twice).
- A reply topic that is gone, or a read that fails or takes longer than `timeout_s`,
  finds nothing there (logged): the orphans it held are resumed, at worst answered
  twice, never lost.
- A stream's chunk records are not its answer. An orphan with chunk records and no
  last record had begun streaming (its first-token event may not have reached the
  log): it is found as `{STREAM_BEGUN: True, STREAMED_CHARS: n, STREAMED_CHUNKS: k}`
  (the output characters and chunk records the client was sent, each `seq` counted
  once), so its next owner ends it `partial`, charged for what was streamed, and never
  streams it again from `seq` 1.
- Pure reading: nothing is written, no group is joined.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec

from turnout.service.core.partitioning import murmur2
from turnout.service.kafka.consumer import Reader, TopicPartition
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.kafka.topics import existing_topics
from turnout.service.wire.stream import STREAM_HEADER, delta_chars

__all__ = [
    "SKEW_MS",
    "STREAMED_CHARS",
    "STREAMED_CHUNKS",
    "STREAM_BEGUN",
    "Orphan",
    "find_delivered",
    "reply_partition",
]

log = logging.getLogger(__name__)

SKEW_MS: Final = 5_000
"""How far another router's clock may be behind this one's, for the start of a read."""


class Orphan(msgspec.Struct, frozen=True):
    """A request in flight in the log that no router works on: where its answer would be."""

    request_id: str
    topic: str
    accepted_at_ms: int


def reply_partition(request_id: str, partitions: int) -> int:
    """The partition a response keyed `request_id` goes to (aiokafka's default partitioner,
    the same as Java clients')."""
    return int(murmur2(request_id.encode()) & 0x7FFFFFFF) % partitions


async def find_delivered(
    settings: KafkaSettings, orphans: Iterable[Orphan], *, timeout_s: float = 10.0
) -> dict[str, dict[str, Any]]:
    """The response documents already on their topics, by request id, for `orphans`."""
    wanted = list(orphans)
    if not wanted:
        return {}
    counts = await existing_topics(settings)
    starts: dict[TopicPartition, int] = {}
    ids: dict[TopicPartition, set[str]] = defaultdict(set)
    for orphan in wanted:
        n = counts.get(orphan.topic)
        if not n:
            log.warning("reply topic %s is gone: cannot check %s", orphan.topic, orphan.request_id)
            continue
        tp = TopicPartition(orphan.topic, reply_partition(orphan.request_id, n))
        since = orphan.accepted_at_ms - SKEW_MS
        starts[tp] = min(starts.get(tp, since), since)
        ids[tp].add(orphan.request_id)
    if not starts:
        return {}
    try:
        async with asyncio.timeout(timeout_s):
            return await _scan(settings, starts, ids)
    except Exception as err:
        log.warning(
            "could not look for responses of %d orphaned requests (%r): they are resumed "
            "and may be answered twice", len(wanted), err,
        )  # fmt: skip
        return {}


async def _scan(
    settings: KafkaSettings,
    starts: Mapping[TopicPartition, int],
    ids: Mapping[TopicPartition, set[str]],
) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    begun: dict[str, dict[int, int]] = defaultdict(dict)  # request id -> seq -> chars
    async with Reader(settings, starts) as reader:
        begin = await reader.offsets_for_times(starts)
        ends = await reader.end_offsets(list(starts))
        first = {tp: offset for tp, offset in begin.items() if offset is not None}
        left = {tp for tp, offset in first.items() if offset < ends[tp]}
        for tp in left:
            reader.seek(tp, first[tp])
        while left:
            batch = await reader.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for record in records:
                    key = record.key.decode("utf-8", "replace") if record.key else None
                    if record.offset < ends[tp] and key in ids[tp] and key not in found:
                        if _is_chunk(record.headers):  # a stream's chunk, not its answer
                            seq, chars = _chunk_chars(record.value)
                            begun[key][seq] = chars
                            continue
                        doc = _document(record.value)
                        if doc is not None and doc.get("request_id") == key:
                            found[key] = doc
            for tp in list(left):
                if await reader.position(tp) >= ends[tp]:
                    left.discard(tp)
    for rid in begun.keys() - found.keys():  # chunks went out, no last record: it had begun
        found[rid] = {
            "request_id": rid, STREAM_BEGUN: True,
            STREAMED_CHARS: sum(begun[rid].values()), STREAMED_CHUNKS: len(begun[rid]),
        }  # fmt: skip
    return found


STREAM_BEGUN: Final = "_turnout_stream_begun"
"""Marks a request found with chunk records on its reply topic and no last record."""
STREAMED_CHARS: Final = "_turnout_streamed_chars"
STREAMED_CHUNKS: Final = "_turnout_streamed_chunks"


def _chunk_chars(value: bytes | None) -> tuple[int, int]:
    """A chunk record's `seq` and the output characters it carried ((-1, 0): unreadable)."""
    doc = _document(value)
    if doc is None:
        return -1, 0
    seq, chunk = doc.get("seq"), doc.get("chunk")
    if not isinstance(seq, int) or not isinstance(chunk, dict):
        return -1, 0
    return seq, delta_chars(chunk)


def _is_chunk(headers: Any) -> bool:
    return any(k == STREAM_HEADER and v == b"chunk" for k, v in headers or ())


def _document(value: bytes | None) -> dict[str, Any] | None:
    try:
        doc = msgspec.json.decode(value or b"")
    except msgspec.DecodeError:
        return None
    return doc if isinstance(doc, dict) else None
