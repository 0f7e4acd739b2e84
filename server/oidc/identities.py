"""Administrators link identities (issuer, subject) to existing users, and unlink them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common.errors import Conflict, Forbidden, NotFound, ValidationFailed
from common.schemas import IdentityOut
from common.uri import is_uid, new_uid
from server.authz import Actor
from server.db.models import Identity, User
from server.events import record
from server.oidc.trust import TrustedProviders


def identity_out(identity: Identity, login: str) -> IdentityOut:
    return IdentityOut(
        uid=identity.uid,
        user=identity.user_uid,
        login=login,
        issuer=identity.issuer,
        subject=identity.subject,
        email=identity.email,
        created=identity.created,
        last_login=identity.last_login,
    )


async def find_user(session: AsyncSession, ref: str) -> User:
    by = User.uid == ref.lower() if is_uid(ref) else User.login == ref
    user = (await session.execute(select(User).where(by))).scalar_one_or_none()
    if user is None:
        raise NotFound(f"no user {ref!r}")
    return user


async def list_identities(session: AsyncSession, actor: Actor, user_ref: str | None) -> list[IdentityOut]:
    """Administrators see anyone's (or one user's); others only their own."""
    stmt = select(Identity, User.login).join(User, User.uid == Identity.user_uid)
    if user_ref is not None:
        user = await find_user(session, user_ref)
        if not actor.is_admin and user.uid != actor.uid:
            raise Forbidden("only administrators see other users' identities")
        stmt = stmt.where(Identity.user_uid == user.uid)
    elif not actor.is_admin:
        stmt = stmt.where(Identity.user_uid == actor.uid)
    rows = (await session.execute(stmt.order_by(User.login, Identity.issuer, Identity.subject))).all()
    return [identity_out(identity, login) for identity, login in rows]


async def link(
    session: AsyncSession, actor: Actor, providers: TrustedProviders, user_ref: str, issuer: str, subject: str
) -> IdentityOut:
    if not actor.is_admin:
        raise Forbidden("only administrators link identities to users")
    trusted = {p.issuer for p in providers.configs}
    issuer = issuer.rstrip("/")
    if issuer not in trusted:
        raise ValidationFailed(
            f"issuer {issuer} is not a trusted provider (trusted: {', '.join(sorted(trusted)) or 'none'})"
        )
    user = await find_user(session, user_ref)
    holder = (
        await session.execute(
            select(User.login)
            .join(Identity, Identity.user_uid == User.uid)
            .where(Identity.issuer == issuer, Identity.subject == subject)
        )
    ).scalar_one_or_none()
    if holder is not None:
        raise Conflict(f"identity {subject} at {issuer} is already linked to user {holder!r}")
    identity = Identity(uid=new_uid(), user_uid=user.uid, issuer=issuer, subject=subject)
    session.add(identity)
    record(session, actor, "user", user, "link", reason=f"identity {subject} at {issuer}")
    await session.flush()
    return identity_out(identity, user.login)


async def unlink(session: AsyncSession, actor: Actor, uid: str) -> str:
    """Remove a link; the user's tokens end (a token from that identity must not outlive it).

    Answers the user's uid, for the caller to drop from its caches."""
    if not actor.is_admin:
        raise Forbidden("only administrators unlink identities")
    identity = await session.get(Identity, uid)
    if identity is None:
        raise NotFound(f"no identity {uid}")
    user = await session.get(User, identity.user_uid)
    await session.delete(identity)
    if user is not None:
        user.token_version += 1
        reason = f"identity {identity.subject} at {identity.issuer}"
        record(session, actor, "user", user, "unlink", reason=reason)
    return identity.user_uid
