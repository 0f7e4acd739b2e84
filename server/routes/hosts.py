"""The worker protocol: enrol a host, long-poll for work, fetch a job's files, heartbeat, report, results.

An account (the shared worker login, or a volunteer's own) only enrols: enrolment creates a host and
answers its own credential, once. Every other route here is scoped to one host and accepts only that
host's credential, and the job routes to a job assigned to that host: a host can fetch, update and
upload results only for the jobs it runs, whoever else shares its account.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import CPU, OS, AppType, DataStatus, JobStatus, UserRights
from common.errors import Conflict, Forbidden, IllegalTransition, NotFound, ValidationFailed
from common.jobstates import ACTIVE, Trigger
from common.rights import PRIVATE, PUBLIC, Perm
from common.schemas import (
    Assignment,
    Enrolment,
    FileRef,
    Heartbeat,
    HeartbeatReply,
    HostIn,
    HostOut,
    HostRevoke,
    JobOut,
    JobReport,
    Page,
)
from common.uri import new_uid
from server import hostcreds
from server.auth import host_allowed
from server.authz import Actor, can, can_administer
from server.db.models import App, Data, Host, Job, JobRef, UserGroup, utcnow
from server.events import record
from server.http import Routes, read_body, reply
from server.jobflow import move
from server.matching import binary_for, claim
from server.query import OWNER, QueryParam, header_sha256, integer_range
from server.routes.base import owned, paged, path_uid
from server.routes.data import attach
from server.routes.jobs import job_out
from server.state import Services, actor_of, services

routes = Routes("workers")
ALIVE = QueryParam("alive", "boolean", "true: alive hosts only", default=False)
# Above the server's longpoll a wait is shortened to it (workers may be configured longer); the bound
# here only refuses what cannot be a wait (negative, NaN, infinite: a request that never returns).
WAIT = QueryParam(
    "wait",
    "number",
    "seconds to wait for work (default and cap: the server's longpoll)",
    minimum=0,
    maximum=86400,
)
RETURN_CODE = integer_range("return_code", "the job's exit code", required=True)

ACTIVE_VALUES = [s.value for s in ACTIVE]
MAX_RESULT_BYTES = 1 << 36


def host_out(h: Host, svc: Services, running: int = 0, project: str | None = None) -> HostOut:
    cutoff = utcnow() - timedelta(seconds=svc.settings.alive_timeout)
    alive = bool(h.active and h.last_alive is not None and h.last_alive >= cutoff)
    return HostOut(
        **owned(h),
        name=h.name,
        os=OS(h.os),
        cpu=CPU(h.cpu),
        cores=h.cores,
        memory=h.memory,
        disk=h.disk,
        version=h.version,
        sandbox=h.sandbox,
        project=project,
        last_alive=h.last_alive,
        alive=alive,
        running=running,
        credential="revoked" if h.revoked is not None else "active",
        credential_issued=h.credential_issued,
        revoked=h.revoked,
        revoke_reason=h.revoke_reason,
    )


async def this_host(session: AsyncSession, actor: Actor, hid: str) -> Host:
    """The host ``hid`` if the requester speaks with that host's own credential; Forbidden otherwise."""
    if actor.host_uid is None:
        raise Forbidden(
            f"host routes need host {hid}'s own credential (from its enrolment), not an account's"
        )
    if actor.host_uid != hid:
        raise Forbidden(f"this credential is host {actor.host_uid}'s, not host {hid}'s")
    host = await session.get(Host, hid)
    if host is None or host.revoked is not None:
        raise NotFound(f"no host {hid}")
    return host


async def _manageable_host(session: AsyncSession, actor: Actor, hid: str) -> Host:
    """A host its owner or an administrator may revoke or delete."""
    host = await session.get(Host, hid)
    if host is None or not can(actor, host, Perm.READ):
        raise NotFound(f"no host {hid}")
    if host.owner_uid != actor.uid and not can_administer(actor, host):
        raise Forbidden(f"only the owner of host {host.name} or an administrator may do that")
    return host


async def _requeue_jobs_of(session: AsyncSession, actor: Actor | None, host: Host, why: str) -> int:
    """Put back every job ``host`` holds (it is gone or no longer trusted); how many moved."""
    moved = 0
    stale = select(Job).where(Job.host_uid == host.uid, Job.status.in_(ACTIVE_VALUES))
    for job in (await session.execute(stale)).scalars().all():
        try:
            move(session, actor, job, Trigger.LOSE, why)
            moved += 1
        except IllegalTransition:
            continue
    return moved


async def _job_on(session: AsyncSession, host: Host, jid: str) -> Job:
    job = await session.get(Job, jid)
    if job is None:
        raise NotFound(f"no job {jid} (deleted?)")
    if job.host_uid != host.uid or job.status not in ACTIVE_VALUES:
        raise Conflict(f"job {jid} is not running on host {host.name} (status {job.status})")
    return job


@routes.add(
    "POST",
    "/hosts",
    summary="Enrol a worker host with an account (answers the host's own credential), or re-enrol with it",
    body=HostIn,
    response=Enrolment,
)
@host_allowed
async def enrol(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    body = await read_body(request, HostIn, svc.settings.max_json_bytes)
    lost = 0
    credential = None
    async with svc.sessions() as session, session.begin():
        project_uid = None
        if body.project:
            group = (
                await session.execute(select(UserGroup).where(UserGroup.label == body.project))
            ).scalar_one_or_none()
            if group is None:
                raise ValidationFailed(f"no usergroup {body.project!r} (project)")
            if actor.rights is not UserRights.SUPER_USER and actor.group_uid != group.uid:
                raise Forbidden(f"{actor.login} is not a member of {body.project!r}")
            project_uid = group.uid
        if actor.host_uid is not None:
            # the same host starting again: whatever its previous process ran is lost
            host = await this_host(session, actor, actor.host_uid)
            action = "re-enrol"
            lost = await _requeue_jobs_of(session, actor, host, f"rescheduled: worker {host.name} restarted")
        else:
            public = actor.rights in (UserRights.WORKER_USER, UserRights.SUPER_USER)
            host = Host(
                uid=new_uid(),
                owner_uid=actor.uid,
                group_uid=actor.group_uid,
                access_rights=PUBLIC if public else PRIVATE,
                name=body.name,
            )
            credential, host.credential_hash = hostcreds.new_credential(host.uid)
            host.credential_issued = utcnow()
            session.add(host)
            action = "enrol"
        host.name = body.name
        host.os, host.cpu, host.cores = body.os.value, body.cpu.value, body.cores
        host.memory, host.disk, host.version, host.sandbox = (
            body.memory,
            body.disk,
            body.version,
            body.sandbox,
        )
        host.project_uid, host.shared_apps = project_uid, list(body.shared_apps)
        host.active, host.last_alive = True, utcnow()
        record(
            session,
            actor,
            "host",
            host,
            action,
            reason=f"{body.name} {body.os.value}/{body.cpu.value} "
            f"{body.cores} cores, sandbox {body.sandbox or 'none'}",
        )
    if lost:
        svc.dispatcher.notify()
    s = svc.settings
    return reply(
        Enrolment(
            host=host_out(host, svc, project=body.project),
            alive_period=s.alive_period,
            alive_timeout=s.alive_timeout,
            credential=credential,
        )
    )


@routes.add(
    "POST",
    "/hosts/{uid}/revoke",
    summary="Revoke a host's credential (its owner or an administrator); its jobs go back to the queue",
    body=HostRevoke,
    response=HostOut,
)
async def revoke_host(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    body = await read_body(request, HostRevoke, svc.settings.max_json_bytes)
    async with svc.sessions() as session, session.begin():
        host = await _manageable_host(session, actor, path_uid(request))
        moved = 0
        if host.revoked is None:
            why = body.reason or f"revoked by {actor.login}"
            host.revoked, host.revoke_reason = utcnow(), why
            host.credential_hash, host.active = None, False
            moved = await _requeue_jobs_of(session, actor, host, f"rescheduled: worker {host.name} revoked")
            record(session, actor, "host", host, "revoke", reason=why)
    if moved:
        svc.dispatcher.notify()
    return reply(host_out(host, svc))


async def delete_host_in(session: AsyncSession, actor: Actor, host: Host) -> int:
    """Delete a host record (its owner or an administrator); its jobs go back to the queue."""
    host = await _manageable_host(session, actor, host.uid)
    moved = await _requeue_jobs_of(session, actor, host, f"rescheduled: worker {host.name} deleted")
    record(session, actor, "host", host, "delete", reason=host.name)
    await session.delete(host)
    return moved


@routes.add("GET", "/hosts", summary="List worker hosts", response=Page[HostOut], query=(ALIVE, OWNER))
async def list_hosts(request: web.Request) -> web.Response:
    from server.authz import require_may_list

    svc = services(request)
    actor = actor_of(request)
    require_may_list(actor, "hosts")
    stmt = select(Host)
    if ALIVE.flag(request):
        cutoff = utcnow() - timedelta(seconds=svc.settings.alive_timeout)
        stmt = stmt.where(Host.active.is_(True), Host.last_alive >= cutoff)
    async with svc.sessions() as session:
        rows, total, offset, limit = await paged(session, request, actor, Host, stmt, Host.name)
        uids = [h.uid for h in rows]
        per_host = (
            select(Job.host_uid, func.count())
            .where(Job.host_uid.in_(uids), Job.status.in_(ACTIVE_VALUES))
            .group_by(Job.host_uid)
        )
        counts = {str(h): int(n) for h, n in (await session.execute(per_host)).all()}
        labels = {u: lab for u, lab in (await session.execute(select(UserGroup.uid, UserGroup.label))).all()}
    items = [host_out(h, svc, counts.get(h.uid, 0), labels.get(h.project_uid or "")) for h in rows]
    return reply(Page[HostOut](items=items, total=total, offset=offset, limit=limit))


async def _assignment(session: AsyncSession, host: Host, job: Job) -> Assignment:
    """What the worker needs to run ``job``; raises ValidationFailed if something is missing."""
    app = await session.get(App, job.app_uid)
    if app is None:
        raise ValidationFailed("its application was deleted")
    binary = binary_for(app, host.os, host.cpu)
    if binary is None:
        raise ValidationFailed(f"application {app.name!r} has no binary for {host.os}/{host.cpu}")
    refs = [
        r for r in (await session.execute(select(JobRef.data_uid).where(JobRef.job_uid == job.uid))).scalars()
    ]
    datas = {
        d.uid: d
        for d in (await session.execute(select(Data).where(Data.uid.in_([*refs, binary["data"]]))))
        .scalars()
        .all()
    }

    def ref(uid: str) -> FileRef:
        d = datas.get(uid)
        if d is None or d.status != DataStatus.AVAILABLE.value or d.sha256 is None or d.size is None:
            raise ValidationFailed(f"data {uid} is missing or has no content")
        return FileRef(uid=d.uid, name=d.name, sha256=d.sha256, size=d.size)

    return Assignment(
        job=job_out(job),
        app_name=app.name,
        app_type=AppType(app.type),
        executable=ref(binary["data"]),
        inputs=[ref(u) for u in [*job.env, *job.inputs]],
        stdin=ref(job.stdin_uid) if job.stdin_uid else None,
        wallclock=job.wallclock,
        memory=job.memory,
    )


@routes.add(
    "POST",
    "/hosts/{uid}/work",
    summary="Long-poll for a job to run (204 when none came in time)",
    response=Assignment,
    query=(WAIT,),
    also=(204,),
)
@host_allowed
async def request_work(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    actor = actor_of(request)
    hid = path_uid(request)
    asked = WAIT.optional_number(request)
    wait = svc.settings.longpoll if asked is None else min(asked, svc.settings.longpoll)
    deadline = time.monotonic() + wait
    async with svc.sessions() as session:
        host = await this_host(session, actor, hid)
    # a place in the long-poll budget is taken only once the request actually waits (429 past it)
    with svc.longpolls.waiting_place() as place:
        while True:
            seen = svc.dispatcher.generation
            async with svc.sessions() as session, session.begin():
                job = await claim(session, host, actor.rights, actor.group_uid)
                if job is not None:
                    record(
                        session,
                        actor,
                        "work",
                        job,
                        Trigger.CLAIM.value,
                        from_status=JobStatus.PENDING.value,
                        to_status=job.status,
                        reason=f"claimed by {host.name}",
                    )
                    try:
                        assignment = await _assignment(session, host, job)
                    except ValidationFailed as err:
                        move(session, actor, job, Trigger.FAIL, f"cannot run: {err.reason}")
                        continue
            if job is not None:
                return reply(assignment)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return web.Response(status=204)
            place.take()
            await svc.dispatcher.wait(seen, min(remaining, 1.0))


@routes.add(
    "GET",
    "/hosts/{uid}/jobs/{job}/files/{data}",
    summary="Fetch a file of a job this host runs",
    raw_response="application/octet-stream",
)
@host_allowed
async def job_file(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    actor = actor_of(request)
    did = path_uid(request, "data")
    async with svc.sessions() as session:
        host = await this_host(session, actor, path_uid(request))
        job = await _job_on(session, host, path_uid(request, "job"))
        assignment = await _assignment(session, host, job)
    files = {
        f.uid: f
        for f in [
            assignment.executable,
            *assignment.inputs,
            *([assignment.stdin] if assignment.stdin else []),
        ]
    }
    if did not in files:
        raise Forbidden(f"data {did} is not a file of job {job.uid}")
    path = svc.store.path(files[did].sha256)
    return web.FileResponse(
        path,
        chunk_size=256 * 1024,
        headers={"Content-Type": "application/octet-stream", "X-Content-SHA256": files[did].sha256},
    )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


@routes.add(
    "POST",
    "/hosts/{uid}/alive",
    summary="Heartbeat: running jobs and their usage in, kill orders out",
    body=Heartbeat,
    response=HeartbeatReply,
)
@host_allowed
async def alive(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    body = await read_body(request, Heartbeat, svc.settings.max_json_bytes)
    reported = {u.job: u for u in body.running}
    kill: dict[str, str] = {}
    requeued = False
    grace = max(5.0, svc.settings.alive_period)
    async with svc.sessions() as session, session.begin():
        host = await this_host(session, actor, path_uid(request))
        host.last_alive, host.active = utcnow(), True
        jobs = {
            j.uid: j
            for j in (await session.execute(select(Job).where(Job.uid.in_(list(reported))))).scalars().all()
        }
        for uid, usage in reported.items():
            job = jobs.get(uid)
            if job is None:
                kill[uid] = "job deleted"
                continue
            if job.host_uid != host.uid or job.status not in ACTIVE_VALUES:
                kill[uid] = f"job is {job.status}" + (f": {job.status_reason}" if job.status_reason else "")
                continue
            job.cpu_seconds, job.max_rss = usage.cpu_seconds, max(job.max_rss, usage.max_rss)
            job.net_in = max(job.net_in or 0, usage.net_in)
            job.net_out = max(job.net_out or 0, usage.net_out)
            held = None
            if job.memory and usage.max_rss > job.memory:
                held = f"held: memory {_size(usage.max_rss)} > {_size(job.memory)} requested"
            elif job.wallclock and usage.wall_seconds > job.wallclock + grace:
                held = f"held: wallclock {usage.wall_seconds:.0f} s > {job.wallclock} s requested"
            if held and job.status == JobStatus.RUNNING.value:
                move(session, actor, job, Trigger.HOLD, held)
                kill[uid] = held
        cutoff = utcnow() - timedelta(seconds=svc.settings.alive_timeout)
        forgotten = select(Job).where(
            Job.host_uid == host.uid,
            Job.status.in_(ACTIVE_VALUES),
            Job.uid.not_in(list(reported)),
            Job.started < cutoff,
        )
        for job in (await session.execute(forgotten)).scalars().all():
            move(session, actor, job, Trigger.LOSE, f"rescheduled: worker {host.name} no longer runs it")
            requeued = True
    if requeued:
        svc.dispatcher.notify()
    return reply(HeartbeatReply(alive_period=svc.settings.alive_period, kill=kill))


@routes.add(
    "POST",
    "/hosts/{uid}/jobs/{job}/report",
    summary="Report a job that failed, gave up or awaits upload",
    body=JobReport,
    response=JobOut,
)
@host_allowed
async def report(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    body = await read_body(request, JobReport, svc.settings.max_json_bytes)
    trigger = {"failed": Trigger.FAIL, "result_pending": Trigger.RESULT_PENDING, "abort": Trigger.ABORT}[
        body.outcome
    ]
    async with svc.sessions() as session, session.begin():
        host = await this_host(session, actor, path_uid(request))
        job = await _job_on(session, host, path_uid(request, "job"))
        if body.return_code is not None:
            job.return_code = body.return_code
        status = JobStatus(job.status)
        if not (
            trigger is Trigger.RESULT_PENDING and status is JobStatus.DATAREQUEST
        ):  # else: a retry, known
            status = move(session, actor, job, trigger, body.reason)
    if status is JobStatus.PENDING:
        svc.dispatcher.notify()
    return reply(job_out(job))


@routes.add(
    "PUT",
    "/hosts/{uid}/jobs/{job}/result",
    summary="Upload a job's results (a zip) and complete it",
    response=JobOut,
    raw_body="application/zip",
    query=(RETURN_CODE,),
)
@host_allowed
async def upload_result(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    return_code = RETURN_CODE.integer(request)
    declared = header_sha256(request)
    async with svc.sessions() as session:
        host = await this_host(session, actor, path_uid(request))
        await _job_on(session, host, path_uid(request, "job"))
    item = await svc.store.ingest(
        request.content.iter_any(), max_size=MAX_RESULT_BYTES, expect_sha256=declared
    )
    async with svc.store.lock(item.sha256):
        try:
            async with svc.sessions() as session, session.begin():
                job = await _job_on(session, host, path_uid(request, "job"))
                data = Data(
                    uid=new_uid(),
                    owner_uid=job.owner_uid,
                    group_uid=job.group_uid,
                    access_rights=PRIVATE,
                    name=f"ResultsOf_{job.label or job.uid}",
                    type="ZIP",
                    os="ANY",
                    cpu="ANY",
                    status=DataStatus.UNAVAILABLE.value,
                )
                session.add(data)
                await attach(session, svc.store, data, item)
                record(
                    session,
                    actor,
                    "data",
                    data,
                    "create",
                    to_status=data.status,
                    reason=f"results of {job.uid}",
                )
                job.result_uid, job.return_code = data.uid, return_code
                move(session, actor, job, Trigger.COMPLETE, f"exit code {return_code} on {host.name}")
        finally:
            svc.store.discard(item)
    return reply(job_out(job))


async def reap(svc: Services) -> int:
    """Mark hosts silent past the alive timeout lost and put their jobs back; returns how many jobs moved."""
    cutoff = utcnow() - timedelta(seconds=svc.settings.alive_timeout)
    moved = 0
    async with svc.sessions() as session, session.begin():
        lost = await session.execute(select(Host).where(Host.active.is_(True), Host.last_alive < cutoff))
        for host in lost.scalars().all():
            host.active = False
            record(session, None, "host", host, "lost", reason=f"silent since {host.last_alive:%H:%M:%S}")
            moved += await _requeue_jobs_of(session, None, host, f"rescheduled: worker {host.name} lost")
    if moved:
        svc.dispatcher.notify()
    return moved


async def reaper_loop(svc: Services) -> None:
    """Run :func:`reap` forever at half the alive period."""
    import logging

    log = logging.getLogger(__name__)
    while True:
        await asyncio.sleep(max(0.2, svc.settings.alive_period / 2))
        try:
            n = await reap(svc)
            if n:
                log.info("reaper: %d job(s) of lost workers rescheduled", n)
        except Exception:
            log.exception("reaper pass failed")
