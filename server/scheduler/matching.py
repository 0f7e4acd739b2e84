"""Which PENDING job a host may run, and claiming it atomically.

Matching: platform (script apps run anywhere; binary apps need a binary for the host's OS/CPU, where
ANY matches all), memory, expected host, and who the host works for: a SUPER_USER's or WORKER_USER's
host runs everyone's jobs, a group administrator's host its group's jobs, a STANDARD_USER's host
(a private worker) only its owner's jobs; a host enrolled for a project runs only that group's jobs.

Validation (server/validation/): a validated job (``policy`` set) never runs itself; its replicas do,
each on a host that has not run one of its siblings and whose owner's hosts have not either, on the
OS/CPU class of the first one when the policy wants homogeneous redundancy; a host quarantined for an
application runs none of its jobs until the quarantine ends.

Claiming itself is ``server/scheduler/claims.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, bindparam, exists, or_, select

from common.enums import AppType, JobStatus, UserRights
from server.db.models import App, Attempt, Host, Job, table_of, utcnow

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
    # (app uid, until): applications it may not run for now (server/validation/reliability.py)
    quarantine: tuple[tuple[str, datetime], ...] = ()

    @classmethod
    def of(cls, h: Host) -> HostView:
        return cls(
            h.uid, h.name, h.os, h.cpu, h.memory, h.owner_uid, h.project_uid, quarantine_of(h.quarantine)
        )

    @property
    def platform(self) -> str:
        """Its OS/CPU class (homogeneous redundancy)."""
        return f"{self.os}/{self.cpu}"

    def quarantined(self, now: datetime) -> list[str]:
        """The applications it may not run at ``now``."""
        return [app for app, until in self.quarantine if until > now]


def quarantine_of(column: dict[str, dict[str, str]] | None) -> tuple[tuple[str, datetime], ...]:
    """The ``hosts.quarantine`` column as HostView holds it."""
    return tuple((app, datetime.fromisoformat(q["until"])) for app, q in (column or {}).items())


def _like(text: str) -> str:
    """A LIKE pattern (escape character ``/``) matching values that contain ``text``."""
    return "%" + text.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"


@dataclass(frozen=True)
class Match:
    """Which jobs a host may run: the shape of the WHERE clause (one cached statement per shape, see
    :func:`match_where`) and the host's values for its bound parameters."""

    # (a memory bound, whose jobs: "" | "owner" | "group", a project, quarantined apps)
    shape: tuple[bool, str, bool, bool]
    params: dict[str, Any]


def match_of(host: HostView, owner_rights: UserRights, owner_group: str | None) -> Match:
    """The jobs ``host`` may run, its owner having ``owner_rights`` (and ``owner_group``)."""
    params: dict[str, Any] = {
        "m_native": _like(f"|{host.os}/{host.cpu}|"),
        "m_any_os": _like(f"|ANY/{host.cpu}|"),
        "m_any_cpu": _like(f"|{host.os}/ANY|"),
        "m_name": host.name,
        "m_uid": host.uid,
        "m_host_owner": host.owner_uid or "",
        "m_class": host.platform,
    }
    if host.memory:
        params["m_memory"] = host.memory
    whose = ""
    if owner_rights is UserRights.STANDARD_USER or (
        owner_rights is UserRights.ADVANCED_USER and not owner_group
    ):
        whose, params["m_owner"] = "owner", host.owner_uid
    elif owner_rights is UserRights.ADVANCED_USER:
        whose, params["m_group"] = "group", owner_group
    if host.project_uid:
        params["m_project"] = host.project_uid
    quarantined = host.quarantined(utcnow()) if host.quarantine else []
    if quarantined:
        params["m_quarantined"] = quarantined
    return Match((bool(host.memory), whose, bool(host.project_uid), bool(quarantined)), params)


def _no_sibling_here() -> ColumnElement[bool]:
    """A replica whose siblings never ran on this host nor on a host of the same owner (any attempt:
    running, finished or lost; the owner as the attempt recorded it, so deleting a host does not make
    its owner new). Not a replica: true at once."""
    sib, attempts = table_of(Job).alias("sib"), table_of(Attempt)
    ran_here = (
        select(attempts.c.uid)
        .join(sib, sib.c.uid == attempts.c.job_uid)
        .where(
            sib.c.replica_of == Job.replica_of,
            or_(attempts.c.host_uid == bindparam("m_uid"), attempts.c.owner_uid == bindparam("m_host_owner")),
        )
    )
    return or_(Job.replica_of.is_(None), ~exists(ran_here))


@lru_cache(maxsize=32)
def match_where(shape: tuple[bool, str, bool, bool]) -> ColumnElement[bool]:
    """The WHERE clause of a :class:`Match` shape, with bound parameters: built once per shape, so a
    claim neither rebuilds the clause nor recomputes SQLAlchemy's cache key for it."""
    memory, whose, project, quarantined = shape
    plat = Job.platforms
    conds: list[ColumnElement[bool]] = [
        Job.status == JobStatus.PENDING.value,
        or_(
            plat == "*",
            plat.like(bindparam("m_native"), escape="/"),
            plat.like(bindparam("m_any_os"), escape="/"),
            plat.like(bindparam("m_any_cpu"), escape="/"),
            plat.like(_like("|ANY/ANY|"), escape="/"),
        ),
        or_(
            Job.expected_host.is_(None),
            Job.expected_host == bindparam("m_name"),
            Job.expected_host == bindparam("m_uid"),
        ),
        Job.policy.is_(None),  # a validated job: its replicas run, never the job itself
        or_(Job.hr_class.is_(None), Job.hr_class == "", Job.hr_class == bindparam("m_class")),
        _no_sibling_here(),
    ]
    if memory:
        conds.append(Job.memory <= bindparam("m_memory"))
    if whose == "owner":
        conds.append(Job.owner_uid == bindparam("m_owner"))
    elif whose == "group":
        conds.append(Job.group_uid == bindparam("m_group"))
    if project:
        conds.append(Job.group_uid == bindparam("m_project"))
    if quarantined:
        conds.append(Job.app_uid.not_in(bindparam("m_quarantined", expanding=True)))
    return and_(*conds)
