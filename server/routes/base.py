"""Helpers shared by the resource modules: loading under rights, serialising owned fields, filters."""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from common.errors import Forbidden, NotFound, ValidationFailed
from common.rights import Perm, parse_mode
from common.uri import is_uid
from server.authz import Actor, require, visible
from server.db.models import OwnedMixin, User
from server.http import page_params
from server.query import OWNER
from server.scheduler.matching import HostView
from server.state import HOST_KEY, actor_of

T = TypeVar("T", bound=OwnedMixin)


def path_uid(request: web.Request, key: str = "uid") -> str:
    """A uid from the URL path; anything else is 404 (never reaches SQL as text it can't match)."""
    uid = request.match_info[key].lower()
    if not is_uid(uid):
        raise NotFound(f"{request.match_info[key]!r} is not an object uid")
    return uid


async def load(session: AsyncSession, model: type[T], uid: str, actor: Actor, perm: Perm, what: str) -> T:
    """Load one object and require ``perm`` on it (unreadable objects are reported as not found)."""
    obj = await session.get(model, uid)
    if obj is None:
        raise NotFound(f"no {what} {uid}")
    require(actor, obj, perm, what)
    return obj


def rights_for(requested: str | None, default: int) -> int:
    return parse_mode(requested) if requested is not None else default


async def owner_filter(session: AsyncSession, text: str) -> str:
    """Resolve an ``owner`` filter given as uid or login."""
    if is_uid(text):
        return text.lower()
    uid = (await session.execute(select(User.uid).where(User.login == text))).scalar_one_or_none()
    if uid is None:
        raise ValidationFailed(f"no user {text!r} (owner filter)")
    return uid


async def paged(
    session: AsyncSession, request: web.Request, actor: Actor, model: type[T], stmt: Select[Any], order: Any
) -> tuple[list[T], int, int, int]:
    """Apply rights, the common ``owner`` filter and pagination; return (rows, total, offset, limit)."""
    offset, limit = page_params(request)
    stmt = stmt.where(visible(actor, model))
    owner = OWNER.text(request)
    if owner is not None:
        stmt = stmt.where(model.owner_uid == await owner_filter(session, owner))
    total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    rows = (await session.execute(stmt.order_by(order).offset(offset).limit(limit))).scalars().all()
    return list(rows), int(total), offset, limit


def host_of(request: web.Request) -> HostView:
    """The host a worker-protocol route is about, if the requester speaks with that host's own
    credential (authentication put the host's snapshot on the request); Forbidden otherwise."""
    actor = actor_of(request)
    hid = path_uid(request)
    if actor.host_uid is None:
        raise Forbidden(
            f"host routes need host {hid}'s own credential (from its enrolment), not an account's"
        )
    if actor.host_uid != hid:
        raise Forbidden(f"this credential is host {actor.host_uid}'s, not host {hid}'s")
    return request[HOST_KEY]
