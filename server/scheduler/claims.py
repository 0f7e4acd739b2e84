"""Claiming jobs for a host, several at once; each claim is a new attempt.

One transaction per work request: select up to ``max`` matching PENDING jobs, oldest first (PostgreSQL
locks them with FOR UPDATE SKIP LOCKED, so concurrent claimers in other processes take other jobs;
SQLite has a single writer, one pooled connection, so the whole claim runs alone), move each through
the status writer (PENDING -> RUNNING, compare-and-set), record an attempt per job, and build the
assignments with three more queries whatever the batch size (apps, input references, data).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import AppType, AttemptState, DataStatus
from common.jobstates import Trigger
from common.schemas import Assignment, FileRef, JobOut
from common.uri import new_uid
from server.authz import Actor
from server.db.models import App, Attempt, Data, Job, JobRef, utcnow
from server.scheduler.matching import HostView, binary_for, match_clause
from server.scheduler.writer import SEEN_COLUMNS, Seen, transition
from server.views import job_out

MAX_CLAIM = 64  # jobs one work request may take


@dataclass(frozen=True)
class Claimed:
    """A job just claimed: its new attempt and, if it can run, its assignment (else why not)."""

    job_uid: str
    attempt: str
    assignment: Assignment | None
    unrunnable: str | None = None


async def claim(session: AsyncSession, host: HostView, actor: Actor, want: int) -> list[Claimed]:
    """Claim up to ``want`` jobs ``host`` may run, in the caller's transaction."""
    stmt = (
        select(*SEEN_COLUMNS)
        .where(match_clause(host, actor.rights, actor.group_uid))
        .order_by(Job.created)
        .limit(max(1, min(want, MAX_CLAIM)))
    )
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    seen = [Seen.row(r) for r in (await session.execute(stmt)).all()]
    now = utcnow()
    taken: list[tuple[str, str]] = []
    for job in seen:
        attempt = new_uid()
        moved = await transition(
            session,
            job,
            Trigger.CLAIM,
            actor=actor,
            reason=f"claimed by {host.name} (attempt {attempt})",
            values={"host_uid": host.uid, "attempt_uid": attempt, "started": now},
        )
        if moved is not None:
            taken.append((job.uid, attempt))
    if not taken:
        return []
    await session.execute(
        insert(Attempt),
        [
            {
                "uid": attempt,
                "job_uid": job_uid,
                "host_uid": host.uid,
                "state": AttemptState.RUNNING.value,
                "started": now,
                "cpu_seconds": 0.0,
                "max_rss": 0,
                "net_in": 0,
                "net_out": 0,
            }
            for job_uid, attempt in taken
        ],
    )
    return await _assign(session, host, taken)


async def _assign(session: AsyncSession, host: HostView, taken: Sequence[tuple[str, str]]) -> list[Claimed]:
    uids = [job_uid for job_uid, _ in taken]
    jobs = {j.uid: j for j in (await session.execute(select(Job).where(Job.uid.in_(uids)))).scalars()}
    app_uids = {j.app_uid for j in jobs.values()}
    apps = {a.uid: a for a in (await session.execute(select(App).where(App.uid.in_(app_uids)))).scalars()}
    refs: dict[str, list[str]] = {}
    for job_uid, data_uid in (
        await session.execute(select(JobRef.job_uid, JobRef.data_uid).where(JobRef.job_uid.in_(uids)))
    ).all():
        refs.setdefault(job_uid, []).append(data_uid)
    binaries = {
        a.uid: binary_for(a, host.os, host.cpu) for a in apps.values()
    }  # the app binary that fits this host
    wanted = {d for ds in refs.values() for d in ds} | {b["data"] for b in binaries.values() if b}
    datas = {d.uid: d for d in (await session.execute(select(Data).where(Data.uid.in_(wanted)))).scalars()}
    out: list[Claimed] = []
    for job_uid, attempt in taken:
        job = jobs[job_uid]
        try:
            assignment = _assignment(job_out(job), attempt, job, apps, binaries, datas, host)
        except _Unrunnable as why:
            out.append(Claimed(job_uid, attempt, None, str(why)))
            continue
        out.append(Claimed(job_uid, attempt, assignment))
    return out


async def fail_unrunnable(session: AsyncSession, actor: Actor, claimed: Sequence[Claimed]) -> int:
    """Jobs claimed but impossible to run (app or inputs gone) go to ERROR with the reason."""
    failed = 0
    for c in claimed:
        if c.assignment is not None:
            continue
        job = await session.get(Job, c.job_uid)
        if job is not None and await transition(
            session, Seen.of(job), Trigger.FAIL, actor=actor, reason=f"cannot run: {c.unrunnable}"
        ):
            failed += 1
    return failed


class _Unrunnable(Exception):
    """A claimed job that cannot run here (its app or inputs are gone)."""


def _assignment(
    job_wire: JobOut,
    attempt: str,
    job: Job,
    apps: dict[str, App],
    binaries: dict[str, dict[str, Any] | None],
    datas: dict[str, Data],
    host: HostView,
) -> Assignment:
    app = apps.get(job.app_uid)
    if app is None:
        raise _Unrunnable("its application was deleted")
    binary = binaries.get(app.uid)
    if binary is None:
        raise _Unrunnable(f"application {app.name!r} has no binary for {host.os}/{host.cpu}")

    def ref(uid: str) -> FileRef:
        d = datas.get(uid)
        if d is None or d.status != DataStatus.AVAILABLE.value or d.sha256 is None or d.size is None:
            raise _Unrunnable(f"data {uid} is missing or has no content")
        return FileRef(uid=d.uid, name=d.name, sha256=d.sha256, size=d.size)

    return Assignment(
        attempt=attempt,
        job=job_wire,
        app_name=app.name,
        app_type=AppType(app.type),
        executable=ref(binary["data"]),
        inputs=[ref(u) for u in [*job.env, *job.inputs]],
        stdin=ref(job.stdin_uid) if job.stdin_uid else None,
        wallclock=job.wallclock,
        memory=job.memory,
    )


async def attempt_files(session: AsyncSession, host: HostView, attempt_uid: str) -> dict[str, FileRef] | None:
    """The files an attempt of ``host`` may fetch (uid -> ref), None if it is not a live attempt of it."""
    row = (
        await session.execute(select(Job).where(Job.attempt_uid == attempt_uid, Job.host_uid == host.uid))
    ).scalar_one_or_none()
    if row is None:
        return None
    claimed = await _assign(session, host, [(row.uid, attempt_uid)])
    assignment = claimed[0].assignment
    if assignment is None:
        return None
    files = [assignment.executable, *assignment.inputs, *([assignment.stdin] if assignment.stdin else [])]
    return {f.uid: f for f in files}
