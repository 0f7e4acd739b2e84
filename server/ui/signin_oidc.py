"""Signing in to the dashboard through a trusted OpenID provider (the login page's provider buttons).

``GET /ui/oidc/{name}`` sends the browser to the provider (server/oidc/weblogin.py begins the
authorization code + PKCE sign-in and remembers it in a signed cookie); ``GET /ui/oidc/callback``
finishes it, spends the ID token and signs the person in by the same rules as ``xwlogin``
(server/oidc/signin.py), then opens a dashboard session through the same seam as a password sign-in.
A refusal is the login page with its one-line reason; nothing is created.
"""

from __future__ import annotations

from aiohttp import web

from common.errors import XWError
from server.oidc import weblogin
from server.oidc.signin import sign_in_once
from server.ui.web import PREFIX, public, safe_next, start_session, svc_of

PENDING_COOKIE = "xw_oidc"
CALLBACK = f"{PREFIX}/oidc/callback"

ui = web.RouteTableDef()


def redirect_uri(request: web.Request) -> str:
    """Where the provider sends the browser back: this server, as the browser reached it."""
    return f"{request.scheme}://{request.host}{CALLBACK}"


@ui.get("/oidc/callback")
@public
async def callback(request: web.Request) -> web.StreamResponse:
    from server.ui.pages import login_form  # the page a refusal is shown on

    svc = svc_of(request)
    try:
        begun = weblogin.pending(svc.signer, request.cookies.get(PENDING_COOKIE))
        provider, id_token, claims = await weblogin.finish(
            svc.oidc, begun, dict(request.query), redirect_uri(request)
        )
        async with svc.sessions() as session, session.begin():
            user = await sign_in_once(session, provider, id_token, claims)
    except XWError as err:
        resp = login_form(request, err.reason, 401 if err.status < 500 else err.status)
        resp.del_cookie(PENDING_COOKIE, path=f"{PREFIX}/oidc")
        return resp
    resp = await start_session(request, user, begun.then)
    resp.del_cookie(PENDING_COOKIE, path=f"{PREFIX}/oidc")
    return resp


@ui.get("/oidc/{name}")
@public
async def begin(request: web.Request) -> web.StreamResponse:
    from server.ui.pages import login_form

    svc = svc_of(request)
    try:
        provider = svc.oidc.find(request.match_info["name"])
        then = safe_next(request.query.get("next"))
        url, pending = await weblogin.begin(svc.oidc, svc.signer, provider, redirect_uri(request), then)
    except XWError as err:
        return login_form(request, err.reason, 401 if err.status < 500 else err.status)
    resp = web.Response(status=302, headers={"Location": url})
    resp.set_cookie(
        PENDING_COOKIE,
        pending,
        path=f"{PREFIX}/oidc",
        httponly=True,
        secure=True,
        samesite="Lax",  # Lax: the provider's redirect back is a top-level GET from another site
        max_age=weblogin.PENDING_TTL,
    )
    return resp
