"""Relay tickets (docs/RELAY.md): who may publish and connect which ``job-``/``proxy-`` names.

The relay has no database: it trusts the signed tickets issued here (audience ``relay``), so every
rule about which tunnel a user or a worker may open is decided in this module, with :mod:`server.authz`.

* the worker running a job: ``publish`` its listen ports, ``connect`` its forward addresses whose
  target the job's owner may read;
* a reader of a running job: ``connect`` one of its listen ports;
* a logged-in user: a new proxy (a published port on the client machine), ``publish`` it.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import JobStatus
from common.errors import Conflict, Forbidden, ValidationFailed
from common.rights import PRIVATE, Perm
from common.schemas import (
    JOB_ADDRESS,
    PROXY_ADDRESS,
    Page,
    ProxyIn,
    ProxyOut,
    TunnelTicket,
    parse_tunnel_name,
    tunnel_name,
)
from common.uri import new_uid
from server.auth import actor_from_user, host_allowed
from server.authz import Actor, can, require_may_insert, require_may_list
from server.db.models import Job, Proxy, User
from server.events import record
from server.http import Routes, read_body, reply
from server.query import OWNER, integer_range
from server.routes.base import host_of, load, paged, path_uid
from server.settings import ServerSettings
from server.state import Services, actor_of, services
from server.views import owned

routes = Routes("tunnels")
PORT = integer_range("port", "one of the job's listen ports", low=1, high=65535, required=True)

LINK = "link"
NO_RELAY = "no relay configured on this grid"


def relay_for(settings: ServerSettings, key: str) -> str:
    """The relay serving ``key`` (``job-<uid>`` or ``proxy-<uid>``): the same for both ends of a tunnel.

    The key leaves out the port, so every port of one job (or proxy) lives on one relay.
    """
    relays = settings.relay_list
    if not relays:
        raise Conflict(NO_RELAY)
    return relays[zlib.crc32(key.encode()) % len(relays)]


def _relay_key(name: str) -> str:
    return name.rsplit("-", 1)[0]


def _host_key(settings: ServerSettings) -> str | None:
    """The relays' OpenSSH public host key, read now (the relay may have written it after we started)."""
    if not settings.relay_host_key:
        return None
    path = Path(settings.relay_host_key).expanduser()
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise Conflict(f"relay host key {path} is not readable: {exc.strerror or exc}") from None
    return text or None


def _ticket(
    svc: Services,
    actor: Actor,
    key: str,
    scope: list[str],
    *,
    name: str | None = None,
    id: str | None = None,
    refused: list[str] | None = None,
) -> TunnelTicket:
    relay = relay_for(svc.settings, key)
    host_key = _host_key(svc.settings)
    # a host's tickets name the host: the relay lets one subject replace its own registrations only
    subject = actor.host_uid or actor.uid
    token = svc.signer.issue(subject, audience="relay", ttl=svc.settings.ticket_ttl, scope=scope)
    return TunnelTicket(relay=relay, host_key=host_key, ticket=token, name=name, id=id, refused=refused or [])


def _require_relay(svc: Services) -> None:
    if not svc.settings.relay_list:
        raise Conflict(NO_RELAY)


async def _owner_actor(session: AsyncSession, job: Job) -> Actor | None:
    """The job's owner as an actor: forward addresses are judged by what the owner may read."""
    if job.owner_uid is None:
        return None
    user = await session.get(User, job.owner_uid)
    return actor_from_user(user, "job-owner") if user is not None else None


async def _forward_target(session: AsyncSession, owner: Actor | None, address: str) -> str:
    """The canonical name a job may connect to, or raise ValidationFailed with why it may not."""
    parsed = parse_tunnel_name(address)
    if parsed is None:
        raise ValidationFailed("not a job-<uid>-<port> or proxy-<uid>-<port> address")
    kind, uid, port = parsed
    name = tunnel_name(kind, uid, port)
    if owner is None:
        raise ValidationFailed("the job's owner no longer exists")
    if kind == PROXY_ADDRESS:
        proxy = await session.get(Proxy, uid)
        if proxy is None or not can(owner, proxy, Perm.READ):
            raise ValidationFailed(f"no proxy {uid} readable by the job's owner {owner.login}")
        if proxy.port != port:
            raise ValidationFailed(f"proxy {uid} publishes port {proxy.port}, not {port}")
        return name
    target = await session.get(Job, uid)
    if target is None or not can(owner, target, Perm.READ):
        raise ValidationFailed(f"no job {uid} readable by the job's owner {owner.login}")
    if port not in target.listen_ports:
        raise ValidationFailed(f"job {uid} does not listen on port {port}")
    return name


@routes.add(
    "POST",
    "/hosts/{uid}/attempts/{attempt}/tunnels",
    summary="Relay ticket for an attempt's host: publish its job's listen ports, reach its forwards",
    response=TunnelTicket,
)
@host_allowed
async def host_tunnels(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    host = host_of(request)
    attempt = path_uid(request, "attempt")
    async with svc.sessions() as session:
        stmt = select(Job).where(Job.attempt_uid == attempt, Job.host_uid == host.uid)
        job = (await session.execute(stmt)).scalar_one_or_none()
        if job is None:
            raise Conflict(f"attempt {attempt} is not a current attempt of this host: no tunnels")
        if job.status != JobStatus.RUNNING.value:
            raise Conflict(f"job {job.uid} is {job.status}, not RUNNING: no tunnels")
        _require_relay(svc)
        key = f"{JOB_ADDRESS}-{job.uid}"
        relay = relay_for(svc.settings, key)
        scope = [LINK]
        scope += [f"publish:{tunnel_name(JOB_ADDRESS, job.uid, p)}" for p in dict.fromkeys(job.listen_ports)]
        owner = await _owner_actor(session, job)
        refused: list[str] = []
        for fwd in job.forward_addresses:
            address = str(fwd.get("address", ""))
            try:
                name = await _forward_target(session, owner, address)
            except ValidationFailed as err:
                refused.append(f"{address}: {err.reason}")
                continue
            there = relay_for(svc.settings, _relay_key(name))
            if there != relay:
                refused.append(f"{address}: served by relay {there}, this job's tunnels go through {relay}")
                continue
            if f"connect:{name}" not in scope:
                scope.append(f"connect:{name}")
    return reply(_ticket(svc, actor, key, scope, refused=refused))


@routes.add(
    "POST",
    "/jobs/{uid}/tunnel",
    summary="Relay ticket to connect to a listen port of a running job you may read",
    response=TunnelTicket,
    query=(PORT,),
)
async def job_tunnel(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    async with svc.sessions() as session:
        job = await load(session, Job, path_uid(request), actor, Perm.READ, "job")
    port = PORT.integer(request)
    if port not in job.listen_ports:
        ports = ", ".join(str(p) for p in job.listen_ports) or "none"
        raise ValidationFailed(f"job {job.uid} does not listen on port {port} (its listen ports: {ports})")
    if job.status != JobStatus.RUNNING.value:
        raise Conflict(f"job {job.uid} is {job.status}: its ports are reachable only while it is RUNNING")
    _require_relay(svc)
    name = tunnel_name(JOB_ADDRESS, job.uid, port)
    return reply(_ticket(svc, actor, _relay_key(name), [LINK, f"connect:{name}"], name=name))


def proxy_out(p: Proxy) -> ProxyOut:
    return ProxyOut(**owned(p), port=p.port, name=tunnel_name(PROXY_ADDRESS, p.uid, p.port))


@routes.add(
    "POST",
    "/proxies",
    summary="Record a client-side published port (xwproxy) and get its relay ticket",
    body=ProxyIn,
    response=TunnelTicket,
    status=201,
)
async def create_proxy(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    require_may_insert(actor, "proxies")
    body = await read_body(request, ProxyIn, svc.settings.max_json_bytes)
    _require_relay(svc)
    _host_key(svc.settings)  # fail before recording a proxy nobody can pin the relay for
    async with svc.sessions() as session, session.begin():
        proxy = Proxy(
            uid=new_uid(),
            owner_uid=actor.uid,
            group_uid=actor.group_uid,
            access_rights=PRIVATE,
            port=body.port,
        )
        session.add(proxy)
        name = tunnel_name(PROXY_ADDRESS, proxy.uid, proxy.port)
        record(session, actor, "proxy", proxy, "create", reason=f"{name} by {actor.login}")
    ticket = _ticket(svc, actor, _relay_key(name), [LINK, f"publish:{name}"], name=name, id=proxy.uid)
    return reply(ticket, status=201)


@routes.add(
    "POST",
    "/proxies/{uid}/ticket",
    summary="A fresh publish ticket for one of your proxies (to reconnect)",
    response=TunnelTicket,
)
async def proxy_ticket(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    _require_relay(svc)
    async with svc.sessions() as session:
        proxy = await load(session, Proxy, path_uid(request), actor, Perm.READ, "proxy")
    if proxy.owner_uid != actor.uid:
        raise Forbidden("only the proxy's owner may publish it")
    name = tunnel_name(PROXY_ADDRESS, proxy.uid, proxy.port)
    return reply(_ticket(svc, actor, _relay_key(name), [LINK, f"publish:{name}"], name=name, id=proxy.uid))


@routes.add(
    "GET",
    "/proxies",
    summary="List proxies (published client ports)",
    response=Page[ProxyOut],
    query=(OWNER,),
)
async def list_proxies(request: web.Request) -> web.Response:
    actor = actor_of(request)
    require_may_list(actor, "proxies")
    async with services(request).readers() as session:
        rows, total, offset, limit = await paged(session, request, actor, Proxy, select(Proxy), Proxy.created)
    return reply(Page[ProxyOut](items=[proxy_out(p) for p in rows], total=total, offset=offset, limit=limit))
