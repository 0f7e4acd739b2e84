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
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Select, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import AppType, AttemptState, JobStatus
from common.jobstates import Trigger
from common.schemas import Assignment, FileRef
from common.uri import new_uid
from server.authz import Actor
from server.db.models import Attempt, Job, table_of, utcnow
from server.scheduler.catalog import AppInfo, Catalog
from server.scheduler.matching import HostView, binary_for, match_of, match_where
from server.scheduler.writer import Move, Seen, transition, transition_many
from server.views import job_out

MAX_CLAIM = 64  # jobs one work request may take
_INSERT_ATTEMPTS = insert(table_of(Attempt))  # Core, built once


@lru_cache(maxsize=4 * MAX_CLAIM)
def _claim_select(shape: tuple[bool, str, bool, bool], limit: int, locking: bool) -> Select[Any]:
    """The candidates of a claim, oldest first (one statement object per shape, limit and dialect)."""
    stmt = select(table_of(Job)).where(match_where(shape)).order_by(Job.created).limit(limit)
    return stmt.with_for_update(skip_locked=True) if locking else stmt


@dataclass(frozen=True)
class Claimed:
    """A job just claimed: its new attempt and, if it can run, its assignment (else why not)."""

    job_uid: str
    attempt: str
    assignment: Assignment | None
    unrunnable: str | None = None


async def claim(
    session: AsyncSession, host: HostView, actor: Actor, want: int, catalog: Catalog
) -> list[Claimed]:
    """Claim up to ``want`` jobs ``host`` may run, in the caller's transaction."""
    match = match_of(host, actor.rights, actor.group_uid)
    locking = session.bind is not None and session.bind.dialect.name == "postgresql"
    stmt = _claim_select(match.shape, max(1, min(want, MAX_CLAIM)), locking)
    rows = (await session.execute(stmt, match.params)).all()
    if not rows:
        return []
    rows = _one_replica_each(rows)
    if locking and any(r.replica_of is not None for r in rows):
        rows = await _replicas_still_ours(session, host, rows)
        if not rows:
            return []
    now = utcnow()
    attempts = [new_uid() for _ in rows]
    # the candidates are ours: locked (PostgreSQL) or read in this single-writer transaction (SQLite)
    moved = await transition_many(
        session,
        [
            Move(
                # since: when it was queued (the transition that made it PENDING set modified)
                Seen.row((r.uid, r.status, r.retry, r.max_retries, r.owner_uid, r.attempt_uid), r.modified),
                f"claimed by {host.name} (attempt {attempt})",
                {"host_uid": host.uid, "attempt_uid": attempt, "started": now},
            )
            for r, attempt in zip(rows, attempts, strict=True)
        ],
        Trigger.CLAIM,
        actor=actor,
        locked=True,
    )
    taken = [
        SimpleNamespace(
            **{
                **r._asdict(),
                "status": JobStatus.RUNNING.value,
                "status_reason": f"claimed by {host.name} (attempt {a})",
                "host_uid": host.uid,
                "attempt_uid": a,
                "started": now,
                "modified": now,
            }
        )
        for r, a, ok in zip(rows, attempts, moved, strict=True)
        if ok is not None
    ]
    await session.execute(
        _INSERT_ATTEMPTS,
        [
            {
                "uid": job.attempt_uid,
                "job_uid": job.uid,
                "host_uid": host.uid,
                "owner_uid": host.owner_uid,
                "state": AttemptState.RUNNING.value,
                "started": now,
                "cpu_seconds": 0.0,
                "max_rss": 0,
                "net_in": 0,
                "net_out": 0,
            }
            for job in taken
        ],
    )
    unset = {job.replica_of for job in taken if job.hr_class == ""}
    if unset:  # homogeneous redundancy: this first replica fixes its siblings' OS/CPU class
        jobs = table_of(Job)
        siblings = select(jobs.c.uid).where(jobs.c.replica_of.in_(unset), jobs.c.hr_class == "")
        if locking:  # never wait on a sibling another claim holds as a candidate (no deadlock)
            siblings = siblings.with_for_update(skip_locked=True)
        await session.execute(update(jobs).where(jobs.c.uid.in_(siblings)).values(hr_class=host.platform))
    return await _assign(session, host, taken, catalog)


async def _replicas_still_ours(session: AsyncSession, host: HostView, rows: Sequence[Any]) -> list[Any]:
    """PostgreSQL: the candidates without replicas another transaction may be giving to a sibling host.

    Two hosts of one owner claiming at once would each read no sibling attempt (neither has committed)
    and take two replicas of one job. So a claim also locks the jobs its replicas belong to (skipping
    those another claim or the validator holds: those replicas wait for a later claim), then looks
    again, with what has committed since, for a sibling run on this host or a host of its owner."""
    parents = sorted({r.replica_of for r in rows if r.replica_of is not None})
    jobs, sib, attempts = table_of(Job), table_of(Job).alias("sib"), table_of(Attempt)
    locked = set(
        (
            await session.execute(
                select(jobs.c.uid)
                .where(jobs.c.uid.in_(parents))
                .order_by(jobs.c.uid)
                .with_for_update(skip_locked=True)
            )
        ).scalars()
    )
    ran = set()
    if locked:
        ran = set(
            (
                await session.execute(
                    select(sib.c.replica_of)
                    .join(attempts, attempts.c.job_uid == sib.c.uid)
                    .where(
                        sib.c.replica_of.in_(locked),
                        or_(attempts.c.host_uid == host.uid, attempts.c.owner_uid == (host.owner_uid or "")),
                    )
                )
            ).scalars()
        )
    return [r for r in rows if r.replica_of is None or (r.replica_of in locked and r.replica_of not in ran)]


def _one_replica_each(rows: Sequence[Any]) -> list[Any]:
    """The candidates without a second replica of the same job: one host never runs two of them."""
    seen: set[str] = set()
    kept = []
    for r in rows:
        if r.replica_of is not None:
            if r.replica_of in seen:
                continue
            seen.add(r.replica_of)
        kept.append(r)
    return kept


async def _assign(
    session: AsyncSession, host: HostView, jobs: Sequence[Any], catalog: Catalog
) -> list[Claimed]:
    """Assignments for claimed jobs (rows as claimed: the job's columns after the claim)."""
    apps = await catalog.apps(session, {j.app_uid for j in jobs})
    binaries = {a.uid: binary_for(a, host.os, host.cpu) for a in apps.values()}  # what fits this host
    wanted = {u for j in jobs for u in _inputs(j)} | {b["data"] for b in binaries.values() if b}
    files = await catalog.files(session, wanted)
    out: list[Claimed] = []
    for job in jobs:
        try:
            assignment = _assignment(job, apps, binaries, files, host)
        except _Unrunnable as why:
            out.append(Claimed(job.uid, job.attempt_uid, None, str(why)))
            continue
        out.append(Claimed(job.uid, job.attempt_uid, assignment))
    return out


def _inputs(job: Any) -> list[str]:
    return [*job.env, *job.inputs, *([job.stdin_uid] if job.stdin_uid else [])]


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
    job: Any,
    apps: dict[str, AppInfo],
    binaries: dict[str, dict[str, Any] | None],
    files: dict[str, FileRef],
    host: HostView,
) -> Assignment:
    app = apps.get(job.app_uid)
    if app is None:
        raise _Unrunnable("its application was deleted")
    binary = binaries.get(app.uid)
    if binary is None:
        raise _Unrunnable(f"application {app.name!r} has no binary for {host.os}/{host.cpu}")

    def ref(uid: str) -> FileRef:
        found = files.get(uid)
        if found is None:
            raise _Unrunnable(f"data {uid} is missing or has no content")
        return found

    shown = job_out(job)
    if job.replica_of is not None:  # a host runs a replica as a job of its own, unaware of its siblings
        shown = shown.model_copy(update={"replica_of": None})
    return Assignment(
        attempt=job.attempt_uid,
        job=shown,
        app_name=app.name,
        app_type=AppType(app.type),
        executable=ref(binary["data"]),
        inputs=[ref(u) for u in [*job.env, *job.inputs]],
        stdin=ref(job.stdin_uid) if job.stdin_uid else None,
        wallclock=job.wallclock,
        memory=job.memory,
    )


async def attempt_files(
    session: AsyncSession, host: HostView, attempt_uid: str, catalog: Catalog
) -> dict[str, FileRef] | None:
    """The files an attempt of ``host`` may fetch (uid -> ref), None if it is not a live attempt of it."""
    jobs = table_of(Job)
    stmt = select(jobs).where(jobs.c.attempt_uid == attempt_uid, jobs.c.host_uid == host.uid)
    row = (await session.execute(stmt)).first()
    if row is None:
        return None
    claimed = await _assign(session, host, [row], catalog)
    assignment = claimed[0].assignment
    if assignment is None:
        return None
    files = [assignment.executable, *assignment.inputs, *([assignment.stdin] if assignment.stdin else [])]
    return {f.uid: f for f in files}
