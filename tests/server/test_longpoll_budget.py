"""The long-poll budget on a real server: waiters past max_longpolls get 429 at once, claims never do."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from common.errors import TooManyRequests
from common.schemas import HostIn

LINUX = {"os": "LINUX", "cpu": "AMD64"}


async def test_waiters_past_the_budget_are_told_to_come_back(grid_factory: Any) -> None:
    grid = await grid_factory(max_longpolls=1, longpoll=5.0)
    first, other = grid.admin, grid.admin  # two clients (each property access makes one)
    a = await first.enrol(HostIn(name="a", **LINUX))
    b = await other.enrol(HostIn(name="b", **LINUX))
    waiting = asyncio.create_task(first.request_work(a.host.uid, wait=5))
    await asyncio.sleep(0.3)  # a now holds the only place
    assert not waiting.done()
    assert await other.request_work(b.host.uid, wait=0) is None  # no wait, no place needed: 204
    t0 = time.monotonic()
    with pytest.raises(TooManyRequests) as info:
        await other.request_work(b.host.uid, wait=5)
    assert time.monotonic() - t0 < 4  # refused at once, not after waiting
    assert info.value.retry_after >= 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
