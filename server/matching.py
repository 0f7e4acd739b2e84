"""Which PENDING job a host may run, and claiming it atomically.

Matching: platform (script apps run anywhere; binary apps need a binary for the host's OS/CPU, where
ANY matches all), memory, expected host, and who the host works for: a SUPER_USER's or WORKER_USER's
host runs everyone's jobs, a group administrator's host its group's jobs, a STANDARD_USER's host
(a private worker) only its owner's jobs; a host enrolled for a project runs only that group's jobs.

Claiming: PostgreSQL locks the candidate row with FOR UPDATE SKIP LOCKED, so concurrent claimers take
different jobs; SQLite has a single writer (one pooled connection), so the select-then-update runs alone.
In both cases the UPDATE re-checks status = PENDING, so a job can never be claimed twice.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import AppType, JobStatus, UserRights
from server.db.models import App, Host, Job, utcnow

CANDIDATES = 8


def platforms_of(app: App) -> str:
    """The ``platforms`` column value for jobs of ``app``."""
    if AppType(app.type) is AppType.SCRIPT:
        return "*"
    return "|" + "|".join(sorted({f"{b['os']}/{b['cpu']}" for b in app.binaries})) + "|"


def binary_for(app: App, os: str, cpu: str) -> dict[str, Any] | None:
    """The app binary that best fits a host: exact platform first, then the ANY wildcards."""
    for want in ((os, cpu), ("ANY", cpu), (os, "ANY"), ("ANY", "ANY")):
        for b in app.binaries:
            if (b["os"], b["cpu"]) == want:
                return b
    if AppType(app.type) is AppType.SCRIPT and app.binaries:
        return app.binaries[0]
    return None


def match_clause(host: Host, owner_rights: UserRights, owner_group: str | None) -> ColumnElement[bool]:
    """The WHERE clause of jobs ``host`` may run."""
    plat = Job.platforms
    conds: list[ColumnElement[bool]] = [
        Job.status == JobStatus.PENDING.value,
        or_(
            plat == "*",
            plat.contains(f"|{host.os}/{host.cpu}|", autoescape=True),
            plat.contains(f"|ANY/{host.cpu}|", autoescape=True),
            plat.contains(f"|{host.os}/ANY|", autoescape=True),
            plat.contains("|ANY/ANY|", autoescape=True),
        ),
        or_(Job.expected_host.is_(None), Job.expected_host.in_([host.name, host.uid])),
    ]
    if host.memory:
        conds.append(Job.memory <= host.memory)
    if owner_rights is UserRights.STANDARD_USER:
        conds.append(Job.owner_uid == host.owner_uid)
    elif owner_rights is UserRights.ADVANCED_USER:
        conds.append(Job.group_uid == owner_group if owner_group else Job.owner_uid == host.owner_uid)
    if host.project_uid:
        conds.append(Job.group_uid == host.project_uid)
    return and_(*conds)


async def claim(
    session: AsyncSession, host: Host, owner_rights: UserRights, owner_group: str | None
) -> Job | None:
    """Claim the oldest matching PENDING job for ``host`` in the current transaction, or None."""
    dialect = session.bind.dialect.name if session.bind is not None else ""
    stmt = select(Job.uid).where(match_clause(host, owner_rights, owner_group)).order_by(Job.created)
    stmt = stmt.limit(CANDIDATES)
    if dialect == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    for uid in (await session.execute(stmt)).scalars().all():
        done = await session.execute(
            update(Job)
            .where(Job.uid == uid, Job.status == JobStatus.PENDING.value)
            .values(status=JobStatus.RUNNING.value, host_uid=host.uid, started=utcnow(), status_reason=None)
            .execution_options(synchronize_session=False)
        )
        if getattr(done, "rowcount", 0) == 1:
            return await session.get(Job, uid, populate_existing=True)
    return None
