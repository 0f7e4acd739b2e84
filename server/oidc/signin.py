"""Sign-in through a trusted provider: a verified identity (issuer, subject) becomes a user.

* A linked identity signs its user in.
* An unknown one is refused, or, where the provider allows it, becomes a new standard user in the
  usergroup the provider's groups map to. A login already held by another account is never taken over
  (an administrator links the identity instead): people are matched by (issuer, subject), not by name
  or email.
* An ID token is spent by its exchange: the same token offered again is refused (a replay), by every
  server process sharing the database.

Refusals roll the whole transaction back: nothing is created by a sign-in that fails.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import UserRights
from common.errors import Conflict, Unauthorized
from common.rights import PRIVATE
from common.schemas import Name
from common.uri import new_uid
from server.authz import Actor
from server.db.models import Identity, SpentIdToken, User, UserGroup, utcnow
from server.events import record
from server.oidc.config import ProviderConfig

_NAME: TypeAdapter[str] = TypeAdapter(Name)
NO_PASSWORD = "!oidc"  # the password hash of a user made at sign-in: no password ever matches it


async def spend(session: AsyncSession, id_token: str, claims: dict[str, Any]) -> None:
    """Record the token as used until it expires; a second use is refused."""
    now = utcnow()
    await session.execute(delete(SpentIdToken).where(SpentIdToken.expires < now))
    digest = hashlib.sha256(id_token.encode()).hexdigest()
    expires = datetime.fromtimestamp(float(claims["exp"]), UTC)
    try:
        async with session.begin_nested():
            session.add(SpentIdToken(digest=digest, expires=max(expires, now)))
    except IntegrityError:
        raise Unauthorized("this ID token was already used (replayed): sign in again") from None


async def sign_in_once(
    session: AsyncSession, provider: ProviderConfig, id_token: str, claims: dict[str, Any]
) -> User:
    """Spend the verified ``id_token`` and sign its person in (xwlogin's exchange and the dashboard)."""
    await spend(session, id_token, claims)
    return await sign_in(session, provider, claims)


async def sign_in(session: AsyncSession, provider: ProviderConfig, claims: dict[str, Any]) -> User:
    """The user the verified ``claims`` identify (created if the provider allows); else Unauthorized."""
    subject = str(claims["sub"])
    email = claims.get("email") if isinstance(claims.get("email"), str) else None
    found = (
        await session.execute(
            select(Identity).where(Identity.issuer == provider.issuer, Identity.subject == subject)
        )
    ).scalar_one_or_none()
    if found is not None:
        user = await session.get(User, found.user_uid)
        if user is None:  # the user went between the two reads
            raise Unauthorized("the account linked to this identity no longer exists")
        found.last_login, found.email = utcnow(), email or found.email
        return user
    if not provider.create_users:
        raise Unauthorized(
            f"no xwhep account is linked to subject {subject} at {provider.issuer}: "
            f"ask an administrator to run: xwidentity link LOGIN {provider.issuer} {subject}"
        )
    return await _create(session, provider, claims, subject, email)


async def _create(
    session: AsyncSession, provider: ProviderConfig, claims: dict[str, Any], subject: str, email: str | None
) -> User:
    login = claims.get(provider.login_claim)
    if not isinstance(login, str) or not login:
        raise Unauthorized(f"the provider sent no {provider.login_claim!r} claim to name a new account")
    try:
        _NAME.validate_python(login)
    except ValidationError:
        raise Unauthorized(f"{provider.login_claim} {login!r} cannot be an xwhep login") from None
    taken = (await session.execute(select(User.uid).where(User.login == login))).scalar_one_or_none()
    if taken is not None:
        raise Conflict(
            f"login {login!r} already belongs to another account: an administrator can link your "
            f"identity to it (xwidentity link {login} {provider.issuer} {subject})"
        )
    group_uid = None
    label = provider.usergroup_for(claims.get(provider.groups_claim))
    if label:
        group_uid = (
            await session.execute(select(UserGroup.uid).where(UserGroup.label == label))
        ).scalar_one_or_none()
        if group_uid is None:
            raise Unauthorized(f"usergroup {label!r} named in the settings of {provider.name} does not exist")
    uid = new_uid()
    user = User(
        uid=uid,
        owner_uid=uid,
        group_uid=group_uid,
        access_rights=PRIVATE,
        login=login,
        password_hash=NO_PASSWORD,
        email=email or "",
        rights=UserRights.STANDARD_USER.value,
        usergroup_uid=group_uid,
    )
    session.add(user)
    await session.flush()  # the user row first: the identity refers to it
    session.add(
        Identity(
            uid=new_uid(),
            user_uid=uid,
            issuer=provider.issuer,
            subject=subject,
            email=email,
            last_login=utcnow(),
        )
    )
    me = Actor(uid=uid, login=login, rights=UserRights.STANDARD_USER, group_uid=group_uid, auth="oidc")
    record(session, me, "user", user, "create", reason=f"{login} at first sign-in through {provider.issuer}")
    await session.flush()
    return user
