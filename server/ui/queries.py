"""The dashboard's reads: keyset pages of jobs, a job's timeline and attempts, the overview's counts and
its last hour. Rights come from server/authz.py (``visible``, ``visible_events``) and filters from
server/listing.py, the same as the API's lists."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, and_, case, cast, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import JobStatus, UserRights
from common.errors import ValidationFailed
from common.schemas import HostOut
from common.uri import is_uid
from server.authz import Actor, visible, visible_events
from server.db.models import App, Attempt, Event, Host, Job, User, utcnow
from server.listing import JobFilter

PAGE_SIZE = 50
HISTORY = timedelta(hours=1)
BUCKET_SECONDS = 60
DONE = (JobStatus.COMPLETED.value, JobStatus.ERROR.value)


@dataclass(frozen=True)
class Cursor:
    """Where a keyset page starts: after the job with this (created, uid)."""

    created: datetime
    uid: str

    def encode(self) -> str:
        return f"{self.created.isoformat()}~{self.uid}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        at, _, uid = text.partition("~")
        try:
            created = datetime.fromisoformat(at)
        except ValueError:
            raise ValidationFailed(f"bad page cursor {text!r}") from None
        if created.tzinfo is None or not is_uid(uid):
            raise ValidationFailed(f"bad page cursor {text!r}")
        return cls(created, uid)


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next: Cursor | None


async def job_page(
    session: AsyncSession,
    actor: Actor,
    wanted: JobFilter,
    *,
    oldest_first: bool = False,
    after: Cursor | None = None,
    limit: int = PAGE_SIZE,
) -> JobPage:
    """One page of the jobs ``actor`` may read, in (created, uid) order: a keyset page, so a deep page
    costs what the first one does (an index range from the cursor, no OFFSET to skip)."""
    stmt = wanted.apply(select(Job).where(visible(actor, Job)))
    key = tuple_(Job.created, Job.uid)
    if after is not None:
        mark = tuple_(after.created, after.uid)
        stmt = stmt.where(key > mark if oldest_first else key < mark)
    order = (Job.created, Job.uid) if oldest_first else (Job.created.desc(), Job.uid.desc())
    rows = list((await session.execute(stmt.order_by(*order).limit(limit + 1))).scalars().all())
    more = len(rows) > limit
    rows = rows[:limit]
    return JobPage(rows, Cursor(rows[-1].created, rows[-1].uid) if more and rows else None)


async def names(session: AsyncSession, jobs: Sequence[Job]) -> tuple[dict[str, str], dict[str, str]]:
    """App names and owner logins of some jobs (for display; the jobs themselves were rights-checked)."""
    app_uids = {j.app_uid for j in jobs}
    owner_uids = {j.owner_uid for j in jobs if j.owner_uid}
    apps: dict[str, str] = {}
    owners: dict[str, str] = {}
    if app_uids:
        found = await session.execute(select(App.uid, App.name).where(App.uid.in_(app_uids)))
        apps = {str(u): str(n) for u, n in found.all()}
    if owner_uids:
        found = await session.execute(select(User.uid, User.login).where(User.uid.in_(owner_uids)))
        owners = {str(u): str(n) for u, n in found.all()}
    return apps, owners


async def timeline(session: AsyncSession, actor: Actor, job_uid: str) -> list[Event]:
    """A job's events, oldest first, as the event log shows them to ``actor``."""
    stmt = select(Event).where(Event.object_uid == job_uid, visible_events(actor)).order_by(Event.id)
    return list((await session.execute(stmt.limit(500))).scalars().all())


async def attempts(session: AsyncSession, job_uid: str) -> list[tuple[Attempt, str]]:
    """A job's runs, oldest first, with their host's name."""
    stmt = (
        select(Attempt, Host.name)
        .outerjoin(Host, Host.uid == Attempt.host_uid)
        .where(Attempt.job_uid == job_uid)
        .order_by(Attempt.started)
    )
    return [(a, name or a.host_uid) for a, name in (await session.execute(stmt)).all()]


async def status_counts(session: AsyncSession, actor: Actor) -> dict[str, int]:
    """How many jobs ``actor`` may read are in each status."""
    stmt = select(Job.status, func.count()).where(visible(actor, Job)).group_by(Job.status)
    found = {str(s): int(n) for s, n in (await session.execute(stmt)).all()}
    return {s.value: found.get(s.value, 0) for s in JobStatus}


def _mine(actor: Actor) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """The jobs (and their events) the overview's history counts: all for a super user, else one's own."""
    if actor.rights is UserRights.SUPER_USER:
        return visible(actor, Job), visible_events(actor)
    return Job.owner_uid == actor.uid, and_(visible_events(actor), Event.object_owner_uid == actor.uid)


async def _first_event_since(session: AsyncSession, since: datetime) -> int | None:
    """The first event id at or after ``since``: a binary search on the primary key (events are
    written in time order), so the last hour is an id range and no index on ``at`` is needed."""
    lo, hi = (await session.execute(select(func.min(Event.id), func.max(Event.id)))).one()
    if hi is None:
        return None
    lo, hi = int(lo), int(hi) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        at = (
            await session.execute(select(Event.at).where(Event.id >= mid).order_by(Event.id).limit(1))
        ).scalar()
        if at is not None and at < since:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _bucket(dialect: str, start: datetime) -> ColumnElement[Any]:
    """An event's minute since ``start`` (0-based), in SQL."""
    epoch = int(start.timestamp())
    if dialect == "postgresql":
        return func.floor((func.extract("epoch", Event.at) - epoch) / BUCKET_SECONDS)
    return cast((cast(func.strftime("%s", Event.at), Integer) - epoch) / BUCKET_SECONDS, Integer)


def _count(cond: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.sum(case((cond, 1), else_=0))


@dataclass(frozen=True)
class History:
    """The last hour, minute by minute: completions per second and queue depth (PENDING jobs)."""

    start: datetime
    rate: list[float]
    depth: list[int]
    pending_now: int


async def history(session: AsyncSession, actor: Actor, now: datetime | None = None) -> History:
    """Derived from the events table (every process writes it), so it is right with several processes:
    the depth at the end of each minute is today's PENDING count minus what entered the queue since,
    plus what left it."""
    now = now or utcnow()
    buckets = int(HISTORY.total_seconds()) // BUCKET_SECONDS
    start = now - timedelta(seconds=buckets * BUCKET_SECONDS)
    jobs_rule, events_rule = _mine(actor)
    pending_now = (
        await session.execute(
            select(func.count()).select_from(Job).where(Job.status == JobStatus.PENDING.value, jobs_rule)
        )
    ).scalar_one()
    done = [0] * buckets
    into = [0] * (buckets + 1)
    out = [0] * (buckets + 1)
    first = await _first_event_since(session, start)
    if first is not None:
        bucket = _bucket(session.get_bind().dialect.name, start).label("b")
        pending = JobStatus.PENDING.value
        stmt = (
            select(
                bucket,
                _count(Event.to_status.in_(DONE)),
                _count(and_(Event.to_status == pending, Event.from_status.is_distinct_from(pending))),
                _count(and_(Event.from_status == pending, Event.to_status.is_distinct_from(pending))),
            )
            .where(Event.id >= first, Event.at >= start, Event.kind == "work", events_rule)
            .group_by(bucket)
        )
        for b, d, i, o in (await session.execute(stmt)).all():
            k = min(max(int(b), 0), buckets - 1)
            done[k] += int(d or 0)
            into[k] += int(i or 0)
            out[k] += int(o or 0)
    depth = [0] * buckets
    level = int(pending_now)
    for k in range(buckets - 1, -1, -1):  # walk back from now
        depth[k] = max(level, 0)
        level += out[k] - into[k]
    return History(start, [d / BUCKET_SECONDS for d in done], depth, int(pending_now))


async def hosts_alive(session: AsyncSession, actor: Actor, alive: ColumnElement[bool]) -> tuple[int, int]:
    """(alive, all) hosts ``actor`` may read."""
    rule = visible(actor, Host)
    total = (await session.execute(select(func.count()).select_from(Host).where(rule))).scalar_one()
    live = (await session.execute(select(func.count()).select_from(Host).where(rule, alive))).scalar_one()
    return int(live), int(total)


@dataclass(frozen=True)
class Quarantine:
    """An application a host may not run for now, and why."""

    app: str  # its name, or a placeholder when the viewer may not read it
    until: datetime
    reason: str | None


@dataclass(frozen=True)
class Trust:
    """A host's reliability at a glance: of the applications it ran validated jobs of, for how many it is
    trusted (adaptive validation runs their jobs once on it), and its quarantines still running."""

    apps: int
    trusted: int
    quarantines: list[Quarantine]


def host_trust(hosts: Sequence[HostOut], now: datetime | None = None) -> dict[str, Trust]:
    """The ``Trust`` of each host that has reliability records, from what the host list already holds
    (``HostOut.reliability``: applications the viewer may not read are not named there). A quarantined
    host is not counted as trusted for that app."""
    moment = now or utcnow()
    out: dict[str, Trust] = {}
    for h in hosts:
        if not h.reliability:
            continue
        quarantines = sorted(
            (
                Quarantine(r.app, r.quarantined_until, r.reason)
                for r in h.reliability
                if r.quarantined_until is not None and r.quarantined_until > moment
            ),
            key=lambda q: (q.until, q.app),
        )
        out[h.uid] = Trust(len(h.reliability), sum(1 for r in h.reliability if r.trusted), quarantines)
    return out
