"""Intake records (`turnout.requests`) → `IntakeRequest`, or a `WireError` with a path.

Rules:
- A record is at most `MAX_RECORD_BYTES` (Kafka's ~1 MB limit, enforced here
  because the embedded broker accepts anything).
- The tenant comes from the body, else from the record key; none is an error.
- `request_id` is the client's idempotency key; when absent it is derived from
  the record's position (topic, partition, offset), so a redelivered record
  gets the same id and is never answered twice; a forwarded record carries
  that id in the `turnout-request-id` header.
- `messages` must be a non-empty list of objects with a string `role`; every
  other OpenAI chat parameter is passed through untouched (`params`).
- `tenant` is 1-128 characters of `[A-Za-z0-9._:@-]`; `reply_to` is a legal
  Kafka topic name and never one of Turnout's own topics (`internal_topics`),
  so no client can make the router write into its event log.
- A record that parsed but breaks a rule raises a `WireError` that names its
  request (`request_id`, and `tenant` / `reply_to` where those are valid), so
  the router answers it `rejected` / `invalid_request` besides the DLQ copy; a
  JSON object that breaks the schema names its `request_id` (the body's, else the
  record's header), and its `tenant` and `reply_to` where valid, so it is answered
  where it asked (a gateway waits on its own reply topic).
- The prompt is never kept unless `store_prompts`: events carry a hash of the
  messages and an estimated token count (characters / 4, rounded up).
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Final

import msgspec

from turnout.service.core.request import IntakeRequest
from turnout.service.wire.errors import MALFORMED_JSON, SCHEMA_VIOLATION, WireError, from_msgspec

__all__ = [
    "INVALID_REPLY_TO",
    "INVALID_TENANT",
    "MAX_RECORD_BYTES",
    "RECORD_TOO_LARGE",
    "REQUEST_ID_HEADER",
    "REQUEST_ID_TAKEN",
    "TENANT_ID",
    "Cancel",
    "Intake",
    "decode_cancel",
    "decode_intake",
    "estimate_tokens",
    "messages_hash",
]

MAX_RECORD_BYTES: Final = 1_000_000
REQUEST_ID_HEADER: Final = "turnout-request-id"
"""Set by a router that forwards a record to its tenant's home partition."""
RECORD_TOO_LARGE: Final = "record_too_large"
NO_TENANT: Final = "missing_tenant"
NO_MESSAGES: Final = "empty_messages"
INVALID_TENANT: Final = "invalid_tenant"
INVALID_REPLY_TO: Final = "invalid_reply_to"

REQUEST_ID_TAKEN: Final = "request_id_taken"
_UNTRUSTED_REPLY_TO: Final = frozenset([NO_TENANT, INVALID_TENANT, INVALID_REPLY_TO])

TENANT_ID: Final = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
"""What a tenant id may be (docs/reference/records.md, intake request)."""
_TOPIC: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")

_RESERVED: Final = frozenset(
    {"request_id", "tenant", "task_type", "model", "messages", "cache", "reply_to",
     "metadata", "stream", "stream_options", "redrive_of"}
)  # fmt: skip


class Message(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    role: str


class Intake(msgspec.Struct, kw_only=True):
    """The intake schema (docs/reference/records.md); unknown keys are OpenAI parameters."""

    request_id: str | None = None
    tenant: str | None = None
    task_type: str = "general"
    model: str | None = None
    messages: list[Message] = []
    # at least 1: the budget reserves its worst case, which a negative one would undercut
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # OpenAI's newer name for it (max_tokens is deprecated there): counted alike
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    cache: bool | None = None
    reply_to: str | None = None
    metadata: dict[str, Any] | None = None
    redrive_of: str | None = None
    stream: bool = False


_decoder: Final = msgspec.json.Decoder(dict[str, Any])
_encoder: Final = msgspec.json.Encoder(order="sorted")


def messages_hash(messages: list[dict[str, Any]]) -> str:
    return hashlib.sha256(_encoder.encode(messages)).hexdigest()


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    chars = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif content is not None:
            chars += len(_encoder.encode(content))
    return -(-chars // 4)


def _parse(value: bytes) -> tuple[dict[str, Any], Intake]:
    if len(value) > MAX_RECORD_BYTES:
        raise WireError(
            RECORD_TOO_LARGE, f"{len(value)} bytes is over the {MAX_RECORD_BYTES} byte limit"
        )
    body: Any = None
    try:
        body = _decoder.decode(value)
        return body, msgspec.convert(body, Intake)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as err:
        wire = from_msgspec(err)
        wire.body = body if isinstance(body, dict) else None
        raise wire from None


def _addressed(
    err: WireError, body: dict[str, Any], *, key: bytes | None, request_id: str | None,
    internal_topics: frozenset[str],
) -> WireError:  # fmt: skip
    """A record whose JSON breaks the schema is still answered, where it asked to be
    (a gateway waits on its own reply topic): its request id (the body's, else the
    record's header; none: nothing to answer, the DLQ copy tells), tenant and reply_to
    when those are themselves valid."""
    rid, tenant, reply_to = body.get("request_id"), body.get("tenant"), body.get("reply_to")
    err.request_id = rid if isinstance(rid, str) and rid else request_id
    if tenant is None and key:
        tenant = key.decode("utf-8", "replace")
    err.tenant = tenant if isinstance(tenant, str) and TENANT_ID.fullmatch(tenant) else None
    if err.tenant is not None and isinstance(reply_to, str) and _valid_topic(reply_to):
        err.reply_to = reply_to if reply_to not in internal_topics else None
    return err


def _valid_topic(name: str) -> bool:
    return _TOPIC.fullmatch(name) is not None and name not in (".", "..")


class Cancel(msgspec.Struct, frozen=True, kw_only=True):
    """A cancel record (docs/reference/records.md): stop request `request_id` of `tenant`."""

    request_id: str
    tenant: str
    reason: str = "cancel record"


_CANCEL_KEY: Final = b'"cancel"'


def decode_cancel(value: bytes | None, *, key: bytes | None) -> Cancel | None:
    """The cancel record `{"cancel": "<request id>", "tenant": "acme"}` in `value`, or None
    when the record is not one (it is then read as a request). Raises `WireError` for a
    cancel record that names no request or no valid tenant."""
    if not value or _CANCEL_KEY not in value or len(value) > MAX_RECORD_BYTES:
        return None
    try:
        body = _decoder.decode(value)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(body, dict) or "cancel" not in body:
        return None
    rid = body["cancel"]
    tenant = body.get("tenant") or (key.decode("utf-8", "replace") if key else None)
    if not isinstance(rid, str) or not 0 < len(rid) <= 1024:
        raise WireError(SCHEMA_VIOLATION, "cancel must name a request id", "$.cancel")
    if not isinstance(tenant, str) or not TENANT_ID.fullmatch(tenant):
        raise WireError(INVALID_TENANT, "a cancel record needs its request's tenant", "$.tenant")
    reason = body.get("reason")
    if not isinstance(reason, str) or not 0 < len(reason) <= 200:
        reason = "cancel record"
    return Cancel(request_id=rid, tenant=tenant, reason=reason)


def decode_intake(
    value: bytes | None,
    *,
    key: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    request_id: bytes | None = None,
    internal_topics: frozenset[str] = frozenset(),
) -> IntakeRequest:
    """Validate one intake record; raise `WireError` (code, detail, JSON path) when bad."""
    if not value:
        raise WireError(MALFORMED_JSON, "the record has no value")
    named = request_id.decode("utf-8", "replace") if request_id else None
    try:
        body, intake = _parse(value)
    except WireError as err:
        if err.body is None:
            raise
        raise _addressed(
            err, err.body, key=key, request_id=named, internal_topics=internal_topics
        ) from None
    rid = intake.request_id or named or f"{topic}-{partition}-{offset}"
    tenant = intake.tenant or (key.decode("utf-8", "replace") if key else None)
    try:
        _check(intake, body, tenant, internal_topics)
    except WireError as err:
        err.request_id = rid
        err.tenant = tenant if tenant and TENANT_ID.fullmatch(tenant) else None
        # a record whose tenant or reply_to breaks the rules is answered on the default
        # responses topic: its reply_to was never checked (or is the fault itself)
        err.reply_to = intake.reply_to if err.code not in _UNTRUSTED_REPLY_TO else None
        raise
    assert tenant is not None  # _check saw to it
    messages: list[dict[str, Any]] = body["messages"]
    return IntakeRequest(
        request_id=rid,
        tenant=tenant,
        task_type=intake.task_type,
        model=intake.model,
        messages_hash=messages_hash(messages),
        prompt_tokens_est=estimate_tokens(messages),
        max_tokens=_max_tokens(intake),
        params={k: v for k, v in body.items() if k not in _RESERVED},
        messages=messages,
        reply_to=intake.reply_to,
        metadata=intake.metadata,
        cache=intake.cache,
        redrive_of=intake.redrive_of,
        stream=intake.stream,
        intake_partition=partition,
        intake_offset=offset,
    )


def _max_tokens(intake: Intake) -> int | None:
    """The completion allowance budgets and token limits count: `max_tokens` or
    `max_completion_tokens`, the larger when both are given (an upstream may honour
    either: the reservation takes the worst case)."""
    given = [t for t in (intake.max_tokens, intake.max_completion_tokens) if t is not None]
    return max(given) if given else None


def _check(
    intake: Intake, body: dict[str, Any], tenant: str | None, internal_topics: frozenset[str]
) -> None:
    if not tenant:
        raise WireError(NO_TENANT, "no tenant in the body and no record key", "$.tenant")
    if not TENANT_ID.fullmatch(tenant):
        raise WireError(
            INVALID_TENANT,
            f"a tenant is 1-128 characters of letters, digits and . _ : @ - "
            f"({len(tenant)} characters given)",
            "$.tenant",
        )
    reply_to = intake.reply_to
    if reply_to is not None:
        if not _valid_topic(reply_to):
            raise WireError(
                INVALID_REPLY_TO,
                "reply_to must be a Kafka topic name: 1-249 letters, digits, '.', '_', '-'",
                "$.reply_to",
            )
        if reply_to in internal_topics:
            raise WireError(
                INVALID_REPLY_TO,
                f"reply_to may not name Turnout's own topic {reply_to}",
                "$.reply_to",
            )
    if not intake.messages:
        raise WireError(NO_MESSAGES, "messages must hold at least one message", "$.messages")
