"""The end of an attempt: its result (inline in a report, or streamed), or a report that it failed,
awaits its upload, or was given back.

Every result names its attempt and is accepted only while that attempt is its job's current one on
the reporting host: a result from a run that was held, rescheduled or deleted meanwhile is refused and
changes nothing. A result becomes the data object ``ResultsOf_<label or uid>``, owned by the job's owner
(0700). Results up to ``INLINE_RESULT_BYTES`` are kept in their blob row (no file, no fsync): the small
results of a sweep cost one transaction per report, not one file each.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import AttemptState, DataStatus, JobStatus
from common.jobstates import ACTIVE, Trigger
from common.rights import PRIVATE
from common.schemas import INLINE_RESULT_BYTES, InlineResult, JobReport, ResultsReply
from common.uri import new_uid
from server import blobs
from server.authz import Actor
from server.db.models import Attempt, Data, Job, table_of, utcnow
from server.scheduler.matching import HostView
from server.scheduler.writer import (
    SEEN_COLUMNS,
    Move,
    Seen,
    event,
    insert_events,
    transition,
    transition_many,
)
from server.store import DataStore, Ingested

_INSERT_DATA = insert(table_of(Data))  # Core statements, built once
_ATTEMPTS = table_of(Attempt)
_ATTEMPT_RESULT = (  # the attempt ends COMPLETED with its result, in one statement
    update(_ATTEMPTS)
    .where(_ATTEMPTS.c.uid == bindparam("w_uid"))
    .values(
        state=AttemptState.COMPLETED.value,
        ended=bindparam("v_ended"),
        reason=bindparam("v_reason"),
        return_code=bindparam("v_rc"),
        result_uid=bindparam("v_data"),
    )
)
ACTIVE_VALUES = [s.value for s in ACTIVE]
NOT_CURRENT = "is not a current attempt of this host (its job was deleted, held or rescheduled)"


@dataclass(frozen=True)
class Current:
    """A job as seen through its current attempt on one host."""

    seen: Seen
    label: str | None
    group_uid: str | None


async def current(
    session: AsyncSession, host: HostView, attempts: Sequence[str], *, lock: bool = False
) -> dict[str, Current]:
    """The jobs whose current attempt on ``host`` is one of ``attempts`` (attempt -> job).

    ``lock``: hold their rows until the transaction ends (PostgreSQL; SQLite's single writer holds
    everything anyway), so they can be completed in one executemany.
    """
    if not attempts:
        return {}
    stmt = (
        select(*SEEN_COLUMNS, Job.label, Job.group_uid, Job.started)
        .where(
            Job.attempt_uid.in_(list(attempts)),
            Job.host_uid == host.uid,
            Job.status.in_(ACTIVE_VALUES),  # a finished job keeps its last attempt: not current any more
        )
        .order_by(Job.uid)  # every transaction locks jobs in uid order: no deadlock between them
    )
    if lock and session.bind is not None and session.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    rows = (await session.execute(stmt)).all()
    return {r.attempt_uid: Current(Seen.row(r, r.started), r.label, r.group_uid) for r in rows}


@dataclass(frozen=True)
class Finished:
    """An attempt's accepted result: the content (counted in blobs already) and its exit code."""

    attempt: str
    job: Current
    sha: str
    size: int
    return_code: int


async def complete_inline(
    session: AsyncSession, host: HostView, actor: Actor, results: Sequence[InlineResult]
) -> tuple[ResultsReply, int]:
    """Accept several small results in one transaction; the reply and how many jobs completed."""
    refused: dict[str, str] = {}
    contents: dict[str, bytes] = {}
    for r in results:
        try:
            raw = base64.b64decode(r.content, validate=True)
        except (binascii.Error, ValueError):
            refused[r.attempt] = "content is not base64"
            continue
        if len(raw) > INLINE_RESULT_BYTES:
            refused[r.attempt] = f"content over {INLINE_RESULT_BYTES} bytes: upload it with PUT .../result"
        elif hashlib.sha256(raw).hexdigest() != r.sha256:
            refused[r.attempt] = "content does not match its sha256"
        else:
            contents[r.attempt] = raw
    jobs = await current(session, host, list(contents), lock=True)
    for attempt in contents:
        if attempt not in jobs:
            refused[attempt] = f"attempt {attempt} {NOT_CURRENT}"
    codes = {r.attempt: r.return_code for r in results}
    done = [
        Finished(a, job, hashlib.sha256(contents[a]).hexdigest(), len(contents[a]), codes[a])
        for a, job in jobs.items()
    ]
    await blobs.ref_many(session, {f.sha: contents[f.attempt] for f in done}, [f.sha for f in done])
    accepted = await finish(session, host, actor, done, locked=True)
    for f in done:
        if f.attempt not in accepted:
            refused[f.attempt] = f"attempt {f.attempt} {NOT_CURRENT}"
    return ResultsReply(accepted=[f.attempt for f in done if f.attempt in accepted], refused=refused), len(
        accepted
    )


async def finish(
    session: AsyncSession, host: HostView, actor: Actor, done: Sequence[Finished], *, locked: bool
) -> set[str]:
    """Record each attempt's result (its content counted already) and complete its job; the attempts
    that were completed. One whose attempt stopped being current meanwhile gives its content reference
    back and creates no data (``locked``: the caller holds the rows, so none can have stopped)."""
    if not done:
        return set()
    now = utcnow()
    data_uids = [new_uid() for _ in done]
    created = [
        event(
            actor,
            "data",
            data_uid,
            f.job.seen.owner_uid,
            "create",
            to_status=DataStatus.AVAILABLE.value,
            reason=f"results of {f.job.seen.uid} (attempt {f.attempt})",
        )
        for f, data_uid in zip(done, data_uids, strict=True)
    ]
    moved = await transition_many(
        session,
        [
            Move(
                f.job.seen,
                f"exit code {f.return_code} on {host.name}",
                {"result_uid": data_uid, "return_code": f.return_code},
            )
            for f, data_uid in zip(done, data_uids, strict=True)
        ],
        Trigger.COMPLETE,
        actor=actor,
        locked=locked,
        end_attempts=False,  # below, with the result
        extra_events=created if locked else (),  # all move when locked: their data events go along
    )
    ok = [(f, d) for f, d, m in zip(done, data_uids, moved, strict=True) if m is not None]
    for f, _, m in zip(done, data_uids, moved, strict=True):
        if m is None:
            await blobs.unref(session, f.sha)
    if not ok:
        return set()
    if not locked:
        kept = {d for _, d in ok}
        await insert_events(session, [e for e in created if e["object_uid"] in kept])
    await session.execute(
        _INSERT_DATA,
        [
            {
                "uid": data_uid,
                "owner_uid": f.job.seen.owner_uid,
                "group_uid": f.job.group_uid,
                "access_rights": PRIVATE,
                "created": now,
                "modified": now,
                "name": f"ResultsOf_{f.job.label or f.job.seen.uid}",
                "type": "ZIP",
                "os": "ANY",
                "cpu": "ANY",
                "size": f.size,
                "sha256": f.sha,
                "status": DataStatus.AVAILABLE.value,
            }
            for f, data_uid in ok
        ],
    )
    await session.execute(
        _ATTEMPT_RESULT,
        [
            {"w_uid": f.attempt, "v_rc": f.return_code, "v_data": d, "v_ended": now, "v_reason": None}
            for f, d in ok
        ],
    )
    return {f.attempt for f, _ in ok}


REPORTS: dict[str, tuple[Trigger, AttemptState | None]] = {
    "failed": (Trigger.FAIL, AttemptState.FAILED),
    "result_pending": (Trigger.RESULT_PENDING, None),
    "abort": (Trigger.ABORT, AttemptState.ABORTED),
}


async def report(
    session: AsyncSession, host: HostView, actor: Actor, attempt: str, body: JobReport
) -> JobStatus | None:
    """Apply a host's report on one of its attempts; the job's new status (None: nothing changed —
    an upload retry the job already awaits, or an attempt that is not current any more)."""
    jobs = await current(session, host, [attempt])
    job = jobs.get(attempt)
    if job is None:
        return None
    trigger, ends = REPORTS[body.outcome]
    if trigger is Trigger.RESULT_PENDING and job.seen.status is JobStatus.DATAREQUEST:
        return None  # a retry of an upload already awaited
    values: dict[str, Any] = {}
    if body.return_code is not None:
        values["return_code"] = body.return_code
    moved = await transition(
        session, job.seen, trigger, actor=actor, reason=body.reason, values=values, attempt_state=ends
    )
    if moved is JobStatus.DATAREQUEST:
        await session.execute(
            update(Attempt)
            .where(Attempt.uid == attempt)
            .values(state=AttemptState.UPLOADING.value)
            .execution_options(synchronize_session=False)
        )
    return moved


async def complete_streamed(
    session: AsyncSession,
    store: DataStore,
    host: HostView,
    actor: Actor,
    attempt: str,
    item: Ingested,
    return_code: int,
) -> bool:
    """Accept a result streamed to the store (``item``, not yet in place); False if ``attempt`` is not
    current. The caller holds ``store.lock(item.sha256)`` and discards ``item`` afterwards."""
    job = (await current(session, host, [attempt])).get(attempt)
    if job is None:
        return False
    await blobs.ref(session, item.sha256, item.size, None)
    store.place(item)
    done = Finished(attempt, job, item.sha256, item.size, return_code)
    return bool(await finish(session, host, actor, [done], locked=False))
