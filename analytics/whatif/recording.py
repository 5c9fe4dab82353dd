"""What a recording says happened to each request, as inputs a re-decision can use.

`Recording` reads the log once, in log order (`turnout.analytics.replay.source.log_order`),
and keeps per request:

- its arrival: the time and log position of `turnout.request.accepted` (or of a
  `turnout.request.rejected` that carries the request's `intake` facts), and the
  intake rebuilt from them (`IntakeRequest`, with the recorded cache opt-in and key);
- its upstream calls, by (model, model_attempt): when each started and ended, and
  what it returned (status, error class, latency, usage, cost, slow, first token,
  a stream cut, the answer's cache body);
- its retries' lags (scheduled -> started) by the (model, model_attempt) they led to;
- a cancel (time and reason), its budget reservation, and its terminal event.

Plus the price table over time (`turnout.prices.updated`) and the configurations
routers applied (`turnout.config.applied`).

Rules:
- Read once, in order, with a horizon: the engine asks for the log up to a time
  (`read_until`), so a month of events is never held at once; a request is
  dropped (`forget`) once both its recorded and re-decided outcomes are known.
- A request that cannot be re-decided (refused by intake validation, rejected
  before this version recorded `intake`, accepted before the window) keeps its
  recorded outcome: its events are folded as recorded (`Arrival.replayed`).
- Pure: the records come in as `Recorded` values; no I/O here.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from turnout.analytics.replay.source import Recorded
from turnout.service.core import events as ev
from turnout.service.core.cache import EncodedBody
from turnout.service.core.decision import IntakeRequest
from turnout.service.core.pricing import Price
from turnout.service.core.state import Terminal

__all__ = [
    "BREAKER_TYPES", "TERMINALS", "TERMINAL_TYPES", "Arrival", "PriceTimeline", "RecordedCall",
    "RecordedRequest", "Recording",
]  # fmt: skip

TERMINALS: Final = (ev.RequestCompleted, ev.RequestFailed, ev.RequestRejected, ev.RequestCancelled)
TERMINAL_TYPES: Final = frozenset(TERMINALS)  # for exact-type lookups on the hot path
BREAKER_TYPES: Final = frozenset([ev.BreakerOpened, ev.BreakerHalfOpened, ev.BreakerClosed])


@dataclass(slots=True)
class RecordedCall:
    """One upstream call as the log recorded it (`end_ms` None: it never ended)."""

    model: str
    model_attempt: int
    attempt: int
    start_ms: int
    start_seq: str  # each `*_seq` orders decisions: the event's id (see `Recording`)
    end_ms: int | None = None
    end_seq: str = ""
    ok: bool = False
    status: int | None = None
    latency_ms: float = 0.0
    usage: ev.Usage | None = None
    cost_micros: int = 0
    error_class: str = "http_error"
    message: str = ""
    retry_after_ms: int | None = None
    slow: bool = False
    first_token_ms: int | None = None  # time of its first token (a stream)
    first_token_seq: str = ""
    ttft_ms: float = 0.0
    cut: str | None = None  # budget | max_tokens


@dataclass(slots=True)
class RecordedRequest:
    """Everything a re-decision needs from one request's recording."""

    request_id: str
    tenant: str
    arrival_ms: int
    arrival_seq: str
    intake: IntakeRequest | None  # None: not re-decidable (kept as recorded)
    cache_key: str | None = None  # the key the router computed, when it was cacheable
    calls: dict[tuple[str, int], RecordedCall] = field(default_factory=dict)
    by_attempt: dict[int, RecordedCall] = field(default_factory=dict)
    retries: dict[tuple[str, int], tuple[int, int, str]] = field(default_factory=dict)
    scheduled: dict[int, tuple[int, int]] = field(default_factory=dict)  # attempt -> (ms, delay)
    reserved_micros: int | None = None
    route: tuple[str, ...] | None = None  # the first candidate order decided
    cache_body: EncodedBody | None = None
    cancel: tuple[int, str, str] | None = None  # (time, seq, reason)
    settled_at: tuple[int, str] | None = None  # the last budget settlement or cut (a cancel's)
    terminal: Terminal | None = None
    terminal_ms: int = 0
    events: list[tuple[int, str, object]] = field(default_factory=list)  # kept when asked
    announced: bool = False  # handed to the engine as an arrival

    def call(self, model: str, model_attempt: int) -> RecordedCall | None:
        """The recorded call of this model at this attempt on it, if it ended."""
        call = self.calls.get((model, model_attempt))
        return call if call is not None and call.end_ms is not None else None


@dataclass(slots=True)
class Arrival:
    """A request arriving in the window; `replayed`: fold its events as recorded."""

    request: RecordedRequest
    replayed: bool


class PriceTimeline:
    """The price table in force at each moment, from `turnout.prices.updated`."""

    def __init__(self) -> None:
        self._times: list[int] = []
        self._tables: list[dict[str, Price]] = []

    def add(self, time_ms: int, prices: dict[str, list[float]]) -> None:
        table = {m: Price(prompt=p[0], completion=p[1]) for m, p in prices.items() if len(p) == 2}
        if self._tables and self._tables[-1] == table:
            return
        self._times.append(time_ms)
        self._tables.append(table)

    def at(self, time_ms: int) -> dict[str, Price]:
        """The last table recorded at or before `time_ms` (the first one before any)."""
        if not self._tables:
            return {}
        i = bisect.bisect_right(self._times, time_ms) - 1
        return self._tables[max(i, 0)]

    def __bool__(self) -> bool:
        return bool(self._tables)


def _intake(rid: str, tenant: str, facts: ev.RequestAccepted | ev.IntakeFacts) -> IntakeRequest:
    return IntakeRequest(
        request_id=rid, tenant=tenant, task_type=facts.task_type, model=facts.model,
        messages_hash=facts.messages_hash, prompt_tokens_est=facts.prompt_tokens_est,
        max_tokens=facts.max_tokens, params=facts.params, cache=facts.cache_opt,
        stream=facts.stream,
    )  # fmt: skip


class Recording:
    """The log, read once in order, as per-request recordings (see the module docstring).

    `since_ms`/`until_ms`: the window whose arrivals are re-decided; events before it
    are `before` (folded into the starting state), arrivals after it are not taken.
    `keep_events`: request ids whose recorded events are kept (for `--trail`);
    `before(time_ms, event)` is given every event before the window, in order.
    """

    def __init__(
        self,
        records: Iterator[Recorded],
        *,
        since_ms: int | None = None,
        until_ms: int | None = None,
        keep_events: frozenset[str] = frozenset(),
        before: Callable[[int, object], None] | None = None,
        recorded: Callable[[int, object], None] | None = None,
    ) -> None:
        self._records = records
        self.since_ms, self.until_ms = since_ms, until_ms
        self.keep_events = keep_events
        self.requests: dict[str, RecordedRequest] = {}
        self.prices = PriceTimeline()
        self.configs: list[ev.ConfigApplied] = []
        self._before = before  # folds the events before the window (the starting state)
        self._recorded = recorded  # sees each event of the window's requests, and breakers
        self.ended: list[RecordedCall] = []  # calls that ended since the engine last looked
        self.arrivals: list[Arrival] = []  # taken by the engine as it goes
        self.replayed: list[tuple[int, str, object]] = []  # events of requests kept as recorded
        self.read_ms = -(2**62)  # the log is read up to here
        self.done = False
        self.seq = 0
        self.events = 0
        self._pending: Recorded | None = None
        self._outside: set[str] = set()  # accepted before the window: replayed as recorded

    def read_until(self, time_ms: int) -> None:
        """Read the log while its events are at or before `time_ms` (log order)."""
        while not self.done:
            rec = self._pending
            if rec is None:
                rec = next(self._records, None)
                if rec is None:
                    self.done = True
                    return
            if rec.time_ms > time_ms:
                self._pending = rec
                self.read_ms = time_ms
                return
            self._pending = None
            self.read_ms = max(self.read_ms, rec.time_ms)
            self._take(rec)

    def peek_ms(self) -> int | None:
        """The time of the next unread event (None: all read or not looked at yet)."""
        return None if self._pending is None else self._pending.time_ms

    def forget(self, request_id: str) -> None:
        self.requests.pop(request_id, None)

    # ----------------------------------------------------------------- reading

    def _take(self, rec: Recorded) -> None:
        self.seq += 1
        self.events += 1
        # the order of decisions: a router's event ids count up in the order it decided
        # (`SystemClock.new_id`), across partitions and within a millisecond; without ids,
        # the log's order (which orders a millisecond's partitions by number)
        seq, t, data = rec.id or f"{self.seq:020d}", rec.time_ms, rec.data
        kind = type(data)  # exact types: events have no subclasses (the hot path)
        if kind is ev.PricesUpdated:
            assert isinstance(data, ev.PricesUpdated)
            self.prices.add(t, data.prices)
            return
        if kind is ev.ConfigApplied:
            assert isinstance(data, ev.ConfigApplied)
            self.configs.append(data)
            return
        if self.since_ms is not None and t < self.since_ms:
            if self._before is not None:
                self._before(t, data)
            if kind is ev.RequestAccepted:
                assert isinstance(data, ev.RequestAccepted)
                self._outside.add(data.request_id)
            elif kind in TERMINAL_TYPES:
                self._outside.discard(getattr(data, "request_id", ""))
            return
        rid = rec.subject
        if rid is None or rec.tenant == ev.SYSTEM_TENANT:
            if kind in BREAKER_TYPES and self._recorded is not None:
                self._recorded(t, data)
            return
        if rid in self._outside:  # in flight when the window opened: kept as recorded
            self.replayed.append((t, seq, data))
            if kind in TERMINAL_TYPES:
                self._outside.discard(rid)
            return
        req = self.requests.get(rid)
        if req is None:
            req = self._arrive(rid, rec, seq)
            if req is None:
                return
        if rid in self.keep_events:
            req.events.append((t, seq, data))
        note = _NOTES.get(kind)
        if note is not None:
            note(self, req, t, seq, data)
        if self._recorded is not None and (kind not in TERMINAL_TYPES or req.terminal is data):
            self._recorded(t, data)

    def _arrive(self, rid: str, rec: Recorded, seq: str) -> RecordedRequest | None:
        data = rec.data
        if self.until_ms is not None and rec.time_ms > self.until_ms:
            return None  # arrived after the window
        if not isinstance(
            data, ev.RequestAccepted | ev.RequestRejected | ev.RatelimitExceeded | ev.BudgetExceeded
        ):
            return None  # e.g. the dead-letter record of a refused intake: not a request
        req = RecordedRequest(
            request_id=rid, tenant=rec.tenant, arrival_ms=rec.time_ms, arrival_seq=seq,
            intake=None,
        )  # fmt: skip
        self.requests[rid] = req
        if isinstance(data, ev.RequestAccepted):
            req.intake, req.cache_key = _intake(rid, data.tenant, data), data.cache_key
            self._announce(req)
        # a refusal's reason comes first; its rejection (with the intake facts) next
        return req

    def _announce(self, req: RecordedRequest) -> None:
        req.announced = True
        self.arrivals.append(Arrival(req, replayed=req.intake is None))

    def _rejected(self, req: RecordedRequest, t: int, _seq: str, data: ev.RequestRejected) -> None:
        if not req.announced:
            if data.intake is not None:
                req.intake = _intake(req.request_id, req.tenant, data.intake)
                req.cache_key = data.intake.cache_key
            self._announce(req)
        self._end(req, t, data)

    def _started(self, req: RecordedRequest, t: int, seq: str, data: ev.AttemptStarted) -> None:
        started = RecordedCall(
            model=data.model, model_attempt=data.model_attempt, attempt=data.attempt,
            start_ms=t, start_seq=seq,
        )  # fmt: skip
        old = req.calls.get((data.model, data.model_attempt))
        if old is None or old.end_ms is None:  # a resumed attempt replaces a lost one
            req.calls[(data.model, data.model_attempt)] = started
        req.by_attempt[data.attempt] = started
        scheduled = req.scheduled.pop(data.attempt, None)
        if scheduled is not None:
            at, delay = scheduled
            req.retries[(data.model, data.model_attempt)] = (delay, t - at, seq)

    def _ended(
        self, req: RecordedRequest, t: int, seq: str, data: ev.AttemptSucceeded | ev.AttemptFailed
    ) -> None:
        ended = req.by_attempt.get(data.attempt)
        if ended is None or ended.model != data.model:
            return
        ended.end_ms, ended.end_seq = t, seq
        self.ended.append(ended)
        ended.latency_ms, ended.status = data.latency_ms, data.status
        ended.retry_after_ms = None
        if isinstance(data, ev.AttemptSucceeded):
            ended.ok, ended.usage, ended.cost_micros = True, data.usage, data.cost_micros
            ended.slow = data.slow
        else:
            ended.error_class, ended.message = data.error_class, data.message
            ended.retry_after_ms = data.retry_after_ms

    def _first_token(
        self, req: RecordedRequest, t: int, seq: str, data: ev.StreamFirstToken
    ) -> None:
        first = req.by_attempt.get(data.attempt)
        if first is not None:
            first.first_token_ms, first.first_token_seq = t, seq
            first.ttft_ms = data.ttft_ms

    def _cut(self, req: RecordedRequest, t: int, seq: str, data: ev.StreamCut) -> None:
        if data.why == "cancel":  # a cancel's cut settles its reservation
            self._settled(req, t, seq, data)
            return
        cut = req.by_attempt.get(data.attempt)
        if cut is not None:
            cut.cut = data.why

    def _scheduled(self, req: RecordedRequest, t: int, _seq: str, data: ev.RetryScheduled) -> None:
        req.scheduled[data.attempt] = (t, data.delay_ms)

    def _routed(self, req: RecordedRequest, _t: int, _seq: str, data: ev.RouteDecided) -> None:
        if req.route is None:
            req.route = tuple(data.order)

    def _reserved(self, req: RecordedRequest, _t: int, _seq: str, data: ev.BudgetReserved) -> None:
        req.reserved_micros = data.amount_micros

    def _settled(self, req: RecordedRequest, t: int, seq: str, _data: object) -> None:
        if req.settled_at is None or req.settled_at[0] != t:
            req.settled_at = (t, seq)

    def _stored(self, req: RecordedRequest, _t: int, _seq: str, data: ev.CacheStored) -> None:
        req.cache_body = EncodedBody(
            encoding=data.encoding, body=data.body, size_bytes=data.size_bytes
        )

    def _cancelled(self, req: RecordedRequest, t: int, seq: str, data: ev.RequestCancelled) -> None:
        # its decision's first event orders it
        anchor = req.settled_at[1] if req.settled_at and req.settled_at[0] == t else seq
        req.cancel = (t, anchor, data.reason)
        self._end(req, t, data)

    def _finished(
        self, req: RecordedRequest, t: int, _seq: str, data: ev.RequestCompleted | ev.RequestFailed
    ) -> None:
        self._end(req, t, data)

    def _end(self, req: RecordedRequest, t: int, terminal: Terminal) -> None:
        if req.terminal is None:
            req.terminal, req.terminal_ms = terminal, t


_NOTES: Final[dict[type, Callable[..., None]]] = {
    ev.RequestRejected: Recording._rejected, ev.AttemptStarted: Recording._started,
    ev.AttemptSucceeded: Recording._ended, ev.AttemptFailed: Recording._ended,
    ev.StreamFirstToken: Recording._first_token, ev.StreamCut: Recording._cut,
    ev.RetryScheduled: Recording._scheduled, ev.RouteDecided: Recording._routed,
    ev.BudgetReserved: Recording._reserved, ev.BudgetReleased: Recording._settled,
    ev.BudgetCharged: Recording._settled, ev.CacheStored: Recording._stored,
    ev.RequestCancelled: Recording._cancelled, ev.RequestCompleted: Recording._finished,
    ev.RequestFailed: Recording._finished,
}  # fmt: skip
"""What each recorded event type tells about its request (one dict lookup per event)."""
