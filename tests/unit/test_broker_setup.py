"""The local Apache Kafka broker's set-up, without starting one: Java versions, the jar
cache, the server settings and the data dir's guard."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.service.errors import TurnoutError
from turnout.service.kafka import jars
from turnout.service.kafka.apache import (
    DEFAULT_GC,
    DEFAULT_HEAP,
    ApacheKafkaBroker,
    jvm_options,
    new_cluster_id,
    server_properties,
    wipe,
)


@pytest.mark.parametrize(
    ("version", "major"),
    [("1.8.0_392", 8), ("11.0.2", 11), ("17.0.15", 17), ("21", 21), ("25-ea", 25)],
)
def test_java_versions_are_read_as_their_major(version: str, major: int) -> None:
    assert jars._java_major(version) == major


def test_resolved_jars_are_used_without_maven_and_missing_ones_need_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TURNOUT_KAFKA_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no mvn anywhere
    lib = tmp_path / "9.9.9" / "lib"
    lib.mkdir(parents=True)
    (lib / ".complete").write_text("kafka_2.13-9.9.9.jar\n")

    assert jars.ensure_jars("9.9.9", progress=None) == lib
    with pytest.raises(TurnoutError, match=r"needs Maven \(`mvn`\) once, and it is not on PATH"):
        jars.ensure_jars("9.9.8", progress=None)
    assert not (tmp_path / "9.9.8" / "lib").exists()


def test_the_single_node_settings_bind_loopback_and_create_no_topics(tmp_path: Path) -> None:
    props = server_properties(
        host="127.0.0.1", port=9092, controller_port=9093, log_dir=tmp_path, extra={}
    )

    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["auto.create.topics.enable"] == "false"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["log.dirs"] == str(tmp_path)


def test_cluster_ids_are_kafka_uuids_that_no_argument_parser_takes_for_a_flag() -> None:
    ids = {new_cluster_id() for _ in range(500)}
    assert len(ids) == 500
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_only_a_folder_the_broker_made_is_ever_wiped(tmp_path: Path) -> None:
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    (mine / "log").mkdir(parents=True)
    (mine / "turnout-kafka.txt").write_text("made by turnout broker")
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")

    wipe(mine)
    with pytest.raises(TurnoutError, match="refusing to wipe"):
        wipe(theirs)
    assert not mine.exists()
    assert (theirs / "thesis.tex").read_text() == "years of work"


def test_the_heap_and_the_collector_are_bounded_by_default_and_replaceable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TURNOUT_KAFKA_HEAP_OPTS", raising=False)
    monkeypatch.delenv("TURNOUT_KAFKA_GC_OPTS", raising=False)
    default = ApacheKafkaBroker(0, data_dir=tmp_path)
    options = jvm_options(default.heap, default.gc)
    assert (default.heap, default.gc) == (DEFAULT_HEAP, DEFAULT_GC)
    assert {"-Xmx768m", "-XX:+UseG1GC", "-XX:+ExitOnOutOfMemoryError"} <= set(options)

    monkeypatch.setenv("TURNOUT_KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m")
    monkeypatch.setenv("TURNOUT_KAFKA_GC_OPTS", "-XX:+UseZGC")
    tuned = ApacheKafkaBroker(0, data_dir=tmp_path)
    options = jvm_options(tuned.heap, tuned.gc)
    assert "-XX:+UseZGC" in options and "-Xmx512m" in options
    assert not any(o.startswith(("-XX:+UseG1GC", "-XX:MaxGCPause", "-Xmx768m")) for o in options)
    assert "-XX:+ExitOnOutOfMemoryError" in options  # never replaced
