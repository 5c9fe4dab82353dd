"""OpenRouter's wire shapes, as the simulator reads and writes them.

Job: decode a chat request (with the reason when it is bad) and encode
completions, stream chunks, errors, model listings and generation stats with
reused msgspec encoders.

Rules:
- Shapes follow OpenRouter's chat completions API: `gen-` ids, `provider`,
  `usage.cost` in USD; errors are `{"error": {"code", "message", "metadata"}}`;
  a mid-stream error is a chunk with a top-level `error` and
  `finish_reason: "error"`.
- Unknown request fields are ignored (as OpenRouter passes them through);
  a request's identity (`request_key`) is model, messages, temperature, top_p,
  max tokens, seed and stop; `stream` is not part of it.
- Pure: no I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

__all__ = [
    "ChatRequest",
    "Chunk",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "Delta",
    "ErrorBody",
    "ErrorChunk",
    "ErrorDetail",
    "Generation",
    "Message",
    "ModelEntry",
    "Usage",
    "decode_request",
    "encode",
    "generation_json",
    "model_entry",
    "request_key",
]

_encoder = msgspec.json.Encoder()
encode = _encoder.encode


# --------------------------------------------------------------------------- requests


class Message(msgspec.Struct):
    role: str
    content: str | list[Any] | None = None


class ChatRequest(msgspec.Struct):
    model: str | None = None
    messages: list[Message] | None = None
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_tokens is None else self.max_tokens


_request_decoder = msgspec.json.Decoder(ChatRequest)


def decode_request(body: bytes) -> ChatRequest | str:
    """The request, or a one-line reason it is a bad request (HTTP 400)."""
    try:
        request = _request_decoder.decode(body)
    except msgspec.ValidationError as err:
        return f"Invalid request body: {err}"
    except msgspec.DecodeError:
        return "Invalid request body: not valid JSON"
    return _check(request) or request


def _check(request: ChatRequest) -> str | None:
    if not request.model:
        return "model: required, a model id such as openai/gpt-4o-mini"
    if not request.messages:
        return "messages: required, a non-empty array of {role, content}"
    limit = request.token_limit
    if limit is not None and limit < 1:
        return f"max_tokens: must be >= 1, got {limit}"
    if request.temperature is not None and not 0 <= request.temperature <= 2:
        return f"temperature: must be between 0 and 2, got {request.temperature}"
    return None


def request_key(request: ChatRequest) -> bytes:
    """The bytes that identify a request's answer (everything but `stream`)."""
    return encode(
        (
            request.model,
            request.messages,
            request.temperature,
            request.top_p,
            request.token_limit,
            request.seed,
            request.stop,
        )
    )


# --------------------------------------------------------------------------- responses


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int = 0


class CompletionTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float
    is_byok: bool = False
    prompt_tokens_details: PromptTokensDetails = msgspec.field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails = msgspec.field(
        default_factory=CompletionTokensDetails
    )


class AssistantMessage(msgspec.Struct):
    content: str
    role: str = "assistant"
    refusal: None = None


class CompletionChoice(msgspec.Struct):
    message: AssistantMessage
    finish_reason: str
    native_finish_reason: str
    index: int = 0
    logprobs: None = None


class Completion(msgspec.Struct):
    id: str
    provider: str
    model: str
    object: str
    created: int
    choices: list[CompletionChoice]
    usage: Usage


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct):
    delta: Delta
    finish_reason: str | None = None
    native_finish_reason: str | None = None
    index: int = 0
    logprobs: None = None


class Chunk(msgspec.Struct):
    id: str
    provider: str
    model: str
    object: str
    created: int
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    code: int | str
    message: str
    metadata: dict[str, Any] | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class ErrorChunk(msgspec.Struct):
    id: str
    provider: str
    model: str
    object: str
    created: int
    error: ErrorDetail
    choices: list[ChunkChoice]


# --------------------------------------------------------------------------- models


class Pricing(msgspec.Struct):
    prompt: str
    completion: str
    request: str = "0"
    image: str = "0"
    web_search: str = "0"
    internal_reasoning: str = "0"


class Architecture(msgspec.Struct):
    modality: str = "text->text"
    input_modalities: tuple[str, ...] = ("text",)
    output_modalities: tuple[str, ...] = ("text",)
    tokenizer: str = "Other"
    instruct_type: None = None


class TopProvider(msgspec.Struct):
    context_length: int
    max_completion_tokens: int
    is_moderated: bool = False


_SUPPORTED = ("max_tokens", "temperature", "top_p", "stop", "seed", "stream")


class ModelEntry(msgspec.Struct):
    id: str
    canonical_slug: str
    name: str
    created: int
    description: str
    context_length: int
    architecture: Architecture
    pricing: Pricing
    top_provider: TopProvider
    per_request_limits: None = None
    supported_parameters: tuple[str, ...] = _SUPPORTED


def model_entry(
    *, model_id: str, name: str, prompt: str, completion: str, context_length: int, created: int
) -> ModelEntry:
    return ModelEntry(
        id=model_id,
        canonical_slug=model_id,
        name=name,
        created=created,
        description=f"{name}, served by the Turnout simulator.",
        context_length=context_length,
        architecture=Architecture(),
        pricing=Pricing(prompt=prompt, completion=completion),
        top_provider=TopProvider(
            context_length=context_length, max_completion_tokens=min(context_length, 16_384)
        ),
    )


# --------------------------------------------------------------------------- generations


class Generation(msgspec.Struct, frozen=True, kw_only=True):
    """What the simulator remembers of one generation, for `/generation?id=`."""

    id: str
    model: str
    provider: str
    created_ms: int
    streamed: bool
    finish_reason: str
    tokens_prompt: int
    tokens_completion: int
    cost: float
    latency_ms: int


class _GenerationData(msgspec.Struct):
    id: str
    upstream_id: str
    total_cost: float
    usage: float
    created_at: str
    model: str
    provider_name: str
    streamed: bool
    cancelled: bool
    latency: int
    generation_time: int
    moderation_latency: None
    finish_reason: str
    native_finish_reason: str
    tokens_prompt: int
    tokens_completion: int
    native_tokens_prompt: int
    native_tokens_completion: int
    native_tokens_reasoning: int
    is_byok: bool
    origin: str
    app_id: None


class _GenerationResponse(msgspec.Struct):
    data: _GenerationData


def generation_json(gen: Generation) -> bytes:
    """`GET /generation` body: OpenRouter's `{"data": {...}}` shape."""
    created_at = datetime.fromtimestamp(gen.created_ms / 1000, tz=UTC).isoformat()
    data = _GenerationData(
        id=gen.id,
        upstream_id=gen.id.replace("gen-", "sim-", 1),
        total_cost=gen.cost,
        usage=gen.cost,
        created_at=created_at,
        model=gen.model,
        provider_name=gen.provider,
        streamed=gen.streamed,
        cancelled=False,
        latency=gen.latency_ms,
        generation_time=gen.latency_ms,
        moderation_latency=None,
        finish_reason=gen.finish_reason,
        native_finish_reason=gen.finish_reason,
        tokens_prompt=gen.tokens_prompt,
        tokens_completion=gen.tokens_completion,
        native_tokens_prompt=gen.tokens_prompt,
        native_tokens_completion=gen.tokens_completion,
        native_tokens_reasoning=0,
        is_byok=False,
        origin="",
        app_id=None,
    )
    return encode(_GenerationResponse(data=data))
