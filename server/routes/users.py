"""Users and usergroups."""

from __future__ import annotations

import asyncio

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import UserRights
from common.errors import Conflict, Forbidden, NotFound, ValidationFailed
from common.rights import GROUP, PRIVATE, Perm
from common.schemas import Page, UserGroupIn, UserGroupOut, UserIn, UserOut, UserPatch
from common.uri import is_uid, new_uid
from server.authz import Actor, require, require_may_create_user, require_may_list
from server.db.models import User, UserGroup
from server.events import record
from server.http import Routes, read_body, reply
from server.passwords import hash_password
from server.routes.base import load, owned, paged, path_uid, rights_for
from server.state import actor_of, services

routes = Routes("users")


def user_out(u: User) -> UserOut:
    return UserOut(
        **owned(u),
        login=u.login,
        email=u.email,
        rights=UserRights(u.rights),
        usergroup=u.usergroup_uid,
        cert_subject=u.cert_subject,
    )


def group_out(g: UserGroup) -> UserGroupOut:
    return UserGroupOut(**owned(g), label=g.label, project=g.project)


async def find_group(session: AsyncSession, ref: str) -> UserGroup:
    """A usergroup by uid or label."""
    stmt = select(UserGroup).where(UserGroup.uid == ref.lower() if is_uid(ref) else UserGroup.label == ref)
    group = (await session.execute(stmt)).scalar_one_or_none()
    if group is None:
        raise ValidationFailed(f"no usergroup {ref!r}")
    return group


def _unique(exc: IntegrityError, what: str) -> Conflict:
    return Conflict(f"{what} already exists")


@routes.add("GET", "/users", summary="List users", response=Page[UserOut], query={"login": "exact login"})
async def list_users(request: web.Request) -> web.Response:
    actor = actor_of(request)
    require_may_list(actor, "users")
    stmt = select(User)
    if "login" in request.query:
        stmt = stmt.where(User.login == request.query["login"])
    async with services(request).sessions() as session:
        rows, total, offset, limit = await paged(session, request, actor, User, stmt, User.login)
    return reply(Page[UserOut](items=[user_out(u) for u in rows], total=total, offset=offset, limit=limit))


@routes.add("POST", "/users", summary="Create a user", body=UserIn, response=UserOut, status=201)
async def create_user(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    body = await read_body(request, UserIn, svc.settings.max_json_bytes)
    password_hash = await asyncio.to_thread(hash_password, body.password)
    async with svc.sessions() as session:
        group_uid = (await find_group(session, body.usergroup)).uid if body.usergroup else None
        if group_uid is None and actor.rights is UserRights.ADVANCED_USER:
            group_uid = actor.group_uid  # a group administrator's users join its group
        require_may_create_user(actor, body.rights, group_uid)
        uid = new_uid()
        user = User(
            uid=uid,
            owner_uid=uid,
            group_uid=group_uid,
            access_rights=PRIVATE,
            login=body.login,
            password_hash=password_hash,
            email=body.email,
            rights=body.rights.value,
            usergroup_uid=group_uid,
            cert_subject=body.cert_subject,
        )
        session.add(user)
        record(session, actor, "user", user, "create", reason=f"{body.login} as {body.rights.value}")
        try:
            await session.commit()
        except IntegrityError as exc:
            raise _unique(exc, f"user {body.login!r} (or its certificate subject)") from None
    return reply(user_out(user), status=201)


@routes.add("GET", "/users/{uid}", summary="Show a user", response=UserOut)
async def get_user(request: web.Request) -> web.Response:
    async with services(request).sessions() as session:
        user = await load(session, User, path_uid(request), actor_of(request), Perm.READ, "user")
    return reply(user_out(user))


@routes.add(
    "PATCH",
    "/users/{uid}",
    summary="Change a user's password, email, rights or certificate subject",
    body=UserPatch,
    response=UserOut,
)
async def patch_user(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    body = await read_body(request, UserPatch, svc.settings.max_json_bytes)
    async with svc.sessions() as session, session.begin():
        user = await load(session, User, path_uid(request), actor, Perm.WRITE, "user")
        if body.rights is not None or body.cert_subject is not None:
            _require_admin_over(actor, user)
        if body.rights is not None:
            require_may_create_user(actor, body.rights, user.usergroup_uid)
            user.rights = body.rights.value
        if body.password is not None:
            user.password_hash = await asyncio.to_thread(hash_password, body.password)
        if body.email is not None:
            user.email = body.email
        if body.cert_subject is not None:
            user.cert_subject = body.cert_subject or None
        record(
            session,
            actor,
            "user",
            user,
            "update",
            reason=", ".join(k for k, v in body.model_dump().items() if v is not None and k != "password")
            + (", password" if body.password else ""),
        )
    return reply(user_out(user))


def _require_admin_over(actor: Actor, user: User) -> None:
    if actor.rights is UserRights.SUPER_USER:
        return
    if (
        actor.rights is UserRights.ADVANCED_USER
        and user.usergroup_uid == actor.group_uid
        and user.uid != actor.uid
    ):
        return
    raise Forbidden(f"{actor.login} may not change rights or certificates of {user.login}")


@routes.add("DELETE", "/users/{uid}", summary="Delete a user", status=204)
async def delete_user(request: web.Request) -> web.Response:
    actor = actor_of(request)
    async with services(request).sessions() as session, session.begin():
        user = await load(session, User, path_uid(request), actor, Perm.READ, "user")
        await delete_user_in(session, actor, user)
    return web.Response(status=204)


async def delete_user_in(session: AsyncSession, actor: Actor, user: User) -> None:
    """Delete a user (administrators of it only; never yourself). Its objects stay, owned by its uid."""
    require(actor, user, Perm.WRITE, "user")
    _require_admin_over(actor, user)
    if user.uid == actor.uid:
        raise Forbidden("you cannot delete yourself")
    record(session, actor, "user", user, "delete", reason=user.login)
    await session.delete(user)


@routes.add("GET", "/usergroups", summary="List usergroups", response=Page[UserGroupOut])
async def list_groups(request: web.Request) -> web.Response:
    actor = actor_of(request)
    require_may_list(actor, "usergroups")
    async with services(request).sessions() as session:
        rows, total, offset, limit = await paged(
            session, request, actor, UserGroup, select(UserGroup), UserGroup.label
        )
    return reply(
        Page[UserGroupOut](items=[group_out(g) for g in rows], total=total, offset=offset, limit=limit)
    )


@routes.add(
    "POST",
    "/usergroups",
    summary="Create a usergroup (administrators)",
    body=UserGroupIn,
    response=UserGroupOut,
    status=201,
)
async def create_group(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    body = await read_body(request, UserGroupIn, svc.settings.max_json_bytes)
    if not actor.is_admin:
        raise Forbidden("only administrators create usergroups")
    uid = new_uid()
    group = UserGroup(
        uid=uid,
        owner_uid=actor.uid,
        group_uid=uid,
        access_rights=rights_for(body.access_rights, GROUP),
        label=body.label,
        project=body.project,
    )
    async with svc.sessions() as session:
        session.add(group)
        record(session, actor, "usergroup", group, "create", reason=body.label)
        try:
            await session.commit()
        except IntegrityError as exc:
            raise _unique(exc, f"usergroup {body.label!r}") from None
    return reply(group_out(group), status=201)


@routes.add("GET", "/usergroups/{uid}", summary="Show a usergroup", response=UserGroupOut)
async def get_group(request: web.Request) -> web.Response:
    async with services(request).sessions() as session:
        group = await load(session, UserGroup, path_uid(request), actor_of(request), Perm.READ, "usergroup")
    return reply(group_out(group))


async def delete_group_in(session: AsyncSession, actor: Actor, group: UserGroup) -> None:
    """Delete an empty usergroup (administrators only)."""
    if not actor.is_admin:
        raise Forbidden("only administrators delete usergroups")
    members = (
        await session.execute(select(User.uid).where(User.usergroup_uid == group.uid).limit(1))
    ).first()
    if members is not None:
        raise Conflict(f"usergroup {group.label!r} still has users")
    record(session, actor, "usergroup", group, "delete", reason=group.label)
    await session.delete(group)


@routes.add("DELETE", "/usergroups/{uid}", summary="Delete an empty usergroup", status=204)
async def delete_group(request: web.Request) -> web.Response:
    actor = actor_of(request)
    async with services(request).sessions() as session, session.begin():
        group = await session.get(UserGroup, path_uid(request))
        if group is None:
            raise NotFound("no such usergroup")
        await delete_group_in(session, actor, group)
    return web.Response(status=204)
