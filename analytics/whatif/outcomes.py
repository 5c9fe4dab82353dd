"""Upstream outcomes a what-if run did not record: learnt from the recording, or assumed.

When a re-decision calls a model the recording did not call for that request at
that attempt, the outcome is drawn from what that model did around that moment:

- per model, the recorded calls in one-minute buckets; a draw takes one recorded
  call of the nearest bucket that has any (its status, error class, latency and,
  for a stream, when its first token came), so latency and error rate follow the
  recording's;
- while the recording had the model's breaker open (from `turnout.breaker.opened`
  to `closed`), a draw takes one of the failed calls from the minute before it
  opened on: the recording made few calls then (the breaker stopped them), so the
  minute's other calls, successes from before the outage, say nothing of it;
- usage: the request's own recorded tokens when any call of it succeeded, else its
  prompt estimate and the drawn call's completion tokens (capped at `max_tokens`);
- cost: the recorded price table at that moment (`turnout.prices.updated`), else the
  drawn call's cost per token;
- a model the recording never called: `--assume MODEL=latency_ms:P50,P99,ERROR_RATE`
  (lognormal latency through P50 and P99; errors are `unavailable` / 503, completion
  tokens the request's recorded ones, else half its `max_tokens`, else 256), or the
  run is refused (`UnknownModel`).

Every draw is seeded by (request id, model, attempt on the model): a run is
deterministic, and two runs of different configs draw alike for the same call.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final

from turnout.analytics.whatif.recording import RecordedCall, RecordedRequest
from turnout.service.core import events as ev
from turnout.service.core.pricing import Price, cost_micros

__all__ = ["Assumption", "Drawn", "OutcomeModel", "UnknownModel", "parse_assume"]

BUCKET_MS: Final = 60_000
_Z99: Final = NormalDist().inv_cdf(0.99)
_ASSUME: Final = re.compile(
    r"^(?P<model>[^=\s]+)=latency_ms:(?P<p50>[^,]+),(?P<p99>[^,]+),(?P<err>.+)$"
)


class UnknownModel(ValueError):
    """A model the new config would call, with no recorded call and no `--assume`."""


@dataclass(frozen=True, slots=True)
class Assumption:
    """How a model never seen in the recording is taken to behave."""

    p50_ms: float
    p99_ms: float
    error_rate: float


def parse_assume(specs: list[str]) -> dict[str, Assumption]:
    """`MODEL=latency_ms:P50,P99,ERROR_RATE` each; ValueError listing every bad one."""
    out: dict[str, Assumption] = {}
    problems: list[str] = []
    for spec in specs:
        m = _ASSUME.match(spec.strip())
        try:
            if m is None:
                raise ValueError
            p50, p99, err = float(m["p50"]), float(m["p99"]), float(m["err"])
        except ValueError:
            problems.append(f"{spec!r}: give MODEL=latency_ms:P50,P99,ERROR_RATE "
                            "(e.g. openai/gpt-4o=latency_ms:800,2500,0.01)")  # fmt: skip
            continue
        if not (0 < p50 <= p99 and math.isfinite(p99)) or not 0 <= err <= 1:
            problems.append(f"{spec!r}: need 0 < P50 <= P99 and 0 <= ERROR_RATE <= 1")
            continue
        out[m["model"]] = Assumption(p50_ms=p50, p99_ms=p99, error_rate=err)
    if problems:
        raise ValueError("; ".join(problems))
    return out


@dataclass(frozen=True, slots=True)
class _Sample:
    ok: bool
    status: int | None
    latency_ms: float
    duration_ms: int
    error_class: str
    message: str
    retry_after_ms: int | None
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    first_token_frac: float | None


@dataclass(frozen=True, slots=True)
class Drawn:
    """A modelled call: its outcome, how long it took, and when its first token came."""

    ok: bool
    status: int | None
    latency_ms: float
    duration_ms: int
    error_class: str
    message: str
    retry_after_ms: int | None
    usage: ev.Usage
    cost_micros: int
    first_token_after_ms: int | None


def _uniforms(request_id: str, model: str, model_attempt: int) -> tuple[float, float]:
    digest = hashlib.blake2b(
        f"{request_id}\0{model}\0{model_attempt}".encode(), digest_size=16
    ).digest()
    a = int.from_bytes(digest[:8], "big")
    b = int.from_bytes(digest[8:], "big")
    return (a + 0.5) / 2**64, (b + 0.5) / 2**64


class OutcomeModel:
    """Per-model recorded calls by minute, and the assumptions for unseen models."""

    def __init__(self, assumptions: Mapping[str, Assumption] | None = None) -> None:
        self.assumptions = dict(assumptions or {})
        self._buckets: dict[str, dict[int, list[_Sample]]] = {}
        self._keys: dict[str, list[int]] = {}
        # per model, the recording's breaker-open spans: [opened_ms, closed_ms or None]
        self._opened: dict[str, list[int]] = {}
        self._closed: dict[str, list[int | None]] = {}
        self._failures: dict[tuple[str, int], list[_Sample]] = {}  # by (model, opened_ms)
        self.modelled = 0

    def transition(self, time_ms: int, event: object) -> None:
        """Learn from one recorded breaker transition."""
        kind = type(event)
        if kind is ev.BreakerOpened:
            assert isinstance(event, ev.BreakerOpened)
            closed = self._closed.setdefault(event.model, [])
            if not closed or closed[-1] is not None:  # a new span (a reopen extends one)
                self._opened.setdefault(event.model, []).append(time_ms)
                closed.append(None)
        elif kind is ev.BreakerClosed:
            assert isinstance(event, ev.BreakerClosed)
            spans = self._closed.get(event.model)
            if spans and spans[-1] is None:
                spans[-1] = time_ms

    @property
    def recorded_models(self) -> set[str]:
        """The models with recorded calls read so far."""
        return set(self._buckets)

    def _outage(self, model: str, now_ms: int) -> int | None:
        """When the recorded breaker-open span `now_ms` falls in opened (None: none)."""
        opened = self._opened.get(model)
        if not opened:
            return None
        i = bisect.bisect_right(opened, now_ms) - 1
        if i < 0:
            return None
        closed = self._closed[model][i]
        return opened[i] if closed is None or now_ms < closed else None

    def _failed_since(self, model: str, opened_ms: int) -> list[_Sample]:
        """The failed calls of `model` from the minute before `opened_ms` on (the ones that
        tripped the breaker, and its failed probes), as read when first asked."""
        cached = self._failures.get((model, opened_ms))
        if cached is not None:
            return cached
        keys = self._keys.get(model, [])
        buckets = self._buckets.get(model, {})
        first = opened_ms // BUCKET_MS - 1
        failed = [
            s for k in keys[bisect.bisect_left(keys, first) :] for s in buckets[k] if not s.ok
        ]
        self._failures[(model, opened_ms)] = failed
        return failed

    def observe(self, call: RecordedCall) -> None:
        """Learn from one recorded call that ended."""
        if call.end_ms is None:
            return
        usage = call.usage
        duration = call.end_ms - call.start_ms
        frac = None
        if call.first_token_ms is not None and duration > 0:
            frac = (call.first_token_ms - call.start_ms) / duration
        sample = _Sample(
            ok=call.ok, status=call.status, latency_ms=call.latency_ms, duration_ms=duration,
            error_class=call.error_class, message=call.message,
            retry_after_ms=call.retry_after_ms,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cost_micros=call.cost_micros, first_token_frac=frac,
        )  # fmt: skip
        bucket = call.start_ms // BUCKET_MS
        per_model = self._buckets.setdefault(call.model, {})
        samples = per_model.get(bucket)
        if samples is None:
            samples = per_model[bucket] = []
            bisect.insort(self._keys.setdefault(call.model, []), bucket)
        samples.append(sample)

    def knows(self, model: str) -> bool:
        """Can a call of `model` be drawn now (recorded calls read, or an assumption)?"""
        return model in self._buckets or model in self.assumptions

    def _nearest(self, model: str, now_ms: int) -> list[_Sample] | None:
        keys = self._keys.get(model)
        if not keys:
            return None
        bucket = now_ms // BUCKET_MS
        i = bisect.bisect_left(keys, bucket)
        near = [k for k in (keys[i - 1] if i else None, keys[i] if i < len(keys) else None)
                if k is not None]  # fmt: skip
        best = min(near, key=lambda k: (abs(k - bucket), k))
        return self._buckets[model][best]

    def draw(
        self, req: RecordedRequest, model: str, model_attempt: int, now_ms: int,
        prices: Mapping[str, Price], *, stream: bool,
    ) -> Drawn:  # fmt: skip
        """The outcome of a call the recording does not have (see the module docstring)."""
        u1, u2 = _uniforms(req.request_id, model, model_attempt)
        prompt, completion = _request_tokens(req)
        samples = self._nearest(model, now_ms)
        opened = self._outage(model, now_ms)
        if opened is not None:
            samples = self._failed_since(model, opened) or samples
        self.modelled += 1
        if samples is not None:
            s = samples[min(int(u1 * len(samples)), len(samples) - 1)]
            if completion is None:
                completion = s.completion_tokens
                cap = req.intake.max_tokens if req.intake is not None else None
                completion = min(completion, cap) if cap else completion
            usage = _usage(prompt, completion) if s.ok else None
            cost = _cost(usage, prices.get(model), s) if usage is not None else 0
            first = None
            if stream and s.ok:
                frac = s.first_token_frac if s.first_token_frac is not None else 0.25
                first = round(s.duration_ms * frac)
            return Drawn(
                ok=s.ok, status=s.status, latency_ms=s.latency_ms, duration_ms=s.duration_ms,
                error_class=s.error_class, message=s.message, retry_after_ms=s.retry_after_ms,
                usage=usage or _usage(0, 0), cost_micros=cost, first_token_after_ms=first,
            )  # fmt: skip
        assumed = self.assumptions.get(model)
        if assumed is None:
            raise UnknownModel(model)
        sigma = max(math.log(assumed.p99_ms / assumed.p50_ms) / _Z99, 0.0)
        latency = assumed.p50_ms * math.exp(sigma * NormalDist().inv_cdf(u2))
        duration = max(round(latency), 1)
        ok = u1 >= assumed.error_rate
        if completion is None:
            cap = req.intake.max_tokens if req.intake is not None else None
            completion = cap // 2 if cap else 256
        usage = _usage(prompt, completion) if ok else _usage(0, 0)
        price = prices.get(model)
        cost = cost_micros(price, prompt, completion) if ok and price is not None else 0
        return Drawn(
            ok=ok, status=200 if ok else 503, latency_ms=round(latency, 3), duration_ms=duration,
            error_class="unavailable", message="" if ok else "modelled: assumed error rate",
            retry_after_ms=None, usage=usage, cost_micros=cost,
            first_token_after_ms=duration // 4 if stream and ok else None,
        )  # fmt: skip


def _request_tokens(req: RecordedRequest) -> tuple[int, int | None]:
    """The request's recorded prompt and completion tokens (a call that succeeded),
    else its prompt estimate and no completion."""
    for call in req.calls.values():
        if call.ok and call.usage is not None:
            return call.usage.prompt_tokens, call.usage.completion_tokens
    prompt = req.intake.prompt_tokens_est if req.intake is not None else 0
    return prompt, None


def _usage(prompt: int, completion: int) -> ev.Usage:
    return ev.Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _cost(usage: ev.Usage, price: Price | None, s: _Sample) -> int:
    if price is not None:
        return cost_micros(price, usage.prompt_tokens, usage.completion_tokens)
    tokens = s.prompt_tokens + s.completion_tokens
    if tokens <= 0:
        return 0
    return round(s.cost_micros * usage.total_tokens / tokens)
