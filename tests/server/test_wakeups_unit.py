"""Wake-up bookkeeping without a server: when a host's next claim may skip its query."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.scheduler import wakeup
from server.scheduler.wakeup import Waiters, Wakeups


def test_nothing_new_only_while_nothing_changed_and_the_look_is_fresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = Wakeups()
    assert not w.nothing_new_for("h")  # never looked
    w.found_nothing("h", w.generation)
    assert w.nothing_new_for("h") and not w.nothing_new_for("other")
    w.jobs_pending(1)
    assert not w.nothing_new_for("h")  # a job came
    w.found_nothing("h", w.generation)
    w.look_again()  # notifications may have been lost
    assert not w.nothing_new_for("h")
    stale = w.generation
    w.jobs_pending(1)
    w.found_nothing("h", stale)  # the look started before the job came: it may have missed it
    assert not w.nothing_new_for("h")
    w.found_nothing("h", w.generation)
    w.found_some("h")
    assert not w.nothing_new_for("h")
    w.found_nothing("h", w.generation)
    now = time.monotonic()
    monkeypatch.setattr(wakeup.time, "monotonic", lambda: now + w.recheck_after() + 1)
    assert not w.nothing_new_for("h")  # too old: look again, as a parked request would


def test_remembered_looks_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wakeup, "MAX_LOOKS", 10)
    w = Wakeups()
    for i in range(25):
        w.found_nothing(f"h{i}", w.generation)
    assert len(w._looks) <= 10


async def test_a_fleet_timing_out_together_leaves_the_count_whole() -> None:
    """200 long-polls ending in one loop iteration: the first compaction drops the others' entries,
    which must not be counted again (the count went negative and every work request answered 500)."""
    w = Waiters()
    assert await asyncio.gather(*(w.wait(0.05) for _ in range(200))) == [0] * 200
    assert len(w) == 0
    late = asyncio.create_task(w.wait(5))
    await asyncio.sleep(0)
    assert len(w) == 1 and w.wake(1) == 1
    assert await late >= 1 and len(w) == 0
