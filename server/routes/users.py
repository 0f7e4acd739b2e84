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
from server.authz import Actor, require_may_create_user, require_may_list, require_may_manage_user
from server.certificates import bump_tokens, revoke_all
from server.db.models import User, UserGroup
from server.events import record
from server.http import Routes, read_body, reply
from server.passwords import hash_password, verify_password
from server.query import OWNER, name_filter
from server.removal import delete_group_in, delete_user_in
from server.routes.base import load, paged, path_uid, rights_for
from server.state import actor_of, services
from server.views import owned

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


LOGIN = name_filter("login", "exact login")


@routes.add("GET", "/users", summary="List users", response=Page[UserOut], query=(LOGIN, OWNER))
async def list_users(request: web.Request) -> web.Response:
    actor = actor_of(request)
    require_may_list(actor, "users")
    stmt = select(User)
    login = LOGIN.text(request)
    if login is not None:
        stmt = stmt.where(User.login == login)
    async with services(request).readers() as session:
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
    new_hash = await asyncio.to_thread(hash_password, body.password) if body.password is not None else None
    async with svc.sessions() as session, session.begin():
        user = await load(session, User, path_uid(request), actor, Perm.READ, "user")
        if user.uid == actor.uid:
            await _check_self_change(request, actor, user, body)
        else:
            require_may_manage_user(actor, user.uid, user.login, UserRights(user.rights), user.usergroup_uid)
        changed: list[str] = []
        if body.rights is not None and body.rights.value != user.rights:
            require_may_create_user(actor, body.rights, user.usergroup_uid)
            user.rights = body.rights.value
            bump_tokens(user)
            changed.append(f"rights {body.rights.value}")
        if new_hash is not None:
            user.password_hash = new_hash
            bump_tokens(user)
            changed.append("password")
        if body.email is not None:
            user.email = body.email
            changed.append("email")
        if body.cert_subject is not None:
            changed.append(await _set_subject(session, actor, user, body.cert_subject))
        record(session, actor, "user", user, "update", reason=", ".join(changed) or "nothing")
    if body.cert_subject is not None:
        svc.crl.invalidate()
    svc.auth.forget_user(user.uid)
    return reply(user_out(user))


async def _check_self_change(request: web.Request, actor: Actor, user: User, body: UserPatch) -> None:
    """One's own account: no promotion, no certificate mapping, and the current password to set a new one."""
    if not actor.is_admin and (body.rights is not None or body.cert_subject is not None):
        raise Forbidden(f"{actor.login} may not change its own rights or certificate subject")
    if body.password is None:
        return
    if body.current_password is None:
        raise ValidationFailed("current_password: required to change your own password")
    svc = services(request)
    address = request.remote or "?"
    svc.throttle.check(user.login, address)
    async with svc.passwords.slot():
        ok = await asyncio.to_thread(verify_password, body.current_password, user.password_hash)
    if not ok:
        svc.throttle.failed(user.login, address)
        raise Forbidden("current_password is wrong")


async def _set_subject(session: AsyncSession, actor: Actor, user: User, subject: str) -> str:
    """Map ``user`` to a certificate subject, or clear it (which revokes the user's certificates)."""
    if not subject:
        n = await revoke_all(session, user.uid, f"certificate subject cleared by {actor.login}")
        user.cert_subject = None
        bump_tokens(user)
        return f"certificate subject cleared, {n} certificate(s) revoked"
    holder = (
        await session.execute(select(User.login).where(User.cert_subject == subject, User.uid != user.uid))
    ).scalar_one_or_none()
    if holder is not None:
        raise Conflict(f"certificate subject {subject!r} is already mapped to user {holder!r}")
    user.cert_subject = subject
    return "cert_subject"


@routes.add("DELETE", "/users/{uid}", summary="Delete a user", status=204)
async def delete_user(request: web.Request) -> web.Response:
    actor = actor_of(request)
    async with services(request).sessions() as session, session.begin():
        user = await load(session, User, path_uid(request), actor, Perm.READ, "user")
        await delete_user_in(session, actor, user)
    services(request).crl.invalidate()
    services(request).auth.forget_user(user.uid)
    return web.Response(status=204)


@routes.add("GET", "/usergroups", summary="List usergroups", response=Page[UserGroupOut], query=(OWNER,))
async def list_groups(request: web.Request) -> web.Response:
    actor = actor_of(request)
    require_may_list(actor, "usergroups")
    async with services(request).readers() as session:
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


@routes.add("DELETE", "/usergroups/{uid}", summary="Delete an empty usergroup", status=204)
async def delete_group(request: web.Request) -> web.Response:
    actor = actor_of(request)
    async with services(request).sessions() as session, session.begin():
        group = await session.get(UserGroup, path_uid(request))
        if group is None:
            raise NotFound("no such usergroup")
        await delete_group_in(session, actor, group)
    return web.Response(status=204)
