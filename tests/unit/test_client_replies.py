"""How the client hands response records to the calls waiting on them (no broker: the
records are given to `_resolve` as its reply reader would)."""

from __future__ import annotations

import json

import pytest

from turnout.service import client as client_module
from turnout.service.client import AsyncTurnout
from turnout.service.kafka.settings import KafkaSettings


def reply(rid: str, size: int = 0) -> bytes:
    return json.dumps({"request_id": rid, "status": "ok", "pad": "x" * size}).encode()


async def test_every_caller_of_one_request_id_gets_the_answer_and_one_giving_up_harms_none() -> (
    None
):
    """A gateway's callers of one Idempotency-Key once shared one future: the first to
    time out cancelled it for all, and the next caller got a 500."""
    turnout = AsyncTurnout(KafkaSettings(bootstrap="127.0.0.1:1"))
    first, second = turnout._expect("r1"), turnout._expect("r1")
    turnout.forget("r1", first)  # the first caller gave up
    turnout._resolve(b"r1", reply("r1"))
    assert not first.done() and second.result()["status"] == "ok"
    third = turnout._expect("r1")  # a retry after that: nobody waited, so it was kept
    assert not third.done()
    turnout._resolve(b"r2", reply("r2"))
    assert turnout._expect("r2").result()["request_id"] == "r2"


async def test_answers_nobody_waits_for_are_bounded_in_bytes_oldest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kept for a later `wait` or a retry with the same key: at most so many bytes (a
    gateway whose calls time out under load once kept 10,000 answers of up to 1 MB)."""
    turnout = AsyncTurnout(KafkaSettings(bootstrap="127.0.0.1:1"))
    monkeypatch.setattr(client_module, "_KEEP_UNCLAIMED_BYTES", 10_000)
    for i in range(10):
        turnout._resolve(f"r{i}".encode(), reply(f"r{i}", 2_000))
    assert turnout._unclaimed_bytes <= 10_000
    kept = list(turnout._unclaimed)
    assert kept == [f"r{i}" for i in range(10 - len(kept), 10)] and len(kept) >= 3
    assert turnout._expect("r9").done() and not turnout._expect("r0").done()
