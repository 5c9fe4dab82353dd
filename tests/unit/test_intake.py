"""Intake records: valid ones become requests, bad ones a WireError with a path."""

from __future__ import annotations

import json

import pytest

from turnout.service.core import events as ev
from turnout.service.core.config import parse_config
from turnout.service.core.request import Context, decide_intake
from turnout.service.core.state import RouterState
from turnout.service.wire.errors import WireError
from turnout.service.wire.intake import MAX_RECORD_BYTES, decode_cancel, decode_intake

POS = {"topic": "turnout.requests", "partition": 3, "offset": 41}
MSGS = [{"role": "user", "content": "Say hello in eight words please"}]


def decode(body: object, key: bytes | None = b"acme") -> object:
    return decode_intake(json.dumps(body).encode(), key=key, **POS)


def test_a_full_request_keeps_openai_parameters_and_hashes_the_prompt() -> None:
    req = decode(
        {
            "request_id": "r-1",
            "tenant": "acme",
            "task_type": "code",
            "model": "a/b",
            "messages": MSGS,
            "max_tokens": 64,
            "temperature": 0,
            "top_p": 0.5,
            "reply_to": "my.responses",
            "metadata": {"ticket": 7},
        }
    )
    assert req.request_id == "r-1" and req.task_type == "code" and req.model == "a/b"
    assert req.params == {"max_tokens": 64, "temperature": 0, "top_p": 0.5}
    assert req.prompt_tokens_est == 8 and len(req.messages_hash) == 64
    assert (req.intake_partition, req.intake_offset) == (3, 41)


def test_tenant_falls_back_to_the_key_and_a_missing_id_is_stable_per_record() -> None:
    req = decode({"messages": MSGS}, key=b"globex")
    assert req.tenant == "globex"
    assert req.request_id == "turnout.requests-3-41" == decode({"messages": MSGS}).request_id


@pytest.mark.parametrize(
    ("value", "code", "path"),
    [
        (b"not json", "malformed_json", None),
        (b'{"messages": [{"role": "user", "content": "\xff"}]}', "malformed_json", None),
        (b"", "malformed_json", None),
        (b'{"messages": "hi"}', "schema_violation", "$.messages"),
        (b'{"messages": [{"content": "no role"}]}', "schema_violation", "$.messages[0].role"),
        (b'{"messages": [], "tenant": "a"}', "empty_messages", "$.messages"),
        (
            b'{"messages": [{"role": "user"}], "max_tokens": "lots"}',
            "schema_violation",
            "$.max_tokens",
        ),
        (b'{"messages": [{"role": "user"}], "stream": "yes"}', "schema_violation", "$.stream"),
    ],
)
def test_bad_records_are_refused_with_a_code_and_a_json_path(
    value: bytes, code: str, path: str | None
) -> None:
    with pytest.raises(WireError) as info:
        decode_intake(value, key=b"acme", **POS)
    assert info.value.code == code
    assert info.value.path == path


def test_json_nested_past_the_stack_is_malformed_not_a_crash() -> None:
    """msgspec raises RecursionError past ~1,000 levels: a hostile record, not a bug."""
    deep = b'{"tenant": "acme", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(WireError) as info:
        decode_intake(deep, key=b"acme", **POS)
    assert info.value.code == "malformed_json"
    assert "nested too deep" in str(info.value)
    assert decode_cancel(b'{"cancel": ' + b"[" * 5000 + b"]" * 5000 + b"}", key=b"a") is None


def test_no_tenant_anywhere_and_huge_records_are_refused() -> None:
    with pytest.raises(WireError, match="missing_tenant"):
        decode({"messages": MSGS}, key=None)
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * MAX_RECORD_BYTES}]})
    with pytest.raises(WireError, match="record_too_large"):
        decode_intake(huge.encode(), key=b"acme", **POS)


@pytest.mark.parametrize("store", [False, True])
def test_the_prompt_reaches_events_only_when_store_prompts_is_on(store: bool) -> None:
    cfg = parse_config({"privacy": {"store_prompts": store}}, {})
    req = decode({"messages": MSGS})
    decision = decide_intake(RouterState(), req, Context(now_ms=0, cfg=cfg))
    accepted = decision.events[0]
    assert isinstance(accepted, ev.RequestAccepted)
    assert (accepted.messages == MSGS) is store
    assert accepted.messages_hash == req.messages_hash


INTERNAL = frozenset({"turnout.requests", "turnout.events", "turnout.responses", "turnout.dlq"})


def reject(body: dict[str, object], key: bytes | None = b"acme") -> WireError:
    with pytest.raises(WireError) as caught:
        decode_intake(json.dumps(body).encode(), key=key, internal_topics=INTERNAL, **POS)
    return caught.value


@pytest.mark.parametrize(
    "tenant", ["a" * 129, "acme corp", "acme/1", "ünï", "x\n", "acme;drop", "{}"]
)
def test_a_tenant_outside_the_allowed_characters_or_length_is_refused(tenant: str) -> None:
    err = reject({"request_id": "r-9", "tenant": tenant, "messages": MSGS})
    assert (err.code, err.path) == ("invalid_tenant", "$.tenant")
    assert err.request_id == "r-9" and err.tenant is None  # answered, but not as that tenant


@pytest.mark.parametrize("tenant", ["a" * 128, "acme", "team.a_b-c:prod@eu", "0"])
def test_every_allowed_tenant_passes(tenant: str) -> None:
    req = decode_intake(
        json.dumps({"tenant": tenant, "messages": MSGS}).encode(),
        key=None, internal_topics=INTERNAL, **POS,
    )  # fmt: skip
    assert req.tenant == tenant  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "reply_to",
    ["turnout.events", "turnout.requests", "turnout.dlq", "bad topic!", "", "..", "x" * 250],
)
def test_a_reply_to_that_is_internal_or_no_topic_name_is_refused_yet_names_its_request(
    reply_to: str,
) -> None:
    err = reject({"tenant": "acme", "reply_to": reply_to, "messages": MSGS})
    assert (err.code, err.path) == ("invalid_reply_to", "$.reply_to")
    assert err.request_id == "turnout.requests-3-41"  # the positional id: still answerable
    assert (err.tenant, err.reply_to) == ("acme", None)  # answered on the default topic


@pytest.mark.parametrize("reply_to", ["turnout.events", "bad topic!", "my.replies"])
@pytest.mark.parametrize(("tenant", "key"), [("acme corp", b"acme"), (None, None)])
def test_a_record_with_a_bad_tenant_is_answered_on_the_default_topic_never_its_reply_to(
    reply_to: str, tenant: str | None, key: bytes | None
) -> None:
    """The tenant is checked before `reply_to`: an unchecked `reply_to` (even one naming
    Turnout's own events topic) once received the rejection."""
    body = {"request_id": "r-7", "reply_to": reply_to, "messages": MSGS}
    if tenant is not None:
        body["tenant"] = tenant
    err = reject(body, key=key)
    assert err.code in ("invalid_tenant", "missing_tenant")
    assert (err.request_id, err.reply_to) == ("r-7", None)


def test_a_legal_reply_topic_of_a_client_is_kept() -> None:
    body = {"tenant": "acme", "reply_to": "turnout.replies.c-1", "messages": MSGS}
    req = decode_intake(json.dumps(body).encode(), key=None, internal_topics=INTERNAL, **POS)
    assert req.reply_to == "turnout.replies.c-1"  # type: ignore[attr-defined]


def test_an_object_that_breaks_the_schema_still_names_its_request_to_be_answered() -> None:
    """Found by the fault suite: `"messages": "not a list"` had no answer at all."""
    err = reject({"request_id": "r-9", "tenant": "acme", "messages": "not a list"})
    odd = reject({"request_id": "r-10", "tenant": "no spaces allowed", "messages": 3})
    unnamed = reject({"tenant": "acme", "messages": 3})
    assert (err.code, err.request_id, err.tenant) == ("schema_violation", "r-9", "acme")
    assert (odd.request_id, odd.tenant) == ("r-10", None)  # answered, keyed by its record
    assert unnamed.request_id is None  # nothing to answer: the DLQ copy tells


def test_max_completion_tokens_counts_for_budgets_and_limits_as_max_tokens_does() -> None:
    """OpenAI's newer name for max_tokens was passed upstream but not counted: a budget
    reserved for 4,108 micro-dollars where max_tokens would have reserved 400,009, and a
    token limit let through what it refused as max_tokens."""
    newer = decode({"messages": MSGS, "max_completion_tokens": 100_000})
    assert newer.max_tokens == 100_000 and newer.params["max_completion_tokens"] == 100_000
    both = decode({"messages": MSGS, "max_tokens": 50, "max_completion_tokens": 400})
    assert both.max_tokens == 400  # the worst case an upstream may honour
    err = reject({"request_id": "r-1", "tenant": "acme", "messages": MSGS,
                  "max_completion_tokens": 0})  # fmt: skip
    assert (err.code, err.path) == ("schema_violation", "$.max_completion_tokens")


def test_a_schema_error_is_answered_on_the_reply_topic_the_record_named() -> None:
    """A gateway waits on its own reply topic: the refusal of `max_tokens: 0` went to
    the default responses topic, and the client waited for its timeout (a 504)."""
    err = reject({"request_id": "r-1", "tenant": "acme", "messages": MSGS, "max_tokens": 0,
                  "reply_to": "gw-1.replies"})  # fmt: skip
    assert (err.request_id, err.tenant, err.reply_to) == ("r-1", "acme", "gw-1.replies")
    keyed = reject({"request_id": "r-2", "messages": [{"content": "no role"}],
                    "reply_to": "gw-1.replies"})  # fmt: skip
    assert (keyed.tenant, keyed.reply_to) == ("acme", "gw-1.replies")  # tenant from the key
    internal = reject({"request_id": "r-3", "tenant": "acme", "messages": 3,
                       "reply_to": sorted(INTERNAL)[0]})  # fmt: skip
    assert internal.reply_to is None  # never answered on Turnout's own topics
    bad_topic = reject({"request_id": "r-4", "tenant": "acme", "messages": 3, "reply_to": "a b"})
    assert bad_topic.reply_to is None


@pytest.mark.parametrize("max_tokens", [0, -5])
def test_max_tokens_below_one_is_refused_and_answered(max_tokens: int) -> None:
    """Found by the fault suite: a negative `max_tokens` was accepted, and the budget's
    worst-case reservation (prompt + max_tokens) would have been undercut."""
    err = reject(
        {"request_id": "r-1", "tenant": "acme", "messages": MSGS, "max_tokens": max_tokens}
    )
    assert (err.code, err.path, err.request_id) == ("schema_violation", "$.max_tokens", "r-1")


def test_a_stream_request_is_accepted_and_its_stream_options_are_the_routers() -> None:
    req = decode({"messages": MSGS, "stream": True, "stream_options": {"include_usage": False},
                  "temperature": 0}, key=b"acme")  # fmt: skip
    assert req.stream is True
    assert "stream" not in req.params and "stream_options" not in req.params
    assert decode({"messages": MSGS}, key=b"acme").stream is False
