"""compose.yaml, Dockerfile and .dockerignore, checked without a Docker engine.

compose.yaml is parsed and validated against the Compose Specification by the
`compose-spec` package (the Rust `compose_spec` parser: unknown keys, wrong
types and unknown enum values are errors; YAML merge keys are applied). On
top of that: every Turnout service runs a real `turnout` command line (parsed
by the CLI's own parser), every file it mounts exists, the parts docs/reference/contract.md
asks for are there, and the Dockerfile builds the images those commands need: the
routers the `router` target (locks/router.txt), the rest the `full` one (locks/demo.txt),
each lock holding the extra its commands name.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from compose_spec import PyOptions

from tests import deps
from turnout.service.cli import build_parser
from turnout.service.kafka.jars import KAFKA_VERSION

REPO = Path(__file__).resolve().parents[2]
TURNOUT_IMAGE = "turnout:latest"
ROUTER_IMAGE = "turnout-router:latest"
LOCK_OF_TARGET = {"router": "router.txt", "full": "demo.txt"}


def load(text: str) -> dict[str, Any]:
    compose = PyOptions(apply_merge=True).from_yaml(text)
    compose.validate()
    doc: dict[str, Any] = compose.to_dict()
    return doc


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load((REPO / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def turnout_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if s.get("image") in (TURNOUT_IMAGE, ROUTER_IMAGE)}


def test_the_compose_file_is_valid_and_a_typo_would_be_caught() -> None:
    text = (REPO / "compose.yaml").read_text()
    load(text)
    for good, bad in [("command: [\"topics\"", "comand: [\"topics\""),
                      ("service_healthy", "service_healty"),
                      ("restart: unless-stopped", "restart: sometimes")]:  # fmt: skip
        assert good in text
        with pytest.raises(ValueError):
            load(text.replace(good, bad, 1))


def test_the_parts_contract_md_asks_for_run_by_default_and_the_simulator_on_a_profile(
    services: dict[str, dict[str, Any]],
) -> None:
    default = {n for n, s in services.items() if not s.get("profiles")}
    assert {"kafka", "otel-collector", "jaeger", "router-1", "router-2", "sink", "alerts",
            "dashboard"} <= default  # fmt: skip
    assert services["simulator"]["profiles"] == ["sim"]
    kafka = services["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"  # what `turnout broker` runs
    assert "kafka-data:/var/lib/kafka/data" in kafka["volumes"]
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith("1@kafka:")  # a single node
    assert not any("zookeeper" in n for n in services)


def test_every_turnout_service_runs_a_real_turnout_command_from_its_image(
    services: dict[str, dict[str, Any]],
) -> None:
    ours = turnout_services(services)
    assert len(ours) >= 7
    parser = build_parser()
    for name, service in ours.items():
        router = service["command"][0] == "router"
        assert service["build"] == {"context": ".", "target": "router" if router else "full"}
        assert service["image"] == (ROUTER_IMAGE if router else TURNOUT_IMAGE), name
        args = parser.parse_args(service["command"])  # exits (fails the test) if not a command
        assert args.command == service["command"][0], name
        lock = deps.read_lock(LOCK_OF_TARGET[service["build"]["target"]])
        missing = deps.needed(args.handler.extra) - set(lock)
        assert not missing, f"{name}'s image lacks the {args.handler.extra} extra: {missing}"
    commands = [s["command"][0] for s in ours.values()]
    assert commands.count("router") == 2
    instances = {s["command"][s["command"].index("--instance") + 1]
                 for s in ours.values() if s["command"][0] == "router"}  # fmt: skip
    assert len(instances) == 2


def test_turnout_services_find_kafka_the_collector_and_the_upstream_key(
    services: dict[str, dict[str, Any]],
) -> None:
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    for name, service in turnout_services(services).items():
        env = service["environment"]
        assert f"PLAINTEXT://{env['TURNOUT_KAFKA_BOOTSTRAP']}" in advertised, name
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318", name
        assert env["OPENROUTER_API_KEY"].startswith("${OPENROUTER_API_KEY"), name  # passed through
    collector = (REPO / "deploy" / "otel-collector.yaml").read_text()
    assert "endpoint: 0.0.0.0:4318" in collector
    assert "endpoint: jaeger:4317" in collector and "jaeger" in services


def test_the_archive_is_one_shared_volume_and_every_mounted_file_exists(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).is_file(), f"{name} mounts a missing file {source}"
            else:
                assert source in compose["volumes"], f"{name} uses an undeclared volume {source}"
        for dep in service.get("depends_on", []):
            assert dep in services, f"{name} depends on a missing service {dep}"
    for name in ("sink", "alerts", "dashboard"):
        assert "archive:/data" in services[name]["volumes"], name
        assert services[name]["environment"]["TURNOUT_DUCKDB_PATH"].startswith("/data/")


def test_a_config_file_named_on_a_command_line_is_mounted_there_and_loads(
    services: dict[str, dict[str, Any]],
) -> None:
    from turnout.service.runtime.config import load_config

    named = 0
    for name, service in turnout_services(services).items():
        command = service["command"]
        if "--config" not in command:
            continue
        named += 1
        target = command[command.index("--config") + 1]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}
        assert target in mounts, f"{name} reads {target}, which is not mounted"
        load_config(REPO / mounts[target], env={})  # raises ConfigError when invalid
    assert named >= 5


def test_the_dockerfile_builds_a_non_root_image_whose_entrypoint_is_turnout() -> None:
    lines = [ln.strip() for ln in (REPO / "Dockerfile").read_text().splitlines()]
    steps = [ln for ln in lines if ln and not ln.startswith("#")]
    assert steps[0] == "FROM python:3.11-slim AS base"
    users = [s.split()[1] for s in steps if s.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert steps.count('ENTRYPOINT ["turnout"]') == 1
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "turnout" in pyproject["project"]["scripts"]


def test_everything_the_dockerfile_copies_exists_and_passes_the_dockerignore() -> None:
    steps = (REPO / "Dockerfile").read_text().splitlines()
    sources = [s for ln in steps if ln.startswith("COPY ") and "--from=" not in ln
               for s in ln.split()[1:-1]]  # fmt: skip
    ignore = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    assert "*" in ignore  # everything else stays out of the build context
    kept = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"],
              *pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}  # fmt: skip
    copied = {s.rstrip("/") for s in sources}
    assert {n.rstrip("*") for n in needed} <= copied  # every package and file pip needs
    for source in copied:
        assert (REPO / source).exists(), source
        assert source in kept, f"{source} is excluded by .dockerignore"


def stages() -> dict[str, list[str]]:
    """The Dockerfile's build stages: name → its steps (comments and blank lines left out)."""
    out: dict[str, list[str]] = {}
    name = ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        step = line.strip()
        if step.startswith("FROM "):
            name = step.split(" AS ")[-1]
            out[name] = []
        if step and not step.startswith("#"):
            out[name].append(step)
    return out


def test_the_router_image_installs_the_router_lock_and_the_full_image_everything() -> None:
    built = stages()
    assert list(built)[-1] == "full"  # `docker build .` builds every process's image
    assert "COPY locks/ /locks/" in built["base"]
    assert "RUN pip wheel --no-deps --wheel-dir /wheels ." in built["wheel"]
    for target, lock in LOCK_OF_TARGET.items():
        steps = built[target]
        assert steps[0] == "FROM base AS " + target
        install = steps.index(f"RUN pip install --require-hashes -r /locks/{lock}")
        assert steps[install + 1 :] == [
            "COPY --from=wheel /wheels/ /wheels/",
            "RUN pip install --no-deps /wheels/*.whl",  # the lock alone brings dependencies
            "USER turnout",
        ]
    router = set(deps.read_lock("router.txt"))
    assert not {"streamlit", "duckdb", "pyarrow", "pandas", "uvicorn"} & router
