"""The docs site builds with `mkdocs build --strict`: no warning, no broken link or anchor.

`make docs` does the same into build/site (and `make test` runs it); this test makes
`pytest` alone catch a broken page. External links are not fetched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_build_strictly_with_the_generated_pages(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "turnout replay whatif" in cli and "usage: turnout broker" in cli
    config = (site / "reference" / "configuration" / "index.html").read_text(encoding="utf-8")
    assert "TURNOUT_KAFKA_REBALANCE_TIMEOUT_MS" in config.replace("<wbr>", "")
    assert "turnout.request.cancelled" in (site / "reference" / "events" / "index.html").read_text(
        encoding="utf-8"
    )
    assert "<!-- turnout:" not in "".join(
        p.read_text(encoding="utf-8") for p in site.rglob("*.html")
    )
