"""Jobs (XWHEP "works"): submit (one, or a batch: server/scheduler/submission.py), list, show, hold,
release, delete."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from common.enums import JobStatus
from common.errors import NotFound, ValidationFailed
from common.rights import Perm
from common.schemas import MAX_BATCH_JOBS, HoldIn, JobIn, JobOut, JobsIn, JobsOut, Page
from server import jobcontrol
from server.authz import can_administer, require_may_insert, require_may_list
from server.db.models import Job
from server.http import Routes, read_body, reply
from server.listing import JobFilter
from server.query import OWNER, QueryParam, name_filter, uid_filter
from server.routes.base import load, paged, path_uid
from server.scheduler import submission
from server.state import actor_of, services
from server.validation.replication import replicas_out
from server.views import job_out

routes = Routes("jobs")
# status is matched in any case (xwworks --status pending), the document lists the canonical spelling
STATUS = QueryParam("status", description="job status", max_length=16, enum=tuple(s.value for s in JobStatus))
LABEL = name_filter("label", "exact label")
GROUP = name_filter("group", "job group")
APP = uid_filter("app", "application uid")


@routes.add(
    "GET",
    "/jobs",
    summary="List jobs",
    response=Page[JobOut],
    query=(STATUS, LABEL, GROUP, OWNER, APP),
)
async def list_jobs(request: web.Request) -> web.Response:
    actor = actor_of(request)
    require_may_list(actor, "jobs")
    status = STATUS.raw(request)
    statuses: tuple[JobStatus, ...] = ()
    if status is not None:
        try:
            statuses = (JobStatus(status.upper()),)
        except ValueError:
            raise STATUS.bad("unknown status", status) from None
    wanted = JobFilter(statuses, label=LABEL.text(request), group=GROUP.text(request), app=APP.text(request))
    stmt = wanted.apply(select(Job))
    async with services(request).readers() as session:
        rows, total, offset, limit = await paged(session, request, actor, Job, stmt, Job.created)
        runs = await replicas_out(session, actor, rows)
    items = [job_out(j, runs.get(j.uid, ())) for j in rows]
    return reply(Page[JobOut](items=items, total=total, offset=offset, limit=limit))


@routes.add(
    "POST",
    "/jobs",
    summary="Submit a job (needs execute on the application)",
    body=JobIn,
    response=JobOut,
    status=201,
)
async def submit(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    require_may_insert(actor, "jobs")
    body = await read_body(request, JobIn, svc.settings.max_json_bytes)
    async with svc.sessions() as session, session.begin():
        done = await submission.submit(session, actor, [body], batch=False)
    svc.wakeups.jobs_pending(done.pending)
    return reply(job_out(done.job(0), done.replicas(0)), status=201)


@routes.add(
    "POST",
    "/jobs/batch",
    summary=f"Submit up to {MAX_BATCH_JOBS:,} jobs at once, all or none (needs execute on each application)",
    body=JobsIn,
    response=JobsOut,
    status=201,
)
async def submit_batch(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    require_may_insert(actor, "jobs")
    body = await _read_batch(request)
    async with svc.sessions() as session, session.begin():
        done = await submission.submit(session, actor, body.jobs, batch=True)
    svc.wakeups.jobs_pending(done.pending)
    return reply(JobsOut(count=len(done.rows), pending=done.pending, uids=done.uids), status=201)


async def _read_batch(request: web.Request) -> JobsIn:
    """The batch body, under its own size limit (every other route keeps ``max_json_bytes``); an invalid
    job is a 422 whose ``index`` names it, like the refusals of ``submission``."""
    limit = submission.MAX_BATCH_BYTES
    try:
        return await read_body(request.clone(client_max_size=limit), JobsIn, limit)
    except ValidationFailed as err:
        first = (err.extra.get("errors") or [{}])[0].get("field", "")
        head, _, rest = first.partition(".")
        index, _, _ = rest.partition(".")
        if head == "jobs" and index.isdigit():
            err.extra["index"] = int(index)
        raise


@routes.add("GET", "/jobs/{uid}", summary="Show a job", response=JobOut)
async def get_job(request: web.Request) -> web.Response:
    async with services(request).sessions() as session:
        actor = actor_of(request)
        job = await load(session, Job, path_uid(request), actor, Perm.READ, "job")
        if job.replica_of is not None and not can_administer(actor, job):  # see replicas_out
            raise NotFound(f"no job {job.uid}")
        runs = await replicas_out(session, actor, [job])
    return reply(job_out(job, runs.get(job.uid, ())))


@routes.add("DELETE", "/jobs/{uid}", summary="Delete a job", status=204)
async def delete_job(request: web.Request) -> web.Response:
    actor = actor_of(request)
    async with services(request).sessions() as session, session.begin():
        await jobcontrol.delete_job(session, actor, path_uid(request))
    return web.Response(status=204)


@routes.add(
    "POST", "/jobs/{uid}/hold", summary="Hold a job (owner or administrator)", body=HoldIn, response=JobOut
)
async def hold(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    body = await read_body(request, HoldIn, svc.settings.max_json_bytes)
    uid = path_uid(request)
    async with svc.sessions() as session, session.begin():
        await jobcontrol.hold_job(session, actor, uid, body.reason)
    return reply(await _reloaded(request, uid))


@routes.add("POST", "/jobs/{uid}/release", summary="Release a held job back to PENDING", response=JobOut)
async def release(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    uid = path_uid(request)
    async with svc.sessions() as session, session.begin():
        await jobcontrol.release_job(session, actor, uid)
    return reply(await _reloaded(request, uid))


async def _reloaded(request: web.Request, uid: str) -> JobOut:
    async with services(request).sessions() as session:
        job = await session.get(Job, uid)
    if job is None:
        raise NotFound(f"job {uid} was deleted meanwhile")
    return job_out(job)
