"""The one writer of job status: every transition goes through :func:`transition`.

The caller reads a job (a :class:`Seen`: uid, status, retry count, current attempt) and asks for a
trigger; the pure table (``common/jobstates.py``) decides the new status from what was read, and the
UPDATE applies it only if the row still holds what was read (compare-and-set in the WHERE clause). A
stale read — the reaper's LOSE racing a COMPLETE, a report of an attempt that has since been replaced —
matches no row and changes nothing; the caller learns it from the ``None`` it gets back.

Statements are SQLAlchemy Core (no ORM objects on the hot path); the event of each change is inserted in
the same transaction. Observers (wake-ups, metrics, live views) are attached to the session factory
(:func:`observe`) and called once the transaction has committed, with every change it made: this is
the one place where job status changes, so it is the one place to hook.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from common.enums import AttemptState, JobStatus
from common.errors import IllegalTransition
from common.jobstates import FINAL, Trigger, advance
from server.authz import Actor
from server.db.models import Attempt, Event, Job, utcnow

logger = logging.getLogger(__name__)

MAX_REASON = 1024
# What happens to the current attempt when a trigger moves its job (None: the attempt goes on).
ENDS_ATTEMPT: dict[Trigger, AttemptState | None] = {
    Trigger.COMPLETE: AttemptState.COMPLETED,
    Trigger.RESULT_PENDING: None,
    Trigger.LOSE: AttemptState.LOST,
    Trigger.ABORT: AttemptState.ABORTED,
    Trigger.FAIL: AttemptState.CANCELLED,  # the host's own failure report says FAILED
    Trigger.HOLD: AttemptState.CANCELLED,
}
# Columns a transition clears when the job leaves its host.
_OFF_HOST = {"host_uid": None, "started": None, "attempt_uid": None}

CHANGES = "xw_changes"  # session.info key: the changes of the open transaction
OBSERVERS = "xw_observers"  # session.info key (set on the session factory): who hears of them


@dataclass(frozen=True)
class Change:
    """One status change, as observers hear of it after the commit."""

    job: str
    before: JobStatus
    after: JobStatus
    trigger: Trigger


Observer = Callable[[list[Change]], None]


def observe(factory_info: dict[str, Any], observer: Observer) -> None:
    """Call ``observer`` with the changes of every transaction that commits (on sessions made with
    ``info=factory_info``)."""
    factory_info.setdefault(OBSERVERS, []).append(observer)


def note_change(session: AsyncSession, change: Change) -> None:
    """Queue a change for the observers of ``session`` (told after the commit, forgotten on rollback)."""
    session.info.setdefault(CHANGES, []).append(change)


@sa_event.listens_for(Session, "after_commit")
def _tell_observers(session: Session) -> None:
    changes: list[Change] = session.info.pop(CHANGES, [])
    if not changes:
        return
    for observer in session.info.get(OBSERVERS, ()):
        try:
            observer(changes)
        except Exception:  # an observer must never undo or break a committed change
            logger.exception("job status observer failed")


@sa_event.listens_for(Session, "after_rollback")
def _forget_changes(session: Session) -> None:
    session.info.pop(CHANGES, None)


@dataclass(frozen=True)
class Seen:
    """What a caller read of a job: the expectation the write is conditional on."""

    uid: str
    status: JobStatus
    retry: int
    max_retries: int
    owner_uid: str | None = None
    attempt: str | None = None

    @classmethod
    def of(cls, job: Job) -> Seen:
        return cls(job.uid, JobStatus(job.status), job.retry, job.max_retries, job.owner_uid, job.attempt_uid)

    @classmethod
    def row(cls, row: Any) -> Seen:
        """From a row of :data:`SEEN_COLUMNS`."""
        uid, status, retry, max_retries, owner, attempt = tuple(row)[:6]
        return cls(uid, JobStatus(status), retry, max_retries, owner, attempt)


SEEN_COLUMNS = (Job.uid, Job.status, Job.retry, Job.max_retries, Job.owner_uid, Job.attempt_uid)


def event(
    actor: Actor | None,
    kind: str,
    object_uid: str,
    owner_uid: str | None,
    action: str,
    *,
    from_status: str | None = None,
    to_status: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """One event row (for :func:`insert_events`)."""
    return {
        "at": utcnow(),
        "actor_uid": actor.uid if actor else None,
        "kind": kind,
        "object_uid": object_uid,
        "object_owner_uid": owner_uid,
        "action": action,
        "from_status": from_status,
        "to_status": to_status,
        "reason": reason[:MAX_REASON] if reason else None,
    }


async def insert_events(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert event rows in one statement (executemany)."""
    if rows:
        await session.execute(insert(Event), list(rows))


async def transition(
    session: AsyncSession,
    seen: Seen,
    trigger: Trigger,
    *,
    actor: Actor | None,
    reason: str = "",
    values: Mapping[str, Any] | None = None,
    attempt_state: AttemptState | None = None,
) -> JobStatus | None:
    """Apply ``trigger`` to the job as it was ``seen``; the new status, or None if it changed meanwhile.

    Raises IllegalTransition if the table has no such edge from the seen status (logged). ``values`` are
    more columns to set with the status (a claim's host and attempt, a result); ``attempt_state``
    overrides how the current attempt ends (:data:`ENDS_ATTEMPT`).
    """
    try:
        step = advance(seen.status, trigger, retry=seen.retry, max_retries=seen.max_retries)
    except IllegalTransition:
        logger.warning("refused %s on job %s in %s (%s)", trigger.value, seen.uid, seen.status.value, reason)
        raise
    why = "; ".join(r for r in (reason, step.reason) if r)[:MAX_REASON] or None
    now = utcnow()
    sets: dict[str, Any] = {"status": step.status.value, "retry": step.retry, "status_reason": why}
    if step.status in (JobStatus.PENDING, JobStatus.WAITING, JobStatus.UNAVAILABLE):
        sets.update(_OFF_HOST)
    elif step.status is JobStatus.RUNNING and seen.status is JobStatus.PENDING:
        sets["started"] = now
    if step.status in FINAL:
        sets["completed"] = now
    sets["modified"] = now
    sets.update(values or {})
    stmt = (
        update(Job)
        .where(Job.uid == seen.uid, Job.status == seen.status.value, Job.retry == seen.retry)
        .values(**sets)
        .execution_options(synchronize_session=False)
    )
    if seen.attempt is not None:
        stmt = stmt.where(Job.attempt_uid == seen.attempt)
    elif seen.status in (JobStatus.RUNNING, JobStatus.DATAREQUEST):
        stmt = stmt.where(Job.attempt_uid.is_(None))
    if getattr(await session.execute(stmt), "rowcount", 0) != 1:
        return None  # someone else moved it first: nothing written
    ends = attempt_state if attempt_state is not None else ENDS_ATTEMPT.get(trigger)
    if seen.attempt is not None and ends is not None and seen.attempt != (values or {}).get("attempt_uid"):
        await end_attempts(session, [seen.attempt], ends, why)
    await insert_events(
        session,
        [
            event(
                actor,
                "work",
                seen.uid,
                seen.owner_uid,
                trigger.value,
                from_status=seen.status.value,
                to_status=step.status.value,
                reason=why,
            )
        ],
    )
    note_change(session, Change(seen.uid, seen.status, step.status, trigger))
    return step.status


async def end_attempts(
    session: AsyncSession, uids: Iterable[str], state: AttemptState, reason: str | None = None
) -> None:
    """Mark attempts ended (those already ended keep their first ending)."""
    wanted = list(uids)
    if not wanted:
        return
    await session.execute(
        update(Attempt)
        .where(Attempt.uid.in_(wanted), Attempt.ended.is_(None))
        .values(state=state.value, ended=utcnow(), reason=reason[:MAX_REASON] if reason else None)
        .execution_options(synchronize_session=False)
    )
