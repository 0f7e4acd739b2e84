"""Deleting objects: who may delete what, and what a deletion takes with it.

One function per kind, each working inside the caller's transaction (``session``); both the kind's own
``DELETE`` route and the kind-independent ``DELETE /objects/{uid}`` (xwrm) call them, so the two can
never disagree. Each records its event; what has to happen after the commit (freeing a content with
``collect_now``, forgetting cached credentials) is left to the caller.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import UserRights
from common.errors import Conflict, Forbidden, NotFound
from common.jobstates import FINAL
from common.rights import Perm
from server import blobs
from server.authz import Actor, can, can_administer, require, require_may_manage_user
from server.certificates import revoke_all
from server.db.models import App, Data, Host, Job, JobRef, User, UserGroup
from server.events import record
from server.scheduler import lifecycle
from server.scheduler.reaper import requeue_host
from server.state import Services


async def delete_job_in(session: AsyncSession, actor: Actor, job: Job) -> None:
    """Delete a job in any state (a running one is killed by its host at its next heartbeat)."""
    require(actor, job, Perm.WRITE, "job")
    await lifecycle.delete_job(session, job, actor)


async def delete_data_in(session: AsyncSession, actor: Actor, data: Data) -> str | None:
    """Delete a data object; returns the sha256 whose file must go once the transaction commits."""
    require(actor, data, Perm.WRITE, "data")
    users = select(Job.uid).join(JobRef, JobRef.job_uid == Job.uid)
    users = users.where(JobRef.data_uid == data.uid, Job.status.not_in([s.value for s in FINAL])).limit(1)
    busy = (await session.execute(users)).scalar_one_or_none()
    if busy is not None:
        raise Conflict(f"data {data.name!r} is an input of unfinished job {busy}; remove the job first")
    record(session, actor, "data", data, "delete", reason=data.name)
    sha = data.sha256
    await session.delete(data)
    await session.flush()
    if sha is None:
        return None
    await blobs.unref(session, sha)
    return sha


async def collect_now(svc: Services, sha: str) -> None:
    """Free a content nobody references any more right away (the reaper collects what this misses)."""
    async with svc.store.lock(sha), svc.sessions() as session, session.begin():
        await blobs.collect(session, svc.store, [sha])


async def delete_app_in(session: AsyncSession, actor: Actor, app: App) -> None:
    """Delete an application that no job uses any more."""
    require(actor, app, Perm.WRITE, "application")
    if not can_administer(actor, app) and app.owner_uid != actor.uid:
        raise Forbidden(f"{actor.login} may not delete application {app.name}")
    used = (await session.execute(select(Job.uid).where(Job.app_uid == app.uid).limit(1))).first()
    if used is not None:
        raise Conflict(f"application {app.name!r} still has jobs; remove them first")
    record(session, actor, "app", app, "delete", reason=app.name)
    await session.delete(app)


async def manageable_host(session: AsyncSession, actor: Actor, hid: str) -> Host:
    """A host its owner or an administrator may revoke or delete."""
    host = await session.get(Host, hid)
    if host is None or not can(actor, host, Perm.READ):
        raise NotFound(f"no host {hid}")
    if host.owner_uid != actor.uid and not can_administer(actor, host):
        raise Forbidden(f"only the owner of host {host.name} or an administrator may do that")
    return host


async def delete_host_in(session: AsyncSession, actor: Actor, host: Host) -> int:
    """Delete a host record (its owner or an administrator); its jobs go back to the queue."""
    host = await manageable_host(session, actor, host.uid)
    moved = await requeue_host(session, host.uid, f"rescheduled: worker {host.name} deleted", actor)
    record(session, actor, "host", host, "delete", reason=host.name)
    await session.delete(host)
    return moved


async def delete_user_in(session: AsyncSession, actor: Actor, user: User) -> None:
    """Delete a user (those who manage it only; never yourself). Its objects stay, owned by its uid.

    Its certificates are revoked (published in the CRL); its tokens and host credentials stop working
    at once because they resolve to a user that no longer exists.
    """
    if user.uid == actor.uid:
        raise Forbidden("you cannot delete yourself")
    require_may_manage_user(actor, user.uid, user.login, UserRights(user.rights), user.usergroup_uid)
    n = await revoke_all(session, user.uid, f"user {user.login} deleted by {actor.login}")
    record(session, actor, "user", user, "delete", reason=f"{user.login}; {n} certificate(s) revoked")
    await session.delete(user)


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
