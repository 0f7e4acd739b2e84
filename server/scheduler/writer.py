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
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from common.enums import AttemptState, JobStatus
from common.errors import IllegalTransition
from common.jobstates import ACTIVE, FINAL, Trigger, advance
from server.authz import Actor
from server.db.models import Attempt, Event, Job, table_of, utcnow

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
SUBMITTED = "xw_submitted"  # session.info key: jobs the open transaction inserted
SUBMISSION_OBSERVERS = "xw_submission_observers"  # session.info key (factory): who hears of those


@dataclass(frozen=True)
class Change:
    """One status change, as observers hear of it after the commit."""

    job: str
    before: JobStatus
    after: JobStatus
    trigger: Trigger
    since: datetime | None = None  # when the job entered ``before``, if its reader knew (Seen.since)


Observer = Callable[[list[Change]], None]
SubmissionObserver = Callable[[int], None]  # told how many jobs a committed transaction submitted


def observe(factory_info: dict[str, Any], observer: Observer) -> None:
    """Call ``observer`` with the changes of every transaction that commits (on sessions made with
    ``info=factory_info``)."""
    factory_info.setdefault(OBSERVERS, []).append(observer)


def observe_submissions(factory_info: dict[str, Any], observer: SubmissionObserver) -> None:
    """Call ``observer`` with the number of jobs every committed transaction submitted (jobs are born
    in server/scheduler/submission.py, not through :func:`transition`)."""
    factory_info.setdefault(SUBMISSION_OBSERVERS, []).append(observer)


def note_change(session: AsyncSession, change: Change) -> None:
    """Queue a change for the observers of ``session`` (told after the commit, forgotten on rollback)."""
    session.info.setdefault(CHANGES, []).append(change)


def note_submitted(session: AsyncSession, count: int) -> None:
    """Count jobs inserted in ``session``'s transaction (told after the commit, forgotten on rollback)."""
    session.info[SUBMITTED] = session.info.get(SUBMITTED, 0) + count


@sa_event.listens_for(Session, "after_commit")
def _tell_observers(session: Session) -> None:
    submitted: int = session.info.pop(SUBMITTED, 0)
    if submitted:
        for counter in session.info.get(SUBMISSION_OBSERVERS, ()):
            try:
                counter(submitted)
            except Exception:  # as below: the jobs are stored whatever an observer does
                logger.exception("job submission observer failed")
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
    session.info.pop(SUBMITTED, None)


@dataclass(frozen=True)
class Seen:
    """What a caller read of a job: the expectation the write is conditional on."""

    uid: str
    status: JobStatus
    retry: int
    max_retries: int
    owner_uid: str | None = None
    attempt: str | None = None
    # When the job entered the status seen, if the reader has it at hand (never an extra query): for a
    # RUNNING or DATAREQUEST job when it started, otherwise when it last changed. The metrics' queue
    # wait and run time come from it (server/metrics/).
    since: datetime | None = None

    @classmethod
    def of(cls, job: Job) -> Seen:
        status = JobStatus(job.status)
        since = job.started if status in ACTIVE else job.modified
        return cls(job.uid, status, job.retry, job.max_retries, job.owner_uid, job.attempt_uid, since)

    @classmethod
    def row(cls, row: Any, since: datetime | None = None) -> Seen:
        """From a row of :data:`SEEN_COLUMNS`."""
        uid, status, retry, max_retries, owner, attempt = tuple(row)[:6]
        return cls(uid, JobStatus(status), retry, max_retries, owner, attempt, since)


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


_INSERT_EVENTS = insert(table_of(Event))  # Core, built once: no ORM bulk-insert machinery per call


async def insert_events(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert event rows in one statement (executemany)."""
    if rows:
        await session.execute(_INSERT_EVENTS, list(rows))


@dataclass(frozen=True)
class Move:
    """One job to move in :func:`transition_many`: as it was seen, why, and more columns to set."""

    seen: Seen
    reason: str = ""
    values: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class _Plan:
    move: Move
    after: JobStatus
    why: str | None
    sets: dict[str, Any]


def _plan(move: Move, trigger: Trigger, now: datetime) -> _Plan:
    seen = move.seen
    try:
        step = advance(seen.status, trigger, retry=seen.retry, max_retries=seen.max_retries)
    except IllegalTransition:
        logger.warning(
            "refused %s on job %s in %s (%s)", trigger.value, seen.uid, seen.status.value, move.reason
        )
        raise
    why = "; ".join(r for r in (move.reason, step.reason) if r)[:MAX_REASON] or None
    sets: dict[str, Any] = {"status": step.status.value, "retry": step.retry, "status_reason": why}
    if step.status in (JobStatus.PENDING, JobStatus.WAITING, JobStatus.UNAVAILABLE):
        sets.update(_OFF_HOST)
    elif step.status is JobStatus.RUNNING and seen.status is JobStatus.PENDING:
        sets["started"] = now
    if step.status in FINAL:
        sets["completed"] = now
    sets["modified"] = now
    sets.update(move.values or {})
    return _Plan(move, step.status, why, sets)


def _expectation(seen: Seen) -> tuple[str, ...]:
    """Which columns the compare-and-set checks (the attempt only where a job has or must lack one)."""
    if seen.attempt is not None:
        return ("uid", "status", "retry", "attempt_uid")
    if seen.status in (JobStatus.RUNNING, JobStatus.DATAREQUEST):
        return ("uid", "status", "retry", "attempt_null")
    return ("uid", "status", "retry")


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
    [moved] = await transition_many(
        session, [Move(seen, reason, values)], trigger, actor=actor, attempt_state=attempt_state
    )
    return moved


async def transition_many(
    session: AsyncSession,
    moves: Sequence[Move],
    trigger: Trigger,
    *,
    actor: Actor | None,
    attempt_state: AttemptState | None = None,
    locked: bool = False,
    end_attempts: bool = True,
    extra_events: Sequence[Mapping[str, Any]] = (),
) -> list[JobStatus | None]:
    """:func:`transition` for several jobs: each new status, or None where the job changed meanwhile.

    ``locked``: the caller holds these rows (PostgreSQL FOR UPDATE, or SQLite's single writer in this
    very transaction), so no row can have changed since it was read: the updates then go as one
    executemany per shape of statement instead of one statement per job. Every write stays a
    compare-and-set either way. ``end_attempts=False``: the caller ends the attempts itself (with more
    columns); ``extra_events`` go into the same insert as the moves' own events.
    """
    now = utcnow()
    plans = [_plan(m, trigger, now) for m in moves]
    order = sorted(range(len(plans)), key=lambda i: plans[i].move.seen.uid)  # locks in uid order
    ordered = [plans[i] for i in order]
    done_ordered = await (_update_locked(session, ordered) if locked else _update_each(session, ordered))
    done = [False] * len(plans)
    for i, ok in zip(order, done_ordered, strict=True):
        done[i] = ok
    applied = [p for p, ok in zip(plans, done, strict=True) if ok]
    ends = attempt_state if attempt_state is not None else ENDS_ATTEMPT.get(trigger)
    if ends is not None and end_attempts:
        await end_attempts_with(
            session,
            [
                (p.move.seen.attempt, p.why)
                for p in applied
                if p.move.seen.attempt is not None
                and p.move.seen.attempt != (p.move.values or {}).get("attempt_uid")
            ],
            ends,
        )
    await insert_events(
        session,
        [
            event(
                actor,
                "work",
                p.move.seen.uid,
                p.move.seen.owner_uid,
                trigger.value,
                from_status=p.move.seen.status.value,
                to_status=p.after.value,
                reason=p.why,
            )
            for p in applied
        ]
        + list(extra_events),
    )
    for p in applied:
        seen = p.move.seen
        note_change(session, Change(seen.uid, seen.status, p.after, trigger, seen.since))
    return [p.after if ok else None for p, ok in zip(plans, done, strict=True)]


async def _update_each(session: AsyncSession, plans: Sequence[_Plan]) -> list[bool]:
    done = []
    for p in plans:
        seen = p.move.seen
        stmt = (
            update(Job)
            .where(Job.uid == seen.uid, Job.status == seen.status.value, Job.retry == seen.retry)
            .values(**p.sets)
            .execution_options(synchronize_session=False)
        )
        if "attempt_uid" in _expectation(seen):
            stmt = stmt.where(Job.attempt_uid == seen.attempt)
        elif "attempt_null" in _expectation(seen):
            stmt = stmt.where(Job.attempt_uid.is_(None))
        done.append(getattr(await session.execute(stmt), "rowcount", 0) == 1)
    return done


_Shape = tuple[tuple[str, ...], tuple[str, ...]]
_LOCKED_UPDATES: dict[_Shape, Any] = {}  # statement per shape, built once (their cache keys memoized)


def _locked_update(columns: tuple[str, ...], expect: tuple[str, ...]) -> Any:
    stmt = _LOCKED_UPDATES.get((columns, expect))
    if stmt is None:
        jobs = table_of(Job)
        where = [jobs.c.uid == bindparam("w_uid"), jobs.c.status == bindparam("w_status")]
        where.append(jobs.c.retry == bindparam("w_retry"))
        if "attempt_uid" in expect:
            where.append(jobs.c.attempt_uid == bindparam("w_attempt"))
        elif "attempt_null" in expect:
            where.append(jobs.c.attempt_uid.is_(None))
        stmt = update(jobs).where(*where).values({c: bindparam("v_" + c) for c in columns})
        _LOCKED_UPDATES[(columns, expect)] = stmt
    return stmt


async def _update_locked(session: AsyncSession, plans: Sequence[_Plan]) -> list[bool]:
    """One executemany per statement shape (same columns set, same expectation)."""
    groups: dict[_Shape, list[_Plan]] = {}
    for p in plans:
        groups.setdefault((tuple(sorted(p.sets)), _expectation(p.move.seen)), []).append(p)
    for (columns, expect), group in groups.items():
        stmt = _locked_update(columns, expect)
        rows = [
            {
                "w_uid": p.move.seen.uid,
                "w_status": p.move.seen.status.value,
                "w_retry": p.move.seen.retry,
                "w_attempt": p.move.seen.attempt,
                **{"v_" + c: p.sets[c] for c in columns},
            }
            for p in group
        ]
        result = await session.execute(stmt, rows)
        count = getattr(result, "rowcount", -1)
        if count not in (-1, len(rows)):  # -1: the driver does not count executemany rows
            raise RuntimeError(f"{len(rows) - count} of {len(rows)} locked jobs changed under their lock")
    return [True] * len(plans)


async def end_attempts(
    session: AsyncSession, uids: Iterable[str], state: AttemptState, reason: str | None = None
) -> None:
    """Mark attempts ended (those already ended keep their first ending)."""
    await end_attempts_with(session, [(uid, reason) for uid in uids], state)


async def end_attempts_with(
    session: AsyncSession, items: Sequence[tuple[str | None, str | None]], state: AttemptState
) -> None:
    """Mark attempts ended, each with its own reason, in one executemany."""
    rows = [
        {"w_uid": uid, "v_reason": reason[:MAX_REASON] if reason else None}
        for uid, reason in items
        if uid is not None
    ]
    if not rows:
        return
    attempts = table_of(Attempt)
    await session.execute(
        update(attempts)
        .where(attempts.c.uid == bindparam("w_uid"), attempts.c.ended.is_(None))
        .values(state=state.value, ended=utcnow(), reason=bindparam("v_reason")),
        rows,
    )
