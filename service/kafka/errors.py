"""Kafka errors as Turnout sees them, and the one place aiokafka's are translated.

Every adapter in this package wraps its calls to aiokafka in `kafka_errors()`,
which hands any aiokafka (or socket, or timeout) exception to `translate`:
the single function that maps third-party failures to Turnout errors (the
httpx `map_httpcore_exceptions` pattern). The original exception stays
attached as `__cause__`; `retriable` carries aiokafka's own classification.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress

from aiokafka import errors as ak

from turnout.service.errors import TurnoutError

__all__ = [
    "CommitTimeout",
    "KafkaFailure",
    "KafkaUnavailable",
    "RecordTooLarge",
    "kafka_errors",
    "quiet_client_logs",
    "start_client",
    "translate",
]


class KafkaFailure(TurnoutError):
    """Kafka answered, but not with success; `retriable` says whether to try again."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class KafkaUnavailable(KafkaFailure):
    """No broker at the bootstrap address answered."""

    def __init__(self, bootstrap: str, detail: str = "") -> None:
        super().__init__(
            f"cannot reach Kafka at {bootstrap}{detail}: start one with `turnout broker` "
            "or set TURNOUT_KAFKA_BOOTSTRAP",
            retriable=True,
        )
        self.bootstrap = bootstrap


class CommitTimeout(KafkaFailure):
    """An offset commit did not finish in time (docs/reference/broker.md rule 15)."""


class GroupMovedOn(KafkaFailure):
    """A commit refused because the group rebalanced without this member (it was dropped:
    its partitions may be someone else's already)."""


_MOVED_ON = (ak.CommitFailedError, ak.IllegalGenerationError, ak.UnknownMemberIdError)


class RecordTooLarge(TurnoutError, ValueError):
    """A record over the size limit, refused before it reached the broker (rule 9)."""


_UNREACHABLE = (ak.KafkaConnectionError, ak.NodeNotReadyError, ak.NoBrokersAvailable, OSError)


def translate(err: BaseException, *, bootstrap: str) -> TurnoutError:
    """The Turnout error for a failure of a Kafka client talking to `bootstrap`."""
    if isinstance(err, TurnoutError):
        return err
    if isinstance(err, TimeoutError | ak.KafkaTimeoutError | ak.RequestTimedOutError):
        return KafkaFailure(f"Kafka at {bootstrap} did not answer in time", retriable=True)
    if isinstance(err, _UNREACHABLE):  # after TimeoutError, which is an OSError
        return KafkaUnavailable(bootstrap)
    if isinstance(err, _MOVED_ON):
        return GroupMovedOn(f"Kafka at {bootstrap}: the group rebalanced without this member "
                            f"({type(err).__name__})")  # fmt: skip
    if isinstance(err, ak.KafkaError):
        name = type(err).__name__
        return KafkaFailure(f"Kafka at {bootstrap} failed: {name}: {err}", retriable=err.retriable)
    return KafkaFailure(f"Kafka client failed: {type(err).__name__}: {err}")


@contextmanager
def kafka_errors(bootstrap: str) -> Iterator[None]:
    """Raise what `translate` makes of any Kafka client failure inside the block."""
    try:
        yield
    except TurnoutError:
        raise
    except (ak.KafkaError, OSError, TimeoutError) as err:
        raise translate(err, bootstrap=bootstrap) from err


async def start_client(
    start: Callable[[], Awaitable[object]],
    close: Callable[[], Awaitable[object]],
    *,
    bootstrap: str,
    timeout_ms: int,
) -> None:
    """Run a client's `start` within `timeout_ms`; on failure `close` it and raise.

    A client that failed to start is closed here, so it never leaks a
    connection or an "Unclosed AIOKafka..." warning. A start cancelled from
    outside is first let finish: aiokafka loses the connection it bootstraps
    through when cancelled mid-start, and `close` could not close it.
    """
    starting = asyncio.ensure_future(start())
    try:
        async with asyncio.timeout(timeout_ms / 1000):
            await asyncio.shield(starting)
    except BaseException as err:
        if not starting.done():
            if isinstance(err, TimeoutError):  # no answer: stop waiting for one
                starting.cancel()
            with suppress(BaseException):  # bounded by aiokafka's own request timeout
                await starting
        with suppress(Exception):
            await close()
        if isinstance(err, TimeoutError):
            raise KafkaUnavailable(bootstrap, f" (no answer in {timeout_ms / 1000:g} s)") from err
        if isinstance(err, ak.KafkaError | OSError):
            raise translate(err, bootstrap=bootstrap) from err
        raise


def quiet_client_logs() -> None:
    """For CLI commands: keep aiokafka's own log lines off the terminal.

    Failures still surface, once, as the translated one-line error.
    """
    logger = logging.getLogger("aiokafka")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
