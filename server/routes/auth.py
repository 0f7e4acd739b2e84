"""Authentication routes: password -> token, who am I, CSR signing, version."""

from __future__ import annotations

import asyncio

from aiohttp import web
from sqlalchemy import select

from common import __version__
from common.errors import Unauthorized, ValidationFailed
from common.schemas import CertResponse, CsrRequest, Ping, TokenRequest, TokenResponse, Version
from server.db.models import User
from server.events import record
from server.http import Routes, read_body, reply
from server.passwords import verify_password
from server.pki import cert_pem, sign_csr, subject_string
from server.state import actor_of, services

routes = Routes("auth")

# Checked when the login is unknown, so that both failures take the same time.
_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


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
    async with svc.sessions() as session:
        user = (await session.execute(select(User).where(User.login == body.login))).scalar_one_or_none()
    stored = user.password_hash if user is not None else _DUMMY_HASH
    ok = await asyncio.to_thread(verify_password, body.password, stored)
    if user is None or not ok:
        raise Unauthorized("wrong login or password")
    return reply(
        TokenResponse(access_token=svc.signer.issue(user.uid, login=user.login), expires_in=svc.signer.ttl)
    )


@routes.add("GET", "/ping", summary="Check connectivity and credentials", response=Ping)
async def ping(request: web.Request) -> web.Response:
    actor = actor_of(request)
    return reply(Ping(login=actor.login, rights=actor.rights, auth=actor.auth))


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
        user.cert_subject = subject
        record(session, actor, "user", user, "certificate", reason=f"certificate issued for {subject}")
    return reply(
        CertResponse(certificate=cert_pem(cert), ca=cert_pem(svc.ca.cert), subject=subject), status=201
    )
