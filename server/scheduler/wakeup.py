"""Waking long-polling workers: a parked work request costs a future, not a query per second.

A work request that found nothing to claim parks here. When jobs become PENDING (the status writer's
observers tell :meth:`Wakeups.jobs_pending` after the commit), at most that many parked requests are
woken, oldest first — no thundering herd. A woken request that still finds nothing it may run (the new
job is for another platform or owner) passes the wake on to the next one, within a budget, so a job
only some hosts can run still reaches one of them. A long fallback timeout covers what no wake-up
reaches (another process's jobs when no cross-process channel is set up, a missed notification).

A host whose last claim found nothing, with no job become claimable since (:attr:`Wakeups.generation`
unchanged) and that look younger than the fallback period, skips the claim query of its next work
request and parks at once: a fleet of idle long-polling workers, coming back every long-poll period,
then costs no query per return. Its look is as fresh as a parked request's (which also looks again
only when woken or after :meth:`Wakeups.recheck_after`).

Across server processes, :attr:`Wakeups.remote` (set up by ``server/scheduler/notify.py`` on
PostgreSQL) carries "n jobs are pending" to the other processes, which wake their own waiters.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from common.enums import JobStatus
from server.scheduler.writer import Change

PASS_BUDGET = 64  # how many parked requests one wake may visit before it gives up (then: fallback poll)
# A parked work request looks again this often even if nothing woke it: the fallback for what no wake-up
# reaches (another process's jobs while no cross-process channel is heard, a pass-on budget spent).
RECHECK_SECONDS = 5.0
RECHECK_RATE = 50.0  # fallback looks per second the parked requests may cost at most, whatever their number
T = TypeVar("T")
MAX_LOOKS = 200_000  # hosts whose last empty look is remembered (past it, all are forgotten: they query)


class _Parked:
    """One parked request: its future, and whether it is counted among the stale ones, or was dropped
    from the queue (by a compaction or a wake) before its waiter noticed it had ended."""

    __slots__ = ("dropped", "fut", "stale")

    def __init__(self, fut: asyncio.Future[int]) -> None:
        self.fut = fut
        self.stale = False
        self.dropped = False


class Waiters:
    """Parked work requests of this process, oldest first."""

    def __init__(self) -> None:
        self._parked: deque[_Parked] = deque()
        self._stale = 0  # entries in the deque whose request timed out or was cancelled
        self.woken = 0  # wake-ups handed out since start (each costs its waiter one claim query)

    def __len__(self) -> int:
        return len(self._parked) - self._stale

    async def wait(self, timeout: float) -> int:
        """Park until woken (returns the wake's remaining pass-on budget, >= 1) or ``timeout`` (0)."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        entry = _Parked(fut)
        self._parked.append(entry)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return 0
        finally:
            if not fut.done():
                fut.cancel()
            # Many waits can end in one loop iteration (a fleet's long-polls timing out together): a
            # compaction run by the first may already have dropped the others' entries, which must then
            # not be counted as stale (they are no longer in the queue).
            if fut.cancelled() and not entry.dropped:
                entry.stale = True
                self._stale += 1
                if self._stale > 64 and self._stale * 2 > len(self._parked):
                    self._compact()

    def wake(self, n: int, budget: int = PASS_BUDGET) -> int:
        """Wake up to ``n`` parked requests, oldest first; how many were woken."""
        woken = 0
        while woken < n and self._parked:
            entry = self._parked.popleft()
            if entry.fut.done():
                self._drop(entry)
                continue
            entry.fut.set_result(max(1, budget))
            woken += 1
        self.woken += woken
        return woken

    def _drop(self, entry: _Parked) -> None:
        """``entry`` (ended) leaves the queue: uncount it, or tell its waiter not to count it."""
        if entry.stale:
            self._stale -= 1
        entry.dropped = True

    def _compact(self) -> None:
        kept: deque[_Parked] = deque()
        for entry in self._parked:
            if entry.fut.done():
                self._drop(entry)
            else:
                kept.append(entry)
        self._parked = kept


class Wakeups:
    """This process's waiters, fed by local status changes and, if set, by other processes."""

    def __init__(self) -> None:
        self.waiters = Waiters()
        self.remote: Callable[[int], None] | None = None  # tell other processes (notify.py)
        self.recheck = RECHECK_SECONDS  # notify.py lengthens it while other processes are heard
        self.generation = 0  # grows whenever jobs may have become claimable
        self._looks: dict[str, tuple[int, float]] = {}  # host -> (generation, when) of its last empty look
        self.skipped = 0  # claim queries skipped since start (nothing new since the host's last look)

    def recheck_after(self) -> float:
        """How long a parked request waits unwoken before it looks again: ``recheck``, longer with more
        waiters, so the fallback's claim queries stay near RECHECK_RATE a second however large the fleet."""
        return self.recheck * max(1.0, len(self.waiters) / (self.recheck * RECHECK_RATE))

    def observe(self, changes: list[Change]) -> None:
        """The status writer's observer: jobs that became PENDING wake as many waiters."""
        pending = sum(1 for c in changes if c.after is JobStatus.PENDING)
        if pending:
            self.jobs_pending(pending)

    def jobs_pending(self, n: int, *, local_only: bool = False) -> None:
        """``n`` jobs became claimable: wake that many waiters here, and tell the other processes."""
        self.generation += 1
        self.waiters.wake(n)
        if self.remote is not None and not local_only:
            self.remote(n)

    def pass_on(self, budget: int) -> None:
        """A woken request found nothing it may run: hand the wake to the next one (budget allowing)."""
        if budget > 1:
            self.waiters.wake(1, budget - 1)

    async def look(
        self, host: str, query: Callable[[], Awaitable[Sequence[T]]], *, may_skip: bool
    ) -> Sequence[T]:
        """What ``query`` (a claim for ``host``) finds, remembering an empty look. With ``may_skip``,
        nothing (and no query) while nothing new can be found since the host's last empty look."""
        if may_skip and self.nothing_new_for(host):
            return ()
        generation = self.generation  # read before the query: what comes after it is new
        found = await query()
        if found:
            self.found_some(host)
        else:
            self.found_nothing(host, generation)
        return found

    def look_again(self) -> None:
        """Jobs may have become claimable unannounced (notifications lost): every host queries again."""
        self.generation += 1

    def found_nothing(self, host: str, generation: int) -> None:
        """``host``'s claim, started at ``generation``, found nothing."""
        if len(self._looks) >= MAX_LOOKS:
            self._looks.clear()
        self._looks[host] = (generation, time.monotonic())

    def found_some(self, host: str) -> None:
        self._looks.pop(host, None)

    def nothing_new_for(self, host: str) -> bool:
        """True if ``host``'s last claim found nothing, no job has become claimable since, and that
        look is no older than a parked request's may be: its next claim would find nothing either."""
        look = self._looks.get(host)
        if look is None or look[0] != self.generation or time.monotonic() - look[1] > self.recheck_after():
            return False
        self.skipped += 1
        return True
