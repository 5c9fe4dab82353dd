"""Per-tenant rate limits: exact sliding windows over admission times, folded from events.

    check(windows, limits, now_ms=, tokens=)        -> Exceeded | None   (decide)
    admit(windows, limits, request_id=, now_ms=, tokens=) -> windows     (fold RequestAccepted)
    settle(windows, request_id=, tokens=)                                (fold the terminal event)

Rules:
- "N per window W" means: at most N admitted requests in ANY window of W ms
  (burst: 1 s, requests_per_minute: 60 s, _hour: 3600 s, _day: 86400 s).
  Windows are half-open on the left: at time t the window is (t - W, t], so an
  admission at a counts until t = a + W - 1 and is gone at t = a + W.
- tokens_per_minute: the token amounts of the admissions in (t - 60 s, t] plus
  this request's amount stay <= the limit. An admission's amount is the
  caller's estimate (`token_estimate`) until `settle` replaces it with the real
  usage, in place, at its original admission time.
- Only admitted requests count: `check` never changes anything; the fold calls
  `admit` for admitted requests only, so a rejected request consumes nothing.
- `retry_after_ms` is the least wait after which this same request passes the
  limit that refused it, assuming no other admission in between. When several
  limits refuse, the longest wait is reported (ties: the longer window, request
  counts before tokens). A request that can never pass (its estimate alone is
  over tokens_per_minute, or a limit is 0) is still refused, with
  retry_after_ms = the window (60 000 for tokens).
- Time never runs backwards: an instant earlier than the latest admission
  (clock skew between router instances) counts as that latest admission, so
  skew can never open a window early. Everything else is exact.
- Memory: the admission times within the longest configured window, and token
  entries within the last minute. `check` is O(1) per count limit (the N-th most
  recent admission decides); for tokens it walks only the entries that expired
  since the last admission, or, when tokens refuse, those up to the one whose
  departure makes room.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_right
from collections import deque
from typing import Final

import msgspec

from turnout.service.core import events as ev
from turnout.service.core.config import TenantLimits

__all__ = [
    "DAY_MS",
    "HOUR_MS",
    "MINUTE_MS",
    "SECOND_MS",
    "Exceeded",
    "TenantWindows",
    "WindowsDump",
    "admit",
    "check",
    "dump",
    "load",
    "retention_ms",
    "settle",
    "snapshot",
    "token_estimate",
]

SECOND_MS: Final = 1_000
MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
_COMPACT_AT: Final = 4096  # drop the pruned head of the times list past this many entries


class Exceeded(msgspec.Struct, frozen=True, kw_only=True):
    """A refusal: which limit (its config key), its value, and the least wait in ms."""

    limit: str
    limit_value: int
    retry_after_ms: int

    def event(self, *, request_id: str, tenant: str) -> ev.RatelimitExceeded:
        return ev.RatelimitExceeded(
            request_id=request_id,
            tenant=tenant,
            limit=self.limit,
            limit_value=self.limit_value,
            retry_after_ms=self.retry_after_ms,
        )


class _Spend:
    """One admission's token amount inside the last minute (mutable: settle edits it)."""

    __slots__ = ("amount", "at_ms", "request_id")

    def __init__(self, at_ms: int, amount: int, request_id: str) -> None:
        self.at_ms = at_ms
        self.amount = amount
        self.request_id = request_id


class TenantWindows:
    """One tenant's admissions. Mutable for speed; change it only through admit/settle.

    `times[start:]` are the admission times (sorted) within the retention;
    `spends` the token entries of the last minute, oldest first, `token_sum`
    their total, and `unsettled` the entries still carrying an estimate.
    """

    __slots__ = ("latest_ms", "spends", "start", "times", "token_sum", "unsettled")

    def __init__(self) -> None:
        self.latest_ms: int | None = None
        self.times = array("q")
        self.start = 0
        self.spends: deque[_Spend] = deque()
        self.token_sum = 0
        self.unsettled: dict[str, _Spend] = {}


_EMPTY: Final = TenantWindows()  # read by `check` for a tenant never admitted; never mutated


def token_estimate(prompt_tokens: int, max_tokens: int | None, limits: TenantLimits) -> int:
    """The tokens a request is counted for until settled: prompt + completion allowance."""
    completion = limits.default_max_tokens if max_tokens is None else max_tokens
    return max(prompt_tokens, 0) + max(completion, 0)


def retention_ms(limits: TenantLimits) -> int:
    """How long admission times are kept: the longest configured count window."""
    if limits.requests_per_day is not None:
        return DAY_MS
    if limits.requests_per_hour is not None:
        return HOUR_MS
    if limits.requests_per_minute is not None:
        return MINUTE_MS
    return SECOND_MS if limits.burst is not None else 0


# --- deciding -----------------------------------------------------------------


def _count_wait(w: TenantWindows, limit: int, window: int, now: int) -> int:
    """0 when one more admission keeps <= limit in (now - window, now], else the wait."""
    if limit <= 0:
        return window
    times = w.times
    if len(times) - w.start < limit:
        return 0
    nth_latest = times[-limit]
    return nth_latest + window - now if nth_latest > now - window else 0


def _token_wait(w: TenantWindows, limit: int, now: int, tokens: int) -> int:
    """0 when `tokens` more fit in the last minute, else the least wait (60 000: never)."""
    if tokens > limit:
        return MINUTE_MS
    room = limit - tokens
    total = w.token_sum
    if total <= room:
        return 0
    cutoff = now - MINUTE_MS
    for spend in w.spends:  # total = this entry's amount and every later one's
        total -= spend.amount
        if total <= room:
            return 0 if spend.at_ms <= cutoff else spend.at_ms + MINUTE_MS - now
    return 0  # not reached: the total falls to 0 <= room


def _worse(best: Exceeded | None, name: str, value: int, wait: int) -> Exceeded | None:
    if wait and (best is None or wait > best.retry_after_ms):
        return Exceeded(limit=name, limit_value=value, retry_after_ms=wait)
    return best


def check(
    windows: TenantWindows | None, limits: TenantLimits, *, now_ms: int, tokens: int
) -> Exceeded | None:
    """Would admitting a request of `tokens` at `now_ms` break a limit? None = admit it.

    Pure: reads the windows, changes nothing.
    """
    w = windows if windows is not None else _EMPTY
    now = now_ms if w.latest_ms is None or now_ms > w.latest_ms else w.latest_ms
    best: Exceeded | None = None
    for name, window in _COUNT_LIMITS:
        value: int | None = getattr(limits, name)
        if value is not None:
            best = _worse(best, name, value, _count_wait(w, value, window, now))
    tpm = limits.tokens_per_minute
    if tpm is not None and (best is None or best.retry_after_ms < MINUTE_MS):
        best = _worse(best, "tokens_per_minute", tpm, _token_wait(w, tpm, now, tokens))
    return best


# Longest window first: on equal waits the longer window is named (tokens come last).
_COUNT_LIMITS: Final = (
    ("requests_per_day", DAY_MS),
    ("requests_per_hour", HOUR_MS),
    ("requests_per_minute", MINUTE_MS),
    ("burst", SECOND_MS),
)


# --- folding ------------------------------------------------------------------


def _prune_times(w: TenantWindows, cutoff: int) -> None:
    times = w.times
    if w.start < len(times) and times[w.start] <= cutoff:
        w.start = bisect_right(times, cutoff, w.start)
        if w.start >= _COMPACT_AT and 2 * w.start >= len(times):
            del times[: w.start]
            w.start = 0
        elif w.start == len(times):
            del times[:]
            w.start = 0


def _prune_spends(w: TenantWindows, cutoff: int) -> None:
    spends = w.spends
    while spends and spends[0].at_ms <= cutoff:
        gone = spends.popleft()
        w.token_sum -= gone.amount
        if w.unsettled.get(gone.request_id) is gone:
            del w.unsettled[gone.request_id]


def admit(
    windows: TenantWindows | None,
    limits: TenantLimits,
    *,
    request_id: str,
    now_ms: int,
    tokens: int,
) -> TenantWindows:
    """Fold one admission (a `RequestAccepted` at event time `now_ms`) into the windows
    (None: the tenant's first) and return them."""
    w = windows if windows is not None else TenantWindows()
    now = now_ms if w.latest_ms is None or now_ms > w.latest_ms else w.latest_ms
    w.latest_ms = now
    w.times.append(now)
    _prune_times(w, now - retention_ms(limits))
    if limits.tokens_per_minute is not None:
        spend = _Spend(now, max(tokens, 0), request_id)
        w.spends.append(spend)
        w.token_sum += spend.amount
        w.unsettled[request_id] = spend
        _prune_spends(w, now - MINUTE_MS)
    return w


def settle(windows: TenantWindows | None, *, request_id: str, tokens: int) -> None:
    """Replace a request's token estimate with its real usage (0: cache hit, failure).

    A request settled already, or out of the last minute, or never admitted: no-op.
    """
    if windows is None:
        return
    spend = windows.unsettled.pop(request_id, None)
    if spend is not None:
        amount = max(tokens, 0)
        windows.token_sum += amount - spend.amount
        spend.amount = amount


# --- reading ------------------------------------------------------------------


def _in_window(w: TenantWindows, now: int, window: int) -> int:
    return len(w.times) - bisect_right(w.times, now - window, w.start)


def _digest(w: TenantWindows) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(w.times[w.start :].tobytes())
    for spend in w.spends:
        h.update(f"|{spend.at_ms},{spend.amount},{spend.request_id}".encode())
    h.update(",".join(sorted(w.unsettled)).encode())
    return h.hexdigest()


def snapshot(windows: TenantWindows, *, now_ms: int | None = None) -> dict[str, object]:
    """Plain data: admissions (as far as they are kept: `retention_ms`) and tokens in
    each window ending at `now_ms` (default: the latest admission), plus a digest of
    the whole state for exact comparison (replay verify)."""
    w = windows
    latest = w.latest_ms
    now = latest if now_ms is None or (latest is not None and latest > now_ms) else now_ms
    if now is None:
        return {"latest_ms": None, "digest": _digest(w)}
    cutoff = now - MINUTE_MS
    return {
        "latest_ms": latest,
        "requests_last_second": _in_window(w, now, SECOND_MS),
        "requests_last_minute": _in_window(w, now, MINUTE_MS),
        "requests_last_hour": _in_window(w, now, HOUR_MS),
        "requests_last_day": _in_window(w, now, DAY_MS),
        "tokens_last_minute": sum(s.amount for s in w.spends if s.at_ms > cutoff),
        "unsettled": len(w.unsettled),
        "digest": _digest(w),
    }


# --- snapshots ----------------------------------------------------------------


class WindowsDump(msgspec.Struct, frozen=True, array_like=True):
    """A tenant's windows as plain data (`turnout.service.core.snapshot`): `spends` are
    (at_ms, amount, request_id, unsettled), oldest first."""

    latest_ms: int | None
    times: list[int]
    spends: list[tuple[int, int, str, bool]]
    token_sum: int


def dump(windows: TenantWindows) -> WindowsDump:
    w = windows
    spends = [(s.at_ms, s.amount, s.request_id, w.unsettled.get(s.request_id) is s)
              for s in w.spends]  # fmt: skip
    return WindowsDump(w.latest_ms, w.times[w.start :].tolist(), spends, w.token_sum)


def load(data: WindowsDump) -> TenantWindows:
    """The windows `dump` saw: admitting or settling them next does what it would have."""
    w = TenantWindows()
    w.latest_ms = data.latest_ms
    w.times = array("q", data.times)
    for at_ms, amount, request_id, unsettled in data.spends:
        spend = _Spend(at_ms, amount, request_id)
        w.spends.append(spend)
        if unsettled:
            w.unsettled[request_id] = spend
    w.token_sum = data.token_sum
    return w
