"""Shared fixtures: one Kafka per engine for the whole session, fresh topics for each test.

Kafka comes from, in order (docs/reference/contract.md): `TURNOUT_KAFKA_BOOTSTRAP` if set; an
Apache Kafka testcontainer if a Docker engine answers a quick ping; else the
local Apache Kafka broker (`turnout broker`'s, a fresh data dir, started once
per session) wherever Java >= 17 is found; Tansu only where it is not, and the
run then says so loudly, at its start and at its end.

Tests marked `tansu` run a second time on the Tansu fallback broker (their ids
end in `[tansu]`), so the fallback keeps working; `-m tansu` runs just them.

Each test gets `KafkaSettings` with its own topic prefix and group id
(`kafka_settings`), so tests never see each other's records; `kafka_topics`
also creates that prefix's topics (docs/reference/broker.md rule 1: never auto-create).
Settings use a short session timeout (rule 11) and a short fetch wait (rule 12).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from urllib.parse import urlparse

import pytest

from turnout.service.kafka.settings import KafkaSettings, Topics

_KAFKA_IMAGE = os.environ.get("TURNOUT_TEST_KAFKA_IMAGE", "apache/kafka:4.1.1")
_PRIMARY = pytest.StashKey[str]()
_WHY = pytest.StashKey[str]()


def _docker_answers(timeout_s: float = 0.3) -> bool:
    """True if a Docker engine answers `GET /_ping` within `timeout_s`."""
    url = urlparse(os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    try:
        if url.scheme == "unix":
            if not os.path.exists(url.path):
                return False
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(timeout_s)
            sock.connect(url.path)
        elif url.scheme == "tcp" and url.hostname:
            sock = socket.create_connection((url.hostname, url.port or 2375), timeout=timeout_s)
        else:
            return False
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return sock.recv(64).split(b"\r\n", 1)[0].endswith(b"200 OK")
    except OSError:
        return False


def pytest_configure(config: pytest.Config) -> None:
    from turnout.service.kafka.broker import choose_engine

    if os.environ.get("TURNOUT_KAFKA_BOOTSTRAP"):
        primary, why = "external", ""
    elif _docker_answers():
        primary, why = "container", ""
    else:
        choice = choose_engine()
        primary, why = choice.engine, choice.reason
    config.stash[_PRIMARY] = primary
    config.stash[_WHY] = why


def _engine_line(config: pytest.Config) -> str:
    from turnout.service.kafka.jars import KAFKA_VERSION

    primary = config.stash[_PRIMARY]
    if primary == "external":
        return f"kafka: TURNOUT_KAFKA_BOOTSTRAP={os.environ['TURNOUT_KAFKA_BOOTSTRAP']}"
    if primary == "container":
        return f"kafka: Apache Kafka in a testcontainer ({_KAFKA_IMAGE})"
    if primary == "kafka":
        return (
            f"kafka: Apache Kafka {KAFKA_VERSION} (local KRaft broker); `tansu` tests also on Tansu"
        )
    return (
        "kafka: WARNING: THE SUITE RUNS ON TANSU, NOT APACHE KAFKA "
        f"({config.stash[_WHY] or 'TURNOUT_BROKER_ENGINE=tansu'})"
    )


def pytest_report_header(config: pytest.Config) -> str:
    return _engine_line(config)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    terminalreporter.write_line(_engine_line(terminalreporter.config))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A `tansu` test that uses Kafka runs on the session's engine and on Tansu."""
    primary = metafunc.config.stash[_PRIMARY]
    if (
        "kafka_engine" in metafunc.fixturenames
        and metafunc.definition.get_closest_marker("tansu")
        and primary != "tansu"
    ):
        metafunc.parametrize("kafka_engine", [primary, "tansu"], indirect=True, scope="session")


class _Brokers:
    """The session's brokers, one per engine, each started when first asked for."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self._tmp = tmp
        self._started: dict[str, str] = {}
        self._stack = ExitStack()

    def bootstrap(self, engine: str) -> str:
        if engine not in self._started:
            self._started[engine] = self._start(engine)
        return self._started[engine]

    def _start(self, engine: str) -> str:
        if engine == "external":
            return os.environ["TURNOUT_KAFKA_BOOTSTRAP"]
        if engine == "container":
            from testcontainers.community.kafka import KafkaContainer

            kafka = KafkaContainer(_KAFKA_IMAGE).with_kraft()  # retention checked as below
            kafka = kafka.with_env("KAFKA_LOG_RETENTION_CHECK_INTERVAL_MS", "1000")
            container = self._stack.enter_context(kafka)
            return str(container.get_bootstrap_server())
        from turnout.service.kafka.broker import local_broker

        # retention checked every second (60 s in `turnout broker`), so that a test can
        # watch a tiny retention.ms delete events (test_snapshots.py)
        broker = local_broker(engine, data_dir=self._tmp.mktemp("kafka"),
                              properties={"log.retention.check.interval.ms": "1000"})  # fmt: skip
        return self._stack.enter_context(broker).bootstrap

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="session")
def _brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Brokers]:
    brokers = _Brokers(tmp_path_factory)
    yield brokers
    brokers.close()


@pytest.fixture(scope="session")
def kafka_engine(request: pytest.FixtureRequest) -> str:
    """`kafka`, `tansu`, `external` or `container`: the engine this test runs on."""
    return str(getattr(request, "param", None) or request.config.stash[_PRIMARY])


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_engine: str, _brokers: _Brokers) -> str:
    """The bootstrap address of this test's Kafka."""
    return _brokers.bootstrap(kafka_engine)


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    """Settings for this test alone: unique topic prefix, group id and client id."""
    tag = uuid.uuid4().hex[:8]
    return KafkaSettings.from_env().replace(
        bootstrap=kafka_bootstrap,
        topic_prefix=f"t{tag}",
        group_id=f"g{tag}",
        client_id=f"test-{tag}",
        connect_timeout_ms=5_000,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
        fetch_max_wait_ms=20,
    )


@pytest.fixture
async def kafka_topics(kafka_settings: KafkaSettings) -> Topics:
    """This test's topics, created with their fixed partition counts."""
    from turnout.service.kafka.topics import ensure_topics

    await ensure_topics(kafka_settings)
    return kafka_settings.topics
