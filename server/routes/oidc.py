"""OpenID Connect routes: the trusted providers, ID token -> xwhep token, identity links."""

from __future__ import annotations

from aiohttp import web

from common.schemas import (
    Identities,
    IdentityIn,
    IdentityOut,
    OidcProviderOut,
    OidcProviders,
    OidcTokenRequest,
    TokenResponse,
)
from server.http import Routes, read_body, reply
from server.logins import oidc_login
from server.oidc import identities
from server.query import name_filter
from server.routes.base import path_uid
from server.state import actor_of, services

routes = Routes("auth")
USER = name_filter("user", "the user's login or uid")


@routes.add(
    "GET",
    "/auth/oidc/providers",
    summary="The identity providers this server trusts (what xwlogin needs)",
    response=OidcProviders,
    public=True,
)
async def providers(request: web.Request) -> web.Response:
    trusted = services(request).oidc.configs
    return reply(
        OidcProviders(
            providers=[
                OidcProviderOut(name=p.name, issuer=p.issuer, client_id=p.client_id, scopes=list(p.scopes))
                for p in trusted
            ]
        )
    )


@routes.add(
    "POST",
    "/auth/oidc/token",
    summary="Exchange an ID token from a trusted provider for a bearer token (once per ID token)",
    body=OidcTokenRequest,
    response=TokenResponse,
    public=True,
    also=(503,),
)
async def oidc_token(request: web.Request) -> web.Response:
    svc = services(request)
    body = await read_body(request, OidcTokenRequest, svc.settings.max_json_bytes)
    user, provider = await oidc_login(svc, body.provider, body.id_token, body.nonce, request.remote or "?")
    access = svc.signer.issue(user.uid, login=user.login, tv=user.token_version, idp=provider.issuer)
    return reply(TokenResponse(access_token=access, expires_in=svc.signer.ttl))


@routes.add(
    "GET",
    "/identities",
    summary="Identities linked to users (administrators: anyone's; others: their own)",
    response=Identities,
    query=(USER,),
)
async def list_identities(request: web.Request) -> web.Response:
    svc = services(request)
    async with svc.readers() as session:
        found = await identities.list_identities(session, actor_of(request), USER.text(request))
    return reply(Identities(identities=found))


@routes.add(
    "POST",
    "/identities",
    summary="Link an identity (issuer, subject) to a user (administrators)",
    body=IdentityIn,
    response=IdentityOut,
    status=201,
)
async def link_identity(request: web.Request) -> web.Response:
    svc = services(request)
    body = await read_body(request, IdentityIn, svc.settings.max_json_bytes)
    async with svc.sessions() as session, session.begin():
        out = await identities.link(
            session, actor_of(request), svc.oidc, body.user, body.issuer, body.subject
        )
    return reply(out, status=201)


@routes.add("DELETE", "/identities/{uid}", summary="Unlink an identity (administrators)", status=204)
async def unlink_identity(request: web.Request) -> web.Response:
    svc = services(request)
    async with svc.sessions() as session, session.begin():
        user_uid = await identities.unlink(session, actor_of(request), path_uid(request))
    svc.auth.forget_user(user_uid)  # its tokens ended: this process must not serve the old version
    return web.Response(status=204)
