"""The failure classification table: what a client and the breaker see."""

from __future__ import annotations

import pytest

from turnout.service.core.outcomes import CLASSES, classify_status


@pytest.mark.parametrize(
    ("status", "retry", "breaker", "fallback", "code"),
    [
        (400, False, False, False, "invalid_request"),
        (401, False, False, False, "upstream_unauthorized"),
        (402, False, False, False, "upstream_payment_required"),
        (408, True, True, True, "upstream_unavailable"),
        (429, True, False, True, "upstream_rate_limited"),
        (502, True, True, True, "upstream_unavailable"),
        (503, True, True, True, "upstream_unavailable"),
        (418, False, False, False, "invalid_request"),
        (599, True, True, True, "upstream_unavailable"),
    ],
)
def test_statuses_map_to_the_documented_behaviour(
    status: int, retry: bool, breaker: bool, fallback: bool, code: str
) -> None:
    cls = classify_status(status)
    assert (cls.retryable, cls.breaker_failure, cls.fallback, cls.code) == (
        retry,
        breaker,
        fallback,
        code,
    )


def test_a_rate_limit_never_trips_a_breaker_and_bad_requests_are_never_retried() -> None:
    assert not CLASSES["rate_limited"].breaker_failure
    assert not any(c.retryable for c in CLASSES.values() if c.code == "invalid_request")
