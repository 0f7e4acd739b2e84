"""Kind-independent routes: find any object by uid, chmod it, delete it; and the event log."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import UserRights
from common.errors import Forbidden, NotFound
from common.rights import Perm, format_mode, parse_mode
from common.schemas import ChmodIn, EventOut, ObjectRef, Page
from server.authz import (
    Actor,
    can_administer,
    require,
    require_may_list,
    require_may_manage_user,
    visible_events,
)
from server.db.models import OWNED_MODELS, App, Data, Event, Host, Job, OwnedMixin, User, UserGroup
from server.events import record
from server.http import Routes, page_params, read_body, reply
from server.query import integer_range, uid_filter
from server.removal import (
    collect_now,
    delete_app_in,
    delete_data_in,
    delete_group_in,
    delete_host_in,
    delete_job_in,
    delete_user_in,
)
from server.routes.base import path_uid
from server.state import actor_of, services

routes = Routes("objects")
OBJECT = uid_filter("object", "object uid")
AFTER = integer_range("after", "only events with a larger id", low=0)  # events.id is an Integer


async def find(session: AsyncSession, actor: Actor, uid: str) -> tuple[str, OwnedMixin]:
    """The object with ``uid`` whatever its kind, if the actor may read it."""
    for kind, model in OWNED_MODELS.items():
        obj = await session.get(model, uid)
        if obj is not None:
            require(actor, obj, Perm.READ, kind)
            return kind, obj
    raise NotFound(f"no object {uid}")


@routes.add("GET", "/objects/{uid}", summary="Find the kind of any object", response=ObjectRef)
async def get_object(request: web.Request) -> web.Response:
    async with services(request).sessions() as session:
        kind, obj = await find(session, actor_of(request), path_uid(request))
    return reply(ObjectRef(uid=obj.uid, kind=kind, access_rights=format_mode(obj.access_rights)))


@routes.add(
    "POST",
    "/objects/{uid}/chmod",
    summary="Change an object's access rights",
    body=ChmodIn,
    response=ObjectRef,
)
async def chmod(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    body = await read_body(request, ChmodIn, svc.settings.max_json_bytes)
    async with svc.sessions() as session, session.begin():
        kind, obj = await find(session, actor, path_uid(request))
        if not can_administer(actor, obj):
            raise Forbidden(f"only the owner or an administrator may change the rights of {kind} {obj.uid}")
        if isinstance(obj, User) and obj.uid != actor.uid:
            require_may_manage_user(actor, obj.uid, obj.login, UserRights(obj.rights), obj.usergroup_uid)
        before = obj.access_rights
        obj.access_rights = parse_mode(body.mode, before)
        record(
            session,
            actor,
            kind,
            obj,
            "chmod",
            reason=f"{format_mode(before)} -> {format_mode(obj.access_rights)}",
        )
    return reply(ObjectRef(uid=obj.uid, kind=kind, access_rights=format_mode(obj.access_rights)))


@routes.add("DELETE", "/objects/{uid}", summary="Delete any object (xwrm)", status=204)
async def remove(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    gone = None
    async with svc.sessions() as session, session.begin():
        kind, obj = await find(session, actor, path_uid(request))
        if isinstance(obj, Job):
            await delete_job_in(session, actor, obj)
        elif isinstance(obj, Data):
            gone = await delete_data_in(session, actor, obj)
        elif isinstance(obj, App):
            await delete_app_in(session, actor, obj)
        elif isinstance(obj, UserGroup):
            await delete_group_in(session, actor, obj)
        elif isinstance(obj, User):
            await delete_user_in(session, actor, obj)
        elif isinstance(obj, Host):
            await delete_host_in(session, actor, obj)
        else:
            require(actor, obj, Perm.WRITE, kind)
            record(session, actor, kind, obj, "delete")
            await session.delete(obj)
    if gone is not None:
        await collect_now(svc, gone)
    if kind == "user":
        svc.crl.invalidate()
        svc.auth.forget_user(obj.uid)
    if kind == "host":
        svc.auth.forget_host(obj.uid)
    return web.Response(status=204)


def _event_out(e: Event) -> EventOut:
    return EventOut(
        id=e.id,
        at=e.at,
        actor=e.actor_uid,
        kind=e.kind,
        object=e.object_uid,
        action=e.action,
        from_status=e.from_status,
        to_status=e.to_status,
        reason=e.reason,
    )


@routes.add(
    "GET",
    "/events",
    summary="Read the event log",
    response=Page[EventOut],
    query=(OBJECT, AFTER),
)
async def events(request: web.Request) -> web.Response:
    actor = actor_of(request)
    require_may_list(actor, "events")
    offset, limit = page_params(request)
    stmt = select(Event).where(visible_events(actor))
    obj, after = OBJECT.text(request), AFTER.optional_integer(request)
    if obj is not None:
        stmt = stmt.where(Event.object_uid == obj)
    if after is not None:
        stmt = stmt.where(Event.id > after)
    async with services(request).readers() as session:
        total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
        rows = (await session.execute(stmt.order_by(Event.id).offset(offset).limit(limit))).scalars().all()
    return reply(
        Page[EventOut](items=[_event_out(e) for e in rows], total=int(total), offset=offset, limit=limit)
    )
