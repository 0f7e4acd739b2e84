"""Which PENDING job a host may run, and claiming it atomically.

Matching: platform (script apps run anywhere; binary apps need a binary for the host's OS/CPU, where
ANY matches all), memory, expected host, and who the host works for: a SUPER_USER's or WORKER_USER's
host runs everyone's jobs, a group administrator's host its group's jobs, a STANDARD_USER's host
(a private worker) only its owner's jobs; a host enrolled for a project runs only that group's jobs.

Claiming itself is ``server/scheduler/claims.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, or_

from common.enums import AppType, JobStatus, UserRights
from server.db.models import App, Host, Job

if TYPE_CHECKING:
    from server.scheduler.catalog import AppInfo


def platforms_of(app: App) -> str:
    """The ``platforms`` column value for jobs of ``app``."""
    if AppType(app.type) is AppType.SCRIPT:
        return "*"
    return "|" + "|".join(sorted({f"{b['os']}/{b['cpu']}" for b in app.binaries})) + "|"


def binary_for(app: App | AppInfo, os: str, cpu: str) -> dict[str, Any] | None:
    """The app binary that best fits a host: exact platform first, then the ANY wildcards."""
    for want in ((os, cpu), ("ANY", cpu), (os, "ANY"), ("ANY", "ANY")):
        for b in app.binaries:
            if (b["os"], b["cpu"]) == want:
                return b
    if AppType(app.type) is AppType.SCRIPT and app.binaries:
        return app.binaries[0]
    return None


@dataclass(frozen=True)
class HostView:
    """What the scheduler needs of a host (a snapshot: routes need not load the ORM row)."""

    uid: str
    name: str
    os: str
    cpu: str
    memory: int
    owner_uid: str | None
    project_uid: str | None

    @classmethod
    def of(cls, h: Host) -> HostView:
        return cls(h.uid, h.name, h.os, h.cpu, h.memory, h.owner_uid, h.project_uid)


def match_clause(host: HostView, owner_rights: UserRights, owner_group: str | None) -> ColumnElement[bool]:
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
