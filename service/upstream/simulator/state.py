"""The simulator's mutable state: options, seeded randomness, counters, generations.

Job: hold what one running simulator remembers and decide each chat request
with the pure `scenario.decide`.

Rules:
- One `random.Random(seed)` per simulator, two draws per decided request
  (rate, latency), in arrival order: the same seed and the same sequence of
  requests give the same outcomes. Answer text never uses it.
- Scenario time is seconds since start (or since the last `restart()`) on the
  monotonic clock.
- Counters and the generation log are bounded and cheap: one dict increment
  per key, an LRU of `generations_kept` entries.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import OrderedDict

import msgspec

from .catalogue import Catalogue
from .scenario import Decision, Scenario, decide
from .wire import Generation

__all__ = ["GenerationLog", "SimulatorOptions", "SimulatorState", "Stats", "outcome_key"]


class SimulatorOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How one simulator behaves (the CLI builds this from its flags)."""

    scenario: Scenario = msgspec.field(default_factory=Scenario)
    require_key: bool = False
    hang_max_s: float = 300.0  # a "timeout" outcome never holds a request longer
    generations_kept: int = 10_000


def outcome_key(outcome: int | str) -> str:
    """The counter key of an outcome: `"ok"`, `"503"`, `"timeout"`, ..."""
    return outcome if isinstance(outcome, str) else str(outcome)


class Stats:
    """Chat requests served, per model and per outcome."""

    def __init__(self) -> None:
        self.total = 0
        self.by_model: dict[str, int] = {}
        self.by_outcome: dict[str, int] = {}
        # streamed answers: completed, errored (a mid-stream error), aborted (the client
        # went away before the end), and chunks written in all
        self.streams: dict[str, int] = {"completed": 0, "errored": 0, "aborted": 0, "chunks": 0}

    def count(self, model: str | None, outcome: str) -> None:
        self.total += 1
        if model is not None:
            self.by_model[model] = self.by_model.get(model, 0) + 1
        self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + 1

    def snapshot(self) -> dict[str, object]:
        return {
            "total": self.total,
            "by_model": dict(self.by_model),
            "by_outcome": dict(self.by_outcome),
            "streams": dict(self.streams),
        }


class GenerationLog:
    """The last `limit` generations by id, least recently used evicted first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._entries: OrderedDict[str, Generation] = OrderedDict()

    def add(self, generation: Generation) -> None:
        self._entries[generation.id] = generation
        if len(self._entries) > self._limit:
            self._entries.popitem(last=False)

    def get(self, generation_id: str) -> Generation | None:
        generation = self._entries.get(generation_id)
        if generation is not None:
            self._entries.move_to_end(generation_id)
        return generation

    def __len__(self) -> int:
        return len(self._entries)


class SimulatorState:
    """Everything one simulator instance remembers between requests."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options
        self.scenario = options.scenario
        named = [r.model for r in self.scenario.rules if not any(c in r.model for c in "*?[")]
        self.catalogue = Catalogue(self.scenario.prices, known=named)
        self.stats = Stats()
        self.generations = GenerationLog(options.generations_kept)
        self.closing = asyncio.Event()
        self._id_prefix = os.urandom(5).hex()
        self._next_id = 0
        self.restart()

    def restart(self) -> None:
        """Scenario time back to 0 and the random sequence back to its seed."""
        self.rng = random.Random(self.scenario.seed)
        self.started = time.monotonic()

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def decide(self, model: str) -> Decision:
        u_rate, u_latency = self.rng.random(), self.rng.random()
        return decide(self.scenario, model, self.elapsed_s(), u_rate, u_latency)

    def new_generation_id(self, created: int) -> str:
        """`gen-<unix seconds>-<hex>`: unique per process and across runs."""
        self._next_id += 1
        return f"gen-{created}-{self._id_prefix}{self._next_id:08x}"
