"""The benchmark scripts run as documented (figures are theirs to print, not asserted here).

A benchmark that crashes is found when somebody needs its figure: bench_sink.py did
for a while (warming its local broker called asyncio.run inside its running loop).
This runs the cheapest full path through the shared broker plumbing
(tests/benchmarks/engines.py: a fresh local broker, its warm-up, then the timed
part) with a tiny workload on Tansu, which starts in a tenth of a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_sink_runs_on_a_fresh_local_broker() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TURNOUT_KAFKA_BOOTSTRAP"}
    env["TURNOUT_BENCH_WARMUP_S"] = "0.5"
    proc = subprocess.run(
        [sys.executable, "tests/benchmarks/bench_sink.py", "--engines", "tansu",
         "--requests", "300"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(broker warmed:" in proc.stdout
    assert "sink on tansu" in proc.stdout
    assert "sink/direct" in proc.stdout


def test_bench_archive_age_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "tests/benchmarks/bench_archive_age.py", "--days", "4",
         "--per-day", "6000"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the file each publish copies, as the archive ages" in proc.stdout
    assert "sealed: a reader opens in" in proc.stdout
