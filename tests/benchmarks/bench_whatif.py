"""Benchmark: what-if replay's re-decided requests per second, against the fold of the same log.

Run: `.venv/bin/python tests/benchmarks/bench_whatif.py [--requests 1000000]`

The log is what one router writes for the workload of the what-if unit tests
(`tests/unit/test_whatif.py`: three tenants, rate limits, a budget, an outage of
one model, cache hits, streams, retries, fallbacks, cancels), made by the
router's own core in virtual time (`turnout.analytics.whatif.virtual`), held in memory
as decoded events (reading the archive is not timed here: `turnout replay
state` and bench_rebuild.py measure decoding). In the same run, on one core:

- **baseline**: folding the recorded log into a `RouterState` (`turnout.service.core.state.fold`),
  as events/s and as requests/s (what a replay costs without deciding anything);
- **what-if, the recorded config**: every request re-decided with recorded outcomes;
- **what-if, a changed config**: the outage model removed from the route, so a third
  of the calls are drawn from the outcome model.

Target (issue 13): >= 50,000 re-decided requests/s over a 1 M-request window.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.unit.test_whatif import Workload, base_raw, recording
from turnout.analytics.whatif.engine import WhatIf
from turnout.analytics.whatif.outcomes import OutcomeModel, parse_assume
from turnout.service.core.config import parse_config
from turnout.service.core.state import fold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    args = parser.parse_args()
    out = Console(highlight=False)
    cfg = parse_config(base_raw(), {})
    raw = base_raw()
    raw["routes"]["general"]["models"] = ["beta/two", "gamma/three"]
    changed = parse_config(raw, {})
    gc.disable()  # as the CLI runs: decoded events make no cycles
    began = time.perf_counter()
    # a long window: arrivals every 20 ms on average (50 requests/s), 5.5 h per million
    log = recording(Workload(n=args.requests, gap_ms=20), cfg)
    out.print(f"recorded {args.requests:,} requests as {len(log):,} events "
              f"in {time.perf_counter() - began:.1f} s")  # fmt: skip

    title = f"what-if over {args.requests:,} requests"
    table = Table("run", "seconds", "events/s", "requests/s", "changed", "modelled calls",
                  title=title, title_justify="left")  # fmt: skip
    t = time.perf_counter()
    fold([(r.time_ms, r.data) for r in log], cfg)
    el = time.perf_counter() - t
    out.print(f"  baseline: {len(log) / el:,.0f} events/s")
    table.add_row("baseline: fold the recorded log", f"{el:.1f}", f"{len(log) / el:,.0f}",
                  f"{args.requests / el:,.0f}", "-", "-")  # fmt: skip
    for name, new in (
        ("what-if, the recorded config", cfg),
        ("what-if, outage model removed", changed),
    ):
        t = time.perf_counter()
        assumed = parse_assume(["gamma/three=latency_ms:300,1200,0.02"])  # never recorded
        engine = WhatIf(new, iter(log), OutcomeModel(assumed), recorded_cfg=cfg)
        stats = engine.run()
        el = time.perf_counter() - t
        table.add_row(name, f"{el:.1f}", f"{stats.events_read / el:,.0f}",
                      f"{stats.requests / el:,.0f}", f"{stats.changed:,}",
                      f"{stats.calls_modelled:,}")  # fmt: skip
        out.print(f"  {name}: {stats.requests / el:,.0f} requests/s")
    out.print(table)
    out.print("target: >= 50,000 re-decided requests/s (one core)")


if __name__ == "__main__":
    main()
