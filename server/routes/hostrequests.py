"""Host requests (``xwworker request``): asked without credentials, decided by administrators.

The rules live in ``server/hostrequests.py``; these handlers parse, open a transaction and answer.
"""

from __future__ import annotations

from aiohttp import web

from common.schemas import (
    HostRequestApprove,
    HostRequestDeny,
    HostRequestIn,
    HostRequestOut,
    HostRequestPoll,
    HostRequestState,
    HostRequestTicket,
    Page,
)
from server import hostrequests as hr
from server.http import Routes, page_params, read_body, reply
from server.query import QueryParam
from server.routes.base import path_uid
from server.state import actor_of, services

routes = Routes("host requests")
STATUS = QueryParam(
    "status",
    description="pending (the default), approved, denied, delivered, expired, or all",
    enum=(*hr.STATUSES, "all"),
    default=hr.PENDING,
)


@routes.add(
    "POST",
    "/hosts/requests",
    summary="Ask for a host credential without an account (an administrator approves or denies it)",
    body=HostRequestIn,
    response=HostRequestTicket,
    status=201,
    public=True,
)
async def send_request(request: web.Request) -> web.Response:
    svc = services(request)
    body = await read_body(request, HostRequestIn, svc.settings.max_json_bytes)
    async with svc.sessions() as session, session.begin():
        ticket = await hr.create(session, body, request.remote or "?")
    return reply(ticket, status=201)


@routes.add(
    "POST",
    "/hosts/requests/{uid}/poll",
    summary="The requester's poll, with its secret: the decision; once approved, the host's credential, once",
    body=HostRequestPoll,
    response=HostRequestState,
    public=True,
)
async def poll_request(request: web.Request) -> web.Response:
    svc = services(request)
    uid = path_uid(request)
    body = await read_body(request, HostRequestPoll, svc.settings.max_json_bytes)
    async with svc.sessions() as session, session.begin():
        state = await hr.poll(session, uid, body.secret)
    return reply(state)


@routes.add(
    "GET",
    "/hosts/requests",
    summary="List host requests (administrators)",
    response=Page[HostRequestOut],
    query=(STATUS,),
)
async def list_requests(request: web.Request) -> web.Response:
    svc = services(request)
    status = STATUS.text(request) or hr.PENDING
    offset, limit = page_params(request)
    which = hr.Listing(None if status == "all" else status, offset, limit)
    async with svc.readers() as session:
        page = await hr.listing(session, actor_of(request), which)
    return reply(page)


@routes.add(
    "POST",
    "/hosts/requests/{uid}/approve",
    summary="Approve a pending host request, given the code its volunteer read out (administrators)",
    body=HostRequestApprove,
    response=HostRequestOut,
)
async def approve_request(request: web.Request) -> web.Response:
    svc = services(request)
    uid = path_uid(request)
    actor = actor_of(request)
    hr.require_admin(actor)
    body = await read_body(request, HostRequestApprove, svc.settings.max_json_bytes)
    async with svc.sessions() as session, session.begin():
        done = await hr.approve(session, actor, uid, body.code, body.owner)
    return reply(done)


@routes.add(
    "POST",
    "/hosts/requests/{uid}/deny",
    summary="Deny a host request, or withdraw an approval not collected yet (administrators)",
    body=HostRequestDeny,
    response=HostRequestOut,
)
async def deny_request(request: web.Request) -> web.Response:
    svc = services(request)
    uid = path_uid(request)
    actor = actor_of(request)
    hr.require_admin(actor)
    body = await read_body(request, HostRequestDeny, svc.settings.max_json_bytes)
    async with svc.sessions() as session, session.begin():
        done = await hr.deny(session, actor, uid, body.reason)
    return reply(done)
