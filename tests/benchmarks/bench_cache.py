"""Benchmark: cache memory per answer by encoding, codec speed, and pure-core decisions/s.

Run: `.venv/bin/python tests/benchmarks/bench_cache.py [--answers 3000] [--seed 7]`

The answers are a deterministic mix of OpenRouter-style chat.completion bodies
(no network): 40 % short answers (one to three sentences), 35 % long Markdown
answers (headings, lists, a table, code blocks; 1.5-12 KB), 25 % JSON tool
output (half `tool_calls` with JSON arguments, half a JSON document as the
content). The prose is real English: ~1,500 sentences taken from the standard
library's docstrings (the same for a given Python version), plus templated
sentences with names, dates and numbers; not word salad.

Figures, all in one run:
1. Bytes per cached answer for zstd (level 3), gzip (level 6) and the "none"
   baseline: the stored body (what `max_bytes` counts), the `CacheStored`
   event in the log (JSON, body in base64), and RAM per entry in a folded
   `CacheIndex` (tracemalloc); per answer kind and overall, with the ratio.
2. Encode and decode µs per body for each encoding (one reused `BodyCodec`).
3. Pure core: `cache_key`, `decide_lookup` (hits and misses), `decide_store` +
   fold under eviction pressure, `decide_coalesce`, and the fold alone, in
   decisions/s; baseline: a plain `dict.get` on the same keys.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import random
import re
import statistics
import string
import time
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from turnout.service.core import events as ev
from turnout.service.core.cache import (
    CacheIndex,
    EncodedBody,
    cache_key,
    decide_coalesce,
    decide_lookup,
    decide_store,
    evolve_cache,
)
from turnout.service.core.config import Config, parse_config
from turnout.service.runtime.cachecodec import BodyCodec

ENCODINGS = ("zstd", "gzip", "none")
KINDS = ("short", "markdown", "json")
MODELS = [
    "openai/gpt-4o-mini",
    "anthropic/claude-3.5-haiku",
    "meta-llama/llama-3.1-8b-instruct",
    "google/gemini-flash-1.5",
]
PROVIDERS = ["OpenAI", "Anthropic", "Together", "Google AI Studio", "DeepInfra"]
DOC_MODULES = (
    "argparse", "asyncio", "bisect", "collections", "csv", "datetime", "decimal", "email",
    "functools", "heapq", "http.client", "itertools", "json", "logging", "os", "pathlib",
    "random", "re", "shutil", "sqlite3", "statistics", "string", "subprocess", "tempfile",
    "textwrap", "threading", "typing", "unittest", "urllib.request", "zipfile",
)  # fmt: skip
TEMPLATES = [
    "The capital of {place} is {city}, home to about {n} thousand people.",
    "Event sourcing records every change to application state as an immutable event.",
    "A circuit breaker stops calling a failing dependency until it has had time to recover.",
    "You can rebuild the projection at any time by replaying the log from offset {n}.",
    "In short, the answer is {n}, assuming the input is already sorted.",
    "{name} suggested measuring the p99 latency before and after the change.",
    "Kafka guarantees ordering only within a single partition, not across a topic.",
    "The function returns None when the key is missing, so check for it explicitly.",
    "Compression trades a little CPU time for a large saving in memory and bandwidth.",
    "If the request is idempotent, a retry with exponential backoff is usually safe.",
    "Use a read-only connection for analytical queries so the writer is never blocked.",
    "The invoice for {name} totals ${n}.{c} and is due on {date}.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The train from {city} leaves at {h}:{m} and arrives {n} minutes later.",
    "Remember to rotate the API key every {n} days and never commit it to the repository.",
    "A B-tree keeps its data sorted and allows searches in logarithmic time.",
    "The patient should take {n} mg twice a day with food, for no longer than a week.",
    "Our tests show a {n} percent improvement in throughput on the same hardware.",
    "The migration adds a nullable column first, backfills it, then adds the constraint.",
    "{name} and {name2} will review the pull request on {date}.",
]
PLACES = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Peru", "Lima")]
NAMES = ["Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret", "Edsger", "Frances"]


def doc_sentences() -> list[str]:
    """Sentences of the standard library's docstrings, sorted (deterministic)."""
    pool: set[str] = set()
    for name in DOC_MODULES:
        module = importlib.import_module(name)
        for obj in [module, *(getattr(module, n) for n in dir(module) if not n.startswith("_"))]:
            doc = inspect.getdoc(obj) or ""
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if 40 <= len(sentence) <= 220 and sentence[0].isupper() and sentence[-1] == ".":
                    pool.add(sentence)
    return sorted(pool)


SENTENCES = doc_sentences()
CODE = '''def {fn}(items: list[int]) -> int:
    """Return the {what} of `items`."""
    total = 0
    for item in items:
        if item > {n}:
            total += item
    return total
'''


class Gen:
    """Deterministic text and bodies from one seeded PRNG."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def sentence(self) -> str:
        if self.r.random() < 0.8:
            return self.r.choice(SENTENCES)
        place, city = self.r.choice(PLACES)
        name, name2 = self.r.sample(NAMES, 2)
        return self.r.choice(TEMPLATES).format(
            place=place,
            city=city,
            n=self.r.randint(2, 9_999),
            c=f"{self.r.randint(0, 99):02d}",
            name=name,
            name2=name2,
            date=f"2026-{self.r.randint(1, 12):02d}-{self.r.randint(1, 28):02d}",
            h=self.r.randint(5, 23),
            m=f"{self.r.randint(0, 59):02d}",
        )

    def paragraph(self, k: int) -> str:
        return " ".join(self.sentence() for _ in range(k))

    def markdown(self) -> str:
        parts = [f"## {self.sentence()[:40].rstrip()}", self.paragraph(self.r.randint(2, 5))]
        for _ in range(self.r.randint(2, 9)):
            parts.append(f"### Step {self.r.randint(1, 9)}")
            parts.append("\n".join(f"- {self.sentence()}" for _ in range(self.r.randint(2, 6))))
            if self.r.random() < 0.5:
                fn = self.r.choice(["total", "score", "weigh", "count_large"])
                code = CODE.format(fn=fn, what=fn, n=self.r.randint(0, 100))
                parts.append(f"```python\n{code}```")
            if self.r.random() < 0.3:
                rows = [f"| {self.r.choice(NAMES)} | {self.r.randint(1, 999)} |" for _ in range(6)]
                parts.append("| name | value |\n| --- | --- |\n" + "\n".join(rows))
            parts.append(self.paragraph(self.r.randint(1, 4)))
        return "\n\n".join(parts)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.r.randint(1, 10**6),
            "name": self.r.choice(NAMES),
            "city": self.r.choice(PLACES)[1],
            "score": round(self.r.uniform(0, 1), 4),
            "tags": self.r.sample(["new", "vip", "late", "eu", "us", "trial"], 2),
            "note": self.sentence(),
        }

    def message(self, kind: str) -> dict[str, Any]:
        if kind == "short":
            return {"role": "assistant", "content": self.paragraph(self.r.randint(1, 3))}
        if kind == "markdown":
            return {"role": "assistant", "content": self.markdown()}
        records = [self.record() for _ in range(self.r.randint(1, 12))]
        if self.r.random() < 0.5:
            return {"role": "assistant", "content": msgspec.json.encode(records).decode()}
        call_id = "call_" + "".join(self.r.choices(string.ascii_letters + string.digits, k=24))
        arguments = msgspec.json.encode({"records": records}).decode()
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "save_records", "arguments": arguments},
                }
            ],
        }

    def completion(self, kind: str) -> dict[str, Any]:
        message = self.message(kind)
        prompt = self.r.randint(20, 2_000)
        completion_tokens = max(1, len(msgspec.json.encode(message)) // 4)
        created = 1_764_221_737 + self.r.randint(0, 86_400)
        return {
            "id": f"gen-{created}-" + "".join(self.r.choices(string.ascii_letters, k=20)),
            "provider": self.r.choice(PROVIDERS),
            "model": self.r.choice(MODELS),
            "object": "chat.completion",
            "created": created,
            "choices": [
                {
                    "logprobs": None,
                    "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
                    "native_finish_reason": "stop",
                    "index": 0,
                    "message": {**message, "refusal": None, "reasoning": None},
                }
            ],
            "system_fingerprint": "fp_" + "".join(self.r.choices(string.hexdigits.lower(), k=10)),
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt + completion_tokens,
            },
        }

    def mix(self, n: int) -> list[tuple[str, dict[str, Any]]]:
        weights = [0.40, 0.35, 0.25]
        return [(k, self.completion(k)) for k in self.r.choices(KINDS, weights, k=n)]


# --- part 1 and 2: bytes and codec speed -------------------------------------

USAGE = ev.Usage(prompt_tokens=412, completion_tokens=187, total_tokens=599)


def stored_event(n: int, body: EncodedBody) -> ev.CacheStored:
    return ev.CacheStored(
        request_id=f"019ac3c5-1b3b-7a1c-9a51-{n:012d}",
        tenant="acme",
        cache_key=f"v1:{n:064x}",
        model="openai/gpt-4o-mini",
        stored_at_ms=1_764_221_737_123,
        expires_at_ms=1_764_225_337_123,
        encoding=body.encoding,
        body=body.body,
        size_bytes=body.size_bytes,
        stored_bytes=len(body.body),
        usage=USAGE,
        cost_micros=174,
    )


def ram_per_entry(bodies: list[EncodedBody]) -> float:
    """RAM per entry of an index rebuilt from the log: decode each `CacheStored` record
    and fold it, as a restarting router does (tracemalloc, everything it keeps)."""
    records = [msgspec.json.encode(stored_event(n, b)) for n, b in enumerate(bodies)]
    decoder = msgspec.json.Decoder(ev.CacheStored)
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    index = CacheIndex()
    for record in records:
        evolve_cache(index, decoder.decode(record))
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(index) == len(bodies)
    return (after - before) / len(bodies)


def timed(fn: Callable[[], object], count: int) -> float:
    """Best of 5 seconds per item for `fn`, which handles `count` items."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / count


def bytes_table(mix: list[tuple[str, dict[str, Any]]]) -> None:
    codec = BodyCodec()
    raw = [msgspec.json.encode(c) for _, c in mix]
    encoded = {enc: [codec.encode_response(c, enc) for _, c in mix] for enc in ENCODINGS}
    print(f"\n1. bytes per cached answer ({len(mix)} answers: ", end="")
    counts = {k: sum(1 for kind, _ in mix if kind == k) for k in KINDS}
    print(", ".join(f"{counts[k]} {k}" for k in KINDS) + ")")
    sizes = {
        k: statistics.mean(len(r) for (kind, _), r in zip(mix, raw, strict=True) if kind == k)
        for k in KINDS
    }
    print("   JSON size before encoding: " + ", ".join(f"{k} {sizes[k]:,.0f} B" for k in KINDS))
    header = f"   {'encoding':<9}" + "".join(f"{k + ' body':>15}" for k in KINDS)
    print(header + f"{'all: body':>12}{'ratio':>7}{'log event':>11}{'RAM/entry':>11}")
    for enc in ENCODINGS:
        bodies = encoded[enc]
        per_kind = [
            statistics.mean(
                len(b.body) for (kind, _), b in zip(mix, bodies, strict=True) if kind == k
            )
            for k in KINDS
        ]
        mean = statistics.mean(len(b.body) for b in bodies)
        ratio = sum(len(r) for r in raw) / sum(len(b.body) for b in bodies)
        log = statistics.mean(
            len(msgspec.json.encode(stored_event(n, b))) for n, b in enumerate(bodies)
        )
        ram = ram_per_entry(bodies)
        cells = "".join(f"{v:>13,.0f} B" for v in per_kind)
        print(f"   {enc:<9}{cells}{mean:>10,.0f} B{ratio:>6.2f}x{log:>9,.0f} B{ram:>9,.0f} B")
    print("   (none is the baseline; ratio = JSON bytes / stored bytes)")

    print("\n2. codec time per body (µs, best of 5, one reused BodyCodec)")
    print(f"   {'encoding':<9}{'encode':>10}{'decode':>10}{'decode+JSON':>13}")
    for enc in ENCODINGS:
        enc_us, dec_us, full_us = codec_times(codec, raw, encoded[enc])
        print(f"   {enc:<9}{enc_us:>10.1f}{dec_us:>10.1f}{full_us:>13.1f}")


def codec_times(
    codec: BodyCodec, raw: list[bytes], bodies: list[EncodedBody]
) -> tuple[float, float, float]:
    """µs per body: encode, decode, decode + JSON parse."""
    encoding = bodies[0].encoding

    def encode_all() -> None:
        for r in raw:
            codec.encode(r, encoding)

    def decode_all() -> None:
        for b in bodies:
            codec.decode(b.body, b.encoding, size_bytes=b.size_bytes)

    def parse_all() -> None:
        for b in bodies:
            codec.decode_response(b)

    n = len(raw)
    return timed(encode_all, n) * 1e6, timed(decode_all, n) * 1e6, timed(parse_all, n) * 1e6


# --- part 3: the pure core ----------------------------------------------------


def requests(n: int, gen: Gen) -> list[dict[str, Any]]:
    return [
        {
            "tenant": f"tenant-{i % 16}",
            "scope": "tenant",
            "model": None,
            "task_type": "general",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
                {"role": "user", "content": f"{i}. {gen.paragraph(gen.r.randint(1, 6))}"},
            ],
            "params": {
                "temperature": 0,
                "max_tokens": 256,
                "top_p": 1.0,
                "provider": {"order": ["openai", "azure"], "allow_fallbacks": True},
            },
        }
        for i in range(n)
    ]


def per_second(fn: Callable[[], object], count: int) -> float:
    return 1.0 / timed(fn, count)


def core_table(n: int, gen: Gen) -> None:
    cfg: Config = parse_config({"cache": {"max_bytes": 1_000_000}}, {})
    reqs = requests(n, gen)
    keys = [cache_key(**r) for r in reqs]
    assert len(set(keys)) == n
    body = EncodedBody(encoding="zstd", body=b"z" * 600, size_bytes=1_800)
    index = CacheIndex()

    def store_all() -> None:
        for i, k in enumerate(keys):
            for event in decide_store(
                index,
                request_id=f"r{i}",
                tenant="acme",
                key=k,
                model="m",
                body=body,
                usage=USAGE,
                cost_micros=1,
                now_ms=i,
                cfg=cfg,
            ):
                evolve_cache(index, event)

    def fresh_store() -> None:
        index.__init__()  # type: ignore[misc]
        store_all()

    print(f"\n3. pure core, {n} distinct requests (decisions/s, best of 5)")
    rates = {
        "cache_key (hash the canonical request)": per_second(
            lambda: [cache_key(**r) for r in reqs], n
        )
    }
    rates["decide_store + fold (1 MB budget: ~1 LRU eviction each)"] = per_second(fresh_store, n)
    live = [k for k in keys if index.get(k) is not None]
    missing = [k for k in keys if index.get(k) is None]

    def lookups(ks: Sequence[str]) -> Callable[[], object]:
        return lambda: [
            decide_lookup(index, request_id="r", tenant="acme", key=k, now_ms=n) for k in ks
        ]

    rates[f"decide_lookup, hits ({len(live)} keys)"] = per_second(lookups(live), len(live))
    rates[f"decide_lookup, misses ({len(missing)} keys)"] = per_second(
        lookups(missing), len(missing)
    )
    hits = [
        decide_lookup(index, request_id="r", tenant="acme", key=k, now_ms=n).events[0] for k in live
    ]

    def fold_hits() -> None:
        for hit in hits:
            evolve_cache(index, hit)

    rates["fold a CacheHit (LRU touch)"] = per_second(fold_hits, len(hits))
    for i, k in enumerate(live[: len(live) // 2]):
        evolve_cache(index, _accepted(f"lead{i}", k))
    rates["decide_coalesce (half the keys in flight)"] = per_second(
        lambda: [
            decide_coalesce(index, request_id="f", tenant="acme", key=k, cfg=cfg) for k in live
        ],
        len(live),
    )
    plain = {k: None for k in live}
    rates["baseline: dict.get on the same keys"] = per_second(
        lambda: [plain.get(k) for k in live], len(live)
    )
    width = max(len(name) for name in rates)
    for name, value in rates.items():
        print(f"   {name:<{width}}  {value:>12,.0f}/s")


def _accepted(request_id: str, key: str) -> ev.RequestAccepted:
    return ev.RequestAccepted(
        request_id=request_id,
        tenant="acme",
        task_type="general",
        messages_hash="h",
        prompt_tokens_est=3,
        cache_key=key,
        cacheable=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=3000, help="cached answers in the mix")
    parser.add_argument("--requests", type=int, default=20_000, help="requests for part 3")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    gen = Gen(args.seed)
    bytes_table(gen.mix(args.answers))
    core_table(args.requests, gen)


if __name__ == "__main__":
    main()
