"""Client certificates the grid CA issued: list them, revoke one, and the CA's CRL and certificate."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import func, select

from common.errors import Forbidden
from common.schemas import CertificateOut, CertificateRevoke, Page
from server.certificates import bump_tokens, normalise_serial, require_may_revoke, revoke_one
from server.db.models import Certificate, User
from server.events import record
from server.http import Routes, page_params, read_body, reply
from server.pki import cert_pem
from server.query import name_filter
from server.routes.base import owner_filter
from server.state import actor_of, services

routes = Routes("certificates")
USER = name_filter("user", "the user's login or uid (administrators; others see their own)")

CRL_TYPE = "application/pkix-crl"


def certificate_out(c: Certificate) -> CertificateOut:
    return CertificateOut(
        serial=c.serial,
        user=c.user_uid,
        subject=c.subject,
        issued=c.issued,
        not_after=c.not_after,
        revoked=c.revoked,
        revoke_reason=c.revoke_reason,
    )


@routes.add(
    "GET",
    "/certificates",
    summary="List client certificates issued by the grid CA (yours; everyone's for administrators)",
    response=Page[CertificateOut],
    query=(USER,),
)
async def list_certificates(request: web.Request) -> web.Response:
    actor = actor_of(request)
    offset, limit = page_params(request)
    stmt = select(Certificate)
    async with services(request).sessions() as session:
        user = USER.text(request)
        if user is not None:
            wanted = await owner_filter(session, user)
            if wanted != actor.uid and not actor.is_admin:
                raise Forbidden("only administrators list other users' certificates")
            stmt = stmt.where(Certificate.user_uid == wanted)
        elif not actor.is_admin:
            stmt = stmt.where(Certificate.user_uid == actor.uid)
        total = (await session.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
        rows = (
            (await session.execute(stmt.order_by(Certificate.issued).offset(offset).limit(limit)))
            .scalars()
            .all()
        )
    return reply(
        Page[CertificateOut](
            items=[certificate_out(c) for c in rows], total=int(total), offset=offset, limit=limit
        )
    )


@routes.add(
    "POST",
    "/certificates/{serial}/revoke",
    summary="Revoke a client certificate (its user, a super user, or its group administrator)",
    body=CertificateRevoke,
    response=CertificateOut,
)
async def revoke_certificate(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    body = await read_body(request, CertificateRevoke, svc.settings.max_json_bytes)
    serial = normalise_serial(request.match_info["serial"])
    async with svc.sessions() as session, session.begin():
        found = await session.get(Certificate, serial)
        owner = await session.get(User, found.user_uid) if found is not None else None
        if found is not None:
            require_may_revoke(actor, owner, serial)
        row = await revoke_one(session, serial, body.reason or f"revoked by {actor.login}")
        if owner is not None:
            bump_tokens(owner)  # whoever held the key may also hold tokens it got with it
            record(
                session, actor, "user", owner, "revoke-certificate", reason=f"{serial}: {row.revoke_reason}"
            )
    svc.crl.invalidate()
    if owner is not None:
        svc.auth.forget_user(owner.uid)
    return reply(certificate_out(row))


@routes.add(
    "GET",
    "/ca/crl",
    summary="The grid CA's certificate revocation list (DER)",
    public=True,
    raw_response=CRL_TYPE,
)
async def crl(request: web.Request) -> web.Response:
    svc = services(request)
    async with svc.sessions() as session:
        der = await svc.crl.der(session, svc.ca)
    return web.Response(body=der, content_type=CRL_TYPE)


@routes.add(
    "GET",
    "/ca/certificate",
    summary="The grid CA's certificate (PEM): what clients and workers trust",
    public=True,
    raw_response="application/x-pem-file",
)
async def ca_certificate(request: web.Request) -> web.Response:
    return web.Response(text=cert_pem(services(request).ca.cert), content_type="application/x-pem-file")
