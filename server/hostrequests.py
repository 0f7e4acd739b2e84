"""Host requests: a machine without an account asks for a host credential, an administrator decides.

HTCondor's ``condor_token_request`` / ``condor_token_request_approve``, for volunteers. The requester
(``xwworker request``) sends its description without credentials and gets a request uid, a secret only it
holds, and a short code its volunteer reads to the administrator. The administrator approves with that
code (a request whose code differs is someone else's) choosing the host's owner, or denies with a reason.
The requester polls with its secret; after an approval its next poll makes the host, exactly as an
enrolment by the owner would, and answers the host's own credential, once. Nothing answered is stored:
the server keeps the SHA-256 of the secret and of the code, and of the host credential as ``hostcreds``.

Anyone may ask, so asking is bounded: at most :data:`MAX_PENDING` requests wait at once, at most
:data:`MAX_PENDING_PER_ADDRESS` from one address, and a request nobody decides lapses after
:data:`LIFETIME` (checked when read: no background task). Finished requests are purged after
:data:`KEEP_FINISHED`.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import CPU, OS, UserRights
from common.errors import Conflict, Forbidden, NotFound, TooManyRequests, ValidationFailed
from common.rights import PRIVATE, PUBLIC
from common.schemas import (
    HostRequestIn,
    HostRequestOut,
    HostRequestState,
    HostRequestTicket,
    Page,
    RequestStatus,
)
from common.uri import is_uid, new_uid
from server import hostcreds
from server.authz import Actor
from server.db.models import Host, HostRequest, User, utcnow
from server.events import record

PENDING, APPROVED, DENIED, DELIVERED, EXPIRED = "pending", "approved", "denied", "delivered", "expired"
STATUSES = (PENDING, APPROVED, DENIED, DELIVERED, EXPIRED)
KIND = "hostrequest"  # events.kind

LIFETIME = timedelta(hours=24)  # a request nobody decides lapses after this
COLLECT_WITHIN = timedelta(hours=24)  # an approved credential not collected by then lapses too
KEEP_FINISHED = timedelta(days=30)  # denied, delivered and expired requests are purged after this
MAX_PENDING = 1000
MAX_PENDING_PER_ADDRESS = 10
RETRY_AFTER = 600  # seconds a refused requester is told to wait
# The account xwgrid and `make run` create for the grid's workers (server/grid.py WORKER_LOGIN): a host
# approved without an owner belongs to it, as if it had enrolled with the shared account.
SHARED_WORKER_LOGIN = "worker"

# Crockford's base32: no I, L, O or U, so a code read aloud or copied by hand has one spelling.
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 8  # 40 bits, shown as K7QF-2M9D
_CODE_READS = str.maketrans("OIL", "011")


def new_code() -> str:
    """A fresh code, ``XXXX-XXXX``."""
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return f"{raw[:4]}-{raw[4:]}"


def normal_code(text: str) -> str:
    """A code as typed (any case, with or without the dash, O for 0) in its one spelling."""
    return "".join(text.split()).replace("-", "").upper().translate(_CODE_READS)


def code_digest(code: str) -> str:
    return hostcreds.digest(normal_code(code))


def status_of(req: HostRequest, now: datetime) -> str:
    """Its status now: a pending or approved request past its time has expired, stored or not."""
    if req.status in (PENDING, APPROVED) and req.expires <= now:
        return EXPIRED
    return req.status


def _is(status: str, now: datetime) -> ColumnElement[bool]:
    """``status_of(row, now) == status`` as SQL."""
    lapsed = HostRequest.status.in_((PENDING, APPROVED)) & (HostRequest.expires <= now)
    if status == EXPIRED:
        return or_(HostRequest.status == EXPIRED, lapsed)
    if status in (PENDING, APPROVED):
        return (HostRequest.status == status) & (HostRequest.expires > now)
    return HostRequest.status == status


async def _tidy(session: AsyncSession, now: datetime) -> None:
    """Store the lapses that happened and purge what finished long ago (two indexed statements)."""
    lapsed = HostRequest.status.in_((PENDING, APPROVED)) & (HostRequest.expires <= now)
    await session.execute(update(HostRequest).where(lapsed).values(status=EXPIRED, modified=now))
    finished = HostRequest.status.in_((DENIED, DELIVERED, EXPIRED))
    await session.execute(delete(HostRequest).where(finished, HostRequest.modified < now - KEEP_FINISHED))


async def _count(session: AsyncSession, *where: ColumnElement[bool]) -> int:
    stmt = select(func.count()).select_from(HostRequest).where(*where)
    return int((await session.execute(stmt)).scalar_one())


async def create(
    session: AsyncSession, desc: HostRequestIn, address: str, now: datetime | None = None
) -> HostRequestTicket:
    """Record a request from ``address``; TooManyRequests past the caps.

    The caps are counted in this transaction: requests arriving at the same instant on several server
    processes may overshoot them by as many.
    """
    now = now or utcnow()
    await _tidy(session, now)
    if await _count(session, HostRequest.status == PENDING) >= MAX_PENDING:
        raise TooManyRequests(
            f"{MAX_PENDING} host requests already wait for an administrator: try again later",
            retry_after=RETRY_AFTER,
        )
    mine = (HostRequest.status == PENDING) & (HostRequest.address == address[:64])
    if await _count(session, mine) >= MAX_PENDING_PER_ADDRESS:
        raise TooManyRequests(
            f"{MAX_PENDING_PER_ADDRESS} host requests from {address} already wait for an administrator: "
            "wait for their decision, or for them to expire",
            retry_after=RETRY_AFTER,
        )
    secret, code = secrets.token_urlsafe(32), new_code()
    req = HostRequest(
        uid=new_uid(),
        owner_uid=None,  # nobody's until approved: only administrators see it
        group_uid=None,
        access_rights=PRIVATE,
        secret_hash=hostcreds.digest(secret),
        code_hash=code_digest(code),
        address=address[:64],
        status=PENDING,
        expires=now + LIFETIME,
        created=now,
        modified=now,
        **_description(desc),
    )
    session.add(req)
    record(session, None, KIND, req, "request", reason=f"{desc.name} ({_platform(req)}) from {address}")
    return HostRequestTicket(uid=req.uid, secret=secret, code=code, expires=req.expires)


def _description(desc: HostRequestIn) -> dict[str, Any]:
    d = desc.model_dump()
    d["os"], d["cpu"] = desc.os.value, desc.cpu.value
    return d


def _platform(req: HostRequest) -> str:
    return f"{req.os}/{req.cpu}, {req.cores} cores, sandbox {req.sandbox or 'none'}"


async def _load(session: AsyncSession, uid: str, now: datetime) -> HostRequest:
    """The request, locked for this transaction (PostgreSQL; SQLite has one writer), its lapse stored."""
    req = await session.get(HostRequest, uid, with_for_update=True)
    if req is None:
        raise NotFound(f"no host request {uid}")
    status = status_of(req, now)
    if status != req.status:
        req.status, req.modified = status, now
    return req


async def poll(session: AsyncSession, uid: str, secret: str, now: datetime | None = None) -> HostRequestState:
    """The requester's poll: the decision, and after an approval the new host and its credential, once."""
    now = now or utcnow()
    req = await _load(session, uid, now)
    if not hostcreds.matches(secret, req.secret_hash):
        raise Forbidden(f"that is not the secret of host request {uid}")
    if req.status == DELIVERED:
        raise Conflict(
            f"host request {uid} was already answered with host {req.host_uid}'s credential, which is "
            "answered once: that host's worker holds it (to start afresh, send a new request)"
        )
    state = HostRequestState(status=PENDING, expires=req.expires)
    if req.status in (DENIED, EXPIRED):
        return state.model_copy(update={"status": req.status, "reason": req.reason or _lapse(req)})
    if req.status == PENDING:
        return state
    return await _deliver(session, req, now)


def _lapse(req: HostRequest) -> str:
    if req.decided is not None:
        return f"approved, but its credential was not collected before {req.expires:%Y-%m-%d %H:%M} UTC"
    return f"no administrator decided before {req.expires:%Y-%m-%d %H:%M} UTC"


async def _deliver(session: AsyncSession, req: HostRequest, now: datetime) -> HostRequestState:
    """Make the approved host, as an enrolment by its owner would, and answer its credential."""
    owner = await session.get(User, req.owner_uid) if req.owner_uid else None
    if owner is None:
        req.status, req.modified = DENIED, now
        req.reason = f"the owner its approval chose ({req.owner_uid}) no longer exists"
        return HostRequestState(status=DENIED, expires=req.expires, reason=req.reason)
    rights = UserRights(owner.rights)
    host = Host(
        uid=new_uid(),
        owner_uid=owner.uid,
        group_uid=owner.usergroup_uid,
        access_rights=PUBLIC if rights in (UserRights.WORKER_USER, UserRights.SUPER_USER) else PRIVATE,
        name=req.name,
        os=req.os,
        cpu=req.cpu,
        cores=req.cores,
        memory=req.memory,
        disk=req.disk,
        version=req.version,
        sandbox=req.sandbox,
        project_uid=None,
        shared_apps=[],
        active=False,  # alive once its worker starts and enrols with the credential
        last_alive=None,
    )
    credential, host.credential_hash = hostcreds.new_credential(host.uid)
    host.credential_issued = now
    session.add(host)
    req.status, req.host_uid, req.modified = DELIVERED, host.uid, now
    as_owner = Actor(owner.uid, owner.login, rights, owner.usergroup_uid, auth="host", host_uid=host.uid)
    why = f"{req.name} {_platform(req)} (host request {req.uid})"
    record(session, as_owner, "host", host, "enrol", reason=why)
    record(session, as_owner, KIND, req, "deliver", reason=f"host {host.uid}")
    return HostRequestState(
        status=APPROVED, expires=req.expires, host=host.uid, owner=owner.login, credential=credential
    )


def require_admin(actor: Actor) -> None:
    if not actor.is_admin:
        raise Forbidden(f"{actor.login} is not an administrator: only administrators decide host requests")


async def approve(
    session: AsyncSession,
    actor: Actor,
    uid: str,
    code: str,
    owner: str | None = None,
    now: datetime | None = None,
) -> HostRequestOut:
    """Approve a pending request whose code is ``code``, for ``owner`` (login or uid; see _owner)."""
    require_admin(actor)
    now = now or utcnow()
    req = await _load(session, uid, now)
    if req.status != PENDING:
        raise Conflict(f"host request {uid} is {req.status}: only a pending request can be approved")
    if not hmac.compare_digest(code_digest(code), req.code_hash):
        raise Forbidden(
            f"wrong code for host request {uid}: ask its volunteer for the code `xwworker request` "
            "printed (a request with another code is not theirs)"
        )
    chosen = await _owner(session, actor, owner)
    req.status, req.owner_uid, req.group_uid = APPROVED, chosen.uid, chosen.usergroup_uid
    req.decided, req.decided_by, req.modified = now, actor.uid, now
    req.expires = now + COLLECT_WITHIN
    record(session, actor, KIND, req, "approve", reason=f"{req.name} for {chosen.login}")
    return out(req, now, {actor.uid: actor.login, chosen.uid: chosen.login})


async def _owner(session: AsyncSession, actor: Actor, ref: str | None) -> User:
    """The owner named (login or uid); by default the shared worker account, else the approver."""
    if ref is not None:
        where = User.uid == ref.lower() if is_uid(ref) else User.login == ref
        found = (await session.execute(select(User).where(where))).scalar_one_or_none()
        if found is None:
            raise ValidationFailed(f"no user {ref!r} (owner)")
        return found
    shared = (
        await session.execute(
            select(User).where(User.login == SHARED_WORKER_LOGIN, User.rights == UserRights.WORKER_USER.value)
        )
    ).scalar_one_or_none()
    approver = shared or await session.get(User, actor.uid)
    if approver is None:
        raise ValidationFailed("no owner given, and no worker account nor approver account to own the host")
    return approver


async def deny(
    session: AsyncSession, actor: Actor, uid: str, reason: str = "", now: datetime | None = None
) -> HostRequestOut:
    """Deny a pending request, or withdraw an approval whose credential was not collected yet."""
    require_admin(actor)
    now = now or utcnow()
    req = await _load(session, uid, now)
    if req.status not in (PENDING, APPROVED):
        raise Conflict(f"host request {uid} is {req.status}: only a pending or approved one can be denied")
    req.status, req.owner_uid, req.group_uid = DENIED, None, None
    req.decided, req.decided_by, req.modified = now, actor.uid, now
    req.reason = reason or f"denied by {actor.login}"
    record(session, actor, KIND, req, "deny", reason=req.reason)
    return out(req, now, {actor.uid: actor.login})


@dataclass(frozen=True)
class Listing:
    status: str | None  # None: all
    offset: int
    limit: int


async def listing(
    session: AsyncSession, actor: Actor, which: Listing, now: datetime | None = None
) -> Page[HostRequestOut]:
    """Requests by status (as now: a lapsed one is expired), oldest first; administrators only."""
    require_admin(actor)
    now = now or utcnow()
    where = [_is(which.status, now)] if which.status else []
    total = await _count(session, *where)
    stmt = select(HostRequest).where(*where).order_by(HostRequest.created, HostRequest.uid)
    rows = (await session.execute(stmt.offset(which.offset).limit(which.limit))).scalars().all()
    people = {r.owner_uid for r in rows} | {r.decided_by for r in rows}
    people.discard(None)
    logins = dict((await session.execute(select(User.uid, User.login).where(User.uid.in_(people)))).all())
    items = [out(r, now, logins) for r in rows]
    return Page[HostRequestOut](items=items, total=total, offset=which.offset, limit=which.limit)


def out(req: HostRequest, now: datetime, logins: dict[str, str] | None = None) -> HostRequestOut:
    """The administrators' view of a request (never its code or secret)."""
    names = logins or {}
    return HostRequestOut(
        uid=req.uid,
        name=req.name,
        os=OS(req.os),
        cpu=CPU(req.cpu),
        cores=req.cores,
        memory=req.memory,
        disk=req.disk,
        version=req.version,
        sandbox=req.sandbox,
        address=req.address,
        status=cast(RequestStatus, status_of(req, now)),
        created=req.created,
        expires=req.expires,
        owner=names.get(req.owner_uid or "", req.owner_uid),
        decided=req.decided,
        decided_by=names.get(req.decided_by or "", req.decided_by),
        reason=req.reason,
        host=req.host_uid,
    )
