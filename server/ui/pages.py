"""The dashboard's pages and the fragments its pages poll. Each reads through server/ui/queries.py and
acts through the same domain functions as the API (server/jobcontrol.py, server/content.py)."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from multidict import MultiMapping
from sqlalchemy import select
from yarl import URL

from common.enums import JobStatus, UserRights
from common.errors import Conflict, Forbidden, NotFound, TooManyRequests, Unauthorized, ValidationFailed
from common.rights import Perm
from common.uri import is_uid
from server import content, jobcontrol
from server.authz import Actor, can_administer, require, require_may_list, visible
from server.db.models import App, Data, Host, Job, User, UserGroup
from server.listing import JobFilter, alive_clause, host_rows
from server.logins import password_login
from server.routes.base import owner_filter
from server.ui import queries, sessions
from server.ui.web import (
    LOGIN_CSRF_COOKIE,
    PREFIX,
    login_csrf,
    page,
    redirect,
    render,
    safe_next,
    start_session,
    svc_of,
    web_session,
)
from server.ui.web import public as public_route
from server.validation.replication import replicas_out

ui = web.RouteTableDef()
LIST_LIMIT = 200
PREVIEWED = ("stdout.txt", "stderr.txt")
STATUSES = [s.value for s in JobStatus]


def routes_into(app: web.Application) -> None:
    app.add_routes(ui)


def _actor(request: web.Request) -> Actor:
    return web_session(request).actor


# ---------------------------------------------------------------------------- sign in and out


@ui.get("/login")
@public_route
async def login_page(request: web.Request) -> web.StreamResponse:
    return login_form(request, "", 200)


def login_form(
    request: web.Request, message: str, status: int, login: str = "", next_url: str | None = None
) -> web.StreamResponse:
    resp = web.Response()  # a carrier for the cookie: the rendered page takes it over below
    token = login_csrf(request, resp)
    target = safe_next(next_url or request.query.get("next"))
    providers = [p.name for p in svc_of(request).oidc.configs]  # "Sign in with ..." buttons
    ctx = {"message": message, "login_csrf": token, "next": target, "login": login, "providers": providers}
    page_resp = render(request, "login.html", ctx, status=status)
    for morsel in resp.cookies.values():
        page_resp.cookies[morsel.key] = morsel
    return page_resp


@ui.post("/login")
@public_route
async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    sent, kept = form.get("csrf"), request.cookies.get(LOGIN_CSRF_COOKIE)
    next_url = str(form.get("next", ""))
    if not isinstance(sent, str) or not kept or not hmac.compare_digest(sent, kept):
        return login_form(request, "the sign-in form expired: try again", 403, next_url=next_url)
    name, password = str(form.get("login", ""))[:128], str(form.get("password", ""))[:1024]
    try:
        user = await password_login(svc_of(request), name, password, request.remote or "?")
    except Unauthorized:
        return login_form(request, "wrong login or password", 401, name, next_url)
    except TooManyRequests as err:
        return login_form(request, f"too many failed sign-ins: {err.reason}", 429, name, next_url)
    return await start_session(request, user, next_url)


@ui.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    await sessions.end(svc_of(request).sessions, web_session(request).session_id)
    resp = redirect(f"{PREFIX}/login")
    resp.del_cookie(sessions.COOKIE, path=PREFIX)
    return resp


# ---------------------------------------------------------------------------- overview


@ui.get("/")
@page("overview.html")
async def overview(request: web.Request) -> dict[str, Any]:
    return {"page": "overview", "live": await _overview_data(request)}


@ui.get("/overview.json")
async def overview_json(request: web.Request) -> web.Response:
    return web.json_response(await _overview_data(request))


async def _overview_data(request: web.Request) -> dict[str, Any]:
    svc, actor = svc_of(request), _actor(request)
    async with svc.readers() as session:
        counts = await queries.status_counts(session, actor)
        alive, hosts = await queries.hosts_alive(session, actor, alive_clause(svc))
        hist = await queries.history(session, actor)
    return {
        "counts": counts,
        "total": sum(counts.values()),
        "workers": {"alive": alive, "total": hosts},
        "history": {
            "start": hist.start.isoformat(),
            "bucket_seconds": queries.BUCKET_SECONDS,
            "rate": hist.rate,
            "depth": hist.depth,
            "scope": "all jobs" if actor.rights is UserRights.SUPER_USER else "your jobs",
        },
    }


# ---------------------------------------------------------------------------- jobs


def _time(query: MultiMapping[str], name: str) -> datetime | None:
    text = query.get(name, "").strip()
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationFailed(f"{name}: not a date and time ({text!r})") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # the form's times are UTC


async def _filter(request: web.Request, session: Any, actor: Actor) -> tuple[JobFilter, dict[str, Any]]:
    q = request.query
    statuses = tuple(JobStatus(s) for s in q.getall("status", []) if s in STATUSES)
    label = q.get("label", "").strip()[:128] or None
    app_text = q.get("app", "").strip()[:128]
    owner_text = q.get("owner", "").strip()[:128]
    app_uid = None
    if app_text:
        if is_uid(app_text):
            app_uid = app_text.lower()
        else:
            named = select(App.uid).where(App.name == app_text, visible(actor, App))
            app_uid = (await session.execute(named)).scalar_one_or_none()
            if app_uid is None:
                raise ValidationFailed(f"no application {app_text!r}")
    owner = await owner_filter(session, owner_text) if owner_text else None
    wanted = JobFilter(
        statuses,
        label=label,
        app=app_uid,
        owner=owner,
        created_from=_time(q, "from"),
        created_to=_time(q, "to"),
    )
    form = {
        "statuses": {s.value for s in statuses},
        "label": label or "",
        "app": app_text,
        "owner": owner_text,
        "from": q.get("from", ""),
        "to": q.get("to", ""),
        "sort": "oldest" if q.get("sort") == "oldest" else "newest",
    }
    return wanted, form


async def _jobs_context(request: web.Request) -> dict[str, Any]:
    svc, actor = svc_of(request), _actor(request)
    require_may_list(actor, "jobs")
    after = request.query.get("after")
    async with svc.readers() as session:
        wanted, form = await _filter(request, session, actor)
        page = await queries.job_page(
            session,
            actor,
            wanted,
            oldest_first=form["sort"] == "oldest",
            after=queries.Cursor.decode(after) if after else None,
        )
        apps, owners = await queries.names(session, page.jobs)
    base = [(k, v) for k, v in request.query.items() if k != "after"]
    next_qs = None
    if page.next is not None:
        next_qs = URL.build(query=[*base, ("after", page.next.encode())]).query_string
    return {
        "page": "jobs",
        "jobs": page.jobs,
        "apps": apps,
        "owners": owners,
        "form": form,
        "all_statuses": STATUSES,
        "next_qs": next_qs,
        "first_qs": URL.build(query=base).query_string if after else None,
        "rows_qs": request.query_string,
    }


@ui.get("/jobs")
@page("jobs.html")
async def jobs(request: web.Request) -> dict[str, Any]:
    return await _jobs_context(request)


@ui.get("/jobs/rows")
@page("_job_rows.html")
async def job_rows(request: web.Request) -> dict[str, Any]:
    """The list's rows again, for the page's 2 s refresh (same query, same cursor)."""
    return await _jobs_context(request)


async def _job_context(request: web.Request) -> dict[str, Any]:
    svc, actor = svc_of(request), _actor(request)
    uid = _uid(request)
    async with svc.readers() as session:
        job = await session.get(Job, uid)
        if job is None:
            raise NotFound(f"no job {uid}")
        require(actor, job, Perm.READ, "job")
        if job.replica_of is not None and not can_administer(actor, job):  # as GET /jobs/{uid}
            raise NotFound(f"no job {uid}")
        events = await queries.timeline(session, actor, uid)
        runs = await queries.attempts(session, uid)
        replicas = (await replicas_out(session, actor, [job])).get(job.uid, [])
        apps, owners = await queries.names(session, [job])
    return {
        "page": "jobs",
        "job": job,
        "app_name": apps.get(job.app_uid, job.app_uid),
        "owner_name": owners.get(job.owner_uid or "", job.owner_uid),
        "events": events,
        "attempts": runs,
        "replicas": replicas,  # a validated job's runs and their verdicts
        "may_hold": jobcontrol.may_hold(actor, job),
        "may_release": jobcontrol.may_release(actor, job),
        "may_delete": jobcontrol.may_delete(actor, job),
    }


def _uid(request: web.Request) -> str:
    uid = request.match_info["uid"].lower()
    if not is_uid(uid):
        raise NotFound(f"{request.match_info['uid']!r} is not an object uid")
    return uid


@ui.get("/jobs/{uid}")
@page("job.html")
async def job_page(request: web.Request) -> dict[str, Any]:
    ctx = await _job_context(request)
    ctx["previews"] = await _previews(request, ctx["job"])
    return ctx


@ui.get("/jobs/{uid}/live")
@page("_job_live.html")
async def job_live(request: web.Request) -> dict[str, Any]:
    return await _job_context(request)


async def _previews(request: web.Request, job: Job) -> dict[str, str]:
    """The first KiB of stdout.txt and stderr.txt from the job's result, if the viewer may read it."""
    if not job.result_uid:
        return {}
    try:
        found = await content.readable_content(svc_of(request), _actor(request), job.result_uid)
    except (NotFound, Conflict, ValidationFailed):
        return {}
    heads = await content.zip_heads(found, PREVIEWED)
    return {name: head.decode("utf-8", errors="replace") for name, head in heads.items()}


@ui.post("/jobs/{uid}/hold")
async def hold(request: web.Request) -> web.StreamResponse:
    uid = _uid(request)
    reason = str((await request.post()).get("reason", ""))[:200]
    async with svc_of(request).sessions() as session, session.begin():
        await jobcontrol.hold_job(session, _actor(request), uid, reason)
    return redirect(f"{PREFIX}/jobs/{uid}")


@ui.post("/jobs/{uid}/release")
async def release(request: web.Request) -> web.StreamResponse:
    uid = _uid(request)
    async with svc_of(request).sessions() as session, session.begin():
        await jobcontrol.release_job(session, _actor(request), uid)
    return redirect(f"{PREFIX}/jobs/{uid}")


@ui.post("/jobs/{uid}/delete")
async def delete(request: web.Request) -> web.StreamResponse:
    uid = _uid(request)
    async with svc_of(request).sessions() as session, session.begin():
        await jobcontrol.delete_job(session, _actor(request), uid)
    return redirect(f"{PREFIX}/jobs")


@ui.get("/data/{uid}/content")
async def download(request: web.Request) -> web.StreamResponse:
    found = await content.readable_content(svc_of(request), _actor(request), _uid(request))
    return content.response(found)


# ---------------------------------------------------------------------------- the rest


@ui.get("/workers")
@page("workers.html")
async def workers(request: web.Request) -> dict[str, Any]:
    svc, actor = svc_of(request), _actor(request)
    require_may_list(actor, "hosts")
    async with svc.readers() as session:
        stmt = select(Host).where(visible(actor, Host)).order_by(Host.name, Host.uid).limit(LIST_LIMIT)
        hosts = await host_rows(session, svc, actor, (await session.execute(stmt)).scalars().all())
    trust = queries.host_trust(hosts)
    return {"page": "workers", "hosts": hosts, "trust": trust, "limit": LIST_LIMIT}


@ui.get("/apps")
@page("apps.html")
async def apps(request: web.Request) -> dict[str, Any]:
    return {"page": "apps", "rows": await _listed(request, App, App.name, "applications")}


@ui.get("/data")
@page("data.html")
async def data(request: web.Request) -> dict[str, Any]:
    return {"page": "data", "rows": await _listed(request, Data, Data.created.desc(), "data")}


async def _listed(request: web.Request, model: Any, order: Any, what: str) -> list[Any]:
    svc, actor = svc_of(request), _actor(request)
    require_may_list(actor, what)
    async with svc.readers() as session:
        stmt = select(model).where(visible(actor, model)).order_by(order).limit(LIST_LIMIT)
        return list((await session.execute(stmt)).scalars().all())


@ui.get("/users")
@page("users.html")
async def users(request: web.Request) -> dict[str, Any]:
    """Users and groups: for administrators (super users, and group administrators over what they see)."""
    actor = _actor(request)
    if actor.rights not in (UserRights.SUPER_USER, UserRights.ADVANCED_USER):
        raise Forbidden("users and groups are for administrators")
    svc = svc_of(request)
    async with svc.readers() as session:
        people = select(User).where(visible(actor, User)).order_by(User.login).limit(LIST_LIMIT)
        groups = select(UserGroup).where(visible(actor, UserGroup)).order_by(UserGroup.label)
        groups = groups.limit(LIST_LIMIT)
        rows = list((await session.execute(people)).scalars().all())
        group_rows = list((await session.execute(groups)).scalars().all())
    labels = {g.uid: g.label for g in group_rows}
    return {"page": "users", "users": rows, "groups": group_rows, "labels": labels, "limit": LIST_LIMIT}
