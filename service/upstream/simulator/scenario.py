"""Simulator scenarios: what the simulated upstream does to each request.

Job: parse and validate a scenario (TOML text, see docs/reference/contract.md,
"Simulator scenarios"), apply the `--seed`/`--latency-ms`/`--error-rate` shorthands, and
decide one request: `decide(scenario, model, t_s, u_rate, u_latency)`.

Rules:
- Pure: no I/O, no clock, no randomness. The time since the simulator started
  and two uniform samples in [0, 1) are arguments. The shell (app.py) owns a
  `random.Random(seed)` and draws exactly two samples per chat request, so a
  seed and a sequence of requests fix every outcome.
- The first rule whose model glob matches the requested model and whose window
  holds `from_s <= t < to_s` decides. Its `rate` is the share of those requests
  that get its `outcome`; the rest get a normal answer (no fall-through to
  later rules). Its `latency_ms`, if set, applies to every request it matches.
- Validation never stops at the first problem: `ScenarioError.problems` lists
  every one, each prefixed with where it is (`rule[2].rate: ...`).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatchcase
from statistics import NormalDist
from typing import Any

import msgspec

from turnout.service.errors import TurnoutError

__all__ = [
    "MALFORMED",
    "MIDSTREAM_ERROR",
    "OK",
    "OVERSIZED",
    "RESET",
    "TIMEOUT",
    "Decision",
    "Latency",
    "Outcome",
    "Price",
    "Rule",
    "Scenario",
    "ScenarioError",
    "decide",
    "parse_scenario",
    "scenario_from_mapping",
    "with_overrides",
]

OK = "ok"
TIMEOUT = "timeout"
RESET = "reset"
MALFORMED = "malformed"
MIDSTREAM_ERROR = "midstream_error"
OVERSIZED = "oversized"  # a 200 whose answer is ~1.5 MB: more than a Kafka record holds
_NAMED_OUTCOMES = (OK, TIMEOUT, RESET, MALFORMED, MIDSTREAM_ERROR, OVERSIZED)

Outcome = int | str
"""An HTTP error status (400..599) or one of the named outcomes above."""

_Z99 = NormalDist().inv_cdf(0.99)
_STD_NORMAL = NormalDist()
_U_MIN = 1e-6  # clamps the lognormal tail to ~4.75 sigma


class ScenarioError(TurnoutError):
    """A scenario that cannot be used; `problems` lists every reason."""

    def __init__(self, problems: list[str], source: str = "scenario") -> None:
        self.problems = list(problems)
        self.source = source
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{source}: {count}: {'; '.join(problems)} (fix them and run again)")


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    """Fixed (`p99_ms == median_ms`) or lognormal latency in milliseconds."""

    median_ms: float
    p99_ms: float

    def sample_ms(self, u: float) -> float:
        """The latency at quantile `u` (a uniform sample in [0, 1))."""
        if self.p99_ms <= self.median_ms:
            return self.median_ms
        sigma = math.log(self.p99_ms / self.median_ms) / _Z99
        z = _STD_NORMAL.inv_cdf(min(max(u, _U_MIN), 1.0 - _U_MIN))
        return self.median_ms * math.exp(sigma * z)


NO_LATENCY = Latency(median_ms=0.0, p99_ms=0.0)


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    model: str = "*"
    from_s: float = 0.0
    to_s: float = math.inf
    outcome: Outcome = OK
    rate: float = 1.0
    retry_after_s: float | None = None
    latency: Latency | None = None
    chunk_ms: float = 0.0  # a streamed answer waits this long before each chunk

    def matches(self, model: str, t_s: float) -> bool:
        return self.from_s <= t_s < self.to_s and fnmatchcase(model, self.model)


class Price(msgspec.Struct, frozen=True, kw_only=True):
    """USD per token, as canonical decimal strings (`"0.00000015"`)."""

    prompt: str
    completion: str


class Scenario(msgspec.Struct, frozen=True, kw_only=True):
    seed: int | None = None
    latency: Latency = NO_LATENCY
    rules: tuple[Rule, ...] = ()
    prices: dict[str, Price] = msgspec.field(default_factory=dict)


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What happens to one request: outcome, latency, Retry-After, deciding rule."""

    outcome: Outcome
    latency_ms: float
    retry_after_s: float | None = None
    rule: int | None = None
    chunk_ms: float = 0.0


def decide(scenario: Scenario, model: str, t_s: float, u_rate: float, u_latency: float) -> Decision:
    """The outcome for a request for `model` at `t_s` seconds since start."""
    for index, rule in enumerate(scenario.rules):
        if rule.matches(model, t_s):
            latency_ms = (rule.latency or scenario.latency).sample_ms(u_latency)
            if u_rate < rule.rate:
                return Decision(
                    outcome=rule.outcome,
                    latency_ms=latency_ms,
                    retry_after_s=rule.retry_after_s,
                    rule=index,
                    chunk_ms=rule.chunk_ms,
                )
            return Decision(outcome=OK, latency_ms=latency_ms, rule=index, chunk_ms=rule.chunk_ms)
    return Decision(outcome=OK, latency_ms=scenario.latency.sample_ms(u_latency))


# --------------------------------------------------------------------------- parsing


def parse_scenario(text: str, source: str = "scenario") -> Scenario:
    """Parse TOML scenario text; raises ScenarioError listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError([f"not valid TOML: {err}"], source) from None
    return scenario_from_mapping(data, source)


def scenario_from_mapping(data: Mapping[str, Any], source: str = "scenario") -> Scenario:
    """Validate a decoded scenario; raises ScenarioError listing every problem."""
    problems: list[str] = []
    _unknown_keys(data, {"seed", "latency_ms", "rule", "prices"}, "", problems)
    seed = _seed(data.get("seed"), problems)
    latency = _latency(data.get("latency_ms"), "latency_ms", problems) or NO_LATENCY
    rules = _rules(data.get("rule", []), problems)
    prices = _prices(data.get("prices", {}), problems)
    if problems:
        raise ScenarioError(problems, source)
    return Scenario(seed=seed, latency=latency, rules=rules, prices=prices)


def with_overrides(
    scenario: Scenario,
    *,
    seed: int | None = None,
    latency_ms: float | None = None,
    error_rate: float | None = None,
) -> Scenario:
    """Apply the command-line shorthands.

    `seed` replaces the scenario's seed; `latency_ms` replaces the base latency
    with a fixed one; `error_rate` appends a rule over every model answering
    503 for that share of the requests no earlier rule matched.
    """
    problems: list[str] = []
    if latency_ms is not None and not (_is_number(latency_ms) and latency_ms >= 0):
        problems.append(f"--latency-ms: must be a number >= 0, got {latency_ms!r}")
    if error_rate is not None and not (_is_number(error_rate) and 0 <= error_rate <= 1):
        problems.append(f"--error-rate: must be a number between 0 and 1, got {error_rate!r}")
    if problems:
        raise ScenarioError(problems, "command line")
    updates: dict[str, Any] = {}
    if seed is not None:
        updates["seed"] = seed
    if latency_ms is not None:
        updates["latency"] = Latency(median_ms=float(latency_ms), p99_ms=float(latency_ms))
    if error_rate is not None:
        shorthand = Rule(model="*", outcome=503, rate=float(error_rate), retry_after_s=1.0)
        updates["rules"] = (*scenario.rules, shorthand)
    return msgspec.structs.replace(scenario, **updates)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _unknown_keys(
    data: Mapping[str, Any], known: set[str], where: str, problems: list[str]
) -> None:
    for key in data:
        if key not in known:
            allowed = ", ".join(sorted(known))
            problems.append(f"{where}{key}: unknown key (allowed: {allowed})")


def _seed(value: object, problems: list[str]) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    problems.append(f"seed: must be an integer, got {value!r}")
    return None


def _number(
    value: object,
    where: str,
    problems: list[str],
    check: Callable[[float], bool] = lambda v: v >= 0,
    expect: str = "a number >= 0",
) -> float | None:
    if _is_number(value) and check(float(value)):  # type: ignore[arg-type]
        return float(value)  # type: ignore[arg-type]
    problems.append(f"{where}: must be {expect}, got {value!r}")
    return None


def _latency(value: object, where: str, problems: list[str]) -> Latency | None:
    """`N` (fixed ms) or `{median = M, p99 = P}` (lognormal), or None when absent."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return _lognormal(value, where, problems)
    fixed = _number(value, where, problems, expect="a number of ms >= 0 or {median, p99}")
    return None if fixed is None else Latency(median_ms=fixed, p99_ms=fixed)


def _lognormal(value: Mapping[str, Any], where: str, problems: list[str]) -> Latency | None:
    before = len(problems)
    _unknown_keys(value, {"median", "p99"}, f"{where}.", problems)
    positive = "a number of ms > 0"
    median = _number(value.get("median"), f"{where}.median", problems, lambda v: v > 0, positive)
    p99 = _number(value.get("p99"), f"{where}.p99", problems, lambda v: v > 0, positive)
    if median is not None and p99 is not None and p99 < median:
        problems.append(f"{where}.p99: must be >= median ({median:g}), got {p99:g}")
    if len(problems) > before or median is None or p99 is None:
        return None
    return Latency(median_ms=median, p99_ms=p99)


_RULE_KEYS = {
    "model", "from_s", "to_s", "outcome", "rate", "retry_after_s", "latency_ms", "chunk_ms",
}  # fmt: skip


def _rules(value: object, problems: list[str]) -> tuple[Rule, ...]:
    if not isinstance(value, list) or not all(isinstance(r, Mapping) for r in value):
        problems.append("rule: must be an array of tables ([[rule]])")
        return ()
    rules = [_rule(raw, f"rule[{i}]", problems) for i, raw in enumerate(value)]
    return tuple(rule for rule in rules if rule is not None)


def _rule(raw: Mapping[str, Any], where: str, problems: list[str]) -> Rule | None:
    before = len(problems)
    _unknown_keys(raw, _RULE_KEYS, f"{where}.", problems)
    model = raw.get("model", "*")
    if not isinstance(model, str) or not model:
        problems.append(f"{where}.model: must be a non-empty glob string, got {model!r}")
    from_s = _number(raw.get("from_s", 0), f"{where}.from_s", problems)
    to_s: float | None = math.inf
    if "to_s" in raw:
        to_s = _number(raw["to_s"], f"{where}.to_s", problems, lambda v: v > 0, "a number > 0")
    if from_s is not None and to_s is not None and to_s <= from_s:
        problems.append(f"{where}.to_s: must be > from_s ({from_s:g}), got {to_s:g}")
    outcome = _outcome(raw.get("outcome", OK), f"{where}.outcome", problems)
    rate = _number(
        raw.get("rate", 1.0),
        f"{where}.rate",
        problems,
        lambda v: v <= 1,
        "a number between 0 and 1",
    )
    retry_after = raw.get("retry_after_s")
    if retry_after is not None:
        retry_after = _number(retry_after, f"{where}.retry_after_s", problems)
    latency = _latency(raw.get("latency_ms"), f"{where}.latency_ms", problems)
    chunk_ms = _number(raw.get("chunk_ms", 0), f"{where}.chunk_ms", problems)
    if outcome == OK and latency is None and "outcome" not in raw and not chunk_ms:
        problems.append(f"{where}: sets neither outcome nor latency_ms, so it does nothing")
    if len(problems) > before:
        return None
    return Rule(
        model=str(model),
        from_s=from_s or 0.0,
        to_s=math.inf if to_s is None else to_s,
        outcome=outcome,
        rate=1.0 if rate is None else rate,
        retry_after_s=retry_after,
        latency=latency,
        chunk_ms=chunk_ms or 0.0,
    )


def _outcome(value: object, where: str, problems: list[str]) -> Outcome:
    if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
        return value
    if isinstance(value, str) and value in _NAMED_OUTCOMES:
        return value
    named = ", ".join(f'"{name}"' for name in _NAMED_OUTCOMES)
    problems.append(f"{where}: must be an HTTP status 400..599 or one of {named}, got {value!r}")
    return OK


def _prices(value: object, problems: list[str]) -> dict[str, Price]:
    if not isinstance(value, Mapping):
        problems.append('prices: must be a table of [prices."model/name"] tables')
        return {}
    prices: dict[str, Price] = {}
    for model, raw in value.items():
        where = f'prices."{model}"'
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: must be a table with prompt and completion")
            continue
        _unknown_keys(raw, {"prompt", "completion"}, f"{where}.", problems)
        prompt = _usd(raw.get("prompt"), f"{where}.prompt", problems)
        completion = _usd(raw.get("completion"), f"{where}.completion", problems)
        if prompt is not None and completion is not None:
            prices[model] = Price(prompt=prompt, completion=completion)
    return prices


def _usd(value: object, where: str, problems: list[str]) -> str | None:
    """A USD-per-token amount as a canonical decimal string (strings or numbers accepted)."""
    try:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise InvalidOperation
        amount = Decimal(str(value))
        if not amount.is_finite() or amount < 0:
            raise InvalidOperation
    except InvalidOperation:
        expect = 'a decimal string of USD per token >= 0 such as "0.000001"'
        problems.append(f"{where}: must be {expect}, got {value!r}")
        return None
    return format(amount.normalize(), "f")
