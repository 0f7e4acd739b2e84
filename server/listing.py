"""What lists show, shared by the API's list routes and the dashboard: job filters and host rows.

Rights are not applied here: callers add ``authz.visible`` (the one rule), so a filter can never widen
what a list shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import CPU, OS, JobStatus
from common.jobstates import ACTIVE
from common.schemas import HostOut, ReliabilityOut
from server.authz import Actor, visible
from server.db.models import App, Host, HostReliability, Job, UserGroup, utcnow
from server.state import Services
from server.views import owned

ACTIVE_VALUES = [s.value for s in ACTIVE]


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a list asks for (every field optional; all given ones must hold)."""

    statuses: tuple[JobStatus, ...] = ()
    label: str | None = None
    group: str | None = None
    app: str | None = None  # uid
    owner: str | None = None  # uid
    created_from: datetime | None = None
    created_to: datetime | None = None

    def apply(self, stmt: Select[Any]) -> Select[Any]:
        stmt = stmt.where(Job.replica_of.is_(None))  # a validated job's runs show with it, not as jobs
        if len(self.statuses) == 1:
            stmt = stmt.where(Job.status == self.statuses[0].value)
        elif self.statuses:
            stmt = stmt.where(Job.status.in_([s.value for s in self.statuses]))
        if self.label is not None:
            stmt = stmt.where(Job.label == self.label)
        if self.group is not None:
            stmt = stmt.where(Job.job_group == self.group)
        if self.app is not None:
            stmt = stmt.where(Job.app_uid == self.app)
        if self.owner is not None:
            stmt = stmt.where(Job.owner_uid == self.owner)
        if self.created_from is not None:
            stmt = stmt.where(Job.created >= self.created_from)
        if self.created_to is not None:
            stmt = stmt.where(Job.created < self.created_to)
        return stmt


def host_out(
    h: Host,
    svc: Services,
    running: int = 0,
    project: str | None = None,
    reliability: Sequence[ReliabilityOut] = (),
) -> HostOut:
    cutoff = utcnow() - timedelta(seconds=svc.alive_timeout())
    alive = bool(h.active and h.last_alive is not None and h.last_alive >= cutoff)
    return HostOut(
        **owned(h),
        name=h.name,
        os=OS(h.os),
        cpu=CPU(h.cpu),
        cores=h.cores,
        memory=h.memory,
        disk=h.disk,
        version=h.version,
        sandbox=h.sandbox,
        project=project,
        last_alive=h.last_alive,
        alive=alive,
        running=running,
        credential="revoked" if h.revoked is not None else "active",
        credential_issued=h.credential_issued,
        revoked=h.revoked,
        revoke_reason=h.revoke_reason,
        reliability=list(reliability),
    )


def alive_clause(svc: Services) -> Any:
    """Hosts heard from within the alive timeout."""
    cutoff = utcnow() - timedelta(seconds=svc.alive_timeout())
    return Host.active.is_(True) & (Host.last_alive >= cutoff)


async def host_rows(
    session: AsyncSession, svc: Services, actor: Actor, rows: Sequence[Host]
) -> list[HostOut]:
    """Hosts as lists show them: with the jobs each runs now, its project's label and its reliability
    per application (trust and quarantines, server/validation/reliability.py)."""
    uids = [h.uid for h in rows]
    per_host = (
        select(Job.host_uid, func.count())
        .where(Job.host_uid.in_(uids), Job.status.in_(ACTIVE_VALUES))
        .group_by(Job.host_uid)
    )
    counts = {str(h): int(n) for h, n in (await session.execute(per_host)).all()}
    projects = {h.project_uid for h in rows if h.project_uid}
    labels: dict[str, str] = {}
    if projects:
        found = await session.execute(
            select(UserGroup.uid, UserGroup.label).where(UserGroup.uid.in_(projects))
        )
        labels = {str(u): str(lab) for u, lab in found.all()}
    trust = await reliability_of(session, actor, uids)
    return [
        host_out(h, svc, counts.get(h.uid, 0), labels.get(h.project_uid or ""), trust.get(h.uid, ()))
        for h in rows
    ]


UNSEEN_APP = "an application you may not see"


async def reliability_of(
    session: AsyncSession, actor: Actor, hosts: Sequence[str]
) -> dict[str, list[ReliabilityOut]]:
    """Each host's standing per application it ran validated jobs of (an application ``actor`` may not
    read is not named)."""
    if not hosts:
        return {}
    rows = await session.execute(
        select(HostReliability, App.name)
        .join(App, and_(App.uid == HostReliability.app_uid, visible(actor, App)), isouter=True)
        .where(HostReliability.host_uid.in_(list(hosts)))
        .order_by(HostReliability.host_uid, App.name)
    )
    now = utcnow()
    out: dict[str, list[ReliabilityOut]] = {}
    for r, name in rows.all():
        quarantined = r.quarantined_until is not None and r.quarantined_until > now
        out.setdefault(r.host_uid, []).append(
            ReliabilityOut(
                app=name or UNSEEN_APP,
                results=r.results,
                valid_streak=r.valid_streak,
                error_rate=round(r.error_rate, 4),
                trusted=r.trusted_since is not None and not quarantined,
                quarantined_until=r.quarantined_until if quarantined else None,
                reason=r.reason if quarantined else None,
            )
        )
    return out
