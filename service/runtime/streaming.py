"""Relaying a streamed answer: upstream chunks in, coalesced chunk records out.

Job: the router's `on_chunk` for one streamed attempt. Deltas are merged
(`turnout.service.wire.stream.merge`) until `[streaming] flush_tokens` (estimated, 4
characters a token) have gathered or `flush_ms` has passed since the last record,
then published to the request's reply topic as one chunk record with the next
`seq` (docs/reference/records.md, streamed answers).

Rules:
- The first-token gate: nothing is published before the attempt's first token,
  and then only once `first_token` (the router's `decide_first_token`) agreed;
  a chunk with only a role waits for it. A stale attempt (the request moved on)
  raises `StaleAttempt`, which aborts the upstream call.
- The first token goes out at once (an urgent record: its batch leaves at the end
  of the loop step); later records linger `[streaming] linger_ms` on the same
  producer (batching the records of every stream in flight, and the responses, into
  fewer produce requests). One producer, one partition: a stream's records stay in
  order without waiting for acks between them. A stalled stream's gathered deltas go
  out `flush_ms` after the last record at the latest.
- Coalesced requests share the stream (`follow`): a follower gets the records
  published before it joined, then each later record with the leader's, under its
  own request id on its own reply topic.
- The partition is computed once per stream (`partition`, murmur2 of the request
  id, as the default partitioner would), not hashed again for every record.
- Records are sent one at a time in `seq` order (a lock), keyed by request id
  (one partition, in order); `finish` publishes what is left and waits for every
  record's ack, so the last record (sent by the router afterwards) comes after the
  chunks, and only once they are all in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from turnout.service.clock import Clock
from turnout.service.kafka.producer import BatchedProducer
from turnout.service.wire.stream import (
    ATTEMPT_HEADER,
    COALESCED_HEADER,
    MODEL_HEADER,
    SEQ_HEADER,
    STREAM_HEADER,
    chunk_record,
    delta_chars,
    has_token,
    merge,
    trim,
)

__all__ = ["CutShort", "Relay", "StaleAttempt", "replay"]

_encode = msgspec.json.Encoder().encode
_CHUNK = STREAM_HEADER, b"chunk"
_FOLLOWER = COALESCED_HEADER, b"1"  # on a coalesced request's copies (the gateway says so)


class StaleAttempt(Exception):
    """The attempt's request moved on (or its partition did): stop streaming it."""


async def replay(
    producer: BatchedProducer, topic: str, partition: int | None, request_id: str, model: str,
    chunks: list[dict[str, Any]],
) -> None:  # fmt: skip
    """Publish a cached stream's chunk records (seq 1..N) at once and wait for their acks."""
    key = request_id.encode()
    served = [(MODEL_HEADER, model.encode()), (ATTEMPT_HEADER, b"0")]
    acks = []
    for seq, chunk in enumerate(chunks, start=1):
        value = chunk_record(request_id, seq, _encode(chunk))
        headers = [_CHUNK, (SEQ_HEADER, b"%d" % seq), *served]
        acks.append(await producer.send(
            topic, value, key=key, headers=headers, partition=partition, urgent=True
        ))  # fmt: skip
    await asyncio.gather(*acks)


class CutShort(Exception):
    """The stream reached its allowance and was cut there (its last chunk published)."""


class Relay:
    def __init__(
        self,
        *,
        producer: BatchedProducer,
        topic: str,
        partition: int | None = None,
        request_id: str,
        model: str,
        attempt: int,
        first_token: Callable[[float], Awaitable[bool]],
        flush_ms: int,
        flush_tokens: int,
        clock: Clock,
        limit_tokens: int | None = None,
        timed: bool = False,
    ) -> None:
        self.producer, self.topic, self.request_id = producer, topic, request_id
        self.partition = partition
        self.key = request_id.encode()
        self._served = [(MODEL_HEADER, model.encode()), (ATTEMPT_HEADER, b"%d" % attempt)]
        self._first_token = first_token
        self._flush_s = flush_ms / 1000
        self._flush_chars = flush_tokens * 4
        self._clock = clock
        self._started_at = clock.monotonic()
        self._pending: dict[str, Any] | None = None
        self._pending_chars = 0
        self._last_flush = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._acks: list[asyncio.Future[Any]] = []
        self._first_ack: asyncio.Future[Any] | None = None  # seq 1's: a later record
        # is not sent once it is known to have failed
        self._failed: BaseException | None = None
        self.opened = False  # the gate: the first token was recorded and published
        self.seq = 0
        self.chars = 0
        self.ttft_ms: float | None = None
        self._limit_chars = None if limit_tokens is None else limit_tokens * 4
        self.cut = False  # stopped at `limit_tokens` (4 characters a token)
        self.merged: dict[str, Any] | None = None  # everything published, merged
        self.published: list[dict[str, Any]] = []  # each record's chunk (what a cache keeps)
        # coalesced requests that share this stream: request id -> (key, topic, partition)
        self.followers: dict[str, tuple[bytes, str, int | None]] = {}
        # with `timed`: seconds between chunks with output, after the first (telemetry)
        self.intervals: list[float] | None = [] if timed else None
        self._last_token = 0.0

    async def chunk(self, chunk: dict[str, Any]) -> None:
        if self._failed is not None:
            raise self._failed
        chars = delta_chars(chunk)
        if self._limit_chars is not None and self.chars + chars > self._limit_chars:
            chunk = trim(chunk, self._limit_chars - self.chars)
            chars = delta_chars(chunk)
            self.cut = True
        self._pending = merge(self._pending, chunk)
        self.chars += chars
        self._pending_chars += chars
        if self.intervals is not None and chars:
            now = self._clock.monotonic()
            if self._last_token:
                self.intervals.append(now - self._last_token)
            self._last_token = now
        if not self.opened:
            if not has_token(chunk):
                if self.cut:  # nothing at all was allowed
                    raise CutShort(self.request_id)
                return
            self.ttft_ms = (self._clock.monotonic() - self._started_at) * 1000
            if not await self._first_token(self.ttft_ms):
                raise StaleAttempt(self.request_id)
            self.opened = True
            await self._flush()
        elif (
            self.cut
            or self._pending_chars >= self._flush_chars
            or (self._clock.monotonic() - self._last_flush >= self._flush_s)
        ):
            await self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self._on_timer)
        if self.cut:
            raise CutShort(self.request_id)

    async def finish(self) -> int:
        """Publish what is left (the call succeeded) and wait for every ack; the chunk count."""
        await self._flush()
        await self.close()
        return self.seq

    async def close(self) -> None:
        """Stop the timer and wait for the acks of what was published (nothing more goes out)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        async with self._lock:
            acks, self._acks = self._acks, []
        if acks:
            await asyncio.gather(*acks)
        if self._failed is not None:
            raise self._failed

    async def follow(self, request_id: str, topic: str, partition: int | None) -> None:
        """A coalesced request joins this stream: the records published so far, at once
        (urgent) and acked, then every later one. Acked here, not with the stream's: a
        follower may join while `close` already waits for those (the leader finishing),
        and its catch-up failing is its own failure, raised to its caller."""
        async with self._lock:
            if request_id in self.followers or request_id == self.request_id:
                return
            key = request_id.encode()
            acks = []
            for seq, chunk in enumerate(self.published, start=1):
                value = chunk_record(request_id, seq, _encode(chunk))
                headers = [_CHUNK, (SEQ_HEADER, b"%d" % seq), *self._served, _FOLLOWER]
                acks.append(await self.producer.send(
                    topic, value, key=key, headers=headers, partition=partition, urgent=True
                ))  # fmt: skip
            await asyncio.gather(*acks)
            self.followers[request_id] = (key, topic, partition)

    def drop(self, request_id: str) -> None:
        """A follower that ended on its own (cancelled) gets no more records."""
        self.followers.pop(request_id, None)

    def _on_timer(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._flush())
        task.add_done_callback(self._timer_done)

    def _timer_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failed = task.exception()

    async def _flush(self) -> None:
        async with self._lock:
            pending, self._pending = self._pending, None
            if pending is None:
                return
            self.merged = merge(self.merged, pending)
            self.published.append(pending)
            self._pending_chars = 0
            self._last_flush = self._clock.monotonic()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.seq += 1
            seq = self.seq
            chunk = _encode(pending)
            headers = [_CHUNK, (SEQ_HEADER, b"%d" % seq), *self._served]
            first = self._first_ack
            lost = first.exception() if first is not None and first.done() else None
            if lost is not None:
                raise lost  # the stream's start is lost: send no more of it
            readers = [(self.request_id, self.key, self.topic, self.partition, headers)]
            if self.followers:
                followed = [*headers, _FOLLOWER]
                readers += [(rid, *where, followed) for rid, where in self.followers.items()]
            for rid, key, topic, partition, sent_with in readers:
                ack = await self.producer.send(
                    topic, chunk_record(rid, seq, chunk), key=key, headers=sent_with,
                    partition=partition, urgent=seq == 1,  # the first token: at once
                )  # fmt: skip
                self._acks.append(ack)
                if seq == 1 and rid == self.request_id:
                    self._first_ack = ack
