"""Authentication routes: password -> token, who am I, CSR signing, version."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common import __version__
from common.errors import Conflict, Unauthorized, ValidationFailed
from common.schemas import CertResponse, CsrRequest, Ping, TokenRequest, TokenResponse, Version
from server.auth import host_allowed
from server.certificates import record_issued
from server.db.models import User
from server.events import record
from server.http import Routes, read_body, reply
from server.logins import password_login
from server.pki import cert_pem, sign_csr, subject_string
from server.state import actor_of, services

routes = Routes("auth")


@routes.add("GET", "/version", summary="Server version", response=Version, public=True)
async def version(request: web.Request) -> web.Response:
    return reply(Version(version=__version__))


@routes.add(
    "POST",
    "/auth/token",
    summary="Exchange login and password for a bearer token",
    body=TokenRequest,
    response=TokenResponse,
    public=True,
)
async def token(request: web.Request) -> web.Response:
    svc = services(request)
    body = await read_body(request, TokenRequest, svc.settings.max_json_bytes)
    user = await password_login(svc, body.login, body.password, request.remote or "?")
    access = svc.signer.issue(user.uid, login=user.login, tv=user.token_version)
    return reply(TokenResponse(access_token=access, expires_in=svc.signer.ttl))


@routes.add("GET", "/ping", summary="Check connectivity and credentials", response=Ping)
@host_allowed
async def ping(request: web.Request) -> web.Response:
    actor = actor_of(request)
    return reply(Ping(login=actor.login, rights=actor.rights, auth=actor.auth, via=actor.idp))


@routes.add(
    "POST",
    "/auth/csr",
    summary="Sign a certificate request for the logged-in user",
    body=CsrRequest,
    response=CertResponse,
    status=201,
)
async def csr(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    body = await read_body(request, CsrRequest, svc.settings.max_json_bytes)
    try:
        cert = sign_csr(svc.ca, body.csr, actor.login)
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from None
    subject = subject_string(cert)
    async with svc.sessions() as session, session.begin():
        user = await session.get(User, actor.uid)
        if user is None:
            raise Unauthorized("user no longer exists")
        await _free_subject(session, user, subject)
        user.cert_subject = subject
        issued = record_issued(session, user, cert)
        record(
            session,
            actor,
            "user",
            user,
            "certificate",
            reason=f"certificate {issued.serial} issued for {subject}",
        )
    return reply(
        CertResponse(
            certificate=cert_pem(cert), ca=cert_pem(svc.ca.cert), subject=subject, serial=issued.serial
        ),
        status=201,
    )


async def _free_subject(session: AsyncSession, user: User, subject: str) -> None:
    """Refuse a subject another user's extra-CA mapping holds (it would otherwise be a 500)."""
    holder = (
        await session.execute(select(User.login).where(User.cert_subject == subject, User.uid != user.uid))
    ).scalar_one_or_none()
    if holder is not None:
        raise Conflict(f"certificate subject {subject!r} is already mapped to user {holder!r}")
