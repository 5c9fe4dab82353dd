"""What a what-if run prints: the recorded and re-decided sides, counted alike.

`Summary.add(time_ms, event)` counts one side's events as they come (the
recording's, or the ones the re-decision emits), so both columns of the table
are computed by the same code: requests by outcome, calls and fallbacks per
model, retries, breaker open time per model, spend per tenant and in all,
latency p50/p99 of the answered requests, and the cache hit ratio.

`outcome_of(terminal)` names a request's outcome as the table does; `Verdict`
is one request on both sides, and `explain` says in words why a request's
outcome, model or cost changed (its `--diff` line).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from rich.table import Table

from turnout.service.core import events as ev
from turnout.service.core.state import Terminal

__all__ = [
    "OUTCOMES",
    "Summary",
    "Verdict",
    "changed",
    "explain",
    "outcome_of",
    "render",
    "report_json",
    "rows",
]

OUTCOMES: Final = (
    "ok", "cached", "coalesced", "rate_limited", "budget_exceeded", "rejected", "failed",
    "cancelled", "in_flight",
)  # fmt: skip


def outcome_of(terminal: Terminal | None) -> str:
    # by exact type, not `match` (both sides of every request ask: the hot path)
    kind = type(terminal)
    if kind is ev.RequestCompleted:
        assert isinstance(terminal, ev.RequestCompleted)
        return "cached" if terminal.cached else "coalesced" if terminal.coalesced else "ok"
    if kind is ev.RequestRejected:
        assert isinstance(terminal, ev.RequestRejected)
        code = terminal.code
        return code if code in ("rate_limited", "budget_exceeded") else "rejected"
    if kind is ev.RequestCancelled:
        return "cancelled"
    return "in_flight" if terminal is None else "failed"


def _model(terminal: Terminal | None) -> str | None:
    return None if isinstance(terminal, ev.RequestRejected | None) else terminal.model


def _attempts(terminal: Terminal | None) -> int:
    return 0 if isinstance(terminal, ev.RequestRejected | None) else terminal.attempts


def _cost(terminal: Terminal | None) -> int:
    return 0 if isinstance(terminal, ev.RequestRejected | None) else terminal.cost_micros


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


@dataclass(slots=True)
class Summary:
    """One side of the comparison, counted event by event."""

    outcomes: Counter[str] = field(default_factory=Counter)
    calls: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)  # from this model
    retries: int = 0
    breaker_open_ms: Counter[str] = field(default_factory=Counter)
    spend_micros: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    hits: int = 0
    misses: int = 0
    _open_since: dict[str, int] = field(default_factory=dict)

    def add(self, time_ms: int, event: object) -> None:
        count = _COUNTERS.get(type(event))
        if count is not None:
            count(self, time_ms, event)

    def end(self, terminal: Terminal | None) -> None:
        """Count one request's outcome (None: still in flight when the run ended)."""
        outcome = outcome_of(terminal)
        self.outcomes[outcome] += 1
        if terminal is None or isinstance(terminal, ev.RequestRejected):
            return
        if terminal.cost_micros:
            self.spend_micros[terminal.tenant] += terminal.cost_micros
        if outcome == "ok":
            self.latencies.append(terminal.latency_ms)

    def close(self, end_ms: int) -> None:
        """Breakers still open at the end of the window count until then."""
        for model, since in self._open_since.items():
            self.breaker_open_ms[model] += max(end_ms - since, 0)
        self._open_since.clear()

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def as_json(self) -> dict[str, Any]:
        ratio = self.hits / (self.hits + self.misses) if self.hits + self.misses else None
        return {
            "requests": self.requests,
            "outcomes": {o: self.outcomes[o] for o in OUTCOMES if self.outcomes[o]},
            "calls": dict(sorted(self.calls.items())),
            "fallbacks": dict(sorted(self.fallbacks.items())),
            "retries": self.retries,
            "breaker_open_s": {
                m: round(ms / 1000, 3) for m, ms in sorted(self.breaker_open_ms.items())
            },
            "spend_usd": {t: c / 1e6 for t, c in sorted(self.spend_micros.items())},
            "spend_usd_total": sum(self.spend_micros.values()) / 1e6,
            "latency_ms": {"p50": _quantile(self.latencies, 0.5),
                           "p99": _quantile(self.latencies, 0.99)},
            "cache_hit_ratio": ratio,
        }  # fmt: skip


def _started(s: Summary, _t: int, e: ev.AttemptStarted) -> None:
    s.calls[e.model] += 1


def _fell_back(s: Summary, _t: int, e: ev.FallbackTaken) -> None:
    s.fallbacks[e.from_model] += 1


def _retried(s: Summary, _t: int, _e: object) -> None:
    s.retries += 1


def _hit(s: Summary, _t: int, _e: object) -> None:
    s.hits += 1


def _missed(s: Summary, _t: int, _e: object) -> None:
    s.misses += 1


def _opened(s: Summary, t: int, e: ev.BreakerOpened) -> None:
    s._open_since.setdefault(e.model, t)


def _left_open(s: Summary, t: int, e: ev.BreakerHalfOpened | ev.BreakerClosed) -> None:
    since = s._open_since.pop(e.model, None)
    if since is not None:
        s.breaker_open_ms[e.model] += t - since


def _ended(s: Summary, _t: int, e: Terminal) -> None:
    s.end(e)


_COUNTERS: Final[dict[type, Any]] = {
    ev.AttemptStarted: _started, ev.FallbackTaken: _fell_back, ev.RetryScheduled: _retried,
    ev.CacheHit: _hit, ev.CacheMiss: _missed, ev.BreakerOpened: _opened,
    ev.BreakerHalfOpened: _left_open, ev.BreakerClosed: _left_open,
    ev.RequestCompleted: _ended, ev.RequestFailed: _ended, ev.RequestRejected: _ended,
    ev.RequestCancelled: _ended,
}  # fmt: skip
"""What each counted event type adds to a side (one dict lookup per event: both sides
see every event of the window)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """One request, as recorded and as re-decided."""

    request_id: str
    tenant: str
    time_ms: int
    recorded: Terminal | None
    whatif: Terminal | None
    modelled: int  # calls whose outcome was modelled, not recorded
    reason: str = ""

    @property
    def changed(self) -> bool:
        return changed(self.recorded, self.whatif)

    def side(self, which: str) -> dict[str, Any]:
        t = self.recorded if which == "recorded" else self.whatif
        return {"outcome": outcome_of(t), "model": _model(t), "attempts": _attempts(t),
                "cost_usd": _cost(t) / 1e6}  # fmt: skip


def changed(recorded: Terminal | None, whatif: Terminal | None) -> bool:
    """Did the request's outcome, model, attempts or cost change?"""
    r, w = recorded, whatif
    return (
        outcome_of(r) != outcome_of(w)
        or _model(r) != _model(w)
        or _attempts(r) != _attempts(w)
        or _cost(r) != _cost(w)
    )


def explain(
    recorded: Terminal | None,
    recorded_route: tuple[str, ...] | None,
    recorded_models: Sequence[str],
    whatif: Terminal | None,
    whatif_events: Sequence[object],
    modelled: Sequence[str],
) -> str:
    """Why a request came out differently, in a few words (its `--diff` line)."""
    parts: list[str] = []
    if isinstance(whatif, ev.RequestRejected):
        if not isinstance(recorded, ev.RequestRejected):
            return f"{whatif.code}: {whatif.message}"
        if recorded.code != whatif.code:
            return f"{whatif.code} (recorded: {recorded.code}): {whatif.message}"
    if isinstance(recorded, ev.RequestRejected) and not isinstance(whatif, ev.RequestRejected):
        parts.append(f"admitted (recorded: {recorded.code})")
    route = next((e for e in whatif_events if isinstance(e, ev.RouteDecided)), None)
    if route is not None and recorded_route is not None and tuple(route.order) != recorded_route:
        said = (
            f"route {' > '.join(route.order) or '(none)'} instead of {' > '.join(recorded_route)}"
        )
        if route.skipped:
            said += " (" + ", ".join(f"{s.model}: {s.reason}" for s in route.skipped) + ")"
        parts.append(said)
    tried = [e.model for e in whatif_events if isinstance(e, ev.AttemptStarted)]
    if tried != list(recorded_models) and (tried or recorded_models):
        parts.append(f"called {' > '.join(tried) or 'nothing'}"
                     f" (recorded {' > '.join(recorded_models) or 'nothing'})")  # fmt: skip
    opened = [e.model for e in whatif_events if isinstance(e, ev.BreakerOpened)]
    if opened:
        parts.append(f"opened the breaker of {', '.join(opened)}")
    if modelled:
        parts.append(f"modelled outcome on {', '.join(dict.fromkeys(modelled))}")
    wo, ro = outcome_of(whatif), outcome_of(recorded)
    if wo != ro and not parts:
        parts.append(f"{ro} -> {wo}")
    if isinstance(whatif, ev.RequestFailed) and wo != ro:
        parts.append(f"failed: {whatif.code}")
    if not parts and _cost(recorded) != _cost(whatif):
        parts.append(f"cost {_cost(recorded) / 1e6:.6f} -> {_cost(whatif) / 1e6:.6f} USD")
    return "; ".join(parts)


def report_json(
    *, requests: int, changed: int, recorded: Summary, whatif: Summary,
    calls_recorded: int, calls_modelled: int, diff: Sequence[Verdict] | None,
    window: dict[str, Any],
) -> bytes:  # fmt: skip
    doc: dict[str, Any] = {
        "requests": requests,
        "changed": changed,
        "window": window,
        "outcomes_recorded_calls": calls_recorded,
        "outcomes_modelled_calls": calls_modelled,
        "recorded": recorded.as_json(),
        "whatif": whatif.as_json(),
    }
    if diff is not None:
        doc["diff"] = [
            {"request_id": v.request_id, "tenant": v.tenant, "recorded": v.side("recorded"),
             "whatif": v.side("whatif"), "reason": v.reason}
            for v in diff
        ]  # fmt: skip
    return msgspec.json.encode(doc)


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def rows(recorded: Summary, whatif: Summary) -> list[tuple[str, str, str]]:
    """The side-by-side comparison as (what, recorded, what-if) text rows."""
    r, w = recorded.as_json(), whatif.as_json()
    out = [("requests", f"{r['requests']:,}", f"{w['requests']:,}")]
    for o in OUTCOMES:
        if recorded.outcomes[o] or whatif.outcomes[o]:
            out.append((f"  {o}", f"{recorded.outcomes[o]:,}", f"{whatif.outcomes[o]:,}"))
    for m in sorted(set(recorded.calls) | set(whatif.calls)):
        out.append((f"calls {m}", f"{recorded.calls[m]:,}", f"{whatif.calls[m]:,}"))
    for m in sorted(set(recorded.fallbacks) | set(whatif.fallbacks)):
        out.append((f"fallbacks from {m}", f"{recorded.fallbacks[m]:,}",
                    f"{whatif.fallbacks[m]:,}"))  # fmt: skip
    out.append(("retries", f"{recorded.retries:,}", f"{whatif.retries:,}"))
    for m in sorted(set(recorded.breaker_open_ms) | set(whatif.breaker_open_ms)):
        out.append((f"breaker open {m}", f"{recorded.breaker_open_ms[m] / 1000:,.1f} s",
                    f"{whatif.breaker_open_ms[m] / 1000:,.1f} s"))  # fmt: skip
    for tenant in sorted(set(recorded.spend_micros) | set(whatif.spend_micros)):
        out.append((f"spend {tenant}", f"${recorded.spend_micros[tenant] / 1e6:,.4f}",
                    f"${whatif.spend_micros[tenant] / 1e6:,.4f}"))  # fmt: skip
    out.append(("spend, all tenants", f"${r['spend_usd_total']:,.4f}",
                f"${w['spend_usd_total']:,.4f}"))  # fmt: skip
    out.append(("latency p50", _fmt_ms(r["latency_ms"]["p50"]), _fmt_ms(w["latency_ms"]["p50"])))
    out.append(("latency p99", _fmt_ms(r["latency_ms"]["p99"]), _fmt_ms(w["latency_ms"]["p99"])))
    ratio = ["-" if x["cache_hit_ratio"] is None else f"{x['cache_hit_ratio']:.1%}" for x in (r, w)]
    out.append(("cache hit ratio", ratio[0], ratio[1]))
    return out


def render(recorded: Summary, whatif: Summary) -> Table:
    """The side-by-side table (a changed row in bold yellow)."""
    t = Table(title="Recorded vs what-if", title_justify="left")
    t.add_column("")
    t.add_column("recorded", justify="right")
    t.add_column("what-if", justify="right")
    for i, (label, a, b) in enumerate(rows(recorded, whatif)):
        style = "bold" if i == 0 else ("bold yellow" if a != b else None)
        t.add_row(label, a, b, style=style)
    return t
