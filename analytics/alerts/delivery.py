"""Alert delivery: the Kafka outbox and webhook POSTs, both in the background.

- `Outbox`: alert events for `<prefix>.events`, sent in order by one task and
  retried while Kafka is away (a record too large to ever fit is dropped and
  logged); evaluation never waits for it.
- `Webhooks`: one JSON POST per fire and per resolve (`webhook_payload`:
  Slack-compatible `text` plus rule, status, severity, labels, value, op,
  threshold, time, event_id). Connection errors, timeouts and 408/425/429/5xx
  are retried with capped exponential backoff (`WebhookPolicy`); other
  statuses are given up at once; one alert's POSTs go out in order.

Rules: failures are logged on the `turnout.alerts` logger, never raised to
the runner; `close` gives what is queued a bounded time, then gives up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from turnout.analytics.alerts.engine import AlertEvent, Labels
from turnout.analytics.alerts.rules import Rule
from turnout.service.core.events import AlertFired
from turnout.service.errors import TurnoutError
from turnout.service.kafka.errors import RecordTooLarge
from turnout.service.kafka.producer import OutRecord, Producer
from turnout.service.wire.cloudevents import format_time

__all__ = ["Outbox", "WebhookPolicy", "Webhooks", "webhook_payload"]

log = logging.getLogger("turnout.alerts")


# --- webhook payloads --------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookPolicy:
    """How hard a webhook POST is tried: attempts, backoff (doubling, capped), timeout."""

    attempts: int = 8
    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    timeout_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return float(min(self.first_delay_s * 2 ** (attempt - 1), self.max_delay_s))


def webhook_payload(
    event: AlertEvent, rule: Rule, *, time_ms: int, event_id: str
) -> dict[str, Any]:
    """The JSON POSTed for one fired/resolved event (Slack-compatible `text` first)."""
    status = "firing" if isinstance(event, AlertFired) else "resolved"
    payload: dict[str, Any] = {
        "text": _webhook_text(event, rule, status),
        "rule": rule.name, "status": status, "severity": rule.severity,
        "labels": dict(event.labels), "value": event.value, "op": rule.op,
        "threshold": rule.threshold, "time": format_time(time_ms), "time_ms": time_ms,
        "description": rule.description, "event_id": event_id,
    }  # fmt: skip
    if isinstance(event, AlertFired):
        payload["pending_since"] = format_time(event.pending_since_ms)
    else:
        payload["fired_at"] = format_time(event.fired_at_ms)
    return payload


def _webhook_text(event: AlertEvent, rule: Rule, status: str) -> str:
    labels = " ".join(f"{k}={v}" for k, v in sorted(event.labels.items()))
    head = f"[{status.upper()}] {rule.name} ({rule.severity})" + (f" {labels}" if labels else "")
    text = f"{head}: value {event.value:g} (alert when {rule.op} {rule.threshold:g})"
    return f"{text}. {rule.description}" if rule.description else text


# --- Kafka outbox ------------------------------------------------------------


class Outbox:
    """Alert events for Kafka, sent in order by one background task; retried until sent."""

    def __init__(self, producer: Producer, *, retry_s: float = 1.0) -> None:
        self._producer = producer
        self._retry_s = retry_s
        self._pending: list[OutRecord] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alerts-outbox")

    def put(self, records: Sequence[OutRecord]) -> None:
        if records:
            self._pending.extend(records)
            self._idle.clear()
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:500]
                try:
                    await self._producer.send_batch(batch)
                except RecordTooLarge as err:  # retrying cannot help: drop, say so
                    log.warning("dropped %d alert event(s): %s", len(batch), err)
                except TurnoutError as err:
                    log.warning(
                        "publishing %d alert event(s) failed, retrying: %s", len(batch), err
                    )
                    await asyncio.sleep(self._retry_s)
                    continue
                del self._pending[: len(batch)]
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until everything put so far is sent; False if `timeout_s` passed first."""
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return self._idle.is_set()

    async def close(self, timeout_s: float) -> None:
        if not await self.drain(timeout_s):
            log.warning("%d alert event(s) not published before exit", len(self._pending))
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task


# --- webhooks ----------------------------------------------------------------

_RETRY_STATUS: Final = frozenset({408, 425, 429})


class Webhooks:
    """Background POSTs with retry; each alert's POSTs go out in the order given."""

    def __init__(self, session: aiohttp.ClientSession, policy: WebhookPolicy) -> None:
        self._session = session
        self._policy = policy
        self._tasks: set[asyncio.Task[None]] = set()
        self._last: dict[tuple[str, str, Labels], asyncio.Task[None]] = {}

    def post(self, url: str, payload: dict[str, Any], *, key: tuple[str, Labels]) -> None:
        """Deliver `payload` to `url` in the background, after the previous POST for `key`."""
        order_key = (url, *key)
        previous = self._last.get(order_key)
        task = asyncio.create_task(self._deliver(url, payload, previous))
        self._tasks.add(task)
        self._last[order_key] = task
        task.add_done_callback(lambda t: self._done(t, order_key))

    def _done(self, task: asyncio.Task[None], order_key: tuple[str, str, Labels]) -> None:
        self._tasks.discard(task)
        if self._last.get(order_key) is task:
            del self._last[order_key]

    async def _deliver(
        self, url: str, payload: dict[str, Any], previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        for attempt in range(1, self._policy.attempts + 1):
            failure = await self._attempt(url, payload)
            if failure is None:
                return
            retry, reason = failure
            if attempt == 1 and retry:
                log.warning("webhook %s for %s failed (%s): retrying in the background",
                            url, payload["rule"], reason)  # fmt: skip
            if not retry or attempt == self._policy.attempts:
                log.warning("webhook %s for %s gave up after %d attempt(s): %s",
                            url, payload["rule"], attempt, reason)  # fmt: skip
                return
            await asyncio.sleep(self._policy.delay(attempt))

    async def _attempt(self, url: str, payload: dict[str, Any]) -> tuple[bool, str] | None:
        """None on success, else (worth retrying?, reason): the one place errors are classified."""
        timeout = aiohttp.ClientTimeout(total=self._policy.timeout_s)
        try:
            async with self._session.post(url, json=payload, timeout=timeout) as resp:
                if resp.status < 300:
                    return None
                retry = resp.status >= 500 or resp.status in _RETRY_STATUS
                return retry, f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            return True, f"{type(err).__name__}: {err}".rstrip(": ")

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def close(self, timeout_s: float) -> None:
        """Give deliveries in flight `timeout_s` to finish, then cancel the rest."""
        if self._tasks:
            log.info("waiting up to %g s for %d webhook POST(s)", timeout_s, len(self._tasks))
            _, late = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                log.warning("%d webhook POST(s) not delivered before exit", len(late))
                await asyncio.wait(late)
