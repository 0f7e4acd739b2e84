"""Wake-ups across server processes on one PostgreSQL: LISTEN/NOTIFY, coalesced, with a polling fallback.

Each process holds one dedicated connection (``dedicated.py``) that LISTENs on :data:`CHANNEL` and also
sends this process's NOTIFYs. When jobs become claimable here, :meth:`Notifier.jobs_pending` (the
``Wakeups.remote`` hook) adds their number to a counter; a sender task turns the counter into one
``pg_notify`` and then waits :attr:`window` seconds before the next, so a burst of commits costs one
NOTIFY per window, whatever its size. The first NOTIFY after a quiet spell goes out at once: coalescing
adds no latency to a lone submission.

**Payload**: the number of jobs, in decimal — so a process wakes as many of its parked work requests as
there are new jobs (no thundering herd), as it does for its own. A process ignores its own NOTIFYs by
the sending backend's pid, which PostgreSQL delivers with each notification: the listening connection is
the sending one, so "mine" is "sent by my own backend", and no process id travels in the payload.
NOTIFY is transactional and per database, so only processes on the same database hear it, and only once
the sender's statement has run — after the jobs' own commit, since the observers call us after it.

**Fallback**: a parked request looks again every ``Wakeups.recheck`` seconds even unwoken. While the
listener is connected that is ``notify_recheck`` (15 s: idle waiters cost almost nothing); when the
connection is lost it drops back to 5 s and every parked request is woken once so that it re-parks with
the short timeout; when the connection comes back every parked request is woken once more, for the jobs
whose notifications were missed meanwhile. Jobs counted while the connection was down are announced
when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from server.scheduler import dedicated
from server.scheduler.wakeup import RECHECK_SECONDS, Wakeups
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

CHANNEL = "xwhep_jobs_pending"
PING_EVERY = 10.0  # an idle listener checks its connection this often (a dead one hears nothing)
MAX_COUNT = 1_000_000  # a payload above this is clamped (it only sets how many waiters wake)


class Notifier:
    """This process's side of the channel: announces its new jobs, wakes its waiters for others'."""

    def __init__(self, url: str, wakeups: Wakeups, *, window: float, recheck: float) -> None:
        self.url = url
        self.wakeups = wakeups
        self.window = max(0.0, window)
        self.recheck = recheck
        self.listening = False  # the connection is up and LISTENing
        self.sent = 0  # NOTIFYs sent
        self.announced = 0  # jobs announced in them
        self.heard = 0  # jobs other processes announced
        self._pending = 0
        self._kick = asyncio.Event()

    def jobs_pending(self, n: int) -> None:
        """``n`` jobs became claimable in this process (after their commit): tell the others, soon."""
        if n > 0:
            self._pending += n
            self._kick.set()

    async def run(self) -> None:
        """Hold the connection until cancelled (reconnecting as needed)."""
        await dedicated.hold(self.url, "notify", self._session, on_down=self._down)

    async def _session(self, conn: Any) -> None:
        own = conn.get_server_pid()

        def heard(_conn: Any, pid: int, _channel: str, payload: str) -> None:
            if pid != own:
                self._heard(payload)

        await conn.add_listener(CHANNEL, heard)
        self._up()
        while True:
            if not self._pending:
                try:
                    async with asyncio.timeout(PING_EVERY):
                        await self._kick.wait()
                except TimeoutError:
                    await dedicated.ping(conn)
                    continue
            self._kick.clear()
            n, self._pending = self._pending, 0
            if not n:
                continue
            try:
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(n))
            except BaseException:
                self._pending += n  # not sent: announce them on the next connection
                raise
            self.sent += 1
            self.announced += n
            await asyncio.sleep(self.window)  # what comes meanwhile goes out summed, in one NOTIFY

    def _heard(self, payload: str) -> None:
        try:
            n = min(MAX_COUNT, int(payload))
        except ValueError:
            logger.warning("notify: ignored a notification with payload %r", payload[:40])
            return
        if n > 0:
            self.heard += n
            self.wakeups.jobs_pending(n, local_only=True)

    def _up(self) -> None:
        self.listening = True
        self.wakeups.recheck = self.recheck
        logger.info("notify: listening for other processes' jobs on %s", CHANNEL)
        self._wake_all()  # notifications sent before we listened are lost: look once more
        if self._pending:
            self._kick.set()

    def _down(self) -> None:
        if self.listening:
            self.listening = False
            self.wakeups.recheck = RECHECK_SECONDS
            self._wake_all()  # re-park with the short fallback timeout

    def _wake_all(self) -> None:
        # budget 1: a request that finds nothing parks again and passes nothing on
        self.wakeups.look_again()
        self.wakeups.waiters.wake(len(self.wakeups.waiters), 1)


@contextlib.asynccontextmanager
async def listening(settings: ServerSettings, wakeups: Wakeups) -> AsyncIterator[Notifier | None]:
    """On PostgreSQL, carry this process's wake-ups to the others and theirs to it for the duration of
    the block; on SQLite (one process) nothing is needed and None is yielded."""
    if not settings.postgres:
        wakeups.recheck = settings.notify_recheck  # one process: every wake-up is local
        yield None
        return
    notifier = Notifier(
        settings.db_url, wakeups, window=settings.notify_window, recheck=settings.notify_recheck
    )
    wakeups.remote = notifier.jobs_pending
    try:
        async with dedicated.running(notifier.run(), "notify"):
            yield notifier
            wakeups.remote = None  # stopping: what still commits here need not reach the others
    finally:
        wakeups.remote = None
        wakeups.recheck = RECHECK_SECONDS
