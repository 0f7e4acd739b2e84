"""One process at a time: the reaper's leadership, and migrations, across processes on one PostgreSQL.

**Leadership.** The reaper (lost hosts back to the queue) and the blob collection run in one process of
all those sharing a database: the one holding a session-level advisory lock
(``pg_try_advisory_lock``) on its own dedicated connection (``dedicated.py``). The others try again every
``leader_retry`` seconds. PostgreSQL releases the lock when the holder's session ends — the process
stops, is killed, or its machine vanishes (the server's TCP keepalives notice within ~25 s) — and the
next try of another process takes it. The holder checks its connection every :data:`PING_EVERY` seconds
and steps down at once when it is lost, so it never believes it leads while another process does for
longer than that. (Two reapers at once would still be safe — every job move is a compare-and-set — but
a lost host would get two "lost" events.)

On SQLite there is one process: it always leads.

**Migrations.** Several processes (or machines) starting at once would each run the alembic upgrade;
on PostgreSQL :func:`upgrade_once` holds an advisory lock around it, so the first migrates and the
others then find the schema at head.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from server.db.engine import upgrade
from server.scheduler import dedicated
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

# Advisory lock keys (bigint): the ASCII of a name, so they are recognisable in pg_locks.
REAPER_KEY = int.from_bytes(b"xwreaper", "big")
MIGRATE_KEY = int.from_bytes(b"xwmigrat", "big")
PING_EVERY = 2.0  # the leader checks its connection this often


class Leadership:
    """Whether this process holds the reaper's lock; :meth:`is_leader` is the reaper's question."""

    def __init__(self, url: str, *, retry: float) -> None:
        self.url = url
        self.retry = retry
        self.leader = False
        self.terms = 0  # how many times this process became the leader
        self.closing = False  # the process is stopping: giving the lock up is expected

    async def is_leader(self) -> bool:
        return self.leader

    async def run(self) -> None:
        """Try for the lock, hold it, and try again after losing it, until cancelled."""
        await dedicated.hold(self.url, "leader", self._session, on_down=self._down)

    async def _session(self, conn: Any) -> None:
        while True:
            if self.leader:
                await dedicated.ping(conn)
                await asyncio.sleep(PING_EVERY)
                continue
            got = await conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", REAPER_KEY, timeout=dedicated.PING_TIMEOUT
            )
            if got:
                self.leader = True
                self.terms += 1
                logger.info("leader: this process now runs the reaper and the blob collection")
                continue
            await asyncio.sleep(self.retry)

    def _down(self) -> None:
        if self.leader and self.closing:
            logger.info("leader: giving up the reaper's lock (stopping)")
        elif self.leader:
            logger.warning("leader: lost the connection that holds the reaper's lock; stepping down")
        self.leader = False


class Always:
    """The one process on SQLite: always the leader."""

    leader = True

    async def is_leader(self) -> bool:
        return True


@contextlib.asynccontextmanager
async def leadership(settings: ServerSettings) -> AsyncIterator[Leadership | Always]:
    """Compete for the reaper's lock for the duration of the block (PostgreSQL); released at its end."""
    if not settings.postgres:
        yield Always()
        return
    lead = Leadership(settings.db_url, retry=settings.leader_retry)
    async with dedicated.running(lead.run(), "leader"):
        try:
            yield lead
        finally:
            lead.closing = True


async def upgrade_once(url: str) -> None:
    """Migrate ``url`` to head; on PostgreSQL under an advisory lock, so concurrent starts take turns."""
    if not url.startswith("postgresql"):
        await upgrade(url)
        return
    conn = await dedicated.connect(url, "migrate")
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATE_KEY)
        await upgrade(url)  # a session-level lock is released with the session, even if this fails
    finally:
        await dedicated.close(conn)
