"""Dashboard page render time on a large archive, through Streamlit's AppTest.

    python tests/benchmarks/bench_dashboards.py [--events 1000000] [--archive PATH]

Seeds an archive with the synthetic workload (all kinds; ~5.3 events per
story, 20 ms apart) unless --archive names an existing one, then renders every
page three times with the window at "All" and at "Last hour": the first run of
a page is cold (no cached query results), later ones are warm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(os.environ.get("TURNOUT_REPO") or Path(__file__).resolve().parents[2])
sys.path.insert(0, str(REPO))

from turnout.analytics.archive import Archive  # noqa: E402
from turnout.analytics.rows import KafkaPosition, record_row  # noqa: E402
from turnout.analytics.synthetic import ALL_KINDS, envelopes, workload  # noqa: E402
from turnout.service.wire.cloudevents import encode  # noqa: E402

PAGES = ("overview", "routing", "reliability", "tenants", "cache", "alerts", "explorer")


def seed(path: Path, events: int) -> None:
    stories = workload(events * 19 // 100, kinds=ALL_KINDS, task_types=("general", "code"))
    with Archive.open(path) as archive:
        rows = []
        for i, env in enumerate(envelopes(stories, step_ms=20)):
            rows.append(record_row(*encode(env), KafkaPosition("turnout.events", i % 12, i)))
            if len(rows) == 50_000:
                archive.load_batch(rows)
                rows = []
        archive.load_batch(rows)
        archive.publish()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--archive", type=Path, default=None)
    args = parser.parse_args()
    path = args.archive or Path(tempfile.mkdtemp()) / "turnout.duckdb"
    if not path.exists():
        t = time.perf_counter()
        seed(path, args.events)
        print(f"seeded {path} in {time.perf_counter() - t:.0f} s")
    os.environ["TURNOUT_DUCKDB_PATH"] = str(path)
    from streamlit.testing.v1 import AppTest

    for range_ in ("All", "Last hour"):
        print(f"window: {range_}")
        for page in PAGES:
            app = AppTest.from_file(str(REPO / "dashboards" / "app.py"), default_timeout=60)
            app.session_state["f_range"] = range_
            t = time.perf_counter()
            app.run()  # the default page (overview), cold
            times = [time.perf_counter() - t] if page == "overview" else []
            for _ in range(3 - len(times)):
                t = time.perf_counter()
                app.switch_page(f"screens/{page}.py").run()
                times.append(time.perf_counter() - t)
                assert not app.exception, app.exception[0].message
            print(
                f"  {page:12s} cold {times[0] * 1000:6.0f} ms  warm "
                f"{statistics.median(times[1:]) * 1000:6.0f} ms"
            )


if __name__ == "__main__":
    main()
