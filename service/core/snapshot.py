"""Snapshots: the state one events partition folds to, as of an offset, as bytes.

A router rebuilds from the newest snapshot of each partition it owns plus the
events after it, so rebuild time follows the snapshot interval, not the log's
age, and nothing the state needs is lost when old events pass the topic's
retention (monthly and lifetime budgets, the duplicate-answer memory, rate
windows all live here).

What a partition's snapshot holds:
- its **own parts**, exactly: requests in flight and finished (with their
  intake positions), rate windows and budgets of its tenants, its cache index.
  They depend only on that partition's events (a tenant lives on one
  partition), so `restore` of several partitions equals folding them together,
  and `turnout replay verify` checks them against the fold of the events the
  snapshot covers;
- the router-wide **signals** its writer held (circuit breakers, latency
  statistics, the retry budget). These fold from every partition in arrival
  order, so no single partition's events rebuild them; on restore the newest
  snapshot's signals win, then the events after each snapshot are folded as
  they come. A restarted router thus keeps an open breaker open.

Encoding: msgpack (msgspec), `VERSION` in the frame and a blake2b digest of the
body. A frame of another version, or whose body does not match its digest, is
refused with `SnapshotError` (the caller skips it and folds from further back).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Final

import msgspec

from turnout.service.core import budget as budgets
from turnout.service.core import cache as caches
from turnout.service.core import events as ev
from turnout.service.core import ratelimit
from turnout.service.core.breaker import Breaker
from turnout.service.core.partitioning import home_partition
from turnout.service.core.retry import RetryBudget, normalized
from turnout.service.core.state import (
    ForgottenIds,
    InFlight,
    RouterState,
    Terminal,
    remember_encoded,
)
from turnout.service.core.stats import LatencyStat

__all__ = [
    "VERSION",
    "PartitionState",
    "Signals",
    "Snapshot",
    "SnapshotError",
    "capture",
    "decode",
    "encode",
    "own_parts",
    "restore",
]

VERSION: Final = 2
# version 1 kept the ids past their answers by day (`expired` keys: days since the epoch);
# 2 keeps them by hour. A version-1 frame is read, its days put at their first hour.
READS: Final = (1, 2)
_HOURS_A_DAY: Final = 24


class SnapshotError(ValueError):
    """Bytes that are not a snapshot this version can restore (the reason says why)."""


class Signals(msgspec.Struct, frozen=True, array_like=True):
    breakers: dict[str, Breaker]
    latency: dict[str, LatencyStat]
    retry_budget: RetryBudget


class PartitionState(msgspec.Struct, frozen=True, array_like=True):
    """One partition's own parts (see the module docstring) and the writer's signals."""

    partition: int
    inflight: list[InFlight]
    # (event type, msgpack of the terminal, finished at ms), in the order they finished
    finished: list[tuple[str, bytes, int]]
    expired: dict[int, dict[int, int]]  # hour -> id hash -> outcome code (answers forgotten)
    intake: list[tuple[str, int, int]]  # (request id, intake partition, offset)
    limits: dict[str, ratelimit.WindowsDump]
    budgets: dict[str, budgets.BudgetDump]
    cache: caches.CacheDump | None
    signals: Signals


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A decoded frame: the partition's state covers its events before `offset`."""

    version: int
    partition: int
    offset: int
    taken_at_ms: int
    writer: str  # the router instance that wrote it
    digest: str
    body: bytes

    @property
    def state(self) -> PartitionState:
        return _body_decoder.decode(self.body)


_encoder: Final = msgspec.msgpack.Encoder()
_body_decoder: Final = msgspec.msgpack.Decoder(PartitionState)
_frame_decoder: Final = msgspec.msgpack.Decoder(Snapshot)
_TERMINALS: Final[dict[str, msgspec.msgpack.Decoder[Terminal]]] = {
    cls.TYPE: msgspec.msgpack.Decoder(cls)
    for cls in (ev.RequestCompleted, ev.RequestFailed, ev.RequestRejected, ev.RequestCancelled)
}


def _digest(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=16).hexdigest()


# --- taking one ---------------------------------------------------------------


def capture(state: RouterState, partition: int) -> PartitionState:
    """The parts of `state` that belong to `partition`, plus its signals (a copy: the
    state may move on while the snapshot is written)."""
    mine = _on(partition)
    finished = []
    for rid, (at_ms, _) in state.answers.get(partition, {}).items():
        kind, raw = state.finished.raw(rid)  # kept encoded (msgpack), as snapshots carry it
        finished.append((kind, raw, at_ms))
    owned = {rid for rid, f in state.inflight.items() if mine(f.tenant)}
    owned.update(state.answers.get(partition, ()))
    index = state.cache.get(partition)
    return PartitionState(
        partition=partition,
        inflight=[f for f in state.inflight.values() if mine(f.tenant)],
        finished=finished,
        expired=forgotten.by_hour() if (forgotten := state.expired.get(partition)) else {},
        intake=[(rid, p, o) for rid, (p, o) in state.intake.items() if rid in owned],
        limits={t: ratelimit.dump(w) for t, w in state.limits.items() if mine(t)},
        budgets={t: budgets.dump(b) for t, b in state.budgets.items() if mine(t)},
        cache=caches.dump_index(index) if index is not None else None,
        signals=Signals(dict(state.breakers), dict(state.latency), state.retry_budget),
    )


def _on(partition: int) -> Callable[[str], bool]:
    def mine(tenant: str) -> bool:
        return home_partition(tenant) == partition

    return mine


def encode(part: PartitionState, *, offset: int, taken_at_ms: int, writer: str) -> bytes:
    body = _encoder.encode(part)
    frame = Snapshot(
        version=VERSION, partition=part.partition, offset=offset, taken_at_ms=taken_at_ms,
        writer=writer, digest=_digest(body), body=body,
    )  # fmt: skip
    return _encoder.encode(frame)


def decode(data: bytes) -> Snapshot:
    """A checked frame (its body decodes on `.state`), or `SnapshotError` saying why not."""
    try:
        frame = _frame_decoder.decode(data)
    except msgspec.DecodeError as err:
        raise SnapshotError(f"not a snapshot frame: {err}") from None
    if frame.version not in READS:
        raise SnapshotError(
            f"snapshot version {frame.version}; this router reads {', '.join(map(str, READS))}"
        )
    if _digest(frame.body) != frame.digest:
        raise SnapshotError("the snapshot's body does not match its digest (corrupt)")
    try:
        frame.state  # noqa: B018 (decodes the body once, to refuse a bad one here)
    except msgspec.DecodeError as err:
        raise SnapshotError(f"the snapshot's body does not decode: {err}") from None
    return frame


# --- restoring ----------------------------------------------------------------


def restore(snapshots: Iterable[Snapshot], state: RouterState | None = None) -> RouterState:
    """`state` (or a fresh one) with each snapshot's partition put back; the signals of
    the newest snapshot win."""
    state = state if state is not None else RouterState()
    newest: Snapshot | None = None
    for snap in snapshots:
        _put(state, snap.state, by_day=snap.version == 1)
        if newest is None or snap.taken_at_ms > newest.taken_at_ms:
            newest = snap
    if newest is not None:
        signals = newest.state.signals
        state.breakers.update(signals.breakers)
        state.latency.update(signals.latency)
        state.retry_budget = normalized(signals.retry_budget)  # older versions: unsorted
    return state


def _put(state: RouterState, part: PartitionState, *, by_day: bool = False) -> None:
    for flight in part.inflight:
        state.inflight[flight.request_id] = flight
    for kind, raw, at_ms in part.finished:  # in the order they finished, as kept
        if kind not in _TERMINALS:
            raise SnapshotError(f"an answer of unknown type {kind!r}")
        remember_encoded(state, kind, raw, at_ms)
    for rid, p, o in part.intake:
        state.intake[rid] = (p, o)
    if part.expired:
        scale = _HOURS_A_DAY if by_day else 1
        forgotten = state.expired[part.partition] = ForgottenIds()
        for bucket, ids in part.expired.items():
            for h, code in ids.items():
                forgotten.add(bucket * scale, h, code)
    for tenant, windows in part.limits.items():
        state.limits[tenant] = ratelimit.load(windows)
    for tenant, budget in part.budgets.items():
        state.budgets[tenant] = budgets.load(budget)
    if part.cache is not None:
        state.cache[part.partition] = caches.load_index(part.cache)


# --- comparing ----------------------------------------------------------------


def own_parts(state: RouterState, partition: int) -> dict[str, object]:
    """`partition`'s own parts of `state` as plain data: equal dicts, equal parts
    (tests, and replay verify's check of a snapshot against the log)."""
    part = capture(state, partition)
    return {
        "inflight": sorted(msgspec.to_builtins(part.inflight), key=lambda f: f["request_id"]),
        # as a set: live, terminals are remembered in the order they were decided; a fold
        # of the log sees them in the order their acks came (only eviction order differs)
        "finished": sorted((kind, raw.hex(), at) for kind, raw, at in part.finished),
        "forgotten": {str(hour): len(ids) for hour, ids in sorted(part.expired.items())},
        "forgotten_digest": _digest(
            _encoder.encode(
                sorted((hr, h, c) for hr, ids in part.expired.items() for h, c in ids.items())
            )
        ),
        "intake": sorted(part.intake),
        "limits": {t: _named(w) for t, w in sorted(part.limits.items())},
        "budgets": {t: _named(b) for t, b in sorted(part.budgets.items())},
        "cache": _named(part.cache) if part.cache is not None else None,
    }


def _named(dump: msgspec.Struct) -> dict[str, object]:
    """An array-like dump as {field: value}, so a difference names the field."""
    return {f: msgspec.to_builtins(getattr(dump, f)) for f in dump.__struct_fields__}
