"""When links renew: about half way through a ticket's life, never within the safety margin of its end."""

from __future__ import annotations

import pytest

from proxy.renewal import (
    RENEW_MARGIN,
    RENEW_MIN_DELAY,
    RENEW_RETRY_MAX,
    RENEW_RETRY_MIN,
    Lease,
    renewal_delay,
)


async def _never() -> str:
    raise AssertionError("not called")


@pytest.mark.parametrize("seconds", [300.0, 3600.0, 60.0, 2.0, 1.0])
def test_renewal_is_about_half_way_and_before_the_margin(seconds: float) -> None:
    margin = min(RENEW_MARGIN, seconds / 4)
    for share in (0.4, 0.5, 0.6):
        delay = renewal_delay(seconds, share)
        assert delay <= seconds - margin
        assert delay == min(seconds * share, seconds - margin)
    jittered = {renewal_delay(seconds) for _ in range(20)}
    assert len(jittered) > 1 and all(0.4 * seconds <= d <= 0.6 * seconds for d in jittered)


def test_a_long_ticket_is_renewed_before_the_margin() -> None:
    assert renewal_delay(3600.0, 0.6) == 2160.0
    assert renewal_delay(200.0, 0.9) == 200.0 - RENEW_MARGIN


@pytest.mark.parametrize("seconds", [0.1, 0.0, -5.0])
def test_renewal_never_spins(seconds: float) -> None:
    assert renewal_delay(seconds, 0.5) == RENEW_MIN_DELAY


def test_failures_back_off_up_to_a_cap() -> None:
    lease = Lease(_never, due=0.0, ends=100.0)
    delays = [lease.failed(now=10.0) for _ in range(12)]
    assert lease.failures == 12 and lease.due == 10.0 + delays[-1]
    assert RENEW_RETRY_MIN / 2 <= delays[0] <= RENEW_RETRY_MIN
    assert all(d <= RENEW_RETRY_MAX for d in delays)
    assert delays[-1] >= RENEW_RETRY_MAX / 2


def test_a_renewal_is_late_after_failures_or_near_the_end() -> None:
    lease = Lease(_never, due=50.0, ends=100.0)
    assert not lease.late(60.0)
    assert lease.late(75.0)
    lease.failed(now=60.0)
    assert lease.late(61.0)
