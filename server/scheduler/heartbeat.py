"""Heartbeats: the hold policy (pure), and liveness kept in memory and written in batches.

A heartbeat that reports no running attempt touches no table: the host's liveness is noted in memory
and written with every other host's once a second (one executemany). One that reports attempts costs
one transaction: a read of their jobs (kill those deleted, held or rescheduled; hold those over their
limits) and one write of their usage.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import JobStatus
from common.jobstates import ACTIVE, Trigger
from common.schemas import Heartbeat, HeartbeatReply, JobUsage
from server.authz import Actor
from server.db.models import Attempt, Host, Job, table_of, utcnow
from server.scheduler.matching import HostView
from server.scheduler.writer import SEEN_COLUMNS, Seen, transition

logger = logging.getLogger(__name__)

ACTIVE_VALUES = [s.value for s in ACTIVE]
FLUSH_SECONDS = 1.0  # how stale the database's view of liveness and usage may be


def size(n: float) -> str:
    """Bytes for people: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def hold_reason(usage: JobUsage, memory: int, wallclock: int | None, grace: float) -> str | None:
    """Why a running attempt must be held for breaking its job's limits, or None (pure policy)."""
    if memory and usage.max_rss > memory:
        return f"held: memory {size(usage.max_rss)} > {size(memory)} requested"
    if wallclock and usage.wall_seconds > wallclock + grace:
        return f"held: wallclock {usage.wall_seconds:.0f} s > {wallclock} s requested"
    return None


def alive_period(base: float, hosts: int, target_rate: float) -> float:
    """The heartbeat period to ask for: ``base``, stretched so a fleet of ``hosts`` beats at most
    ``target_rate`` times a second (XWHEP used 300 s for large grids)."""
    if target_rate <= 0:
        return base
    return max(base, hosts / target_rate)


class Liveness:
    """Hosts heard from, waiting to be written (by :meth:`flush`), and how many this process hears."""

    def __init__(self) -> None:
        self._alive: dict[str, datetime] = {}
        self._checked: dict[str, float] = {}  # host -> monotonic time of its last "forgotten jobs" check
        self._heard: dict[str, float] = {}  # host -> monotonic time it was last heard from here
        self._fleet = 0
        self._counted = 0.0
        self._seed = 0  # the fleet the database knew at start, until this process has heard a window's worth
        self._seed_until = 0.0

    def seen(self, host_uid: str) -> None:
        """A sign of life (heartbeat, claim, result)."""
        self._alive[host_uid] = utcnow()
        self._heard[host_uid] = time.monotonic()

    def fleet(self, window: float) -> int:
        """How many hosts this process heard from in the last ``window`` seconds (recounted every 10 s)."""
        now = time.monotonic()
        if now - self._counted >= 10.0:
            self._heard = {h: t for h, t in self._heard.items() if now - t <= window}
            self._checked = {h: t for h, t in self._checked.items() if h in self._heard}
            self._fleet, self._counted = len(self._heard), now
        return max(self._fleet, self._seed) if now < self._seed_until else self._fleet

    def seed(self, hosts: int, window: float) -> None:
        """Assume a fleet of ``hosts`` for ``window`` seconds (after a restart, before they are heard from
        again): the alive period, and so the reaper's grace, must be the one those hosts were told."""
        self._seed, self._seed_until = hosts, time.monotonic() + window

    def due_check(self, host_uid: str, every: float) -> bool:
        """Whether it is time to look for jobs ``host_uid`` should run but no longer reports."""
        now = time.monotonic()
        last = self._checked.get(host_uid)
        if last is None:
            self._checked[host_uid] = now  # not on the first beat: a job just claimed is not reported yet
            return False
        if now - last >= every:
            self._checked[host_uid] = now
            return True
        return False

    async def flush(self, session: AsyncSession) -> int:
        """Write the buffered signs of life (in the caller's transaction); how many hosts."""
        alive, self._alive = self._alive, {}
        if alive:
            hosts = table_of(Host)
            await session.execute(  # Core executemany (an ORM bulk UPDATE wants primary keys as keys)
                update(hosts)
                .where(hosts.c.uid == bindparam("h"))
                # a sign of life is not a change of the host: ``modified`` stays (server/authcache.py
                # re-reads the hosts whose row was modified)
                .values(last_alive=bindparam("t"), active=True, modified=hosts.c.modified),
                [{"h": h, "t": t} for h, t in alive.items()],
            )
        return len(alive)


def _grown(column: Any, value: Any) -> Any:
    """``column`` raised to ``value`` if that is larger: counters and peaks never go back."""
    return case((column < value, value), else_=column)


async def record_usage(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Write reported usage of running attempts (and show it on their jobs), one statement each."""
    if not rows:
        return
    # jobs before attempts, in uid order, as every transaction takes them: no deadlock with a result
    rows = sorted(rows, key=lambda r: str(r["j"]))
    for table, key in ((table_of(Job), "attempt_uid"), (table_of(Attempt), "uid")):
        c = table.c
        await session.execute(  # Core executemany (an ORM bulk UPDATE wants primary keys as keys)
            update(table)
            .where(c[key] == bindparam("a"))
            .values(
                cpu_seconds=bindparam("c"),
                max_rss=_grown(c.max_rss, bindparam("r")),
                net_in=_grown(c.net_in, bindparam("i")),
                net_out=_grown(c.net_out, bindparam("o")),
            ),
            rows,
        )


async def beat(
    session: AsyncSession,
    liveness: Liveness,
    host: HostView,
    actor: Actor,
    body: Heartbeat,
    *,
    grace: float,
    alive_timeout: float,
    check_forgotten: bool,
) -> tuple[dict[str, str], int]:
    """Apply one heartbeat: the kill orders (attempt -> reason) and how many jobs went back to the queue.

    ``check_forgotten`` (from :meth:`Liveness.due_check`): also put back the jobs the host should be
    running but no longer reports (it lost them without telling).
    """
    reported = {u.attempt: u for u in body.running}
    kill: dict[str, str] = {}
    requeued = 0
    usages: list[dict[str, Any]] = []
    if reported:
        cols = (*SEEN_COLUMNS, Job.host_uid, Job.memory, Job.wallclock, Job.status_reason, Job.replica_of)
        stmt = select(*cols).where(Job.attempt_uid.in_(list(reported))).order_by(Job.uid)
        rows = (await session.execute(stmt)).all()
        current = {r.attempt_uid: r for r in rows}
        for attempt, usage in reported.items():
            row = current.get(attempt)
            if row is None or row.host_uid != host.uid:
                kill[attempt] = await _why_gone(session, attempt)
                continue
            usages.append(
                {
                    "j": row.uid,
                    "a": attempt,
                    "c": usage.cpu_seconds,
                    "r": usage.max_rss,
                    "i": usage.net_in,
                    "o": usage.net_out,
                }
            )
            held = hold_reason(usage, row.memory, row.wallclock, grace)
            if held and row.status == JobStatus.RUNNING.value:
                # a replica is not held (nobody may release it): it fails, and its job's validator
                # counts the failure and starts another
                trigger = Trigger.FAIL if row.replica_of is not None else Trigger.HOLD
                if await transition(session, Seen.row(row), trigger, actor=actor, reason=held):
                    kill[attempt] = held
        await record_usage(session, usages)
    if check_forgotten:
        cutoff = utcnow() - timedelta(seconds=alive_timeout)
        forgotten = (
            select(*SEEN_COLUMNS)
            .where(
                Job.host_uid == host.uid,
                Job.status.in_(ACTIVE_VALUES),
                Job.attempt_uid.not_in(list(reported)) if reported else Job.attempt_uid.is_not(None),
                Job.started < cutoff,
            )
            .order_by(Job.uid)
        )
        for lost in (await session.execute(forgotten)).all():
            why = f"rescheduled: worker {host.name} no longer runs it"
            if await transition(session, Seen.row(lost), Trigger.LOSE, actor=actor, reason=why):
                requeued += 1
    return kill, requeued


async def _why_gone(session: AsyncSession, attempt: str) -> str:
    """The kill reason for an attempt that is no longer its job's current one."""
    row = (await session.execute(select(Attempt.state, Attempt.reason).where(Attempt.uid == attempt))).first()
    if row is None:
        return "unknown attempt"
    state, reason = row
    if state in ("RUNNING", "UPLOADING"):
        return "job deleted"
    return f"attempt {state.lower()}" + (f": {reason}" if reason else "")


def reply(alive: float, kill: dict[str, str]) -> HeartbeatReply:
    return HeartbeatReply(alive_period=alive, kill=kill)
