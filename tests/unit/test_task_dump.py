"""`kill -USR1` on a router logs where each of its asyncio tasks waits."""

from __future__ import annotations

import asyncio

import pytest

from turnout.service.runtime.serve import dump_tasks


async def _inner(gate: asyncio.Event) -> None:
    await gate.wait()


async def _outer(gate: asyncio.Event) -> None:
    await _inner(gate)


async def test_the_dump_names_every_task_with_its_whole_await_chain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = asyncio.Event()
    task = asyncio.create_task(_outer(gate), name="stuck-rebalance")
    await asyncio.sleep(0)
    with caplog.at_level("WARNING", logger="turnout.router"):
        dump_tasks()
    gate.set()
    await task
    (record,) = [r for r in caplog.records if "asyncio tasks (SIGUSR1)" in r.getMessage()]
    line = next(x for x in record.getMessage().splitlines() if "stuck-rebalance" in x)
    assert "_outer:" in line and "_inner:" in line and "wait:" in line
    assert line.index("_outer") < line.index("_inner")  # outermost first
