"""Benchmark: the CloudEvents codec against stdlib json on the same events, same run.

Run: `.venv/bin/python tests/benchmarks/bench_codec.py [--rounds N]`

One round encodes and decodes the events of one realistic request (accepted,
route decided, budget reserved, cache miss, attempt started/succeeded, budget
charged, cache stored, completed). The stdlib baseline does the same job on
the same data as plain dicts: `json.dumps` + the same header list on encode,
`json.loads` + `dict(headers)` + reading `ce_time` on decode, with no
validation at all. Prints events/s for both and the ratio (target: >= 3x).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from turnout.service.clock import FixedClock
from turnout.service.core import events as ev
from turnout.service.wire.cloudevents import Envelope, decode, encode, wrap

Headers = list[tuple[str, bytes]]
USAGE = ev.Usage(prompt_tokens=412, completion_tokens=187, total_tokens=599)
R = {"request_id": "019ac3c5-1b3b-7a1c-9a51-3f0c2b7d8e11", "tenant": "acme"}
MODEL = "openai/gpt-4o-mini"
DAY = {"day": "2026-11-27", "month": "2026-11"}


def completion() -> dict[str, Any]:
    answer = "Event sourcing keeps every state change as an immutable event. " * 6
    return {
        "id": "gen-1764221737-abcdefghijklmnop",
        "object": "chat.completion",
        "created": 1_764_221_737,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 412, "completion_tokens": 187, "total_tokens": 599},
        "system_fingerprint": "fp_0ba0d124f1",
    }


def request_events() -> list[ev.Event]:
    """The events one ordinary, uncached, successful request writes."""
    body = json.dumps(completion()).encode()
    return [
        ev.RequestAccepted(
            **R,
            task_type="general",
            model=None,
            messages_hash="sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            prompt_tokens_est=410,
            max_tokens=256,
            params={"temperature": 0.2, "top_p": 1.0, "max_tokens": 256},
            cache_key="acme:8b1a9953c4611296a827abf8c47804d7",
            cacheable=True,
            reply_to=None,
            metadata={"user": "u-42", "feature": "summarise"},
            intake_partition=7,
            intake_offset=123_456,
        ),
        ev.RouteDecided(
            **R,
            task_type="general",
            strategy="priority",
            candidates=[MODEL, "anthropic/claude-3.5-haiku", "meta-llama/llama-3.1-8b-instruct"],
            order=[MODEL, "anthropic/claude-3.5-haiku", "meta-llama/llama-3.1-8b-instruct"],
            skipped=[],
            sample=0.4182,
        ),
        ev.BudgetReserved(**R, amount_micros=1_200, **DAY),
        ev.CacheMiss(**R, cache_key="acme:8b1a9953c4611296a827abf8c47804d7"),
        ev.AttemptStarted(**R, model=MODEL, attempt=1, model_attempt=1),
        ev.AttemptSucceeded(
            **R,
            model=MODEL,
            attempt=1,
            status=200,
            latency_ms=812.4,
            usage=USAGE,
            cost_micros=174,
            generation_id="gen-1764221737-abcdefghijklmnop",
        ),
        ev.BudgetCharged(**R, amount_micros=174, **DAY),
        ev.CacheStored(
            **R,
            cache_key="acme:8b1a9953c4611296a827abf8c47804d7",
            model=MODEL,
            stored_at_ms=1_764_221_737_123,
            expires_at_ms=1_764_225_337_123,
            encoding="none",
            body=body,
            size_bytes=len(body),
            stored_bytes=len(body),
            usage=USAGE,
            cost_micros=174,
        ),
        ev.RequestCompleted(
            **R,
            model=MODEL,
            cached=False,
            coalesced=False,
            attempts=1,
            latency_ms=815.0,
            usage=USAGE,
            cost_micros=174,
            response=completion(),
            reply_to=None,
        ),
    ]


def envelopes() -> list[Envelope]:
    clock = FixedClock(start_ms=1_764_221_737_123)
    source = "turnout/router/router-1"
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    out = []
    for event in request_events():
        clock.advance(3)
        env = wrap(
            event, id=clock.new_id(), time_ms=clock.now_ms(), source=source, traceparent=parent
        )
        out.append(env)
    return out


# --- the stdlib baseline: same data as dicts ----------------------------------


def as_dicts(envs: Sequence[Envelope]) -> list[dict[str, Any]]:
    return [
        {f: getattr(env, f) for f in Envelope.__struct_fields__}
        | {"data": msgspec.to_builtins(env.data)}
        for env in envs
    ]


def std_encode(env: dict[str, Any]) -> tuple[bytes, bytes, Headers]:
    when = datetime.fromtimestamp(env["time_ms"] / 1000, tz=UTC)
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", env["id"].encode()),
        ("ce_source", env["source"].encode()),
        ("ce_type", env["type"].encode()),
        ("ce_time", when.isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()),
    ]
    if env["subject"] is not None:
        headers.append(("ce_subject", env["subject"].encode()))
    if env["traceparent"] is not None:
        headers.append(("ce_traceparent", env["traceparent"].encode()))
    headers.append(("content-type", b"application/json"))
    value = json.dumps(env["data"], separators=(",", ":")).encode()
    return env["tenant"].encode(), value, headers


def std_decode(key: bytes, value: bytes, headers: Headers) -> dict[str, Any]:
    attrs = {name: raw.decode() for name, raw in headers}
    when = datetime.fromisoformat(attrs["ce_time"])
    return {
        "id": attrs["ce_id"],
        "type": attrs["ce_type"],
        "time_ms": round(when.timestamp() * 1000),
        "source": attrs["ce_source"],
        "subject": attrs.get("ce_subject"),
        "traceparent": attrs.get("ce_traceparent"),
        "tenant": key.decode(),
        "data": json.loads(value),
    }


# --- timing -------------------------------------------------------------------


def rate(round_trip: Callable[[Any], object], items: Sequence[Any], rounds: int) -> float:
    """Best-of-5 events/s for encode+decode of every item, `rounds` times."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            for item in items:
                round_trip(item)
        best = min(best, time.perf_counter() - start)
    return rounds * len(items) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5000)
    rounds = parser.parse_args().rounds
    envs = envelopes()
    dicts = as_dicts(envs)
    assert all(decode(*encode(e)) == e for e in envs)
    assert all(std_decode(*std_encode(d)) == d for d in dicts)
    size = sum(len(encode(e)[1]) for e in envs) / len(envs)
    ours = rate(lambda e: decode(*encode(e)), envs, rounds)
    stdlib = rate(lambda d: std_decode(*std_encode(d)), dicts, rounds)
    print(
        f"mix: {len(envs)} event types, mean value {size:.0f} bytes, {rounds * len(envs)} per run"
    )
    print(f"turnout codec  (msgspec, typed): {ours:>10,.0f} events/s encode+decode")
    print(f"stdlib json    (untyped dicts):  {stdlib:>10,.0f} events/s encode+decode")
    print(f"ratio: {ours / stdlib:.1f}x")


if __name__ == "__main__":
    main()
