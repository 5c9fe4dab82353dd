"""`acked`: the router waits on a request's delivery futures as `asyncio.gather` would."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from turnout.service.kafka.producer import acked


def _futures(n: int) -> list[asyncio.Future[Any]]:
    loop = asyncio.get_running_loop()
    return [loop.create_future() for _ in range(n)]


async def test_it_returns_once_every_future_is_done_in_any_order() -> None:
    futures = _futures(4)
    waiter = asyncio.ensure_future(acked(futures))
    for f in (futures[2], futures[0], futures[3]):
        f.set_result(None)
        await asyncio.sleep(0)
        assert not waiter.done()  # one is still unacknowledged
    futures[1].set_result(None)
    await asyncio.wait_for(waiter, 1)


async def test_the_first_failure_is_raised_and_later_ones_are_retrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    futures = _futures(3)
    futures[0].set_result(None)
    futures[1].set_exception(RuntimeError("broker gone"))
    with pytest.raises(RuntimeError, match="broker gone"):
        await acked(futures)
    futures[2].set_exception(RuntimeError("second failure"))
    await asyncio.sleep(0)  # its done callback runs
    del futures
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    assert "never retrieved" not in caplog.text


async def test_a_failure_that_is_never_waited_on_would_be_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The test above can fail: an unretrieved failure does log."""
    futures = _futures(1)
    futures[0].set_exception(RuntimeError("lost"))
    del futures
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    assert "never retrieved" in caplog.text
