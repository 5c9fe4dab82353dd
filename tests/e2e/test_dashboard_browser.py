"""`turnout dashboard` in a real browser: headless Chromium loads the page and shows the numbers.

The server is started the way a user starts it (`turnout dashboard --port N
--duckdb PATH`) on a seeded archive whose figures are large (dear, slow
requests with many tokens); Chromium (Debian's `chromium` package,
/usr/bin/chromium) is driven over the DevTools protocol with aiohttp's
websocket client, so no browser download and no extra Python package is
needed. The tests read the page's text as a person would see it, in a
typical window (1280 x 800), and measure what the page cuts off.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.test_dashboard_figures import inflate
from turnout.analytics.archive import Archive
from turnout.analytics.rows import EventRow, KafkaPosition, record_row
from turnout.analytics.synthetic import ALL_KINDS, MODELS, REQUESTLESS, envelopes, workload
from turnout.service.wire.cloudevents import encode

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STORIES = inflate(workload(2000, kinds=ALL_KINDS, task_types=("general", "code")))
REQUESTS = sum(s.kind not in REQUESTLESS for s in STORIES)
WINDOW = (1280, 800)  # a typical laptop browser window


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("browser") / "turnout.duckdb"
    rows = []
    for i, env in enumerate(envelopes(STORIES, step_ms=20)):
        row = record_row(*encode(env), KafkaPosition("turnout.events", i % 12, i))
        assert isinstance(row, EventRow)
        rows.append(row)
    with Archive.open(path) as a:
        a.load_batch(rows)
        a.publish()
    return path


def wait_http(url: str, proc: subprocess.Popen[str], timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"turnout dashboard exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout_s} s")


@pytest.fixture
def dashboard(archive: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`turnout dashboard` on a free port, as a user starts it; its output in dashboard.log."""
    port = free_port()
    command = [sys.executable, "-m", "turnout", "dashboard", "--port", str(port)]
    with open(tmp_path / "dashboard.log", "w") as log:
        proc = subprocess.Popen(
            [*command, "--duckdb", str(archive)],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc, 60)
            yield f"http://127.0.0.1:{port}", proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


class Browser:
    """One headless Chromium tab, driven over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self._ids)
        await self._ws.send_json({"id": n, "method": method, "params": params})
        while True:
            msg = await self._ws.receive_json(timeout=30)
            if msg.get("id") == n:
                assert "error" not in msg, msg["error"]
                return dict(msg.get("result", {}))

    async def text(self) -> str:
        got = await self.call("Runtime.evaluate", expression="document.body.innerText")
        return str(got["result"].get("value", ""))

    async def wait_for_text(self, *needles: str, timeout_s: float = 60) -> str:
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = await self.text()
            if all(n in text for n in needles):
                return text
            await asyncio.sleep(0.25)
        raise AssertionError(f"{needles} not on the page after {timeout_s} s; it shows:\n{text}")

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


def _read_port(port_file: Path) -> str | None:
    """The DevTools port Chromium wrote (its first line), once the file is complete."""
    try:
        lines = port_file.read_text().splitlines()
    except FileNotFoundError:
        return None
    return lines[0] if len(lines) >= 2 else None


async def _devtools_url(profile: Path, proc: asyncio.subprocess.Process) -> str:
    for _ in range(300):
        assert proc.returncode is None, f"chromium exited with {proc.returncode}"
        port = await asyncio.to_thread(_read_port, profile / "DevToolsActivePort")
        if port:
            return f"http://127.0.0.1:{port}"
        await asyncio.sleep(0.1)
    raise AssertionError("chromium did not open its DevTools port")


@asynccontextmanager
async def browser(tmp_path: Path, size: tuple[int, int] = WINDOW) -> AsyncIterator[Browser]:
    assert CHROMIUM, "no chromium: apt-get install -y chromium (docs/guides/dashboards.md)"
    profile = tmp_path / "chromium-profile"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", f"--window-size={size[0]},{size[1]}",
        "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = await _devtools_url(profile, proc)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/json/list") as resp:
                pages = [t for t in await resp.json() if t["type"] == "page"]
            async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tab = Browser(ws)
                await tab.call("Runtime.enable")
                yield tab
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_the_overview_shows_the_archives_request_count_in_chromium(
    dashboard: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    url, server = dashboard
    async with browser(tmp_path) as tab:
        await tab.call("Page.navigate", url=url)
        text = await tab.wait_for_text("Requests/s", "p99 latency", "Cost per")
        await tab.screenshot(tmp_path / "overview.png")  # for a person to look at

        fell_back = next(s for s in STORIES if s.kind == "fallback")  # tried two models
        await tab.call("Page.navigate", url=f"{url}/explorer?request={fell_back.request_id}")
        explorer = await tab.wait_for_text("Recent requests", "Timeline", "Payloads")

    assert re.search(rf"\bRequests\s+{REQUESTS:,}\s", text), text  # the KPI, as shown
    tried = re.search(r"models tried: (.+?)(?: · |\n|$)", explorer)
    assert tried and tried[1].split(" → ") == list(MODELS[:2]), explorer  # names, not letters
    assert "Traceback" not in text + explorer
    assert "Error" not in text.replace("Error rate", "")
    for page in ("Overview", "Routing", "Reliability", "Tenants", "Cache", "Alerts"):
        assert page in text  # the navigation
    server.send_signal(signal.SIGTERM)  # stops cleanly, leaving no server behind
    assert server.wait(timeout=20) == 0
    log = (tmp_path / "dashboard.log").read_text()
    assert log.startswith(f"dashboard: {url.replace('127.0.0.1', 'localhost')} ")


CUT_TILES = r"""JSON.stringify([...document.querySelectorAll('[data-testid="stMetric"]')].map(m => {
  const parts = [...m.querySelectorAll(
    '[data-testid="stMetricValue"], [data-testid="stMetricValue"] *, '
    + '[data-testid="stMetricLabel"], [data-testid="stMetricLabel"] *')];
  const cut = parts.some(e => e instanceof HTMLElement && e.scrollWidth > e.clientWidth + 1);
  return {text: m.innerText.replace(/\s+/g, " "), cut: cut || m.innerText.includes("\u2026")};
}))"""
CUT_TABLES = r"""JSON.stringify([...document.querySelectorAll('[data-testid="stDataFrame"]')]
.map(d => {
  const grid = d.querySelector('.dvn-scroller');
  return {columns: d.querySelectorAll('[role="columnheader"]').length,
          cut: !!grid && grid.scrollWidth > grid.clientWidth + 1};
}))"""
TILE_PAGES = {  # page -> a text it shows once its tiles are drawn
    "": "Cost per",
    "routing": "Calls by provider",
    "reliability": "Retry budget",
    "cache": "Cache events",
    "explorer": "Payloads",
}


async def settled(tab: Browser, expression: str) -> list[dict[str, Any]]:
    """The value of `expression` (JSON) once two readings half a second apart agree."""
    last: Any = None
    for _ in range(40):
        got = await tab.call("Runtime.evaluate", expression=expression)
        now = json.loads(got["result"].get("value") or "[]")
        if now and now == last:
            return list(now)
        last = now
        await asyncio.sleep(0.5)
    return list(last or [])


async def test_no_kpi_tile_or_table_is_cut_off_in_a_1280_by_800_window(
    dashboard: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    url, _ = dashboard
    cut: list[str] = []
    async with browser(tmp_path, WINDOW) as tab:
        for page, ready in TILE_PAGES.items():
            await tab.call("Page.navigate", url=f"{url}/{page}")
            await tab.wait_for_text(ready)
            tiles = await settled(tab, CUT_TILES)
            tables = await settled(tab, CUT_TABLES)
            await tab.screenshot(tmp_path / f"{page or 'overview'}.png")  # to look at

            assert tiles, f"no KPI tiles on /{page}"
            cut += [f"/{page} tile: {t['text']}" for t in tiles if t["cut"]]
            cut += [f"/{page} table {i} is wider than its place" for i, t in enumerate(tables)
                    if t["cut"]]  # fmt: skip
    assert not cut, "\n".join(cut)
