"""A job's life outside its runs: submission, hold, release, deletion, and inputs becoming ready.

Every status change goes through the status writer; a change that lost a race (the job moved on
between reading and writing) is a 409 for a person, and retried once for the system's own moves.

A validated job's replicas follow it: holding it cancels those still out (results already in are
kept for its release), deleting it deletes them, and once it is PENDING again (released, inputs
arrived) it starts the replicas it still needs. A replica itself is not moved by people: they act on
its job.
"""

from __future__ import annotations

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import AttemptState, DataStatus, JobStatus
from common.errors import Conflict
from common.jobstates import Trigger
from server.authz import Actor
from server.db.models import Data, Job, JobRef
from server.scheduler.writer import SEEN_COLUMNS, Seen, end_attempts, event, insert_events, transition
from server.validation import replication


async def move_or_409(
    session: AsyncSession, job: Job, trigger: Trigger, actor: Actor, reason: str
) -> JobStatus:
    """A person's move of ``job`` (as loaded): the new status, or Conflict if it changed meanwhile."""
    if job.replica_of is not None:
        raise Conflict(f"job {job.uid} is a replica of job {job.replica_of}: act on that job")
    moved = await transition(session, Seen.of(job), trigger, actor=actor, reason=reason)
    if moved is None:
        raise Conflict(f"job {job.uid} changed while you asked (it is no longer {job.status}); try again")
    return moved


async def hold(session: AsyncSession, job: Job, actor: Actor, reason: str) -> JobStatus:
    """Hold a job: WAITING until released; a running attempt is killed at its host's next heartbeat."""
    why = f"held by {actor.login}" + (f": {reason}" if reason else "")
    moved = await move_or_409(session, job, Trigger.HOLD, actor, why)
    if job.policy is not None:
        await replication.cancel(session, actor, await replication.outstanding(session, job.uid), why)
    return moved


async def release(session: AsyncSession, job: Job, actor: Actor) -> JobStatus:
    """Release a held job back to the queue (once its inputs are all there)."""
    if job.status == JobStatus.WAITING.value and await missing_inputs(session, job.uid):
        raise Conflict(f"job {job.uid} still waits for input data; upload it, then release")
    moved = await move_or_409(session, job, Trigger.RELEASE, actor, f"released by {actor.login}")
    if job.policy is not None and await replication.start(session, actor, [job.uid]):
        return JobStatus.REPLICATING
    return moved


async def delete_job(session: AsyncSession, job: Job, actor: Actor) -> None:
    """Delete a job in any state; a running attempt is cancelled (its host kills it at the next beat).
    A validated job's replicas go with it (their results stay the owner's data)."""
    if job.replica_of is not None:
        raise Conflict(f"job {job.uid} is a replica of job {job.replica_of}: delete that job")
    if job.policy is not None:
        if session.bind is not None and session.bind.dialect.name == "postgresql":
            # the validator and a release spawn replicas holding the job: wait for them, then take all
            await session.execute(select(Job.uid).where(Job.uid == job.uid).with_for_update())
        for replica in (await session.execute(select(Job).where(Job.replica_of == job.uid))).scalars():
            await _delete_one(session, replica, actor)
    await _delete_one(session, job, actor)


async def _delete_one(session: AsyncSession, job: Job, actor: Actor) -> None:
    if job.attempt_uid is not None:
        await end_attempts(
            session, [job.attempt_uid], AttemptState.CANCELLED, f"job deleted by {actor.login}"
        )
    await insert_events(
        session,
        [
            event(
                actor,
                "work",
                job.uid,
                job.owner_uid,
                "delete",
                from_status=job.status,
                reason="deleted by " + actor.login,
            )
        ],
    )
    await session.execute(delete(Job).where(Job.uid == job.uid).execution_options(synchronize_session=False))


async def missing_inputs(session: AsyncSession, job_uid: str) -> int:
    """How many of a job's inputs have no content yet (or no longer exist)."""
    stmt = (
        select(func.count())
        .select_from(JobRef)
        .outerjoin(Data, Data.uid == JobRef.data_uid)
        .where(JobRef.job_uid == job_uid)
        .where(or_(Data.uid.is_(None), Data.status != DataStatus.AVAILABLE.value))
    )
    return int((await session.execute(stmt)).scalar_one())


async def inputs_arrived(session: AsyncSession, actor: Actor, data: Data) -> int:
    """Jobs waiting for ``data`` whose inputs are now all there become PENDING; how many did."""
    waiting = (
        select(*SEEN_COLUMNS)
        .join(JobRef, JobRef.job_uid == Job.uid)
        .where(JobRef.data_uid == data.uid, Job.status == JobStatus.UNAVAILABLE.value)
    )
    ready: list[str] = []
    for row in (await session.execute(waiting)).all():
        if await missing_inputs(session, row.uid):
            continue
        reason = f"input {data.uid} uploaded"
        if await transition(session, Seen.row(row), Trigger.INPUTS_READY, actor=actor, reason=reason):
            ready.append(row.uid)
    return len(ready) + (await replication.start(session, actor, ready) if ready else 0)
