"""Authentication: bearer tokens, host credentials and mTLS client certificates, resolved to an Actor.

* User tokens (JWT) come from POST /api/v1/auth/token; each carries the user's token version, so a
  password, rights or certificate change ends every older token on its next use.
* Host credentials (server/hostcreds.py) come from enrolment; the actor is the host's owner *acting as
  that host* (``Actor.host_uid``), and only host routes accept it.
* A client certificate must chain to the grid CA or to a CA in the extra trusted directory (the TLS layer
  refuses any other at the handshake). Ours are checked against the certificate registry by serial
  (server/certificates.py: revocation), extra CAs' map to users by subject.

* OpenID Connect (server/oidc): an ID token from a trusted provider is exchanged once, at
  POST /api/v1/auth/oidc/token, for the same kind of user token, which also names the provider (``idp``).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TypeVar

from aiohttp import web
from cryptography import x509

from common.errors import Forbidden, Unauthorized
from server import hostcreds
from server.authcache import HostSnap, UserSnap, user_snap
from server.authz import Actor
from server.certificates import user_for_certificate
from server.db.models import User
from server.http import Handler, is_public
from server.settings import ServerSettings
from server.state import ACTOR_KEY, HOST_KEY, Services, services


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


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    """The client certificate the TLS layer verified, if the client presented one."""
    transport = request.transport
    ssl_obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_obj is None:
        return None
    der = ssl_obj.getpeercert(binary_form=True)
    if not der:
        return None
    return x509.load_der_x509_certificate(der)


def actor_from_user(
    user: User | UserSnap, how: str, host_uid: str | None = None, idp: str | None = None
) -> Actor:
    if isinstance(user, User):
        user = user_snap(user)
    return Actor(
        uid=user.uid,
        login=user.login,
        rights=user.rights,
        group_uid=user.group_uid,
        auth=how,
        host_uid=host_uid,
        idp=idp,
    )


async def authenticate(request: web.Request) -> Actor:
    """Resolve the requester: a host credential or a user token (bearer), else the client certificate."""
    svc = services(request)
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("unsupported Authorization header (expected 'Bearer <token>')")
        if hostcreds.is_host_credential(token):
            host = await _host(svc, token)
            request[HOST_KEY] = host.view
            return actor_from_user(host.owner, "host", host_uid=host.view.uid)
        return await _token_actor(svc, token)
    cert = peer_certificate(request)
    if cert is not None:
        async with svc.sessions() as session:
            found = await user_for_certificate(session, svc.ca, cert)
        if isinstance(found, str):
            raise Unauthorized(found)
        return actor_from_user(found.user, "certificate")
    raise Unauthorized(
        "no credentials: present a client certificate or a bearer token from POST /api/v1/auth/token"
    )


async def _token_actor(svc: Services, token: str) -> Actor:
    claims = svc.auth.token(token)
    if claims is None:
        claims = svc.signer.verify(token)
        svc.auth.remember_token(token, claims)
    user = await svc.auth.user(svc.readers, str(claims["sub"]))
    if user is None:
        raise Unauthorized("token's user no longer exists")
    if claims.get("tv") != user.token_version:
        raise Unauthorized("token revoked (password, rights or certificates changed): log in again")
    idp = claims.get("idp")
    if isinstance(idp, str):  # a token from an OpenID Connect sign-in (server/oidc)
        return actor_from_user(user, "oidc", idp=idp)
    return actor_from_user(user, "token")


async def _host(svc: Services, token: str) -> HostSnap:
    parsed = hostcreds.parse(token)
    if parsed is None:
        raise Unauthorized("malformed host credential")
    host_uid, secret = parsed
    host = await svc.auth.host(svc.readers, host_uid)
    if host is None:
        raise Unauthorized(f"unknown host credential (no host {host_uid}): enrol again")
    if host.revoked is not None:
        raise Unauthorized(f"host {host_uid}'s credential was revoked: enrol as a new host")
    if not hostcreds.matches(secret, host.credential_hash):
        raise Unauthorized(f"wrong credential for host {host_uid}")
    return host


H = TypeVar("H", bound=Handler)


def host_allowed(handler: H) -> H:
    """Mark a route a host credential may call (the worker protocol, and ping)."""
    handler.xw_host = True  # type: ignore[attr-defined]
    return handler


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every non-public route; a host credential reaches only the host routes."""
    if not is_public(request):
        actor = await authenticate(request)
        if actor.host_uid is not None and not getattr(request.match_info.route.handler, "xw_host", False):
            raise Forbidden("a host credential is only good for the worker protocol (/hosts/{host}/...)")
        request[ACTOR_KEY] = actor
    return await handler(request)
