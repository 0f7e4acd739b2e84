"""Signing in: with a login and a password (the one check behind both the API's token and the
dashboard), or with an ID token from a trusted provider (xwlogin's exchange).

The login throttle answers 429 before any hashing; an unknown login is checked against a dummy hash so
that both failures take the same time and give the same answer. Failed ID tokens count against the
caller's address only, so one caller's failures never lock others out.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from common.errors import Unauthorized
from server.db.models import User
from server.oidc.config import ProviderConfig
from server.oidc.signin import sign_in_once
from server.passwords import verify_password
from server.state import Services

# Checked when the login is unknown, so that both failures take the same time.
_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


async def password_login(svc: Services, login: str, password: str, address: str) -> User:
    """The user ``login`` if ``password`` is theirs; else Unauthorized (or TooManyRequests: throttled)."""
    svc.throttle.check(login, address)  # before any hashing: a throttled guess costs us nothing
    async with svc.sessions() as session:
        user = (await session.execute(select(User).where(User.login == login))).scalar_one_or_none()
    stored = user.password_hash if user is not None else _DUMMY_HASH
    async with svc.passwords.slot():
        ok = await asyncio.to_thread(verify_password, password, stored)
    if user is None or not ok:
        svc.throttle.failed(login, address)
        raise Unauthorized("wrong login or password")
    svc.throttle.succeeded(login, address)
    return user


async def oidc_login(
    svc: Services, provider_ref: str, id_token: str, nonce: str | None, address: str
) -> tuple[User, ProviderConfig]:
    """The user a trusted provider's ``id_token`` signs in (spent by this call), and the provider;
    Unauthorized (throttled as failed) if it is not good, TooManyRequests past the throttle."""
    key = f"oidc@{address}"
    svc.throttle.check(key, address)
    try:
        provider = svc.oidc.find(provider_ref)
        claims = await svc.oidc.verify(provider, id_token, nonce)
        async with svc.sessions() as session, session.begin():
            user = await sign_in_once(session, provider, id_token, claims)
    except Unauthorized:
        svc.throttle.failed(key, address)
        raise
    return user, provider
