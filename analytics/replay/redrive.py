"""`turnout replay redrive --from T --to T`: send recorded requests through the router again.

Each request accepted within the window (`turnout.request.accepted`, once
per request id) becomes a new intake request with a NEW request id and
`"redrive_of": "<original id>"`, built by the client's `build_request` and
keyed by tenant like every client request. The original's tenant, task
type, pinned model, OpenAI parameters and metadata are kept; its `reply_to`
is not (the original client's reply topic is not this command's), so
answers go to the shared responses topic.

A request can be redriven only when its messages are in the log: they are
recorded only while `[privacy] store_prompts = true`. `plan` is pure: new
ids come from the caller.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from turnout.analytics.replay.source import Recorded
from turnout.service.client import build_request
from turnout.service.core import events as ev

__all__ = ["NO_PROMPT", "Plan", "Redrive", "encode_body", "plan"]

NO_PROMPT: Final = (
    "their prompts are not in the log: they were accepted while [privacy] store_prompts = "
    "false (set it to true in the routers' config to make later requests redrivable)"
)
_NAMED: Final = frozenset({"request_id", "tenant", "task_type", "model", "reply_to"})


@dataclass(frozen=True, slots=True)
class Redrive:
    """One request to send again: the original id, the new id and the intake body."""

    original_id: str
    request_id: str
    tenant: str
    body: dict[str, Any]


@dataclass(slots=True)
class Plan:
    redrives: list[Redrive] = field(default_factory=list)
    without_prompt: list[str] = field(default_factory=list)

    @property
    def found(self) -> int:
        return len(self.redrives) + len(self.without_prompt)


def _body(accepted: ev.RequestAccepted, request_id: str) -> dict[str, Any]:
    params = {k: v for k, v in accepted.params.items() if k not in _NAMED}
    if accepted.max_tokens is not None:
        params.setdefault("max_tokens", accepted.max_tokens)
    if accepted.metadata is not None:
        params["metadata"] = accepted.metadata
    params["redrive_of"] = accepted.request_id
    return build_request(
        accepted.messages or [], request_id=request_id, tenant=accepted.tenant,
        task_type=accepted.task_type, model=accepted.model, **params,
    )  # fmt: skip


def plan(accepted: Iterable[Recorded], *, new_id: Callable[[], str]) -> Plan:
    """What to send for these `accepted` events (in log order), one per request id."""
    out, seen = Plan(), set()
    for rec in accepted:
        data = rec.data
        if not isinstance(data, ev.RequestAccepted) or data.request_id in seen:
            continue
        seen.add(data.request_id)
        if not data.messages:
            out.without_prompt.append(data.request_id)
            continue
        rid = new_id()
        out.redrives.append(Redrive(data.request_id, rid, data.tenant, _body(data, rid)))
    return out


def encode_body(body: dict[str, Any]) -> bytes:
    """The intake record value, as the client encodes it."""
    return json.dumps(body, separators=(",", ":")).encode()
