"""Jobs (XWHEP "works"): submit under the app's rights, list, show, delete."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import AppType, DataStatus, JobStatus
from common.errors import NotFound, ValidationFailed
from common.rights import Perm
from common.schemas import HoldIn, JobIn, JobOut, Page
from common.uri import new_uid
from server.authz import Actor, default_rights, require, require_may_insert, require_may_list
from server.db.models import App, Data, Job, JobRef, utcnow
from server.events import record
from server.http import Routes, read_body, reply
from server.query import OWNER, QueryParam, name_filter, uid_filter
from server.routes.base import load, paged, path_uid, rights_for
from server.scheduler import lifecycle
from server.scheduler.matching import platforms_of
from server.state import actor_of, services
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
    stmt = select(Job)
    status = STATUS.raw(request)
    if status is not None:
        try:
            stmt = stmt.where(Job.status == JobStatus(status.upper()).value)
        except ValueError:
            raise STATUS.bad("unknown status", status) from None
    label, group, app = LABEL.text(request), GROUP.text(request), APP.text(request)
    if label is not None:
        stmt = stmt.where(Job.label == label)
    if group is not None:
        stmt = stmt.where(Job.job_group == group)
    if app is not None:
        stmt = stmt.where(Job.app_uid == app)
    async with services(request).sessions() as session:
        rows, total, offset, limit = await paged(session, request, actor, Job, stmt, Job.created)
    return reply(Page[JobOut](items=[job_out(j) for j in rows], total=total, offset=offset, limit=limit))


async def _inputs_available(session: AsyncSession, actor: Actor, refs: list[str]) -> bool:
    available = True
    for uid in refs:
        data = await load(session, Data, uid, actor, Perm.READ, "data")
        available &= data.status == DataStatus.AVAILABLE.value
    return available


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
        app = await load(session, App, body.app, actor, Perm.READ, "application")
        require(actor, app, Perm.EXECUTE, "application")
        if AppType(app.type) is AppType.BINARY and not app.binaries:
            raise ValidationFailed(f"application {app.name!r} has no binary yet; add one with xwsendapp")
        refs = [*body.inputs, *body.env, *([body.stdin] if body.stdin else [])]
        ready = await _inputs_available(session, actor, refs)
        status = JobStatus.PENDING if ready else JobStatus.UNAVAILABLE
        job = Job(
            uid=new_uid(),
            owner_uid=actor.uid,
            group_uid=actor.group_uid,
            access_rights=rights_for(body.access_rights, default_rights(actor)) & app.access_rights,
            app_uid=app.uid,
            args=body.args,
            env=list(body.env),
            stdin_uid=body.stdin,
            inputs=list(body.inputs),
            label=body.label,
            job_group=body.group,
            expected_host=body.expected_host,
            wallclock=body.wallclock or app.wallclock,
            max_retries=body.max_retries,
            retry=0,
            listen_ports=list(body.listen_ports),
            forward_addresses=[f.model_dump() for f in body.forward_addresses],
            status=status.value,
            created=utcnow(),
            platforms=platforms_of(app),
            memory=body.memory if body.memory is not None else app.min_memory,
        )
        session.add(job)
        await session.flush()
        session.add_all(JobRef(job_uid=job.uid, data_uid=uid) for uid in dict.fromkeys(refs))
        record(session, actor, "work", job, "submit", to_status=status.value, reason=f"app {app.name}")
    if status is JobStatus.PENDING:
        svc.wakeups.jobs_pending(1)
    return reply(job_out(job), status=201)


@routes.add("GET", "/jobs/{uid}", summary="Show a job", response=JobOut)
async def get_job(request: web.Request) -> web.Response:
    async with services(request).sessions() as session:
        job = await load(session, Job, path_uid(request), actor_of(request), Perm.READ, "job")
    return reply(job_out(job))


async def delete_job_in(session: AsyncSession, actor: Actor, job: Job) -> None:
    """Delete a job in any state (a running one is killed by its host at its next heartbeat)."""
    require(actor, job, Perm.WRITE, "job")
    await lifecycle.delete_job(session, job, actor)


@routes.add("DELETE", "/jobs/{uid}", summary="Delete a job", status=204)
async def delete_job(request: web.Request) -> web.Response:
    actor = actor_of(request)
    async with services(request).sessions() as session, session.begin():
        job = await load(session, Job, path_uid(request), actor, Perm.READ, "job")
        await delete_job_in(session, actor, job)
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
        job = await load(session, Job, uid, actor, Perm.READ, "job")
        require(actor, job, Perm.WRITE, "job")
        await lifecycle.hold(session, job, actor, body.reason)
    return reply(await _reloaded(request, uid))


@routes.add("POST", "/jobs/{uid}/release", summary="Release a held job back to PENDING", response=JobOut)
async def release(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    uid = path_uid(request)
    async with svc.sessions() as session, session.begin():
        job = await load(session, Job, uid, actor, Perm.READ, "job")
        require(actor, job, Perm.WRITE, "job")
        await lifecycle.release(session, job, actor)
    return reply(await _reloaded(request, uid))


async def _reloaded(request: web.Request, uid: str) -> JobOut:
    async with services(request).sessions() as session:
        job = await session.get(Job, uid)
    if job is None:
        raise NotFound(f"job {uid} was deleted meanwhile")
    return job_out(job)
