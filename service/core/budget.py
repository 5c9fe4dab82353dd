"""Per-tenant budgets: reserve the worst case at admission, settle to the real cost.

    reservation_micros(prompt_tokens, max_tokens, prices, limits=)  -> worst-case micros
    decide_reserve(budget, tenant=, request_id=, amount_micros=, limits=, now_ms=) -> events
    decide_settle(budget, tenant=, request_id=, actual_micros=, limits=)          -> events
    evolve_budget(budget, event) -> budget                                        (fold)

Rules:
- Money is integer micro-dollars. Periods are the UTC calendar day
  (`YYYY-MM-DD`), the UTC month (`YYYY-MM`) of the event time, and `lifetime`;
  each has an optional USD limit (`budget_usd_per_day`, `_per_month`, `_lifetime`).
- Reserve: refused (one `BudgetExceeded(level="hard")`, naming the longest period
  that would pass its limit: lifetime, then month, then day) when
  spent + reserved + amount > limit for any limited period; else one
  `BudgetReserved` carrying the day and month it holds.
- Settle on completion: `BudgetCharged` (the real cost, always, into the
  reservation's day and month, not the completion's) then `BudgetReleased` for
  the unspent rest when there is one. A real cost above the reservation is
  charged honestly. On failure: `BudgetReleased` of the whole reservation.
  Hence: spent <= limit holds as long as every real cost <= its reservation.
- Soft warning: the first charge that takes a period's spend to
  `budget_soft_percent` of its limit (and above 0) gets one
  `BudgetExceeded(level="soft")`, once per period key (a new day warns again;
  a day or month older than the two newest is over and pruned: no warning).
  It comes right before the `BudgetCharged` it announces, so the fold reads the
  period key from the still-open reservation.
- The fold keeps spend per period key (the two newest days and months, and
  lifetime), reserved per period key, open reservations per request id and the
  keys already warned. Deciders only read it; `evolve_budget` only records.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import ROUND_FLOOR, Decimal
from functools import lru_cache
from typing import Final

import msgspec

from turnout.service.core import events as ev
from turnout.service.core.config import TenantLimits
from turnout.service.core.pricing import Price, decimal_of, ratio_of, usd_to_micros

__all__ = [
    "LIFETIME",
    "BudgetDump",
    "BudgetEvent",
    "Reservation",
    "TenantBudget",
    "completion_allowance",
    "decide_reserve",
    "decide_settle",
    "dump",
    "evolve_budget",
    "limit_micros",
    "load",
    "period_keys",
    "reservation_micros",
    "snapshot",
]

LIFETIME: Final = "lifetime"
_DAY_MS: Final = 86_400_000
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_KEEP: Final = 2  # day and month keys kept: the current and the previous one
_MICRO: Final = Decimal(1_000_000)

BudgetEvent = ev.BudgetReserved | ev.BudgetCharged | ev.BudgetReleased | ev.BudgetExceeded


class Reservation(msgspec.Struct, frozen=True, kw_only=True):
    """An open reservation: what it holds and the period keys it holds it in."""

    amount_micros: int
    day: str
    month: str


class TenantBudget:
    """One tenant's budget state; mutable for speed, changed only by `evolve_budget`."""

    __slots__ = ("open", "reserved", "spent", "warned")

    def __init__(self) -> None:
        self.spent: dict[str, int] = {}  # period key -> micros charged
        self.reserved: dict[str, int] = {}  # period key -> micros held (never 0)
        self.open: dict[str, Reservation] = {}  # request id -> open reservation
        self.warned: set[str] = set()  # period keys that had their soft warning


_EMPTY: Final = TenantBudget()  # read for a tenant with no events yet; never mutated


@lru_cache(maxsize=16)
def _keys_of_day(day_number: int) -> tuple[str, str]:
    iso = date.fromordinal(_EPOCH_ORDINAL + day_number).isoformat()
    return iso, iso[:7]


def period_keys(now_ms: int) -> tuple[str, str]:
    """The UTC (day, month) keys of an instant: ("2026-11-27", "2026-11")."""
    return _keys_of_day(now_ms // _DAY_MS)


@lru_cache(maxsize=256)
def limit_micros(usd: float) -> int:
    """A configured USD limit in micro-dollars (rounded half up)."""
    return usd_to_micros(usd)


@lru_cache(maxsize=64)
def _per_token(usd_per_mtok: float) -> Decimal:
    """USD per token of a price per million tokens."""
    return decimal_of(usd_per_mtok) / _MICRO


@lru_cache(maxsize=64)
def _per_token_ratio(usd_per_mtok: float) -> tuple[int, int]:
    """USD per token of a price per million tokens, as (numerator, denominator)."""
    n, d = ratio_of(usd_per_mtok)
    return n, d * 1_000_000


def reservation_micros(
    prompt_tokens: int,
    max_tokens: int | None,
    prices: Sequence[Price | None],
    *,
    limits: TenantLimits,
) -> int:
    """The worst case over the candidate models: prompt x prompt price + max_tokens x
    completion price, rounded up. A model with no known price costs
    `default_price_per_mtok`; no `max_tokens` reserves `default_max_tokens`; no
    candidates at all count as one unpriced model. Never 0 when there are tokens."""
    prompt = max(prompt_tokens, 0)
    completion = max(limits.default_max_tokens if max_tokens is None else max_tokens, 0)
    # exact fractions in integers (as `Decimal` would, ~10x faster): USD n / d
    worst_n, worst_d = 0, 1
    for price in prices or (None,):
        if price is None:
            fn, fd = _per_token_ratio(limits.default_price_per_mtok)
            n, d = fn * (prompt + completion), fd
        else:
            pn, pd = ratio_of(price.prompt)
            cn, cd = ratio_of(price.completion)
            n, d = pn * prompt * cd + cn * completion * pd, pd * cd
        if n * worst_d > worst_n * d:
            worst_n, worst_d = n, d
    micros = -(-worst_n * 1_000_000 // worst_d)  # rounded up
    return max(micros, 1) if prompt + completion > 0 else micros


def completion_allowance(
    reservation: int, prompt_tokens: int, price: Price | None, *, limits: TenantLimits
) -> int | None:
    """Completion tokens a request may use within its reservation (`reservation`
    micro-dollars) at `price` (else `default_price_per_mtok`), one token of margin for
    rounding; None when completion is free. A stream is cut there (`turnout.stream.cut`),
    so its charge never passes what was reserved, and spend never passes the limit."""
    fallback = _per_token(limits.default_price_per_mtok)
    p, c = (
        (fallback, fallback)
        if price is None
        else (decimal_of(price.prompt), decimal_of(price.completion))
    )
    if c <= 0:
        return None
    left = Decimal(reservation) / _MICRO - p * max(prompt_tokens, 0)
    tokens = int((left / c).to_integral_value(rounding=ROUND_FLOOR)) - 1
    return max(tokens, 0)


def _limited(limits: TenantLimits, day: str, month: str) -> list[tuple[str, str, int]]:
    """(period, key, limit micros) of every limited period, longest period first."""
    out = []
    for period, key, usd in (
        ("lifetime", LIFETIME, limits.budget_usd_lifetime),
        ("month", month, limits.budget_usd_per_month),
        ("day", day, limits.budget_usd_per_day),
    ):
        if usd is not None:
            out.append((period, key, limit_micros(usd)))
    return out


def decide_reserve(
    budget: TenantBudget | None,
    *,
    tenant: str,
    request_id: str,
    amount_micros: int,
    limits: TenantLimits,
    now_ms: int,
) -> list[BudgetEvent]:
    """`[BudgetReserved]`, or `[BudgetExceeded(level="hard")]` (reject the request),
    or `[]` when the request already holds a reservation (a redelivery)."""
    b = budget if budget is not None else _EMPTY
    if request_id in b.open:
        return []
    day, month = period_keys(now_ms)
    amount = max(amount_micros, 0)
    for period, key, limit in _limited(limits, day, month):
        spent, reserved = b.spent.get(key, 0), b.reserved.get(key, 0)
        if spent + reserved + amount > limit:
            refused = ev.BudgetExceeded(
                request_id=request_id,
                tenant=tenant,
                period=period,
                level="hard",
                limit_micros=limit,
                spent_micros=spent,
                reserved_micros=reserved,
                requested_micros=amount,
            )
            return [refused]
    return [
        ev.BudgetReserved(
            request_id=request_id, tenant=tenant, amount_micros=amount, day=day, month=month
        )
    ]


def _stale(b: TenantBudget, key: str) -> bool:
    """A day or month older than the two newest ones kept: its spend is forgotten."""
    return key != LIFETIME and sum(1 for k in b.spent if len(k) == len(key) and k > key) >= _KEEP


def _soft_warnings(
    b: TenantBudget, res: Reservation, actual: int, limits: TenantLimits, *, tenant: str, rid: str
) -> list[BudgetEvent]:
    out: list[BudgetEvent] = []
    pct = limits.budget_soft_percent
    for period, key, limit in _limited(limits, res.day, res.month):
        after = b.spent.get(key, 0) + actual
        if key in b.warned or _stale(b, key):
            continue
        if after > 0 and after * 100 >= limit * pct:
            warning = ev.BudgetExceeded(
                request_id=rid,
                tenant=tenant,
                period=period,
                level="soft",
                limit_micros=limit,
                spent_micros=after,
                reserved_micros=b.reserved.get(key, 0) - res.amount_micros,
                requested_micros=actual,
            )
            out.append(warning)
    return out


def decide_settle(
    budget: TenantBudget | None,
    *,
    tenant: str,
    request_id: str,
    actual_micros: int | None,
    limits: TenantLimits,
) -> list[BudgetEvent]:
    """Settle a request's reservation. `actual_micros` None = the request failed:
    release it all. Completed: [soft warnings...] + [Charged] + [Released rest, if any].
    No open reservation: []."""
    b = budget if budget is not None else _EMPTY
    res = b.open.get(request_id)
    if res is None:
        return []
    period = {"request_id": request_id, "tenant": tenant, "day": res.day, "month": res.month}
    if actual_micros is None:
        return [ev.BudgetReleased(amount_micros=res.amount_micros, **period)]
    actual = max(actual_micros, 0)
    events = _soft_warnings(b, res, actual, limits, tenant=tenant, rid=request_id)
    events.append(ev.BudgetCharged(amount_micros=actual, **period))
    if res.amount_micros > actual:
        events.append(ev.BudgetReleased(amount_micros=res.amount_micros - actual, **period))
    return events


# --- folding ------------------------------------------------------------------


def _add(table: dict[str, int], key: str, amount: int) -> None:
    value = table.get(key, 0) + amount
    if value:
        table[key] = value
    else:
        table.pop(key, None)


def _close(b: TenantBudget, request_id: str) -> None:
    """Lift a reservation's hold: the charge or the release replaces it."""
    res = b.open.pop(request_id, None)
    if res is not None:
        for key in (res.day, res.month, LIFETIME):
            _add(b.reserved, key, -res.amount_micros)


def _prune(b: TenantBudget, new_key: str) -> None:
    """A new day or month key: keep only the two newest of its kind."""
    kind = [k for k in b.spent if len(k) == len(new_key)]
    if len(kind) > _KEEP:
        for old in sorted(kind)[:-_KEEP]:
            del b.spent[old]
            b.warned.discard(old)


def _charge(b: TenantBudget, event: ev.BudgetCharged) -> None:
    for key in (event.day, event.month, LIFETIME):
        fresh = key not in b.spent
        b.spent[key] = b.spent.get(key, 0) + event.amount_micros
        if fresh and key != LIFETIME:
            _prune(b, key)
    _close(b, event.request_id)


def _warned(b: TenantBudget, event: ev.BudgetExceeded) -> None:
    res = b.open.get(event.request_id or "")
    if event.period == "lifetime":
        b.warned.add(LIFETIME)
    elif res is not None:
        b.warned.add(res.day if event.period == "day" else res.month)


def evolve_budget(budget: TenantBudget | None, event: object) -> TenantBudget:
    """Fold one event of the tenant into its budget (None: the tenant's first) and
    return it; events other than the four budget events change nothing."""
    b = budget if budget is not None else TenantBudget()
    match event:
        case ev.BudgetReserved():
            if event.request_id not in b.open:
                b.open[event.request_id] = Reservation(
                    amount_micros=event.amount_micros, day=event.day, month=event.month
                )
                for key in (event.day, event.month, LIFETIME):
                    _add(b.reserved, key, event.amount_micros)
        case ev.BudgetCharged():
            _charge(b, event)
        case ev.BudgetReleased():
            _close(b, event.request_id)
        case ev.BudgetExceeded(level="soft"):
            _warned(b, event)
    return b


def snapshot(budget: TenantBudget) -> dict[str, object]:
    """Plain data for replay comparison and display; keys sorted."""
    b = budget
    return {
        "spent": dict(sorted(b.spent.items())),
        "reserved": dict(sorted(b.reserved.items())),
        "open": {rid: res.amount_micros for rid, res in sorted(b.open.items())},
        "warned": sorted(b.warned),
    }


# --- snapshots ----------------------------------------------------------------


class BudgetDump(msgspec.Struct, frozen=True, array_like=True):
    """A tenant's budget as plain data (`service.core.snapshot`). Monthly and lifetime
    spend live here, so they outlast the events topic's retention."""

    spent: dict[str, int]
    reserved: dict[str, int]
    open: dict[str, Reservation]
    warned: list[str]


def dump(budget: TenantBudget) -> BudgetDump:
    b = budget
    return BudgetDump(dict(b.spent), dict(b.reserved), dict(b.open), sorted(b.warned))


def load(data: BudgetDump) -> TenantBudget:
    b = TenantBudget()
    b.spent, b.reserved, b.open = dict(data.spent), dict(data.reserved), dict(data.open)
    b.warned = set(data.warned)
    return b
