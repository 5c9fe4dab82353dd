"""The gateway's ASGI application: OpenAI's chat API in front of Turnout's Kafka topics.

Job: turn `POST /v1/chat/completions` into an intake record, wait for its answer on
this instance's own reply topic (an `AsyncTurnout` client: no instance reads every
reply) and answer in OpenAI's shapes, plain or as server-sent events.

Rules:
- Identity: `Authorization: Bearer <key>` hashed and looked up in `[gateway.keys]`;
  a wrong or missing key is 401 in OpenAI's error shape. With no keys the gateway is
  open: the tenant is `X-Turnout-Tenant`, else `default`.
- `model` = `turnout/<task_type>` picks a route; any other id pins that model (the
  route of `X-Turnout-Task-Type`, else `general`, supplies the fallbacks).
- `Idempotency-Key` becomes the request id, scoped to the tenant, so an SDK's retry
  of the same call is answered once (the router answers a resend from its log).
- Errors carry the status and headers OpenAI SDKs act on: 429 with `retry-after`
  and `retry-after-ms`; 402 with `x-should-retry: false` (budget: never retried);
  400 for a bad request; 503 when no upstream could answer; 504 when no answer
  came in `[gateway] timeout_s`.
- A stream's HTTP status waits for its first record: a request refused or failed
  before its first token gets a plain error status (what SDKs raise on), never a
  200 stream. After the first chunk, a failure ends the stream with an error chunk
  (`error` + `finish_reason: "error"`), never `[DONE]`, so no SDK mistakes a cut
  answer for a whole one. Chunk JSON is written as the router recorded it (`id:` is
  its `seq`), not decoded and encoded again.
- `GET /v1/chat/completions/{id}/stream` with `Last-Event-ID: N` replays a stream this
  instance served (its tenant's only) from chunk N+1, read back from the reply topic,
  then follows it live to its end.
- A client that goes away mid-stream stops the relay at once and cancels the request
  (a cancel record): the router aborts the upstream call and charges what was streamed.
  So is a request no one waits for any more (a 504, a plain client gone, the gateway
  stopping), unless it has an Idempotency-Key: a retry with the key is answered by it
  (a stream sent again with its key is read back from its first chunk).
- Kafka down: a request not taken within 10 s is a 503, with a cancel queued behind
  it; `/readyz` asks a broker for metadata.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Coroutine
from contextlib import suppress
from typing import Any, Final

import msgspec
from opentelemetry.trace import Status, StatusCode

from turnout.service.asgi import (
    BodyTooLarge,
    Message,
    Receive,
    Scope,
    Send,
    Stream,
    read_body,
    respond,
    start_stream,
)
from turnout.service.client import AsyncTurnout, ReplyStream, StreamFailed
from turnout.service.clock import clock
from turnout.service.core.config import Config
from turnout.service.gateway.keys import KeyRing
from turnout.service.kafka.errors import RecordTooLarge
from turnout.service.kafka.settings import KafkaSettings
from turnout.service.telemetry import gateway_tracer, server_span
from turnout.service.wire.intake import MAX_RECORD_BYTES, TENANT_ID
from turnout.service.wire.sse import encode_event

__all__ = ["GatewayApp", "error_status"]

log = logging.getLogger("turnout.gateway")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_DONE: Final = b"data: [DONE]\n\n"
_ROUTE_PREFIX: Final = "turnout/"
_TRACEPARENT: Final = "traceparent"
_RESUME: Final = ("/v1/chat/completions/", "/stream")
_KEEP_STREAMS: Final = 10_000  # streams this gateway remembers for resume
_GATEWAY_FIELDS: Final = frozenset({"request_id", "tenant", "task_type", "reply_to", "redrive_of"})
"""Intake fields the gateway sets; a body naming one is refused (one tenant posing as
another once read its answers)."""
_IDEMPOTENT: Final = "idem:"  # request ids made from an Idempotency-Key
_BODY_S: Final = 30.0  # at most this long to read a request's body (then a 408)
_HAND_OVER_S: Final = 10.0  # at most this long to hand a request to Kafka (then a 503)
_SHUTDOWN_CANCELS_S: Final = 3.0  # a stopping gateway waits this long for its cancels
_CLOCK_SKEW_MS: Final = 10_000  # read back from this long before a stream was sent
_READY_PROBE_S: Final = 1.0  # /readyz: a broker answers metadata within this
_RECORD_ROOM: Final = 2_048  # the intake fields the gateway adds (ids, tenant, reply topic)

#              code                       status  OpenAI error type
_STATUSES: Final[dict[str, tuple[int, str]]] = {
    "invalid_request": (400, "invalid_request_error"),
    "unknown_task_type": (400, "invalid_request_error"),
    "invalid_api_key": (401, "authentication_error"),
    "budget_exceeded": (402, "insufficient_quota"),
    "not_found": (404, "invalid_request_error"),
    "request_timeout": (408, "invalid_request_error"),
    "duplicate_expired": (409, "invalid_request_error"),
    "request_too_large": (413, "invalid_request_error"),
    "rate_limited": (429, "rate_limit_error"),
    "upstream_rate_limited": (429, "rate_limit_error"),
    "internal_error": (500, "api_error"),
    "upstream_stream_error": (502, "api_error"),
    "response_too_large": (502, "api_error"),
    "upstream_unavailable": (503, "api_error"),
    "not_ready": (503, "api_error"),
    "upstream_timeout": (504, "api_error"),
    "gateway_timeout": (504, "api_error"),
}


def error_status(code: str, status: str = "error") -> tuple[int, str]:
    """The HTTP status and OpenAI error type of a Turnout error code."""
    found = _STATUSES.get(code)
    if found is not None:
        return found
    return (400, "invalid_request_error") if status == "rejected" else (502, "api_error")


class _Refused(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class GatewayApp:
    """`turnout gateway` as an ASGI 3 application (`turnout.service.gateway.server` runs it)."""

    def __init__(
        self,
        cfg: Config,
        *,
        settings: KafkaSettings | None = None,
        tracer_provider: Any | None = None,
    ) -> None:
        self.cfg = cfg
        self.tracer, self.tracer_provider = gateway_tracer(provider=tracer_provider)
        self.keys = KeyRing(cfg.gateway.keys)
        self.settings = settings or KafkaSettings.from_config(cfg.kafka, topics=cfg.topics)
        self.client = AsyncTurnout(self.settings)
        self.started = False
        self.served: OrderedDict[str, tuple[str, int]] = OrderedDict()  # rid -> tenant, start
        self.requests = 0
        self.streams = 0
        self.disconnects = 0
        self._background: set[asyncio.Task[None]] = set()  # cancels going out (`_later`)

    # ------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        try:
            if path == "/v1/chat/completions" and method == "POST":
                await self._chat(scope, receive, send)
            elif path.startswith(_RESUME[0]) and path.endswith(_RESUME[1]) and method == "GET":
                await self._resume(scope, receive, send, path[len(_RESUME[0]) : -len(_RESUME[1])])
            elif path == "/v1/models" and method == "GET":
                await self._models(scope, send)
            elif path == "/livez":
                await respond(send, 200, b'{"status":"ok"}')
            elif path == "/readyz":
                await self._ready(send)
            else:
                raise _Refused("not_found", f"no route {method} {path}")
        except _Refused as err:
            await self._error(send, err.code, str(err), param=err.param)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.client.start()
                except Exception as err:
                    await send({"type": "lifespan.startup.failed", "message": str(err)})
                    return
                self.started = True
                if self.keys.open:
                    log.warning(
                        "no [gateway.keys] configured: the gateway is OPEN (tenant from "
                        "X-Turnout-Tenant, else 'default'); add keys with "
                        "`turnout gateway key create --tenant T`"
                    )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.started = False
                if self._background:  # cancels of requests given up on, still going out
                    await asyncio.wait(self._background, timeout=_SHUTDOWN_CANCELS_S)
                await self.client.close(delete_reply_topic=True)
                if self.tracer_provider is not None:
                    self.tracer_provider.force_flush()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------ endpoints

    async def _ready(self, send: Send) -> None:
        ok = self.started and await self.client.reachable(_READY_PROBE_S)
        body = {"status": "ready" if ok else "not_ready", "reply_topic": self.client.reply_topic,
                "open": self.keys.open}  # fmt: skip
        await respond(send, 200 if ok else 503, _encode(body))

    async def _models(self, scope: Scope, send: Send) -> None:
        self._tenant(scope)
        data: list[dict[str, Any]] = []
        seen: set[str] = set()
        for task, route in self.cfg.routes.items():
            data.append({"id": _ROUTE_PREFIX + task, "object": "model", "created": 0,
                         "owned_by": "turnout"})  # fmt: skip
            for model in route.models:
                if model not in seen:
                    seen.add(model)
                    owner = model.split("/", 1)[0] if "/" in model else "upstream"
                    data.append({"id": model, "object": "model", "created": 0, "owned_by": owner})
        await respond(send, 200, _encode({"object": "list", "data": data}))

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One chat request, in a SERVER span continuing the caller's `traceparent` and
        handed on to the router in the intake record's header (one trace, end to end)."""
        span, traceparent = server_span(self.tracer, "POST /v1/chat/completions", scope["headers"])
        status: list[int] = []

        async def sent(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self._chat_traced(scope, receive, sent, span, traceparent)
        except _Refused as err:
            await self._error(sent, err.code, str(err), param=err.param)
        finally:
            if status:
                span.set_attribute("http.response.status_code", status[0])
                if status[0] >= 500:
                    span.set_status(Status(StatusCode.ERROR, str(status[0])))
            span.end()

    async def _chat_traced(
        self, scope: Scope, receive: Receive, send: Send, span: Any, traceparent: str | None
    ) -> None:
        tenant = self._tenant(scope)
        # the intake record must fit a Kafka record, with the room what the gateway adds takes
        limit = min(self.cfg.gateway.max_body_bytes, MAX_RECORD_BYTES - _RECORD_ROOM)
        wait = min(_BODY_S, self.cfg.gateway.timeout_s)
        try:
            async with asyncio.timeout(wait):  # a client trickling its body holds a slot
                body = await read_body(receive, limit)
        except TimeoutError:
            message = f"the body did not arrive within {wait:g} s"
            raise _Refused("request_timeout", message) from None
        except BodyTooLarge:
            raise _Refused(
                "request_too_large",
                f"the body is over {limit:,} bytes, the most one request may hold here "
                f"([gateway] max_body_bytes, and a Kafka record's {MAX_RECORD_BYTES:,})",
            ) from None
        intake = self._intake(scope, tenant, body)
        span.set_attributes({
            "turnout.request_id": intake["request_id"], "turnout.tenant": tenant,
            "turnout.task_type": intake["task_type"], "turnout.stream": bool(intake.get("stream")),
            "gen_ai.operation.name": "chat",
        })  # fmt: skip
        headers = [(_TRACEPARENT, traceparent.encode())] if traceparent else []
        self.requests += 1
        if intake.get("stream"):
            self.streams += 1
            rid = intake["request_id"]
            earlier = self.served.get(rid)
            if earlier is not None and earlier[0] == intake["tenant"]:
                # the same Idempotency-Key streamed again (an SDK's retry): the same
                # request, from its first chunk (sent again, it would join mid-stream)
                await self._read_back(receive, send, rid, earlier[1], after=0)
                return
            await self._stream(scope, receive, send, intake, headers)
        else:
            await self._plain(receive, send, intake, headers)

    # ------------------------------------------------------------ requests

    def _tenant(self, scope: Scope) -> str:
        if self.keys.open:
            tenant = _header(scope, b"x-turnout-tenant") or "default"
            if not TENANT_ID.fullmatch(tenant):
                raise _Refused("invalid_request", "X-Turnout-Tenant is not a valid tenant id")
            return tenant
        found = self.keys.tenant(_header(scope, b"authorization"))
        if found is None:
            raise _Refused(
                "invalid_api_key", "Incorrect API key provided: use a key made by "
                "`turnout gateway key create`, as `Authorization: Bearer <key>`",
            )  # fmt: skip
        return found

    def _intake(self, scope: Scope, tenant: str, body: bytes) -> dict[str, Any]:
        try:
            doc = _decode(body)
        except ValueError as err:
            raise _Refused("invalid_request", f"the body is not JSON: {err}") from None
        except RecursionError:
            raise _Refused("invalid_request", "the body's JSON is nested too deep") from None
        if not isinstance(doc, dict):
            raise _Refused("invalid_request", "the body must be a JSON object")
        if "cancel" in doc:  # an intake record with it is a cancel record, not a request
            raise _Refused(
                "invalid_request", "cancel is not a chat parameter: a client stops its "
                "request by closing the connection", "cancel",
            )  # fmt: skip
        named = sorted(_GATEWAY_FIELDS.intersection(doc))  # never a caller's to choose
        if named:
            raise _Refused(
                "invalid_request", f"{named[0]} is not a chat parameter: the gateway sets it "
                "(tenant from the API key, request id from Idempotency-Key, task type from "
                "the model)", named[0],
            )  # fmt: skip
        messages = doc.pop("messages", None)
        if not isinstance(messages, list) or not messages:
            raise _Refused("invalid_request", "messages must be a non-empty list", "messages")
        model = doc.pop("model", None)
        stream = doc.pop("stream", False)
        doc.pop("stream_options", None)  # the router always asks for usage
        if not isinstance(stream, bool):
            raise _Refused("invalid_request", "stream must be true or false", "stream")
        task_type = _header(scope, b"x-turnout-task-type") or "general"
        pinned: str | None = None
        if isinstance(model, str) and model.startswith(_ROUTE_PREFIX):
            task_type = model[len(_ROUTE_PREFIX) :]
        elif isinstance(model, str) and model:
            pinned = model
        elif model is not None:
            raise _Refused("invalid_request", "model must be a string", "model")
        if task_type not in self.cfg.routes:
            routes = ", ".join(_ROUTE_PREFIX + t for t in self.cfg.routes)
            raise _Refused(
                "invalid_request", f"no route for task type {task_type!r}: one of {routes}", "model"
            )
        idem = _header(scope, b"idempotency-key")
        if idem is not None and not 0 < len(idem) <= 200:
            raise _Refused("invalid_request", "Idempotency-Key must be 1-200 characters")
        # "/" never occurs in a tenant id, so no two tenants' keys make the same request id
        rid = f"{_IDEMPOTENT}{tenant}/{idem}" if idem else clock.new_id()
        intake: dict[str, Any] = {
            **doc, "request_id": rid, "tenant": tenant, "task_type": task_type,
            "messages": messages,
        }  # fmt: skip
        if pinned is not None:
            intake["model"] = pinned
        if stream:
            intake["stream"] = True
        return intake

    async def _plain(
        self, receive: Receive, send: Send, intake: dict[str, Any],
        headers: list[tuple[str, bytes]],
    ) -> None:  # fmt: skip
        waiter = await self._send(intake, headers)
        assert isinstance(waiter, asyncio.Future)
        watch: asyncio.Future[Any] = asyncio.ensure_future(_disconnected(receive))
        done: set[asyncio.Future[Any]] = set()
        racing: set[asyncio.Future[Any]] = {waiter, watch}
        try:
            async with asyncio.timeout(self.cfg.gateway.timeout_s):
                done, _ = await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        except asyncio.CancelledError:  # the gateway is stopping
            self._give_up(intake, "the gateway stopped")
            raise
        finally:
            watch.cancel()
            if not waiter.done():  # a later answer is kept for a retry of the same key
                self.client.forget(intake["request_id"], waiter)
        if waiter not in done:
            if watch in done:
                self.disconnects += 1
                self._give_up(intake, "client disconnected")
            else:
                await self._timeout(send, intake["request_id"])
                self._give_up(intake, "no answer within the gateway's timeout")
            return
        doc = waiter.result()
        if doc.get("status") != "ok":
            await self._failed(send, doc)
            return
        await respond(send, 200, _encode(doc.get("response") or {}), _answer_headers(doc))

    async def _stream(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        intake: dict[str, Any],
        headers: list[tuple[str, bytes]],
    ) -> None:
        waiter = await self._send(intake, headers)
        assert isinstance(waiter, ReplyStream)
        rid = intake["request_id"]
        self.served[rid] = (intake["tenant"], clock.now_ms())  # for resume, and a resend
        while len(self.served) > _KEEP_STREAMS:
            self.served.popitem(last=False)
        waiter.timeout_s = self.cfg.gateway.timeout_s
        relay = asyncio.create_task(self._relay(send, waiter))
        watch = asyncio.create_task(_disconnected(receive))
        try:
            done, _ = await asyncio.wait({relay, watch}, return_when=asyncio.FIRST_COMPLETED)
            if relay not in done:  # the client went away first: stop the request too
                self.disconnects += 1
                relay.cancel()
                with suppress(asyncio.CancelledError):
                    await relay
                if waiter.response is None:
                    self._later(self._cancel(intake, "client disconnected"))
            else:
                relay.result()
                if waiter.response is None:  # it gave up waiting (a 504)
                    self._give_up(intake, "no answer within the gateway's timeout")
        except asyncio.CancelledError:  # the gateway is stopping
            if waiter.response is None:
                self._later(self._cancel(intake, "the gateway stopped"))
            raise
        finally:
            watch.cancel()
            waiter.close()
            if waiter.seq == 0 and (waiter.response or {}).get("status") != "ok":
                self.served.pop(rid, None)  # refused before any chunk: a resend is sent

    async def _resume(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        """`GET /v1/chat/completions/{id}/stream`: a stream this gateway served, from the
        chunk after `Last-Event-ID` (read back from its reply topic) to its end."""
        tenant = self._tenant(scope)
        served = self.served.get(rid)
        if served is None or served[0] != tenant:
            raise _Refused("not_found", f"no stream {rid} was served here for this key")
        last = _header(scope, b"last-event-id") or "0"
        if not (last.isascii() and last.isdigit()):
            raise _Refused("invalid_request", "Last-Event-ID must be a chunk's id (a number)")
        await self._read_back(receive, send, rid, served[1], after=int(last))

    async def _read_back(
        self, receive: Receive, send: Send, rid: str, served_ms: int, *, after: int
    ) -> None:
        """A stream this gateway served, relayed again from its reply topic: its chunks
        after `after`, then the live ones to its end (resume, or the same Idempotency-Key
        streamed again). A client that leaves stops only its own relay."""
        try:
            stream = await self.client.follow(
                rid,
                after=after,
                since_ms=served_ms - _CLOCK_SKEW_MS,
                timeout_s=self.cfg.gateway.timeout_s,
            )
        except Exception as err:
            raise _Refused("not_ready", f"could not read the stream back: {err}") from None
        relay = asyncio.create_task(self._relay(send, stream, resumed=after))
        watch = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait({relay, watch}, return_when=asyncio.FIRST_COMPLETED)
            if relay.done():
                relay.result()
            else:
                relay.cancel()
                with suppress(asyncio.CancelledError):
                    await relay
        finally:
            watch.cancel()
            stream.close()

    async def _relay(self, send: Send, stream: ReplyStream, *, resumed: int | None = None) -> None:
        """Relay a stream's records (`resumed`: read back, after that chunk) to the client."""
        chunks = stream.raw()
        out: Stream | None = None
        try:
            async for seq, chunk in chunks:
                if out is None and resumed is not None and seq != resumed + 1:
                    raise _Refused(  # never a stream without its start, ending as if whole
                        "not_ready", f"chunks {resumed + 1}-{seq - 1} of {stream.request_id} "
                        "could not be read back: try again",
                    )  # fmt: skip
                if out is None:
                    out = await start_stream(send, _stream_headers(stream))
                await out.write(encode_event(chunk, id=str(seq)))
        except StreamFailed as err:
            if out is None:
                await self._failed(send, err.response)
            else:
                await out.end(encode_event(_error_chunk(stream, err.response)))
            return
        except TimeoutError:
            if out is None:
                await self._timeout(send, stream.request_id)
            else:
                doc = {"request_id": stream.request_id, "error": {
                    "code": "gateway_timeout",
                    "message": f"no more of the stream within {stream.timeout_s:g} s"}}  # fmt: skip
                await out.end(encode_event(_error_chunk(stream, doc)))
            return
        doc = stream.response or {}
        if out is None and resumed is not None:  # nothing after Last-Event-ID
            out = await start_stream(send, _answer_headers(doc))
        elif out is None:  # answered whole (a resend of a finished request): one chunk
            out = await start_stream(send, _answer_headers(doc))
            await out.write(encode_event(_encode(_as_chunk(doc)), id="1"))
        await out.end(_DONE)

    async def _cancel(self, intake: dict[str, Any], reason: str) -> None:
        try:
            await self.client.cancel(intake["request_id"], tenant=intake["tenant"], reason=reason)
        except Exception as err:  # the request runs to its end: it is still charged right
            log.warning("could not cancel %s: %s", intake["request_id"], err)

    def _give_up(self, intake: dict[str, Any], reason: str) -> None:
        """A request no one waits for any more is cancelled (the openai SDK's retry of a
        504 is a new request: three answers were paid for, none read), unless it has an
        Idempotency-Key: a retry with that key is answered by it. In the background: an
        answer (a 504) never waits for the cancel's ack."""
        if not intake["request_id"].startswith(_IDEMPOTENT):
            self._later(self._cancel(intake, reason))

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background; the lifespan's shutdown waits for it a moment."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send(
        self, intake: dict[str, Any], headers: list[tuple[str, bytes]]
    ) -> ReplyStream | asyncio.Future[dict[str, Any]]:
        wait = min(_HAND_OVER_S, self.cfg.gateway.timeout_s)
        try:
            async with asyncio.timeout(wait):
                return await self.client.send(intake, headers=headers)
        except RecordTooLarge as err:  # a body that grew past the room once re-encoded
            raise _Refused("request_too_large", str(err)) from None
        except TimeoutError:  # Kafka is down: the record may still go out once it is back,
            # and a cancel record behind it (same key, same partition) stops it at once
            log.warning("could not publish request %s within %g s", intake["request_id"], wait)
            self._give_up(intake, "Kafka did not take it in time")
            raise _Refused(
                "not_ready", f"Kafka did not take the request within {wait:g} s: try again"
            ) from None
        except Exception as err:
            log.warning("could not publish request %s: %s", intake["request_id"], err)
            raise _Refused("not_ready", f"Turnout could not take the request: {err}") from None

    # ------------------------------------------------------------ answers

    async def _failed(self, send: Send, doc: dict[str, Any]) -> None:
        error = doc.get("error") or {}
        code = str(error.get("code") or "internal_error")
        headers = _answer_headers(doc)  # the model tried last, attempts: also on errors
        retry_ms = error.get("retry_after_ms")
        if code == "budget_exceeded":
            headers.append((b"x-should-retry", b"false"))
        if isinstance(retry_ms, int | float):
            headers.append((b"retry-after-ms", str(int(retry_ms)).encode()))
            headers.append((b"retry-after", str(max(1, math.ceil(retry_ms / 1000))).encode()))
        await self._error(send, code, str(error.get("message") or code), headers=headers,
                          status=str(doc.get("status", "error")))  # fmt: skip

    async def _timeout(self, send: Send, request_id: str) -> None:
        await self._error(
            send, "gateway_timeout",
            f"no answer to {request_id} within {self.cfg.gateway.timeout_s:g} s: is a router "
            "running?", headers=[(b"x-request-id", request_id.encode())],
        )  # fmt: skip

    async def _error(
        self,
        send: Send,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        status: str = "error",
    ) -> None:
        http, kind = error_status(code, status)
        body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
        await respond(send, http, _encode(body), headers or ())


def _answer_headers(doc: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    cache = "hit" if doc.get("cached") else "coalesced" if doc.get("coalesced") else "miss"
    return [
        (b"x-request-id", str(doc.get("request_id", "")).encode()),
        (b"x-turnout-model", str(doc.get("model") or "").encode()),
        (b"x-turnout-attempts", str(doc.get("attempts", 0)).encode()),
        (b"x-turnout-cache", cache.encode()),
    ]


def _stream_headers(stream: ReplyStream) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-request-id", stream.request_id.encode()),
        (b"x-turnout-model", (stream.model or "").encode()),
        (b"x-turnout-attempts", str(stream.attempt or 0).encode()),
        (b"x-turnout-cache", _stream_cache(stream)),
        (b"x-accel-buffering", b"no"),
    ]


def _stream_cache(stream: ReplyStream) -> bytes:
    """A stream's `x-turnout-cache`: attempt 0 is a cache hit's replay."""
    return b"hit" if stream.attempt == 0 else b"coalesced" if stream.coalesced else b"miss"


def _error_chunk(stream: ReplyStream, doc: dict[str, Any]) -> bytes:
    """OpenRouter's mid-stream error: a chunk with `error` and `finish_reason: "error"`."""
    error = doc.get("error") or {}
    code = str(error.get("code") or "upstream_stream_error")
    _, kind = error_status(code)
    return _encode({
        "id": stream.request_id, "object": "chat.completion.chunk", "model": stream.model,
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        "error": {"message": str(error.get("message") or code), "type": kind, "code": code},
    })  # fmt: skip


def _as_chunk(doc: dict[str, Any]) -> dict[str, Any]:
    """A whole answer as one `chat.completion.chunk` (with its usage)."""
    response = doc.get("response") or {}
    choices = []
    for choice in response.get("choices") or ():
        message = dict(choice.get("message") or {})
        choices.append({"index": choice.get("index", 0), "delta": message,
                        "finish_reason": choice.get("finish_reason")})  # fmt: skip
    return {
        "id": response.get("id"), "object": "chat.completion.chunk",
        "created": response.get("created"), "model": response.get("model"),
        "choices": choices, "usage": response.get("usage"),
    }  # fmt: skip


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
