"""The reaper: hosts silent past the alive timeout are lost and their attempts go back to the queue;
blobs nobody references any more are deleted. One reaper at a time across server processes.

Grace after downtime: a host cannot be heard from while the server is down, so silence is counted from
the later of its last sign of life and this reaper's start. A server restarted after an outage waits a
whole alive timeout before it declares anyone lost, and running jobs survive the outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.jobstates import ACTIVE, Trigger
from server import blobs
from server.authz import Actor
from server.db.models import Host, Job, utcnow
from server.scheduler.heartbeat import Liveness
from server.scheduler.writer import SEEN_COLUMNS, Seen, event, insert_events, transition
from server.store import DataStore

logger = logging.getLogger(__name__)

ACTIVE_VALUES = [s.value for s in ACTIVE]
GC_EVERY = 30.0  # seconds between two looks for unreferenced blobs


async def reap(session: AsyncSession, alive_timeout: float) -> int:
    """Mark silent hosts lost and requeue their jobs (in the caller's transaction); how many moved."""
    cutoff = utcnow() - timedelta(seconds=alive_timeout)
    lost = (
        await session.execute(
            select(Host.uid, Host.name, Host.owner_uid, Host.last_alive).where(
                Host.active.is_(True), Host.last_alive < cutoff
            )
        )
    ).all()
    moved = 0
    for uid, name, owner, last in lost:
        await session.execute(
            update(Host)
            .where(Host.uid == uid)
            .values(active=False)
            .execution_options(synchronize_session=False)
        )
        await insert_events(
            session, [event(None, "host", uid, owner, "lost", reason=f"silent since {last:%H:%M:%S}")]
        )
        moved += await requeue_host(session, uid, f"rescheduled: worker {name} lost")
    return moved


async def requeue_host(session: AsyncSession, host_uid: str, why: str, actor: Actor | None = None) -> int:
    """Put back every job ``host_uid`` holds; how many moved."""
    rows = (
        await session.execute(
            select(*SEEN_COLUMNS)
            .where(Job.host_uid == host_uid, Job.status.in_(ACTIVE_VALUES))
            .order_by(Job.uid)
        )
    ).all()
    moved = 0
    for row in rows:
        if await transition(session, Seen.row(row), Trigger.LOSE, actor=actor, reason=why):
            moved += 1
    return moved


Leader = Callable[[], Awaitable[bool]]


async def _always() -> bool:
    return True


async def reaper_loop(
    sessions: async_sessionmaker[AsyncSession],
    store: DataStore,
    liveness: Liveness,
    *,
    alive_period: Callable[[], float],
    alive_timeout: float,
    is_leader: Leader = _always,
) -> None:
    """Flush liveness every second; reap (after the start-up grace) and collect blobs when leader."""
    started = time.monotonic()
    async with sessions() as session:  # the hosts active before a restart keep the period they were told
        active = (
            await session.execute(select(func.count()).select_from(Host).where(Host.active.is_(True)))
        ).scalar()
    liveness.seed(int(active or 0), 3 * max(alive_timeout, 600.0))
    last_reap = last_gc = 0.0
    while True:
        await asyncio.sleep(min(1.0, max(0.1, alive_period() / 2)))
        try:
            async with sessions() as session, session.begin():
                await liveness.flush(session)
            now = time.monotonic()
            timeout = max(alive_timeout, 3 * alive_period())
            if now - started < timeout or not await is_leader():
                continue
            if now - last_reap >= max(0.2, alive_period() / 2):
                last_reap = now
                async with sessions() as session, session.begin():
                    moved = await reap(session, timeout)
                if moved:
                    logger.info("reaper: %d job(s) of lost workers rescheduled", moved)
            if now - last_gc >= GC_EVERY:
                last_gc = now
                async with store.lock("gc"), sessions() as session, session.begin():
                    await blobs.collect(session, store)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("reaper pass failed")
