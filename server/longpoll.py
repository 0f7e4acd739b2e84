"""The long-poll budget: how many work requests may wait for a job at once in one server process.

A waiting work request holds a connection and a parked future (server/scheduler/wakeup.py); it costs
little, but not nothing, and a request refused here comes back later and claims once more. The budget
is counted apart from the connection cap (``server/conntable.py``): a long-poll is a busy connection
there, never evicted, and the cap alone would let every connection become a waiter. Over budget, a
work request that found nothing to claim answers 429 at once with a Retry-After, instead of waiting.

In ``request_work`` (server/routes/worker.py) only waiting needs a place, not the first claim::

    with svc.longpolls.waiting_place() as place:
        while True:
            ...claim; return the assignment if there is one, 204 past the deadline...
            place.take()  # the first time: a place, or TooManyRequests (429 with Retry-After)
            budget = await svc.wakeups.waiters.wait(min(remaining, RECHECK_SECONDS))

(``hold()`` is the same for a block that waits from its first line.) The retry delay is spread
(``retry_after`` to twice that) so refused workers do not come back in step. Refusals are logged as
one summary line per interval, not one line each.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator

from common.errors import TooManyRequests

logger = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER = 30.0  # seconds; refused workers come back after 30 to 60 s (each return is a claim)
LOG_INTERVAL = 10.0  # seconds between two lines about refusals


class LongPollBudget:
    """At most ``limit`` holders at once (0: no limit); past that, 429 with a Retry-After."""

    def __init__(self, limit: int, *, retry_after: float = DEFAULT_RETRY_AFTER) -> None:
        if limit < 0:
            raise ValueError(f"max_longpolls must be >= 0, not {limit}")
        self.limit = limit
        self.retry_after = retry_after
        self.waiting = 0
        self.refused = 0  # since start
        self._unlogged = 0
        self._last_log = -float("inf")

    def try_acquire(self) -> bool:
        """Take a place if one is free (then call :meth:`release` exactly once)."""
        if self.limit and self.waiting >= self.limit:
            self.refused += 1
            self._unlogged += 1
            self._log()
            return False
        self.waiting += 1
        return True

    def release(self) -> None:
        if self.waiting <= 0:
            raise RuntimeError("LongPollBudget.release() without a matching acquire")
        self.waiting -= 1

    def refusal(self) -> TooManyRequests:
        """The error a refused work request answers (problem+json 429 with a spread Retry-After)."""
        return TooManyRequests(
            f"{self.waiting} work requests are already waiting (max_longpolls={self.limit}): retry later",
            retry_after=random.uniform(self.retry_after, 2 * self.retry_after),
        )

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """A place for the duration of the block, or TooManyRequests at once."""
        if not self.try_acquire():
            raise self.refusal()
        try:
            yield
        finally:
            self.release()

    @contextlib.contextmanager
    def waiting_place(self) -> Iterator[Place]:
        """A place taken on the first ``take()`` inside the block (if any), given back at its end."""
        place = Place(self)
        try:
            yield place
        finally:
            if place.taken:
                self.release()

    def _log(self) -> None:
        now = time.monotonic()
        if now - self._last_log < LOG_INTERVAL:
            return
        self._last_log = now
        logger.warning(
            "long-poll budget: %d work requests waiting (max_longpolls=%d); %d refused with 429 "
            "since the last line",
            self.waiting,
            self.limit,
            self._unlogged,
        )
        self._unlogged = 0


class Place:
    """A place in a :class:`LongPollBudget`, taken lazily (see ``LongPollBudget.waiting_place``)."""

    def __init__(self, budget: LongPollBudget) -> None:
        self._budget = budget
        self.taken = False

    def take(self) -> None:
        """Take the place if not yet taken; TooManyRequests (429, Retry-After) if none is free."""
        if self.taken:
            return
        if not self._budget.try_acquire():
            raise self._budget.refusal()
        self.taken = True
