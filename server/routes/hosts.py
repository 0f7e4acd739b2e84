"""Worker hosts: enrolment, listing, revocation, deletion. The protocol itself is ``worker.py``.

An account (the shared worker login, or a volunteer's own) only enrols: enrolment creates a host and
answers its own credential, once; re-enrolling with that credential is the same host starting again.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from common.enums import UserRights
from common.errors import Forbidden, NotFound, ValidationFailed
from common.rights import PRIVATE, PUBLIC
from common.schemas import Enrolment, HostIn, HostOut, HostRevoke, Page
from common.uri import new_uid
from server import hostcreds
from server.auth import host_allowed
from server.authz import require_may_list
from server.db.models import Host, UserGroup, utcnow
from server.events import record
from server.http import Routes, read_body, reply
from server.listing import alive_clause, host_out, host_rows
from server.query import OWNER, QueryParam
from server.removal import manageable_host
from server.routes.base import paged, path_uid
from server.scheduler.reaper import requeue_host
from server.state import actor_of, services

routes = Routes("workers")
ALIVE = QueryParam("alive", "boolean", "true: alive hosts only", default=False)


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
            found = await session.get(Host, actor.host_uid)
            if found is None or found.revoked is not None:
                raise NotFound(f"no host {actor.host_uid}")
            host = found
            action = "re-enrol"
            await requeue_host(session, host.uid, f"rescheduled: worker {host.name} restarted", actor)
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
    svc.auth.forget_host(host.uid)
    svc.liveness.seen(host.uid)
    return reply(
        Enrolment(
            host=host_out(host, svc, project=body.project),
            alive_period=svc.alive_period(),
            alive_timeout=svc.alive_timeout(),
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
        host = await manageable_host(session, actor, path_uid(request))
        if host.revoked is None:
            why = body.reason or f"revoked by {actor.login}"
            host.revoked, host.revoke_reason = utcnow(), why
            host.credential_hash, host.active = None, False
            await requeue_host(session, host.uid, f"rescheduled: worker {host.name} revoked", actor)
            record(session, actor, "host", host, "revoke", reason=why)
    svc.auth.forget_host(host.uid)
    return reply(host_out(host, svc))


@routes.add("GET", "/hosts", summary="List worker hosts", response=Page[HostOut], query=(ALIVE, OWNER))
async def list_hosts(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    require_may_list(actor, "hosts")
    stmt = select(Host)
    if ALIVE.flag(request):
        stmt = stmt.where(alive_clause(svc))
    async with svc.readers() as session:
        rows, total, offset, limit = await paged(session, request, actor, Host, stmt, Host.name)
        items = await host_rows(session, svc, actor, rows)
    return reply(Page[HostOut](items=items, total=total, offset=offset, limit=limit))
