"""`turnout cache warm FILE`: fill the response cache through the normal request path.

Each line of FILE is one intake request (docs/reference/records.md: `messages`,
optional `tenant`, `task_type`, `model` and OpenAI parameters). Every request
is sent with `"cache": true` (warming means "keep these answers", also for a
temperature above 0) and a fresh request id, at most `--concurrency` at a
time, through the Python client, so it meets the same limits, budgets and
routing as any request. Outcomes:

- hit: the answer was already cached (`cached: true`);
- stored: answered by the upstream and now cached (`ok`, not cached);
- failed: anything else (rejected, error, no answer within `--timeout`).

A progress bar shows the run; a table sums it up; one `turnout.cache.warmed`
event per tenant records it. Exit 1 when a line is unreadable or a request
failed, with the reasons.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from turnout.service.errors import TurnoutError

__all__ = ["WarmRequest", "cli_main", "read_requests"]

_RESERVED = frozenset({"request_id", "tenant", "task_type", "model", "messages", "reply_to"})


class WarmRequest:
    """One line of the warm file, ready for `AsyncTurnout.route`."""

    __slots__ = ("line", "messages", "model", "params", "task_type", "tenant")

    def __init__(self, line: int, body: dict[str, Any], default_tenant: str) -> None:
        self.line = line
        self.messages: list[dict[str, Any]] = body["messages"]
        self.tenant = str(body.get("tenant") or default_tenant)
        self.task_type = str(body.get("task_type") or "general")
        self.model: str | None = body.get("model")
        self.params = {k: v for k, v in body.items() if k not in _RESERVED} | {"cache": True}


def read_requests(path: Path, default_tenant: str) -> tuple[list[WarmRequest], list[str]]:
    """The requests of a JSONL file, and one problem per unreadable line."""
    requests: list[WarmRequest] = []
    problems: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                body = json.loads(text)
            except json.JSONDecodeError as err:
                problems.append(f"line {number}: not JSON ({err.msg})")
                continue
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                problems.append(f"line {number}: not a request object with a `messages` list")
                continue
            if not body["messages"]:
                problems.append(f"line {number}: `messages` is empty")
                continue
            requests.append(WarmRequest(number, body, default_tenant))
    return requests, problems


async def _warm(
    args: argparse.Namespace, requests: list[WarmRequest]
) -> tuple[Counter[str], dict[str, Counter[str]], list[str]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from turnout.service.client import AsyncTurnout
    from turnout.service.runtime.config import load_config

    cfg = load_config(args.config)
    totals: Counter[str] = Counter()
    by_tenant: dict[str, Counter[str]] = {}
    failures: list[str] = []
    gate = asyncio.Semaphore(args.concurrency)
    columns = (TextColumn("warming"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[summary]}"))  # fmt: skip
    async with AsyncTurnout(config=cfg) as client:
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task("warm", total=len(requests), summary="")

            async def one(req: WarmRequest) -> None:
                async with gate:
                    outcome, why = await _send(client, req, args.timeout)
                totals[outcome] += 1
                by_tenant.setdefault(req.tenant, Counter())[outcome] += 1
                if why:
                    failures.append(f"line {req.line}: {why}")
                summary = ", ".join(f"{k} {v}" for k, v in sorted(totals.items()))
                progress.update(task, advance=1, summary=summary)

            await asyncio.gather(*(one(r) for r in requests))
        await client.close(delete_reply_topic=True)
    await _record(cfg, args.file, by_tenant)
    return totals, by_tenant, failures


async def _send(client: Any, req: WarmRequest, timeout_s: float) -> tuple[str, str | None]:
    try:
        doc = await client.route(
            req.messages, tenant=req.tenant, task_type=req.task_type, model=req.model,
            timeout_s=timeout_s, **req.params,
        )  # fmt: skip
    except TimeoutError:
        return "failed", f"no answer within {timeout_s:g} s"
    if doc.get("status") != "ok":
        error = doc.get("error") or {}
        return "failed", f"{doc.get('status')}: {error.get('code')}: {error.get('message')}"
    return ("hit", None) if doc.get("cached") else ("stored", None)


async def _record(cfg: Any, source: str, by_tenant: dict[str, Counter[str]]) -> None:
    """One `turnout.cache.warmed` event per tenant (keyed by it, on its partition)."""
    from turnout.service.clock import clock
    from turnout.service.core import events as ev
    from turnout.service.kafka.producer import Producer
    from turnout.service.kafka.settings import KafkaSettings
    from turnout.service.wire import cloudevents as ce

    settings = KafkaSettings.from_config(
        cfg.kafka, topics=cfg.topics, client_id="turnout-cache-warm"
    )
    warm_id = clock.new_id()
    async with Producer(settings) as producer:
        futures = []
        for tenant, counts in sorted(by_tenant.items()):
            event = ev.CacheWarmed(
                tenant=tenant, warm_id=warm_id, source=source,
                requests=sum(counts.values()), hits=counts["hit"],
                misses=counts["stored"] + counts["failed"], stored=counts["stored"],
                failed=counts["failed"],
            )  # fmt: skip
            envelope = ce.wrap(event, id=clock.new_id(), time_ms=clock.now_ms(),
                               source=f"turnout/cache-warm/{warm_id}")  # fmt: skip
            key, value, headers = ce.encode(envelope)
            futures.append(await producer.send(settings.topics.events, value, key=key,
                                               headers=headers))  # fmt: skip
        await asyncio.gather(*futures)


def _report(totals: Counter[str], by_tenant: dict[str, Counter[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="cache warm")
    for column in ("tenant", "requests", "hits", "misses", "stored", "failed"):
        table.add_column(column, justify="left" if column == "tenant" else "right")
    rows = [*sorted(by_tenant.items()), ("all", totals)]
    for tenant, c in rows:
        misses = c["stored"] + c["failed"]
        table.add_row(tenant, *(str(n) for n in (sum(c.values()), c["hit"], misses,
                                                 c["stored"], c["failed"])))  # fmt: skip
    Console().print(table)


def cli_main(args: argparse.Namespace) -> int:
    from turnout.service.kafka.errors import quiet_client_logs

    path = Path(args.file)
    if not path.is_file():
        raise TurnoutError(f"{path}: no such file (a JSONL file of intake requests)")
    requests, problems = read_requests(path, args.tenant)
    if not requests:
        raise TurnoutError(
            f"{path}: no request to send" + (f" ({problems[0]})" if problems else "")
        )
    quiet_client_logs()
    totals, by_tenant, failures = asyncio.run(_warm(args, requests))
    _report(totals, by_tenant)
    for problem in [*problems, *failures][:20]:
        print(f"turnout: {problem}")
    if problems or failures:
        print(f"turnout: error: {len(problems)} unreadable line(s), {len(failures)} failed "
              "request(s); fix them and run again (hits cost nothing)")  # fmt: skip
        return 1
    return 0
