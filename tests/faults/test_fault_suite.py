"""The fault-injection suite's short version (N = 1,000, two rounds): a router SIGKILLed and
the broker SIGKILLed mid-run, every invariant cell 0. The full run (N = 10,000, every
round) is `python -m tests.faults.suite`; its table is in docs/operations/fault-suite.md."""

from __future__ import annotations

import pytest
from rich.console import Console

from tests.faults.suite import Options, run_suite


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_killed_router_and_a_killed_broker_lose_and_duplicate_nothing(
    kafka_engine: str,
) -> None:
    if kafka_engine == "tansu":
        pytest.fail("the fault suite needs Apache Kafka (Java >= 17), and the suite runs on Tansu")
    out = Console(width=160)
    opts = Options(requests=1_000, routers=2, rate=200.0, hostile=200,
                   rounds=("router_kill", "broker_kill"))  # fmt: skip
    results = await run_suite(opts, out)

    assert [r.name for r in results] == ["router_kill", "broker_kill"]
    for r in results:
        assert r.cells["sent"] == r.cells["answered"] == 1_000, r.cells
        assert r.failures == [], (r.name, {k: r.cells[k] for k in r.failures}, r.examples)
