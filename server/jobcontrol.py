"""A person's moves on one job (hold, release, delete): the rights check and the move, in one place.

The API's routes and the dashboard's buttons call these, so both follow the same rules; the status
change itself goes through the scheduler's one status writer (server/scheduler/lifecycle.py).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import JobStatus
from common.errors import NotFound
from common.jobstates import Trigger, allowed
from common.rights import Perm
from server.authz import Actor, can, require
from server.db.models import Job
from server.removal import delete_job_in
from server.scheduler import lifecycle


async def writable_job(session: AsyncSession, actor: Actor, uid: str) -> Job:
    """The job ``uid`` if ``actor`` may change it (NotFound if it cannot even read it, else Forbidden)."""
    job = await session.get(Job, uid)
    if job is None:
        raise NotFound(f"no job {uid}")
    require(actor, job, Perm.WRITE, "job")
    return job


async def hold_job(session: AsyncSession, actor: Actor, uid: str, reason: str = "") -> JobStatus:
    """Hold job ``uid`` (owner, group administrator or super user)."""
    return await lifecycle.hold(session, await writable_job(session, actor, uid), actor, reason)


async def release_job(session: AsyncSession, actor: Actor, uid: str) -> JobStatus:
    """Release held job ``uid`` back to the queue."""
    return await lifecycle.release(session, await writable_job(session, actor, uid), actor)


async def delete_job(session: AsyncSession, actor: Actor, uid: str) -> None:
    """Delete job ``uid`` in any state."""
    job = await session.get(Job, uid)
    if job is None:
        raise NotFound(f"no job {uid}")
    await delete_job_in(session, actor, job)


def may_hold(actor: Actor, job: Job) -> bool:
    """Whether a hold button makes sense for ``actor`` on ``job`` as it stands."""
    return can(actor, job, Perm.WRITE) and allowed(JobStatus(job.status), Trigger.HOLD)


def may_release(actor: Actor, job: Job) -> bool:
    return can(actor, job, Perm.WRITE) and allowed(JobStatus(job.status), Trigger.RELEASE)


def may_delete(actor: Actor, job: Job) -> bool:
    return can(actor, job, Perm.WRITE)
