"""The dashboard's plumbing: its sub-application, the session check, CSRF on every POST, HTML errors,
and the sign-in seam (:func:`start_session`) that password and, later, OpenID Connect sign-ins share."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
from aiohttp import web

from common.errors import XWError
from server.db.models import User
from server.http import OWN_AUTH
from server.state import SERVICES, Services
from server.ui import sessions
from server.ui.sessions import WebSession

logger = logging.getLogger(__name__)

PREFIX = "/ui"
HERE = Path(__file__).parent
LOGIN_CSRF_COOKIE = "xw_login_csrf"
WEB_SESSION = web.RequestKey("web_session", WebSession)
SECURITY_HEADERS = {
    # everything we serve is ours: no inline script, no other origin, no framing
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def public(handler: Handler) -> Handler:
    """Mark a dashboard route that needs no session (the sign-in page)."""
    handler.xw_ui_public = True  # type: ignore[attr-defined]
    return handler


def svc_of(request: web.Request) -> Services:
    return request.config_dict[SERVICES]


def web_session(request: web.Request) -> WebSession:
    return request[WEB_SESSION]


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path of the dashboard only (never another site)."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return PREFIX + "/"


async def start_session(request: web.Request, user: User, next_url: str | None = None) -> web.Response:
    """The sign-in seam: ``user`` is verified (by password here; by an identity provider later) —
    open a session, set its cookie and go to ``next_url``."""
    sid = await sessions.start(svc_of(request).sessions, user)
    resp = redirect(safe_next(next_url))
    set_session_cookie(resp, sid)
    resp.del_cookie(LOGIN_CSRF_COOKIE, path=f"{PREFIX}/login")
    return resp


def redirect(location: str) -> web.Response:
    """See other (303): after a form, the browser GETs ``location``."""
    return web.Response(status=303, headers={"Location": location})


def set_session_cookie(resp: web.StreamResponse, sid: str) -> None:
    resp.set_cookie(
        sessions.COOKIE,
        sid,
        path=PREFIX,
        httponly=True,
        secure=True,
        samesite="Lax",  # Lax, not Strict: a link into the dashboard from elsewhere stays signed in
        max_age=int(sessions.MAX_AGE.total_seconds()),
    )


def login_csrf(request: web.Request, resp: web.StreamResponse) -> str:
    """A fresh token for the sign-in form, also set as a cookie (double submit: there is no session yet)."""
    token = secrets.token_urlsafe(24)
    resp.set_cookie(
        LOGIN_CSRF_COOKIE, token, path=f"{PREFIX}/login", httponly=True, secure=True, samesite="Strict"
    )
    return token


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    return render(request, "error.html", {"status": status, "message": message}, status=status)


def _wants_fragment(request: web.Request) -> bool:
    return request.headers.get("X-Requested-With") == "xw-ui"


@web.middleware
async def ui_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Find the session, refuse what needs one without it, check CSRF on every POST, and answer errors as
    pages (the API's middleware answers problem+json; these are people)."""
    try:
        resp = await _checked(request, handler)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = error_page(request, exc.status, exc.reason)
    except XWError as err:
        if err.status >= 500:
            logger.error("%s %s: %s", request.method, request.path, err.reason)
        resp = error_page(request, 404 if err.status == 404 else err.status, err.reason)
    for name, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(name, value)
    return resp


async def _checked(request: web.Request, handler: Handler) -> web.StreamResponse:
    sid = request.cookies.get(sessions.COOKIE, "")
    found = await sessions.resolve(svc_of(request).sessions, sid) if sid else None
    if found is not None:
        request[WEB_SESSION] = found
    route_handler = request.match_info.route.handler
    if getattr(route_handler, "xw_ui_public", False) or request.match_info.route.resource is None:
        return await handler(request)
    if request.path.startswith(f"{PREFIX}/static/"):
        return await handler(request)
    if found is None:
        if request.method == "GET" and not _wants_fragment(request):
            return redirect(f"{PREFIX}/login?next={quote(request.path_qs)}")
        return error_page(request, 401, "not signed in (or the session ended): sign in again")
    if request.method == "POST":
        form = await request.post()
        sent = form.get("csrf")
        if not sessions.csrf_ok(found.session_id, sent if isinstance(sent, str) else None):
            return error_page(request, 403, "this form's CSRF token is missing or wrong: reload the page")
    return await handler(request)


def build_app() -> web.Application:
    """The dashboard as a sub-application (mounted at /ui by :func:`install`)."""
    from server.ui import pages, signin_oidc  # the handlers

    ui = web.Application(middlewares=[ui_middleware])
    ui[OWN_AUTH] = True
    env = aiohttp_jinja2.setup(
        ui,
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(default=True),
    )
    env.filters["when"] = _when
    env.filters["mode"] = lambda m: f"{m:04o}"
    pages.routes_into(ui)
    ui.add_routes(signin_oidc.ui)
    ui.router.add_static("/static/", HERE / "static")
    return ui


def install(app: web.Application) -> None:
    app.add_subapp(PREFIX, build_app())


def render(request: web.Request, template: str, ctx: dict[str, Any], status: int = 200) -> web.Response:
    """A page, with who is signed in and the session's CSRF token for its forms."""
    found = request.get(WEB_SESSION)
    full = {"me": found.actor if found else None, "csrf": found.csrf if found else "", **ctx}
    return aiohttp_jinja2.render_template(template, request, full, status=status)


PageHandler = Callable[[web.Request], Awaitable[dict[str, Any]]]


def page(template: str) -> Callable[[PageHandler], Handler]:
    """A handler that answers a context for ``template``."""

    def deco(fn: PageHandler) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            return render(request, template, await fn(request))

        handler.__name__ = fn.__name__
        handler.__doc__ = fn.__doc__
        return handler

    return deco


def _when(value: Any) -> str:
    if value is None:
        return ""
    return str(value.strftime("%Y-%m-%d %H:%M:%S"))
