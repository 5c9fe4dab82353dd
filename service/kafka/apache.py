"""Apache Kafka itself as Turnout's local broker: one KRaft node from the official jars.

`ApacheKafkaBroker` runs `kafka.Kafka` (broker and controller in one JVM, no
ZooKeeper) from the jars `jars.ensure_jars()` resolved, with its data in a
folder on disk (`data/kafka` by default):

- first start: the folder is formatted (`kafka.tools.StorageTool format`) with a
  new cluster id, kept in `log/meta.properties`; later starts reuse it, so a
  restart keeps topics, records and committed group offsets. `fresh=True`
  wipes it first, and only a folder this module made (it holds
  `turnout-kafka.txt`) or an empty one is ever wiped;
- `server.properties` and `log4j2.properties` are written anew at each start
  (the ports may differ); the broker's own log rolls at 10 MB x 3 under
  `logs/`, warnings and errors also go to `logs/broker.out`, whose last lines
  a failure quotes;
- single-node settings: replication factor 1 for internal topics, no initial
  rebalance delay, no auto-created topics (Turnout creates its own), 16 MiB
  segments and a 7-day / 1 GiB-per-partition default retention so a long run's
  disk use stays bounded (Turnout's topics set their own retention);
- a bounded heap (`-Xms256m -Xmx768m`, or `TURNOUT_KAFKA_HEAP_OPTS`) and G1 (or
  `TURNOUT_KAFKA_GC_OPTS`, e.g. `-XX:+UseZGC`);
- ready when the client port accepts connections: with a fixed port in
  `server.properties` Kafka opens it only once it serves requests;
- SIGTERM is a controlled shutdown (up to `stop_timeout_s`, then SIGKILL).

docs/reference/broker.md (Apache Kafka from Maven Central jars) has the facts behind these choices.
"""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import IO, ClassVar

from turnout.service.errors import TurnoutError
from turnout.service.kafka.jars import KAFKA_VERSION, ensure_jars, require_java
from turnout.service.kafka.local import LocalBroker, free_port, read_tail

__all__ = [
    "DEFAULT_GC", "DEFAULT_HEAP", "ApacheKafkaBroker", "jvm_options", "new_cluster_id",
    "server_properties",
]  # fmt: skip

DEFAULT_HEAP = "-Xms256m -Xmx768m"
# G1: ZGC's shorter pauses cost a fifth of the saturated throughput on two cores
# (docs/operations/benchmarks.md, session 20); `TURNOUT_KAFKA_GC_OPTS` replaces these
DEFAULT_GC = "-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35"
_JVM_FLAGS = ("-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true")
_MARK = "turnout-kafka.txt"

_LOG4J2 = """\
status = warn
name = turnout-kafka
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {logs}/server.log
appender.file.filePattern = {logs}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
appender.console.type = Console
appender.console.name = CONSOLE
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
rootLogger.appenderRef.console.ref = CONSOLE
rootLogger.appenderRef.console.level = WARN
"""


def jvm_options(heap: str, gc: str) -> list[str]:
    """The broker JVM's options: the heap's, the collector's (each replaceable from the
    environment), and the fixed ones."""
    return [*heap.split(), *gc.split(), *_JVM_FLAGS]


def new_cluster_id() -> str:
    """A Kafka `Uuid`: URL-safe base64 of 16 random bytes, no padding, not starting with '-'."""
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def server_properties(
    *, host: str, port: int, controller_port: int, log_dir: Path, extra: Mapping[str, str]
) -> dict[str, str]:
    """A single-node combined-mode broker's settings (docs/reference/broker.md), `extra` on top."""
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "num.recovery.threads.per.data.dir": "2",
        "log.cleaner.dedupe.buffer.size": "2097152",  # default 128 MiB: too much for a small heap
        "log.segment.bytes": str(16 * 1024 * 1024),
        "log.index.size.max.bytes": str(1024 * 1024),
        "log.retention.hours": "168",
        "log.retention.bytes": str(1024**3),
        "log.retention.check.interval.ms": "60000",
    }
    return props | dict(extra)


class ApacheKafkaBroker(LocalBroker):
    """A one-node Apache Kafka (KRaft) on `host:port`, its data kept in `data_dir`."""

    engine: ClassVar[str] = "kafka"
    title: ClassVar[str] = f"Apache Kafka {KAFKA_VERSION}"

    def __init__(
        self,
        port: int = 0,
        *,
        data_dir: Path | str = Path("data/kafka"),
        fresh: bool = False,
        host: str = "127.0.0.1",
        heap: str | None = None,
        properties: Mapping[str, str] | None = None,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(
            port, host=host, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s
        )
        self.data_dir = Path(data_dir).absolute()
        self.fresh = fresh
        self.heap = heap or os.environ.get("TURNOUT_KAFKA_HEAP_OPTS") or DEFAULT_HEAP
        self.gc = os.environ.get("TURNOUT_KAFKA_GC_OPTS") or DEFAULT_GC
        self.properties = dict(properties or {})
        self.controller_port = 0

    @property
    def persistent(self) -> bool:
        return True

    @property
    def log_dir(self) -> Path:
        """Kafka's `log.dirs`: the topics' records and `meta.properties`."""
        return self.data_dir / "log"

    @property
    def logs(self) -> Path:
        return self.data_dir / "logs"

    def describe(self) -> str:
        return f"{self.title}, data in {self.data_dir}"

    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        java = require_java()
        lib = ensure_jars()
        if self.fresh:
            wipe(self.data_dir)
        self._claim_data_dir()
        self.controller_port = free_port(self.host)
        config = self._write_config()
        if not (self.log_dir / "meta.properties").is_file():
            self._format(java.path, lib, config)
        command = [
            java.path, *jvm_options(self.heap, self.gc),
            f"-Dkafka.logs.dir={self.logs}",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp", f"{lib}/*", "kafka.Kafka", str(config),
        ]  # fmt: skip
        return command, dict(os.environ)

    def _claim_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        mark = self.data_dir / _MARK
        if not mark.exists():
            if any(p.name != _MARK for p in self.data_dir.iterdir()):
                raise TurnoutError(
                    f"{self.data_dir} is not empty and was not made by `turnout broker`: "
                    "pick another folder with --data"
                )
            mark.write_text(f"Apache Kafka data of `turnout broker` ({self.title})\n")
        self.log_dir.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        _check_not_locked(self.log_dir)

    def _write_config(self) -> Path:
        props = server_properties(
            host=self.host,
            port=self.port,
            controller_port=self.controller_port,
            log_dir=self.log_dir,
            extra=self.properties,
        )
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2.format(logs=self.logs))
        return config

    def _format(self, java: str, lib: Path, config: Path) -> None:
        command = [
            java, "-Xmx256m", f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.logs}", "-cp", f"{lib}/*",
            "kafka.tools.StorageTool", "format", "-t", new_cluster_id(), "-c", str(config),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
            raise TurnoutError(
                f"could not format the Kafka data dir {self.data_dir} "
                f"(exit code {done.returncode}): {' '.join(last) or 'no output'}"
            )

    def _open_log(self) -> IO[bytes]:
        return (self.logs / "broker.out").open("w+b")

    def log_tail(self, lines: int = 3) -> str:
        return super().log_tail(lines) or read_tail(self.logs / "server.log", lines)


def wipe(data_dir: Path) -> None:
    """Delete a data dir `turnout broker` made (refuses any other non-empty folder)."""
    if not data_dir.exists():
        return
    if not (data_dir / _MARK).exists() and any(data_dir.iterdir()):
        raise TurnoutError(
            f"refusing to wipe {data_dir}: it was not made by `turnout broker` (no {_MARK} in it)"
        )
    _check_not_locked(data_dir / "log")
    shutil.rmtree(data_dir)


def _check_not_locked(log_dir: Path) -> None:
    """Fail clearly when another broker holds the data dir (Kafka locks `log/.lock`)."""
    lock_file = log_dir / ".lock"
    if not lock_file.exists():
        return
    with lock_file.open("a") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise TurnoutError(
                f"the Kafka data dir {log_dir.parent} is in use by another running broker: "
                "stop it first, or pick another folder with --data"
            ) from None
        fcntl.lockf(handle, fcntl.LOCK_UN)
