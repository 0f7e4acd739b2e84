"""Applying job state changes: the pure table decides, this module writes the row and the event."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import JobStatus
from common.errors import IllegalTransition
from common.jobstates import FINAL, Trigger, advance
from server.authz import Actor
from server.db.models import Job, utcnow
from server.events import record

logger = logging.getLogger(__name__)


def move(
    session: AsyncSession, actor: Actor | None, job: Job, trigger: Trigger, reason: str = ""
) -> JobStatus:
    """Apply ``trigger`` to ``job`` (in ``session``), or raise IllegalTransition and log the refusal."""
    before = JobStatus(job.status)
    try:
        step = advance(before, trigger, retry=job.retry, max_retries=job.max_retries)
    except IllegalTransition:
        logger.warning("refused %s on job %s in %s (%s)", trigger.value, job.uid, before.value, reason or "-")
        raise
    job.status = step.status.value
    job.retry = step.retry
    why = "; ".join(r for r in (reason, step.reason) if r)
    job.status_reason = why[:1024] or None
    if step.status in (JobStatus.PENDING, JobStatus.WAITING):
        job.host_uid = None
        job.started = None
    elif step.status is JobStatus.RUNNING:
        job.started = utcnow()
    if step.status in FINAL:
        job.completed = utcnow()
    record(
        session, actor, "work", job, trigger.value, from_status=before.value, to_status=job.status, reason=why
    )
    return step.status
