"""Re-deciding recorded traffic under another config: the router's own core, in virtual time.

`WhatIf(cfg, recording, outcomes).run()` plays the window's arrivals at their
recorded times through the same pure deciders the router runs
(`decide_intake`, `decide_result`, `decide_retry_due`, `decide_first_token`,
`decide_cancel`), folds what they decide with the same reducer (`evolve`), and
carries out their effects against the recording instead of the network:

- a `Call` of the model the recording called for that request at that attempt on
  it takes the recorded outcome (status, error class, latency, usage, cost, first
  token, stream cut), ending as long after its start as the recorded one did;
  any other call is drawn from the outcome model (`turnout.analytics.whatif.outcomes`);
- a `Wait` is due after the recorded lag when the recording scheduled the same
  retry with the same delay, else after its delay;
- a recorded cancel arrives at its recorded time.

Time is virtual: a heap of (time, log position) actions, no sleeping. Ties
between actions at the same millisecond keep the log's order, so under the
recorded config the re-decision replays the recorded decisions exactly (the
recorded prices come from `turnout.prices.updated`). One state holds every
tenant, like a single router owning every partition.

Rules:
- Deterministic: the same recording, config and assumptions give the same run.
- Each request is compared once both its outcomes are known (`Verdict`), then
  forgotten; memory is bounded by the requests in flight within the horizon.
- Requests in flight when the window opens keep their recorded events, folded at
  their times (their decisions were taken before the window).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from turnout.analytics.whatif.outcomes import OutcomeModel
from turnout.analytics.whatif.recording import (
    BREAKER_TYPES,
    TERMINAL_TYPES,
    Arrival,
    RecordedRequest,
    Recording,
)
from turnout.analytics.whatif.report import Summary, Verdict, changed, explain
from turnout.service.core import events as ev
from turnout.service.core.admission import NO_USAGE, cache_index
from turnout.service.core.budget import completion_allowance
from turnout.service.core.cache import EncodedBody, cache_key, is_cacheable
from turnout.service.core.config import Config
from turnout.service.core.decision import Call, CallResult, Context, Decision, Respond, Wait
from turnout.service.core.pricing import cost_micros
from turnout.service.core.request import (
    decide_cancel,
    decide_first_token,
    decide_intake,
    decide_result,
    decide_retry_due,
)
from turnout.service.core.state import RouterState, Terminal, evolve

__all__ = ["RunStats", "WhatIf"]

HORIZON_MS: Final = 600_000  # the log is read this far ahead of the virtual clock
LOOK_AHEAD_MS: Final = 3_600_000  # and this much further for a model not seen yet
_PLACEHOLDER_BODY: Final = EncodedBody(encoding="none", body=bytes(512), size_bytes=512)

# heap actions
_ARRIVE, _RESULT, _FIRST, _RETRY, _CANCEL, _FOLD = range(6)


class _Live:
    """A request of the window, while its what-if outcome is not settled."""

    __slots__ = ("events", "modelled", "rec", "running", "terminal")

    def __init__(self, rec: RecordedRequest) -> None:
        self.rec = rec
        self.events: list[object] = []  # its what-if events (kept when verdicts are asked for)
        self.terminal: Terminal | None = None
        self.modelled: list[str] = []  # models whose outcome was drawn
        self.running: tuple[str, int] | None = None  # (model, attempt) of its call in progress


@dataclass(slots=True)
class RunStats:
    requests: int = 0
    changed: int = 0
    replayed: int = 0  # kept as recorded (not re-decidable)
    calls_recorded: int = 0
    calls_modelled: int = 0
    events_read: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    held_peak: int = 0  # the most requests held at once: what the run's memory follows


class WhatIf:
    """One what-if run (see the module docstring)."""

    def __init__(
        self,
        cfg: Config,
        records: Iterator[Any],
        outcomes: OutcomeModel,
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        tenant: str | None = None,
        recorded_cfg: Config | None = None,
        trail: str | None = None,
        on_verdict: Callable[[Verdict], None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        # each recorded request is re-decided once, so nothing asks for a duplicate's answer
        # unless the memory itself changes (a request id run again after the recording
        # forgot it may be a duplicate under a longer memory)
        self.state = RouterState(answers=_dedupe_changed(cfg, recorded_cfg))
        self.outcomes = outcomes
        self.tenant = tenant
        self.until_ms = until_ms
        self.recorded_cfg = recorded_cfg
        self.recorded = Summary()
        self.whatif = Summary()
        self.stats = RunStats()
        self.trail_id = trail
        self.trail: list[tuple[int, object]] = []
        self.trail_recorded: list[tuple[int, object]] = []
        self._on_verdict = on_verdict
        self._progress = progress
        self._heap: list[tuple[int, str, int, Any]] = []
        self._tie = 0
        self._modelled = 0
        self._live: dict[str, _Live] = {}
        self._looked: set[str] = set()  # models read ahead for once (`_look_ahead`)
        self.rec = Recording(
            records, since_ms=since_ms, until_ms=until_ms,
            keep_events=frozenset([trail]) if trail else frozenset(),
            before=self._fold_before, recorded=self._recorded_event,
        )  # fmt: skip
        self._now = 0

    # ------------------------------------------------------------------ run

    def run(self) -> RunStats:
        rec, heap = self.rec, self._heap
        while True:
            if rec.ended or rec.arrivals or rec.replayed:
                self._take_new()
            if not rec.done:
                ahead = heap[0][0] if heap else rec.peek_ms()
                if ahead is None or rec.read_ms < ahead + HORIZON_MS:
                    rec.read_until((ahead if ahead is not None else rec.read_ms) + HORIZON_MS)
                    continue
            if not heap:
                break
            time_ms, seq, _, (kind, payload) = heapq.heappop(heap)
            self._now = time_ms
            self._act(kind, payload, time_ms, seq)
        for rid in list(self._live):  # still in flight at the end, on one side or both
            self._settle(rid, final=True)
        end = max(self._now, self.stats.last_ms or 0)
        if self.until_ms is not None:  # breakers count open within the window
            end = min(end, self.until_ms)
        self.recorded.close(end)
        self.whatif.close(end)
        self.stats.events_read = rec.events
        self.stats.calls_modelled = self.outcomes.modelled
        return self.stats

    def _push(self, time_ms: int, seq: str, kind: int, payload: Any) -> None:
        self._tie += 1
        heapq.heappush(self._heap, (time_ms, seq, self._tie, (kind, payload)))

    def _next_modelled_seq(self) -> str:
        """After every recorded decision of the same millisecond ("~" sorts after ids)."""
        self._modelled += 1
        return f"~{self._modelled:020d}"

    def _take_new(self) -> None:
        rec = self.rec
        for call in rec.ended:
            self.outcomes.observe(call)
        rec.ended.clear()
        for arrival in rec.arrivals:
            self._arrival(arrival)
        rec.arrivals.clear()
        for t, seq, data in rec.replayed:
            self._push(t, seq, _FOLD, data)
        rec.replayed.clear()

    def _arrival(self, arrival: Arrival) -> None:
        req = arrival.request
        live = self._live
        live[req.request_id] = _Live(rec=req)
        if len(live) > self.stats.held_peak:
            self.stats.held_peak = len(live)
        t = req.arrival_ms
        if self._counted(req.tenant):
            stats = self.stats
            stats.requests += 1
            stats.first_ms = t if stats.first_ms is None else min(stats.first_ms, t)
            stats.last_ms = t if stats.last_ms is None else max(stats.last_ms, t)
            if arrival.replayed:
                stats.replayed += 1
        self._push(t, req.arrival_seq, _ARRIVE, (req, arrival.replayed))

    def _counted(self, tenant: str) -> bool:
        """Is a request of `tenant` in the report (`--tenant`: the others are decided, as
        they share limits, breakers and the cache, and not reported)?"""
        return self.tenant is None or tenant == self.tenant

    def _in_window(self, time_ms: int) -> bool:
        """Does a breaker transition at `time_ms` count (up to `--to`, on both sides:
        the recording's later ones are other requests' doing)?"""
        return self.until_ms is None or time_ms <= self.until_ms

    # -------------------------------------------------------------- reading

    def _fold_before(self, time_ms: int, event: object) -> None:
        evolve(self.state, event, time_ms, self.cfg)
        if type(event) in BREAKER_TYPES:
            self.outcomes.transition(time_ms, event)

    def _recorded_event(self, time_ms: int, event: object) -> None:
        rid = getattr(event, "request_id", None)
        if rid is None:  # a breaker transition
            self.outcomes.transition(time_ms, event)
            if self._in_window(time_ms):
                self.recorded.add(time_ms, event)
            return
        if self._counted(getattr(event, "tenant", "")):
            if rid == self.trail_id:
                self.trail_recorded.append((time_ms, event))
            self.recorded.add(time_ms, event)
        if type(event) in TERMINAL_TYPES:
            self._settle(rid)

    # --------------------------------------------------------------- acting

    def _ctx(self, now_ms: int) -> Context:
        return Context(now_ms=now_ms, cfg=self.cfg, prices=self.rec.prices.at(now_ms))

    def _act(self, kind: int, payload: Any, now: int, seq: str) -> None:
        state = self.state
        if kind == _ARRIVE:
            req, replayed = payload
            if replayed:  # kept as recorded: its terminal is all the state needs
                if req.terminal is not None:
                    self._emit(now, req.request_id, [req.terminal])
                return
            self._arrive(req, now)
        elif kind == _RESULT:
            rid, result, _ = payload
            live = self._live.get(rid)
            if live is not None and live.running == (result.model, result.attempt):
                live.running = None
            self._apply(decide_result(state, rid, result, self._ctx(now)), rid, now)
        elif kind == _FIRST:
            rid, model, attempt, ttft = payload
            decision = decide_first_token(state, rid, model, attempt, ttft, self._ctx(now))
            self._apply(decision, rid, now)
        elif kind == _RETRY:
            self._apply(decide_retry_due(state, payload, self._ctx(now)), payload, now)
        elif kind == _CANCEL:
            self._cancel(payload, now)
        else:  # a recorded event of a request in flight when the window opened
            evolve(state, payload, now, self.cfg)

    def _key(self, req: RecordedRequest) -> str | None:
        """The cache key the router would compute under the new config: the recorded one
        when the recording computed one with the same scope, else a stand-in made from
        the recorded messages hash (the prompt itself is not in the log)."""
        intake = req.intake
        assert intake is not None
        if not is_cacheable(intake.params, intake.cache, self.cfg):
            return None
        recorded = self.recorded_cfg
        if req.cache_key is not None and (
            recorded is None or recorded.cache.scope == self.cfg.cache.scope
        ):
            return req.cache_key
        params = {**intake.params, "stream": True} if intake.stream else intake.params
        return cache_key(
            tenant=intake.tenant, scope=self.cfg.cache.scope, model=intake.model,
            task_type=intake.task_type, messages=[{"messages_hash": intake.messages_hash}],
            params=params,
        )  # fmt: skip

    def _arrive(self, req: RecordedRequest, now: int) -> None:
        assert req.intake is not None
        ctx = self._ctx(now)
        key = self._key(req)
        live_entry = cache_index(self.state, req.tenant).lookup(key, now) if key else None
        decision = decide_intake(
            self.state, req.intake, ctx, cached_response={} if live_entry else None,
            cache_key=key,
        )  # fmt: skip
        if not decision.events and not decision.effects:
            return
        self._apply(decision, req.request_id, now)
        if req.cancel is not None:
            t, seq, _ = req.cancel
            self._push(max(t, now), seq, _CANCEL, req.request_id)

    def _apply(self, decision: Decision, rid: str, now: int) -> None:
        self._emit(now, rid, decision.events)
        for effect in decision.effects:
            match effect:
                case Call():
                    self._call(effect, now)
                case Wait():
                    self._wait(effect, now)
                case Respond():
                    pass

    def _emit(self, now: int, rid: str, events: list[Any]) -> None:
        state, cfg = self.state, self.cfg
        for event in events:
            evolve(state, event, now, cfg)
            erid = getattr(event, "request_id", None)
            if erid is None:  # a breaker transition
                if self._in_window(now):
                    self.whatif.add(now, event)
                continue
            live = self._live.get(erid)
            if live is None:
                continue
            if self._counted(live.rec.tenant):
                if erid == self.trail_id:
                    self.trail.append((now, event))
                self.whatif.add(now, event)
                if self._on_verdict is not None:  # only a verdict's explanation reads them
                    live.events.append(event)
            if type(event) in TERMINAL_TYPES:
                live.terminal = event
                self._settle(erid)

    # -------------------------------------------------------------- effects

    def _call(self, call: Call, now: int) -> None:
        rid = call.request_id
        live = self._live.get(rid)
        flight = self.state.inflight.get(rid)
        if live is None or flight is None:
            return
        live.running = (call.model, call.attempt)
        req = live.rec
        recorded = req.call(call.model, flight.model_attempt)
        stream = flight.stream
        unended = req.calls.get((call.model, flight.model_attempt))
        if recorded is None and unended is not None and req.cancel is not None:
            # recorded running until its request was cancelled: it runs until the cancel
            self.stats.calls_recorded += 1
            if stream and unended.first_token_ms is not None:
                after = unended.first_token_ms - unended.start_ms
                self._push(now + after, unended.first_token_seq, _FIRST,
                           (rid, call.model, call.attempt, unended.ttft_ms))  # fmt: skip
            return
        if recorded is not None:
            self.stats.calls_recorded += 1
            assert recorded.end_ms is not None
            duration = recorded.end_ms - recorded.start_ms
            result = CallResult(
                model=call.model, attempt=call.attempt, ok=recorded.ok,
                latency_ms=recorded.latency_ms, status=recorded.status,
                usage=recorded.usage or NO_USAGE, cost_micros=recorded.cost_micros,
                error_class=recorded.error_class, message=recorded.message,
                retry_after_ms=recorded.retry_after_ms, slow=self._slow(recorded.latency_ms,
                recorded.slow), cut=recorded.cut,
                stream=_stream_stats(req, recorded.attempt),
            )  # fmt: skip
            end_seq = recorded.end_seq
            first = None
            if recorded.first_token_ms is not None:
                first = (recorded.first_token_ms - recorded.start_ms, recorded.first_token_seq,
                         recorded.ttft_ms)  # fmt: skip
        else:
            if not self.outcomes.knows(call.model) and call.model not in self._looked:
                self._look_ahead(call.model, now)
            drawn = self.outcomes.draw(
                req, call.model, flight.model_attempt, now, self.rec.prices.at(now), stream=stream
            )
            live.modelled.append(call.model)
            duration = drawn.duration_ms
            result = CallResult(
                model=call.model, attempt=call.attempt, ok=drawn.ok, latency_ms=drawn.latency_ms,
                status=drawn.status, usage=drawn.usage, cost_micros=drawn.cost_micros,
                error_class=drawn.error_class, message=drawn.message,
                retry_after_ms=drawn.retry_after_ms, slow=self._slow(drawn.latency_ms, None),
            )  # fmt: skip
            end_seq = self._next_modelled_seq()
            first = None
            if drawn.first_token_after_ms is not None:
                ttft = float(drawn.first_token_after_ms)
                first = (drawn.first_token_after_ms, self._next_modelled_seq(), ttft)
        if result.ok and stream:
            result = self._cut(result, req, flight.tenant, recorded is not None)
        if result.ok and flight.cache_key is not None:
            result = msgspec.structs.replace(result, cache_body=req.cache_body or _PLACEHOLDER_BODY)
        if first is not None and stream:
            after, seq, ttft = first
            self._push(now + after, seq, _FIRST, (rid, call.model, call.attempt, ttft))
        self._push(now + max(duration, 0), end_seq, _RESULT, (rid, result, recorded is not None))

    def _look_ahead(self, model: str, now: int) -> None:
        """Read on past the horizon, up to `LOOK_AHEAD_MS`, once, for a model with no
        recorded call read yet and no assumption: one the recording first called later in
        the window (what-if draws from its calls instead of refusing it). An assumed model
        is not looked for: its assumption stands in until its calls come within reach."""
        rec, limit = self.rec, now + HORIZON_MS + LOOK_AHEAD_MS
        while not self.outcomes.knows(model) and not rec.done and rec.read_ms < limit:
            rec.read_until(min(rec.read_ms + 60_000, limit))
            self._take_new()
        # once per model: the run holds the hour it read ahead until its clock catches up
        self._looked.add(model)

    def _slow(self, latency_ms: float, recorded: bool | None) -> bool:
        """Slower than `[breaker] call_timeout_s`: as recorded under the same threshold."""
        old = self.recorded_cfg
        same = old is None or old.breaker.call_timeout_s == self.cfg.breaker.call_timeout_s
        if recorded is not None and same:
            return recorded
        return latency_ms > self.cfg.breaker.call_timeout_s * 1000

    def _cut(
        self, result: CallResult, req: RecordedRequest, tenant: str, recorded: bool
    ) -> CallResult:
        """A stream is cut at what its budget reservation pays for (as the router cuts it):
        re-cut when the reservation differs from the recorded one, or the call is modelled."""
        if not self.cfg.features.budgets:
            return result
        budget = self.state.budgets.get(tenant)
        held = budget.open.get(req.request_id) if budget is not None else None
        if held is None or (recorded and held.amount_micros == req.reserved_micros):
            return result
        price = self.rec.prices.at(self._now).get(result.model)
        prompt = req.intake.prompt_tokens_est if req.intake is not None else 0
        allowance = completion_allowance(
            held.amount_micros, prompt, price, limits=self.cfg.tenant(tenant)
        )
        if allowance is None or result.usage.completion_tokens <= allowance:
            return result
        usage = ev.Usage(
            prompt_tokens=result.usage.prompt_tokens, completion_tokens=allowance,
            total_tokens=result.usage.prompt_tokens + allowance,
        )  # fmt: skip
        cost = cost_micros(price, usage.prompt_tokens, allowance) if price is not None else 0
        why = "max_tokens" if req.intake is not None and req.intake.max_tokens else "budget"
        return msgspec.structs.replace(result, usage=usage, cost_micros=cost, cut=why)

    def _wait(self, wait: Wait, now: int) -> None:
        rid = wait.request_id
        live = self._live.get(rid)
        flight = self.state.inflight.get(rid)
        due, seq = now + wait.delay_ms, self._next_modelled_seq()
        if live is not None and flight is not None and flight.model is not None:
            recorded = live.rec.retries.get((flight.model, flight.model_attempt + 1))
            if recorded is not None and recorded[0] == wait.delay_ms:
                due, seq = now + recorded[1], recorded[2]
        self._push(due, seq, _RETRY, rid)

    def _cancel(self, rid: str, now: int) -> None:
        live = self._live.get(rid)
        flight = self.state.inflight.get(rid)
        if live is None or flight is None:
            return
        _, _, reason = live.rec.cancel or (0, 0, "cancelled")
        stopped: CallResult | None = None
        if live.running is not None:
            model, attempt = live.running
            told = live.rec.terminal
            usage, cost, stats = NO_USAGE, 0, None
            if (
                isinstance(told, ev.RequestCancelled)
                and told.model == model
                and (told.attempts == attempt)
            ):
                usage, cost, stats = told.usage or NO_USAGE, told.cost_micros, told.stream
            stopped = CallResult(
                model=model, attempt=attempt, ok=False, latency_ms=0.0, usage=usage,
                cost_micros=cost, error_class="cancelled", message="cancelled", stream=stats,
            )  # fmt: skip
            live.running = None
        decision = decide_cancel(
            self.state, rid, flight.tenant, reason, self._ctx(now), stopped=stopped
        )
        self._apply(decision, rid, now)

    # ------------------------------------------------------------ verdicts

    def _settle(self, rid: str, *, final: bool = False) -> None:
        live = self._live.get(rid)
        if live is None:
            return
        recorded = req.terminal if (req := live.rec).terminal is not None else None
        if not final and (live.terminal is None or recorded is None):
            return
        del self._live[rid]
        self.rec.forget(rid)
        if not self._counted(req.tenant):
            return
        if final:
            if recorded is None:
                self.recorded.end(None)
            if live.terminal is None:
                self.whatif.end(None)
        if changed(recorded, live.terminal):
            self.stats.changed += 1
            if self._on_verdict is not None:
                models = [c.model for c in sorted(req.by_attempt.values(), key=lambda c: c.attempt)]
                reason = explain(recorded, req.route, models, live.terminal, live.events,
                                 live.modelled)  # fmt: skip
                verdict = Verdict(
                    request_id=rid, tenant=req.tenant, time_ms=req.arrival_ms, recorded=recorded,
                    whatif=live.terminal, modelled=len(live.modelled), reason=reason,
                )  # fmt: skip
                self._on_verdict(verdict)
        if self._progress is not None and self.stats.requests % 10_000 == 0:
            self._progress(self.stats.requests)


_DEDUPE: Final = (
    "dedupe_window_s", "dedupe_max_bytes", "answer_overhead_bytes", "dedupe_ids_s",
    "dedupe_ids_max_bytes",
)  # fmt: skip


def _dedupe_changed(cfg: Config, recorded: Config | None) -> bool:
    """Does the duplicate-answer memory differ from the recording's (or is that unknown)?"""
    if recorded is None:
        return True
    return any(getattr(cfg.router, f) != getattr(recorded.router, f) for f in _DEDUPE)


def _stream_stats(req: RecordedRequest, attempt: int) -> ev.StreamStats | None:
    t = req.terminal
    if t is None or isinstance(t, ev.RequestRejected) or t.attempts != attempt:
        return None
    return t.stream
