"""`POST /api/v1/chat/completions`: decide the outcome, then act it out.

Job: turn one chat request into exactly what the scenario decided: a normal
answer (JSON or SSE), an OpenRouter error status, a hang, a reset, a
malformed body or a mid-stream error.

Rules:
- Order: authorise (401), decode (400), decide (one scenario decision, two
  random draws), count, wait the decided latency, act.
- Streams open with a `: OPENROUTER PROCESSING` comment (repeated every second
  while the latency runs), then a role chunk, content chunks, a chunk with the
  finish reason, a usage-only chunk with empty `choices`, and `data: [DONE]`.
- 429 and 503 always carry `Retry-After` (whole seconds, rounded up; the
  rule's `retry_after_s`, default 1). Error metadata holds `provider_name`
  and, when a rule decided, `simulator_rule` (its index in the scenario).
- A mid-stream error is a 200: streamed, some content then a chunk with an
  `error` and `finish_reason: "error"` (no usage, no [DONE]); not streamed,
  OpenRouter's error body with HTTP 200.
- Normal answers and mid-stream errors are remembered for `/generation`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from turnout.service.asgi import (
    Receive,
    Scope,
    Send,
    Stream,
    abort_connection,
    header,
    read_body,
    respond,
    start_stream,
    wait_for_disconnect,
)
from turnout.service.clock import clock

from .answer import Answer, estimate_tokens, make_answer, prompt_text_length, split_for_stream
from .catalogue import ModelInfo
from .scenario import MALFORMED, MIDSTREAM_ERROR, OK, OVERSIZED, RESET, TIMEOUT, Decision
from .state import SimulatorState, outcome_key
from .wire import (
    AssistantMessage,
    ChatRequest,
    Chunk,
    ChunkChoice,
    Completion,
    CompletionChoice,
    Delta,
    ErrorBody,
    ErrorChunk,
    ErrorDetail,
    Generation,
    Usage,
    decode_request,
    encode,
    request_key,
)

__all__ = ["chat_completions", "error_body"]

_KEEPALIVE = b": OPENROUTER PROCESSING\n\n"
_DONE = b"data: [DONE]\n\n"
_KEEPALIVE_EVERY_S = 1.0
_MESSAGES = {
    401: "No auth credentials found",
    402: "Insufficient credits. Add more using https://openrouter.ai/settings/credits",
    403: "Input was flagged by moderation",
    408: "Request timed out",
    429: "Rate limit exceeded: the provider is temporarily rate-limited upstream",
    502: "Provider returned error",
    503: "No available model provider that meets your routing requirements",
}


def error_body(
    code: int, message: str | None = None, metadata: dict[str, object] | None = None
) -> bytes:
    """OpenRouter's error JSON: `{"error": {"code", "message", "metadata"}}`."""
    text = message or _MESSAGES.get(code) or HTTPStatus(code).phrase
    return encode(ErrorBody(error=ErrorDetail(code=code, message=text, metadata=metadata)))


class _Job:
    """One decided chat request and the answer it would get."""

    def __init__(self, state: SimulatorState, request: ChatRequest, decision: Decision) -> None:
        assert request.model is not None and request.messages is not None
        self.state = state
        self.request = request
        self.decision = decision
        self.model: str = request.model
        self.info: ModelInfo = state.catalogue.info(request.model)
        self.created = clock.now_ms() // 1000
        self.id = state.new_generation_id(self.created)
        self.answer: Answer = make_answer(request_key(request), request.token_limit)
        chars = prompt_text_length(m.content for m in request.messages)
        self.prompt_tokens = max(1, estimate_tokens(chars))

    @property
    def id_header(self) -> tuple[bytes, bytes]:
        return (b"x-generation-id", self.id.encode())

    def usage(self, completion_tokens: int) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=self.prompt_tokens + completion_tokens,
            cost=self.info.cost_usd(self.prompt_tokens, completion_tokens),
        )

    def remember(self, finish_reason: str, completion_tokens: int) -> None:
        self.state.generations.add(
            Generation(
                id=self.id,
                model=self.model,
                provider=self.info.provider,
                created_ms=self.created * 1000,
                streamed=self.request.stream,
                finish_reason=finish_reason,
                tokens_prompt=self.prompt_tokens,
                tokens_completion=completion_tokens,
                cost=self.info.cost_usd(self.prompt_tokens, completion_tokens),
                latency_ms=round(self.decision.latency_ms),
            )
        )

    def completion(self) -> Completion:
        answer = self.answer
        choice = CompletionChoice(
            message=AssistantMessage(content=answer.text),
            finish_reason=answer.finish_reason,
            native_finish_reason=answer.finish_reason,
        )
        return Completion(
            id=self.id,
            provider=self.info.provider,
            model=self.model,
            object="chat.completion",
            created=self.created,
            choices=[choice],
            usage=self.usage(answer.completion_tokens),
        )

    def chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
        chunk = Chunk(
            id=self.id,
            provider=self.info.provider,
            model=self.model,
            object="chat.completion.chunk",
            created=self.created,
            choices=choices,
            usage=usage,
        )
        return b"data: " + encode(chunk) + b"\n\n"

    def error_chunk(self) -> bytes:
        error = ErrorDetail(
            code="server_error",
            message="Provider disconnected unexpectedly",
            metadata={"provider_name": self.info.provider},
        )
        chunk = ErrorChunk(
            id=self.id,
            provider=self.info.provider,
            model=self.model,
            object="chat.completion.chunk",
            created=self.created,
            error=error,
            choices=[ChunkChoice(delta=Delta(content=""), finish_reason="error")],
        )
        return b"data: " + encode(chunk) + b"\n\n"


# --------------------------------------------------------------------------- entry point


async def chat_completions(
    state: SimulatorState, scope: Scope, receive: Receive, send: Send
) -> None:
    if state.options.require_key:
        problem = _auth_problem(header(scope, b"authorization"))
        if problem is not None:
            state.stats.count(None, "401")
            await respond(send, 401, error_body(401, problem))
            return
    request = decode_request(await read_body(receive))
    if isinstance(request, str):
        state.stats.count(None, "400")
        await respond(send, 400, error_body(400, request))
        return
    assert request.model is not None
    decision = state.decide(request.model)
    state.stats.count(request.model, outcome_key(decision.outcome))
    job = _Job(state, request, decision)
    if isinstance(decision.outcome, int):
        await _sleep(decision)
        await _error_status(job, send)
        return
    await _ACTIONS[decision.outcome](job, receive, send)


def _auth_problem(value: bytes | None) -> str | None:
    """Why an Authorization header is refused, or None: keys look like `sk-...`."""
    if not value:
        return "No auth credentials found"
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip().startswith(b"sk-"):
        return "Invalid credentials: send Authorization: Bearer sk-..."
    return None


async def _sleep(decision: Decision) -> None:
    if decision.latency_ms > 0:
        await asyncio.sleep(decision.latency_ms / 1000)


# --------------------------------------------------------------------------- outcomes


async def _ok(job: _Job, receive: Receive, send: Send) -> None:
    if job.request.stream:
        stream = await _open_stream(job, send)
        await _stream_answer(job, stream, len(job.answer.text), receive=receive)
        return
    await _sleep(job.decision)
    job.remember(job.answer.finish_reason, job.answer.completion_tokens)
    await respond(send, 200, encode(job.completion()), [job.id_header])


async def _error_status(job: _Job, send: Send) -> None:
    status = int(job.decision.outcome)
    headers = []
    if status in (429, 503):
        retry_after = job.decision.retry_after_s
        seconds = 1 if retry_after is None else math.ceil(retry_after)
        headers.append((b"retry-after", str(seconds).encode()))
    metadata: dict[str, object] = {"provider_name": job.info.provider}
    if job.decision.rule is not None:
        metadata["simulator_rule"] = job.decision.rule
    await respond(send, status, error_body(status, metadata=metadata), headers)


async def _timeout(job: _Job, receive: Receive, send: Send) -> None:
    """Hang until the client gives up, the server stops, or `hang_max_s`."""
    closing = asyncio.ensure_future(job.state.closing.wait())
    gone = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        done, _ = await asyncio.wait(
            {closing, gone},
            timeout=job.state.options.hang_max_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        closing.cancel()
        gone.cancel()
    if gone not in done:
        await abort_connection(send, receive)


async def _reset(job: _Job, receive: Receive, send: Send) -> None:
    await _sleep(job.decision)
    await abort_connection(send, receive)


async def _malformed(job: _Job, receive: Receive, send: Send) -> None:
    body = encode(job.completion())
    broken = body[: len(body) // 2]
    if job.request.stream:
        stream = await start_stream(send, [job.id_header])
        await _sleep(job.decision)
        await stream.end(b"data: " + broken + b"\n\n" + _DONE)
        return
    await _sleep(job.decision)
    await respond(send, 200, broken, [job.id_header])


async def _midstream_error(job: _Job, receive: Receive, send: Send) -> None:
    if job.request.stream:
        stream = await _open_stream(job, send)
        await _stream_answer(job, stream, len(job.answer.text) // 2, error=True, receive=receive)
        return
    await _sleep(job.decision)
    partial = estimate_tokens(len(job.answer.text) // 2)
    job.remember("error", partial)
    metadata: dict[str, object] = {"provider_name": job.info.provider}
    body = error_body(502, "Provider disconnected unexpectedly", metadata)
    await respond(send, 200, body, [job.id_header])


OVERSIZED_BYTES = 1_500_000


async def _oversized(job: _Job, receive: Receive, send: Send) -> None:
    """A well-formed answer far larger than a Kafka record (a runaway generation)."""
    await _sleep(job.decision)
    completion = job.completion()
    text = (job.answer.text + " ") * (OVERSIZED_BYTES // (len(job.answer.text) + 1) + 1)
    completion.choices[0].message.content = text
    job.remember("length", estimate_tokens(len(text)))
    await respond(send, 200, encode(completion), [job.id_header])


_ACTIONS: dict[str, Callable[[_Job, Receive, Send], Awaitable[None]]] = {
    OK: _ok,
    TIMEOUT: _timeout,
    RESET: _reset,
    MALFORMED: _malformed,
    MIDSTREAM_ERROR: _midstream_error,
    OVERSIZED: _oversized,
}


# --------------------------------------------------------------------------- streaming


async def _open_stream(job: _Job, send: Send) -> Stream:
    """Headers and keep-alive comments while the decided latency runs."""
    stream = await start_stream(send, [job.id_header])
    await stream.write(_KEEPALIVE)
    remaining = job.decision.latency_ms / 1000
    while remaining > 0:
        step = min(remaining, _KEEPALIVE_EVERY_S)
        await asyncio.sleep(step)
        remaining -= step
        if remaining > 0:
            await stream.write(_KEEPALIVE)
    return stream


async def _stream_answer(
    job: _Job, stream: Stream, upto: int, *, receive: Receive, error: bool = False
) -> None:
    """Stream the answer's first `upto` characters (`chunk_ms` apart), then finish or fail;
    a client that goes away stops it (counted `aborted`: OpenRouter stops billing then)."""
    stats = job.state.stats.streams
    gone = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await stream.write(job.chunk([ChunkChoice(delta=Delta(role="assistant", content=""))]))
        sent = 0
        for text in split_for_stream(job.answer.text):
            if sent >= upto:
                break
            if job.decision.chunk_ms > 0:
                await asyncio.sleep(job.decision.chunk_ms / 1000)
            if gone.done():
                stats["aborted"] += 1
                job.remember("aborted", estimate_tokens(sent))
                return
            await stream.write(job.chunk([ChunkChoice(delta=Delta(content=text))]))
            stats["chunks"] += 1
            sent += len(text)
    finally:
        gone.cancel()
    if error:
        stats["errored"] += 1
        job.remember("error", estimate_tokens(sent))
        await stream.end(job.error_chunk())
        return
    stats["completed"] += 1
    reason = job.answer.finish_reason
    last = ChunkChoice(delta=Delta(content=""), finish_reason=reason, native_finish_reason=reason)
    await stream.write(job.chunk([last]))
    job.remember(reason, job.answer.completion_tokens)
    await stream.end(job.chunk([], job.usage(job.answer.completion_tokens)) + _DONE)
