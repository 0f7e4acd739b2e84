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

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import AttemptState, DataStatus, JobStatus
from common.jobstates import Trigger
from common.rights import PRIVATE
from common.schemas import INLINE_RESULT_BYTES, InlineResult, JobReport, ResultsReply
from common.uri import new_uid
from server import blobs
from server.authz import Actor
from server.db.models import Attempt, Data, Job, utcnow
from server.scheduler.matching import HostView
from server.scheduler.writer import SEEN_COLUMNS, Seen, event, insert_events, transition
from server.store import DataStore, Ingested

NOT_CURRENT = "is not a current attempt of this host (its job was deleted, held or rescheduled)"


@dataclass(frozen=True)
class Current:
    """A job as seen through its current attempt on one host."""

    seen: Seen
    label: str | None
    group_uid: str | None


async def current(session: AsyncSession, host: HostView, attempts: Sequence[str]) -> dict[str, Current]:
    """The jobs whose current attempt on ``host`` is one of ``attempts`` (attempt -> job)."""
    if not attempts:
        return {}
    rows = (
        await session.execute(
            select(*SEEN_COLUMNS, Job.label, Job.group_uid).where(
                Job.attempt_uid.in_(list(attempts)), Job.host_uid == host.uid
            )
        )
    ).all()
    return {r.attempt_uid: Current(Seen.row(r), r.label, r.group_uid) for r in rows}


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
    jobs = await current(session, host, list(contents))
    for attempt in contents:
        if attempt not in jobs:
            refused[attempt] = f"attempt {attempt} {NOT_CURRENT}"
    accepted: list[str] = []
    codes = {r.attempt: r.return_code for r in results}
    for attempt, job in jobs.items():
        raw = contents[attempt]
        sha = hashlib.sha256(raw).hexdigest()
        await blobs.ref(session, sha, len(raw), raw)
        if await finish(session, host, actor, attempt, job, sha, len(raw), codes[attempt]):
            accepted.append(attempt)
        else:
            refused[attempt] = f"attempt {attempt} {NOT_CURRENT}"
    return ResultsReply(accepted=accepted, refused=refused), len(accepted)


async def finish(
    session: AsyncSession,
    host: HostView,
    actor: Actor,
    attempt: str,
    job: Current,
    sha: str,
    size: int,
    return_code: int,
) -> bool:
    """Record ``attempt``'s result (content ``sha`` already counted) and complete its job; False if the
    attempt stopped being current meanwhile (the caller's transaction must then be rolled back or the
    blob reference given back: here the data row is simply not created)."""
    data_uid = new_uid()
    moved = await transition(
        session,
        job.seen,
        Trigger.COMPLETE,
        actor=actor,
        reason=f"exit code {return_code} on {host.name}",
        values={"result_uid": data_uid, "return_code": return_code},
    )
    if moved is None:
        await blobs.unref(session, sha)
        return False
    now = utcnow()
    name = f"ResultsOf_{job.label or job.seen.uid}"
    await session.execute(
        insert(Data).values(
            uid=data_uid,
            owner_uid=job.seen.owner_uid,
            group_uid=job.group_uid,
            access_rights=PRIVATE,
            created=now,
            modified=now,
            name=name,
            type="ZIP",
            os="ANY",
            cpu="ANY",
            size=size,
            sha256=sha,
            status=DataStatus.AVAILABLE.value,
        )
    )
    await session.execute(
        update(Attempt)
        .where(Attempt.uid == attempt)
        .values(return_code=return_code, result_uid=data_uid)
        .execution_options(synchronize_session=False)
    )
    await insert_events(
        session,
        [
            event(
                actor,
                "data",
                data_uid,
                job.seen.owner_uid,
                "create",
                to_status=DataStatus.AVAILABLE.value,
                reason=f"results of {job.seen.uid} (attempt {attempt})",
            )
        ],
    )
    return True


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
    return await finish(session, host, actor, attempt, job, item.sha256, item.size, return_code)
