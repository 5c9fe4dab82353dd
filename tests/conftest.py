"""Shared fixtures: one Kafka for the whole session, fresh topics for each test.

Kafka comes from, in order (CONTRACT.md): `TURNOUT_KAFKA_BOOTSTRAP` if set; an
Apache Kafka testcontainer if a Docker engine answers a quick ping; else the
embedded Tansu broker, started once per session.

Each test gets `KafkaSettings` with its own topic prefix and group id
(`kafka_settings`), so tests never see each other's records; `kafka_topics`
also creates that prefix's four topics (BROKER.md rule 1: never auto-create).
Settings use a short session timeout (rule 11) and a short fetch wait (rule 12).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from service.kafka.settings import KafkaSettings, Topics

_KAFKA_IMAGE = os.environ.get("TURNOUT_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")


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


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap address of the session's Kafka."""
    if bootstrap := os.environ.get("TURNOUT_KAFKA_BOOTSTRAP"):
        yield bootstrap
    elif _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer(_KAFKA_IMAGE).with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        from service.kafka.broker import EmbeddedBroker

        with EmbeddedBroker() as broker:
            yield broker.bootstrap


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
    """This test's four topics, created with their fixed partition counts."""
    from service.kafka.topics import ensure_topics

    await ensure_topics(kafka_settings)
    return kafka_settings.topics
