"""Authentication: mTLS client certificates and bearer tokens, resolved to an Actor per request.

A client certificate must chain to the grid CA or to a CA in the extra trusted directory; the TLS layer
refuses any other at the handshake (expired, unknown CA), before HTTP. A verified certificate maps to the
user whose ``cert_subject`` equals its subject. Tokens come from POST /api/v1/auth/token (login+password).
OpenID Connect will add a third path here: an ``authenticate`` step that turns an ID token into an Actor.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from aiohttp import web
from cryptography import x509
from sqlalchemy import select

from common.enums import UserRights
from common.errors import Unauthorized
from server.authz import Actor
from server.db.models import User
from server.http import Handler, is_public
from server.settings import ServerSettings
from server.state import ACTOR_KEY, services


def server_ssl_context(settings: ServerSettings) -> ssl.SSLContext:
    """TLS >= 1.2, the server certificate, and optional client certificates from the trusted CAs."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.server_cert, settings.server_key)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cafile=str(settings.ca_cert))
    if settings.extra_ca_dir:
        for pem in sorted(Path(settings.extra_ca_dir).glob("*.pem")) + sorted(
            Path(settings.extra_ca_dir).glob("*.crt")
        ):
            ctx.load_verify_locations(cafile=str(pem))
    return ctx


def peer_subject(request: web.Request) -> str | None:
    """The verified client certificate's subject, if the client presented one."""
    transport = request.transport
    ssl_obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_obj is None:
        return None
    der = ssl_obj.getpeercert(binary_form=True)
    if not der:
        return None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def actor_from_user(user: User, how: str) -> Actor:
    return Actor(
        uid=user.uid, login=user.login, rights=UserRights(user.rights), group_uid=user.usergroup_uid, auth=how
    )


async def authenticate(request: web.Request) -> Actor:
    """Resolve the requester from a bearer token, else from the client certificate."""
    svc = services(request)
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("unsupported Authorization header (expected 'Bearer <token>')")
        claims = svc.signer.verify(token.strip())
        async with svc.sessions() as session:
            user = await session.get(User, str(claims["sub"]))
        if user is None:
            raise Unauthorized("token's user no longer exists")
        return actor_from_user(user, "token")
    subject = peer_subject(request)
    if subject is not None:
        async with svc.sessions() as session:
            user = (
                await session.execute(select(User).where(User.cert_subject == subject))
            ).scalar_one_or_none()
        if user is None:
            raise Unauthorized(f"certificate subject {subject!r} is not mapped to any user")
        return actor_from_user(user, "certificate")
    raise Unauthorized(
        "no credentials: present a client certificate or a bearer token from POST /api/v1/auth/token"
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every non-public route before its handler runs."""
    if not is_public(request):
        request[ACTOR_KEY] = await authenticate(request)
    return await handler(request)
