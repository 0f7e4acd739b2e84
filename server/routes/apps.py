"""Applications: a name, a type, and per-platform binaries (data objects) or a portable script."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import AppType
from common.errors import Conflict
from common.rights import Perm
from common.schemas import AppIn, AppOut, Binary, Page, Validation
from common.uri import new_uid
from server.authz import Actor, can_administer, default_rights, require_may_insert, require_may_list
from server.db.models import App, Data, Job
from server.events import record
from server.http import Routes, read_body, reply
from server.query import OWNER, name_filter
from server.removal import delete_app_in
from server.routes.base import load, paged, path_uid, rights_for
from server.scheduler import submission
from server.scheduler.matching import platforms_of
from server.state import actor_of, services
from server.views import owned

routes = Routes("apps")
NAME = name_filter("name", "exact name")


def app_out(a: App) -> AppOut:
    return AppOut(
        **owned(a),
        name=a.name,
        type=AppType(a.type),
        binaries=[Binary(**b) for b in a.binaries],
        env=a.env_uid,
        wallclock=a.wallclock,
        min_memory=a.min_memory,
        validation=Validation(**a.validation) if a.validation else None,
    )


def _policy(body: AppIn) -> dict[str, Any] | None:
    """The app's ``validation`` column for a request's policy (refused if the server cannot apply it)."""
    if body.validation is None or body.validation.policy == "none":
        return None
    submission.check_policy(body.validation)
    return body.validation.model_dump(mode="json", exclude_defaults=True) | {"policy": body.validation.policy}


async def _check_refs(session: AsyncSession, actor: Actor, uids: list[str]) -> None:
    for uid in uids:
        await load(session, Data, uid, actor, Perm.READ, "data")


@routes.add("GET", "/apps", summary="List applications", response=Page[AppOut], query=(NAME, OWNER))
async def list_apps(request: web.Request) -> web.Response:
    actor = actor_of(request)
    require_may_list(actor, "applications")
    stmt = select(App)
    name = NAME.text(request)
    if name is not None:
        stmt = stmt.where(App.name == name)
    async with services(request).readers() as session:
        rows, total, offset, limit = await paged(session, request, actor, App, stmt, App.name)
    return reply(Page[AppOut](items=[app_out(a) for a in rows], total=total, offset=offset, limit=limit))


@routes.add(
    "POST",
    "/apps",
    summary="Register an application, or add binaries to one you own",
    body=AppIn,
    response=AppOut,
    status=201,
    also=(200,),
)
async def create_app(request: web.Request) -> web.Response:
    """XWHEP's sendapp: a second call with the same name adds (or replaces) binaries for its platforms."""
    svc = services(request)
    actor = actor_of(request)
    require_may_insert(actor, "applications")
    body = await read_body(request, AppIn, svc.settings.max_json_bytes)
    async with svc.sessions() as session:
        await _check_refs(session, actor, [b.data for b in body.binaries] + ([body.env] if body.env else []))
        existing = (await session.execute(select(App).where(App.name == body.name))).scalar_one_or_none()
        if existing is not None:
            if not can_administer(actor, existing):
                raise Conflict(f"application {body.name!r} already exists and belongs to someone else")
            if AppType(existing.type) is not body.type:
                raise Conflict(f"application {body.name!r} is a {existing.type} application")
            merged = {(b["os"], b["cpu"]): b for b in existing.binaries}
            merged.update({(b.os.value, b.cpu.value): b.model_dump(mode="json") for b in body.binaries})
            existing.binaries = list(merged.values())
            await session.execute(
                update(Job)
                .where(Job.app_uid == existing.uid, Job.status.in_(["PENDING", "UNAVAILABLE", "WAITING"]))
                .values(platforms=platforms_of(existing))
            )
            if body.env:
                existing.env_uid = body.env
            if body.wallclock:
                existing.wallclock = body.wallclock
            if body.access_rights is not None:
                existing.access_rights = rights_for(body.access_rights, existing.access_rights)
            if body.validation is not None:  # for jobs submitted from now on
                existing.validation = _policy(body)
            record(
                session,
                actor,
                "app",
                existing,
                "update",
                reason="binaries " + ", ".join(f"{b.os.value}/{b.cpu.value}" for b in body.binaries),
            )
            await session.commit()
            services(request).catalog.forget_app(existing.uid)  # its binaries changed
            return reply(app_out(existing), status=200)
        app = App(
            uid=new_uid(),
            owner_uid=actor.uid,
            group_uid=actor.group_uid,
            access_rights=rights_for(body.access_rights, default_rights(actor)),
            name=body.name,
            type=body.type.value,
            binaries=[b.model_dump(mode="json") for b in body.binaries],
            env_uid=body.env,
            wallclock=body.wallclock,
            min_memory=body.min_memory,
            validation=_policy(body),
        )
        session.add(app)
        record(session, actor, "app", app, "create", reason=body.name)
        try:
            await session.commit()
        except IntegrityError:
            raise Conflict(f"application {body.name!r} already exists") from None
    return reply(app_out(app), status=201)


@routes.add("GET", "/apps/{uid}", summary="Show an application", response=AppOut)
async def get_app(request: web.Request) -> web.Response:
    async with services(request).sessions() as session:
        app = await load(session, App, path_uid(request), actor_of(request), Perm.READ, "application")
    return reply(app_out(app))


@routes.add("DELETE", "/apps/{uid}", summary="Delete an application", status=204)
async def delete_app(request: web.Request) -> web.Response:
    actor = actor_of(request)
    async with services(request).sessions() as session, session.begin():
        app = await load(session, App, path_uid(request), actor, Perm.READ, "application")
        await delete_app_in(session, actor, app)
    return web.Response(status=204)
