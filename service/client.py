"""The Python client: call Turnout from a program as a library.

`AsyncTurnout` is an async context manager. `route(...)` sends one request to
the intake topic and waits for its response document; `submit(...)` sends and
returns the request id at once; `stream(...)` sends a streamed request and
returns a `ReplyStream`: iterate it for the answer's chunks (OpenAI
`chat.completion.chunk` dicts), then read its `response` (the last record). A
stream that does not end `ok` raises `StreamFailed` at its end, never passes
for a complete answer. `Turnout` is the same for synchronous code: it
runs an `AsyncTurnout` on its own event loop in a background thread.

Rules:
- One response reader per client, never one consumer per call. On start the
  client creates its own reply topic `<prefix>.replies.<client id>` (client id:
  a UUIDv7) with one partition, reads it from the beginning with a non-group
  `Reader` in a background task and resolves waiting calls by request id.
  Every request it sends carries `"reply_to"` = that topic.
- Topics are created explicitly (docs/reference/broker.md rule 1) and the intake topic must
  already exist: producing to a missing topic would auto-create it on Tansu
  with the wrong partition count (rules 1 and 3), so the client refuses.
- No end offsets (rule 4): the reply topic is new, so "from the beginning" is
  "from now".
- Requests are keyed by tenant, so aiokafka's murmur2 sends them straight to
  the tenant's home partition.
- A streamed request's chunk records (header `turnout-stream: chunk`) go to its
  `ReplyStream` in `seq` order; a repeated or older `seq` is dropped.
- Closing deletes nothing unless asked (`delete_reply_topic=True`): on the
  embedded broker, deleting a topic is the only way to free its memory.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import msgspec

from turnout.service.clock import clock
from turnout.service.core.config import Config
from turnout.service.errors import TurnoutError
from turnout.service.kafka.consumer import Reader, TopicPartition
from turnout.service.kafka.producer import BatchedProducer, Producer
from turnout.service.kafka.settings import KafkaSettings, validate_topic_name
from turnout.service.kafka.topics import admin_client, ensure_topic, existing_topics
from turnout.service.wire.stream import (
    ATTEMPT_HEADER,
    COALESCED_HEADER,
    MODEL_HEADER,
    SEQ_HEADER,
    STREAM_HEADER,
    chunk_of,
)

__all__ = [
    "AsyncTurnout", "ReplyStream", "StreamFailed", "SyncStream", "Turnout", "build_request",
    "reply_topic",
]  # fmt: skip

Messages = str | Sequence[Mapping[str, Any]]
T = TypeVar("T")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

_KEEP_UNCLAIMED = 10_000
_KEEP_UNCLAIMED_BYTES = 64 * 1024 * 1024
"""Responses nobody waits for yet (e.g. after `submit`, or a gateway's call that timed
out), kept for a later `wait` or a retry: at most this many, and this many bytes (an
answer may be a megabyte), the oldest dropped first."""


def reply_topic(prefix: str, client_id: str) -> str:
    """The reply topic of client `client_id`: `<prefix>.replies.<client id>`."""
    return validate_topic_name(f"{prefix}.replies.{client_id}")


def build_request(
    prompt_or_messages: Messages,
    *,
    request_id: str,
    tenant: str,
    task_type: str = "general",
    model: str | None = None,
    reply_to: str | None = None,
    **params: Any,
) -> dict[str, Any]:
    """The intake request document (docs/reference/records.md); `params` are OpenAI chat
    parameters."""
    if isinstance(prompt_or_messages, str):
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt_or_messages}]
    else:
        messages = [dict(m) for m in prompt_or_messages]
    if not messages:
        raise ValueError("a request needs at least one message")
    if not tenant:
        raise ValueError("tenant may not be empty")
    body: dict[str, Any] = {
        "request_id": request_id,
        "tenant": tenant,
        "task_type": task_type,
        "messages": messages,
    }
    if model is not None:
        body["model"] = model
    if reply_to is not None:
        body["reply_to"] = reply_to
    body.update({k: v for k, v in params.items() if v is not None})
    return body


class StreamFailed(TurnoutError):
    """A streamed request ended without a complete answer; `response` is its last record
    (status `error` with `partial`, `rejected` or `cancelled`)."""

    def __init__(self, response: dict[str, Any]) -> None:
        error = response.get("error") or {}
        super().__init__(
            f"stream {response.get('request_id')} ended {response.get('status')}: "
            f"{error.get('code')}: {error.get('message')}"
        )
        self.response = response


_Item = tuple[int, bytes] | dict[str, Any] | BaseException


class ReplyStream:
    """One streamed request's records as they come: its chunks, then its last record.

    `async for chunk in stream` yields decoded chunks; `raw()` yields `(seq, chunk JSON
    bytes)` as they were recorded (for relaying them untouched). Either raises
    `TimeoutError` when nothing comes for `timeout_s`, and `StreamFailed` at the end when
    the answer is not complete. `response` is the last record once it came."""

    def __init__(self, request_id: str, timeout_s: float, on_close: Any = None) -> None:
        self.request_id = request_id
        self.timeout_s = timeout_s
        self.response: dict[str, Any] | None = None
        self.seq = 0  # the last seq passed on
        self.model: str | None = None  # the model serving it (from its first chunk)
        self.attempt: int | None = None
        self.coalesced = False  # sharing another request's upstream stream
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._on_close = on_close
        self._held: list[_Item] | None = None  # live records held while the log is read

    def _put(self, item: _Item) -> None:
        if self._held is not None:
            self._held.append(item)
        else:
            self._queue.put_nowait(item)

    def _replay(self, items: list[_Item]) -> None:
        """Records read back from the log, then the live ones that came meanwhile."""
        held, self._held = self._held or [], None
        for item in (*items, *held):
            self._queue.put_nowait(item)

    def _served(self, headers: Sequence[tuple[str, bytes]]) -> None:
        for key, value in headers:
            if key == MODEL_HEADER:
                self.model = value.decode("utf-8", "replace")
            elif key == ATTEMPT_HEADER and value.isdigit():
                self.attempt = int(value)
            elif key == COALESCED_HEADER:
                self.coalesced = value == b"1"

    async def raw(self) -> AsyncIterator[tuple[int, bytes]]:
        try:
            while self.response is None:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        item = await self._queue.get()
                except TimeoutError:
                    raise TimeoutError(
                        f"stream {self.request_id}: nothing for {self.timeout_s:g} s"
                    ) from None
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, dict):
                    self.response = item
                    break
                seq, chunk = item
                if seq <= self.seq:
                    continue
                self.seq = seq
                yield seq, chunk
        finally:
            self.close()
        if self.response.get("status") != "ok":
            raise StreamFailed(self.response)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for _, chunk in self.raw():
            yield _decode(chunk)

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close(self.request_id, self)
            self._on_close = None


class SyncStream:
    """A `ReplyStream` for synchronous code (`Turnout.stream`): iterate it for the decoded
    chunks; `response` is the last record once it came (None before)."""

    def __init__(self, stream: ReplyStream, run: Callable[[Coroutine[Any, Any, Any]], Any]):
        self._stream, self._run = stream, run
        self._chunks = aiter(stream)

    @property
    def request_id(self) -> str:
        return self._stream.request_id

    @property
    def response(self) -> dict[str, Any] | None:
        return self._stream.response

    @property
    def model(self) -> str | None:
        return self._stream.model

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> dict[str, Any]:
        chunks = self._chunks

        async def step() -> dict[str, Any]:
            return await anext(chunks)

        try:
            return cast(dict[str, Any], self._run(step()))
        except StopAsyncIteration:
            self.close()
            raise StopIteration from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop listening (a stream given up before its end)."""
        self._stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _settings(
    settings: KafkaSettings | None, config: Config | None, client_id: str
) -> KafkaSettings:
    if settings is not None:
        return settings.replace(client_id=f"turnout-client-{client_id}")
    if config is None:
        from turnout.service.runtime.config import load_config

        config = load_config()
    return KafkaSettings.from_config(
        config.kafka, topics=config.topics, client_id=f"turnout-client-{client_id}"
    )


class AsyncTurnout:
    """Turnout as an async library: `async with AsyncTurnout() as t: await t.route("hi")`.

    `settings` wins over `config`; with neither, the configuration in force
    (`./turnout.toml` if present, then `TURNOUT_*` variables) is used.
    `replies=False` opens no reply topic: `submit` then sends no `reply_to`
    (the response goes to the shared responses topic) and `route` is refused.
    """

    def __init__(
        self,
        settings: KafkaSettings | None = None,
        *,
        config: Config | None = None,
        replies: bool = True,
    ) -> None:
        self.client_id = clock.new_id()
        self.settings = _settings(settings, config, self.client_id)
        self.topics = self.settings.topics
        self.reply_topic = reply_topic(self.settings.topic_prefix, self.client_id)
        self.replies = replies
        self._producer: Producer | None = None
        self._reader: Reader | None = None
        self._reader_task: asyncio.Task[None] | None = None
        # request id -> each caller's future (callers of one id never share one: a caller
        # that gives up must not cancel another's wait)
        self._waiting: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._unclaimed: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()
        self._unclaimed_bytes = 0
        self._streams: dict[str, list[ReplyStream]] = {}  # request id -> its listeners
        self._failure: BaseException | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Check the intake topic, create the reply topic, start producer and reader."""
        if self._producer is not None:
            return
        counts = await existing_topics(self.settings)
        if self.topics.requests not in counts:
            raise TurnoutError(
                f"intake topic {self.topics.requests} does not exist on "
                f"{self.settings.bootstrap}: run `turnout topics ensure` (or start a router)"
            )
        producer = BatchedProducer(self.settings)  # many callers' requests, few batches
        await producer.start()
        self._producer = producer
        if not self.replies:
            return
        try:
            await ensure_topic(self.settings, self.reply_topic, 1)
            self._reader = Reader(self.settings, [TopicPartition(self.reply_topic, 0)])
            await self._reader.start()
        except BaseException:
            await self.close()
            raise
        self._reader_task = asyncio.create_task(self._read_replies())

    async def reachable(self, timeout_s: float = 1.0) -> bool:
        """Is the client started, its reply reader alive, and Kafka answering now?"""
        producer, task = self._producer, self._reader_task
        if producer is None or (self.replies and (task is None or task.done())):
            return False
        return await producer.reachable(timeout_s)

    async def close(self, *, delete_reply_topic: bool = False) -> None:
        """Stop reading and producing; calls still waiting fail. Deletes nothing by default."""
        task, self._reader_task = self._reader_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.stop()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
        self._fail_waiting(TurnoutError("the Turnout client was closed before the response came"))
        if delete_reply_topic and self.replies:
            async with admin_client(self.settings) as admin:
                await admin.delete_topics([self.reply_topic])

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------ calls

    async def submit(
        self,
        prompt_or_messages: Messages,
        *,
        task_type: str = "general",
        tenant: str = "default",
        model: str | None = None,
        request_id: str | None = None,
        **params: Any,
    ) -> str:
        """Send one request; return its id without waiting for the response."""
        rid = request_id or clock.new_id()
        body = build_request(
            prompt_or_messages, request_id=rid, tenant=tenant, task_type=task_type, model=model,
            reply_to=self.reply_topic if self.replies else None, **params,
        )  # fmt: skip
        await self._send(body)
        return rid

    async def route(
        self,
        prompt_or_messages: Messages,
        *,
        task_type: str = "general",
        tenant: str = "default",
        model: str | None = None,
        request_id: str | None = None,
        timeout_s: float = 120,
        **params: Any,
    ) -> dict[str, Any]:
        """Send one request and return its response document (docs/reference/records.md).

        Raises `TimeoutError` when no response arrives within `timeout_s`.
        A response with status "error" or "rejected" is returned, not raised.
        """
        rid = request_id or clock.new_id()
        body = build_request(
            prompt_or_messages, request_id=rid, tenant=tenant, task_type=task_type, model=model,
            **params,
        )  # fmt: skip
        future = await self.send(body)
        assert isinstance(future, asyncio.Future)
        return await self._await(rid, future, timeout_s)

    async def stream(
        self,
        prompt_or_messages: Messages,
        *,
        task_type: str = "general",
        tenant: str = "default",
        model: str | None = None,
        request_id: str | None = None,
        timeout_s: float = 120,
        **params: Any,
    ) -> ReplyStream:
        """Send one streamed request; its `ReplyStream` (iterate it for the chunks).

        `timeout_s` bounds the wait for each next record, not the whole answer."""
        body = build_request(
            prompt_or_messages, request_id=request_id or clock.new_id(), tenant=tenant,
            task_type=task_type, model=model, stream=True, **params,
        )  # fmt: skip
        stream = await self.send(body, timeout_s=timeout_s)
        assert isinstance(stream, ReplyStream)
        return stream

    async def send(
        self,
        body: Mapping[str, Any],
        *,
        timeout_s: float = 120,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> ReplyStream | asyncio.Future[dict[str, Any]]:
        """Send a whole intake document (`reply_to` is set to this client's; `headers` on
        its record, e.g. a W3C `traceparent`): a `ReplyStream` when it asks to stream
        (`timeout_s` per record), else the future of its response."""
        self._require_replies()
        doc = {**body, "reply_to": self.reply_topic}
        rid = str(doc["request_id"])
        waiter: ReplyStream | asyncio.Future[dict[str, Any]]
        if doc.get("stream"):
            waiter = ReplyStream(rid, timeout_s, self._end_stream)
            self._streams.setdefault(rid, []).append(waiter)
        else:
            waiter = self._expect(rid)
        try:
            await self._send(doc, headers)
        except BaseException:
            if isinstance(waiter, ReplyStream):
                waiter.close()
            else:
                self.forget(rid, waiter)
            raise
        return waiter

    async def cancel(
        self, request_id: str, *, tenant: str = "default", reason: str = "cancel record"
    ) -> None:
        """Ask the router to stop a request (docs/reference/records.md, the cancel record):
        its running upstream call is aborted and it ends `cancelled`, charged for what it
        used."""
        await self._send({"cancel": request_id, "tenant": tenant, "reason": reason})

    async def follow(
        self, request_id: str, *, after: int = 0, since_ms: int = 0, timeout_s: float = 120
    ) -> ReplyStream:
        """A stream this client asked for, read again from its reply topic: its chunks
        after `seq` `after` (an SSE `Last-Event-ID`), recorded since `since_ms`, then the
        live ones until its last record. Apache Kafka only (it looks up offsets by time)."""
        self._require_replies()
        stream = ReplyStream(request_id, timeout_s, self._end_stream)
        stream.seq = after
        stream._held = []
        self._streams.setdefault(request_id, []).append(stream)
        items: list[_Item] = []
        try:
            tp = TopicPartition(self.reply_topic, 0)
            async with Reader(self.settings, [tp]) as reader:
                start = (await reader.offsets_for_times({tp: since_ms}))[tp]
                end = (await reader.end_offsets([tp]))[tp]
                if start is not None and start < end:
                    reader.seek(tp, start)
                    while await reader.position(tp) < end:
                        for records in (await reader.getmany(timeout_ms=200)).values():
                            for r in records:
                                if r.offset < end and r.key == request_id.encode():
                                    items.extend(_item(stream, r.value, r.headers))
        except BaseException:
            stream.close()
            raise
        stream._replay(items)
        return stream

    def _end_stream(self, rid: str, stream: ReplyStream) -> None:
        listeners = self._streams.get(rid)
        if listeners is not None and stream in listeners:
            listeners.remove(stream)
            if not listeners:
                del self._streams[rid]

    async def wait(self, request_id: str, *, timeout_s: float = 120) -> dict[str, Any]:
        """The response to a request this client `submit`ted (raises `TimeoutError`)."""
        self._require_replies()
        return await self._await(request_id, self._expect(request_id), timeout_s)

    # ------------------------------------------------------------ internals

    def _require_replies(self) -> None:
        if not self.replies:
            raise TurnoutError("this client was opened with replies=False: use submit()")
        if self._reader_task is None:
            raise TurnoutError("the Turnout client is not started: use `async with AsyncTurnout()`")
        if self._failure is not None:
            raise TurnoutError(f"the response reader stopped: {self._failure}")

    def _expect(self, rid: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if (kept := self._unclaimed.pop(rid, None)) is not None:
            self._unclaimed_bytes -= kept[1]
            future.set_result(kept[0])
        else:
            self._waiting.setdefault(rid, []).append(future)
        return future

    def forget(self, rid: str, future: asyncio.Future[dict[str, Any]]) -> None:
        """Stop waiting on `future` (from `send`): a response that comes later is kept
        as unclaimed, for the next caller of the same request id."""
        waiting = self._waiting.get(rid)
        if waiting is not None and future in waiting:
            waiting.remove(future)
            if not waiting:
                del self._waiting[rid]

    async def _await(
        self, rid: str, future: asyncio.Future[dict[str, Any]], timeout_s: float
    ) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(future)
        except TimeoutError:
            raise TimeoutError(
                f"no response to request {rid} within {timeout_s:g} s: is a router running "
                f"on {self.settings.bootstrap} (topic prefix {self.settings.topic_prefix!r})?"
            ) from None
        finally:
            self.forget(rid, future)  # a late response is kept as unclaimed

    async def _send(self, body: dict[str, Any], headers: Sequence[tuple[str, bytes]] = ()) -> None:
        if self._producer is None:
            raise TurnoutError("the Turnout client is not started: use `async with AsyncTurnout()`")
        value = _encode(body)
        key = body["tenant"].encode()
        await (await self._producer.send(self.topics.requests, value, key=key, headers=headers))

    async def _read_replies(self) -> None:
        assert self._reader is not None
        try:
            while True:
                batch = await self._reader.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        self._resolve(record.key, record.value, record.headers)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the broker went away: fail every waiting call
            self._failure = err
            self._fail_waiting(TurnoutError(f"the response reader stopped: {err}"))

    def _resolve(
        self, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        kind = next((v for k, v in headers if k == STREAM_HEADER), None)
        if kind == b"chunk":
            for stream in self._streams.get(key.decode("utf-8", "replace"), ()) if key else ():
                for item in _item(stream, value, headers):
                    stream._put(item)
            return
        try:
            doc = _decode(value or b"")
        except ValueError:
            return  # not a response document: nothing waits for it
        if not isinstance(doc, dict):
            return
        rid = doc.get("request_id") or (key.decode("utf-8", "replace") if key else None)
        if not isinstance(rid, str):
            return
        listeners = self._streams.get(rid)
        for stream in listeners or ():
            stream._put(doc)
        waiting = self._waiting.pop(rid, None)
        for future in waiting or ():  # also a plain call of a request another streams
            if not future.done():
                future.set_result(doc)
        if listeners or waiting:
            return
        if (old := self._unclaimed.pop(rid, None)) is not None:
            self._unclaimed_bytes -= old[1]
        self._unclaimed[rid] = (doc, len(value or b""))
        self._unclaimed_bytes += len(value or b"")
        while self._unclaimed and (
            len(self._unclaimed) > _KEEP_UNCLAIMED or self._unclaimed_bytes > _KEEP_UNCLAIMED_BYTES
        ):
            _, (_, size) = self._unclaimed.popitem(last=False)
            self._unclaimed_bytes -= size

    def _fail_waiting(self, err: BaseException) -> None:
        streams, self._streams = self._streams, {}
        for listeners in streams.values():
            for stream in listeners:
                stream._put(err)
        waiting, self._waiting = self._waiting, {}
        for futures in waiting.values():
            for future in futures:
                if not future.done():
                    future.set_exception(err)
                    future.exception()  # retrieved: a call may have stopped waiting already


def _item(
    stream: ReplyStream, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> list[_Item]:
    """What a record of `stream`'s request says: a chunk `(seq, bytes)`, or its last record."""
    kind = next((v for k, v in headers if k == STREAM_HEADER), None)
    if kind == b"chunk":
        seq = next((v for k, v in headers if k == SEQ_HEADER), None)
        if seq is None or not value or not seq.isdigit():
            return []
        if stream.model is None:
            stream._served(headers)
        try:
            return [(int(seq), chunk_of(value))]
        except ValueError:
            return []
    try:
        doc = _decode(value or b"")
    except ValueError:
        return []
    return [doc] if isinstance(doc, dict) else []


class Turnout:
    """Turnout for synchronous code: `with Turnout() as t: t.route("hi")`.

    Runs an `AsyncTurnout` on a private event loop in a daemon thread; every
    method blocks the calling thread until that loop has the answer.
    """

    def __init__(
        self,
        settings: KafkaSettings | None = None,
        *,
        config: Config | None = None,
        replies: bool = True,
    ) -> None:
        self._client = AsyncTurnout(settings, config=config, replies=replies)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def client_id(self) -> str:
        return self._client.client_id

    @property
    def reply_topic(self) -> str:
        return self._client.reply_topic

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name=f"turnout-client-{self.client_id}", daemon=True
        )
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._run(self._client.start())
        except BaseException:
            self._stop_loop()
            raise

    def close(self, *, delete_reply_topic: bool = False) -> None:
        if self._loop is None:
            return
        try:
            self._run(self._client.close(delete_reply_topic=delete_reply_topic))
        finally:
            self._stop_loop()

    def submit(self, prompt_or_messages: Messages, **kwargs: Any) -> str:
        """See `AsyncTurnout.submit`."""
        return self._run(self._client.submit(prompt_or_messages, **kwargs))

    def route(self, prompt_or_messages: Messages, **kwargs: Any) -> dict[str, Any]:
        """See `AsyncTurnout.route`; raises `TimeoutError` when no response comes in time."""
        return self._run(self._client.route(prompt_or_messages, **kwargs))

    def wait(self, request_id: str, *, timeout_s: float = 120) -> dict[str, Any]:
        """See `AsyncTurnout.wait`."""
        return self._run(self._client.wait(request_id, timeout_s=timeout_s))

    def stream(self, prompt_or_messages: Messages, **kwargs: Any) -> SyncStream:
        """See `AsyncTurnout.stream`: iterate the answer for the chunks as they come, then
        `StreamFailed` if it is not complete; its `response` is the last record (usage,
        cost, model) once it came."""
        return SyncStream(self._run(self._client.stream(prompt_or_messages, **kwargs)), self._run)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise TurnoutError("the Turnout client is not started: use `with Turnout()`")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
