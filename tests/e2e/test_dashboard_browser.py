"""`turnout dashboard` in a real browser: headless Chromium loads the page and shows the numbers.

The server is started the way a user starts it (`turnout dashboard --port N
--duckdb PATH`) on a seeded archive; Chromium (Debian's `chromium` package,
/usr/bin/chromium) is driven over the DevTools protocol with aiohttp's
websocket client, so no browser download and no extra Python package is
needed. The test reads the page's text as a person would see it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
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

from turnout.analytics.archive import Archive
from turnout.analytics.rows import EventRow, KafkaPosition, record_row
from turnout.analytics.synthetic import ALL_KINDS, REQUESTLESS, envelopes, workload
from turnout.service.wire.cloudevents import encode

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STORIES = workload(90, kinds=ALL_KINDS, task_types=("general", "code"))
REQUESTS = sum(s.kind not in REQUESTLESS for s in STORIES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("browser") / "turnout.duckdb"
    rows = []
    for i, env in enumerate(envelopes(STORIES, step_ms=200)):
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
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    assert CHROMIUM, "no chromium: apt-get install -y chromium (see README, Tests)"
    profile = tmp_path / "chromium-profile"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--window-size=1600,1200",
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
        text = await tab.wait_for_text("Requests/s", "p99 latency", "Cost per bucket")
        await tab.screenshot(tmp_path / "overview.png")  # for a person to look at

        await tab.call("Page.navigate", url=f"{url}/explorer")
        explorer = await tab.wait_for_text("Recent requests", "Timeline", "Payloads")

    assert re.search(rf"\bRequests\s+{REQUESTS}\s", text), text  # the KPI, as shown
    assert "Traceback" not in text + explorer
    assert "Error" not in text.replace("Error rate", "")
    for page in ("Overview", "Routing", "Reliability", "Tenants", "Cache", "Alerts"):
        assert page in text  # the navigation
    server.send_signal(signal.SIGTERM)  # stops cleanly, leaving no server behind
    assert server.wait(timeout=20) == 0
    log = (tmp_path / "dashboard.log").read_text()
    assert log.startswith(f"dashboard: {url.replace('127.0.0.1', 'localhost')} ")
