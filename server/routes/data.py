"""Data objects: metadata first (UNAVAILABLE), then streamed content (AVAILABLE), stored once per sha256."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import CPU, OS, DataStatus
from common.errors import Conflict
from common.rights import Perm
from common.schemas import DataIn, DataOut, Page
from common.uri import new_uid
from server import blobs, content
from server.authz import default_rights, require_may_insert, require_may_list
from server.db.models import Data
from server.events import record
from server.http import Routes, read_body, reply
from server.query import OWNER, name_filter
from server.removal import collect_now, delete_data_in
from server.routes.base import load, paged, path_uid, rights_for
from server.scheduler import lifecycle
from server.state import actor_of, services
from server.store import DataStore, Ingested
from server.views import owned

routes = Routes("data")
NAME = name_filter("name", "exact name")

MAX_DATA_BYTES = 1 << 40
OCTET = content.OCTET


def data_out(d: Data) -> DataOut:
    return DataOut(
        **owned(d),
        name=d.name,
        type=d.type,
        os=OS(d.os),
        cpu=CPU(d.cpu),
        size=d.size,
        sha256=d.sha256,
        status=DataStatus(d.status),
    )


@routes.add("GET", "/data", summary="List data", response=Page[DataOut], query=(NAME, OWNER))
async def list_data(request: web.Request) -> web.Response:
    actor = actor_of(request)
    require_may_list(actor, "data")
    stmt = select(Data)
    name = NAME.text(request)
    if name is not None:
        stmt = stmt.where(Data.name == name)
    async with services(request).readers() as session:
        rows, total, offset, limit = await paged(session, request, actor, Data, stmt, Data.created)
    return reply(Page[DataOut](items=[data_out(d) for d in rows], total=total, offset=offset, limit=limit))


@routes.add(
    "POST",
    "/data",
    summary="Create a data object (content follows with PUT .../content)",
    body=DataIn,
    response=DataOut,
    status=201,
)
async def create_data(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    require_may_insert(actor, "data")
    body = await read_body(request, DataIn, svc.settings.max_json_bytes)
    data = Data(
        uid=new_uid(),
        owner_uid=actor.uid,
        group_uid=actor.group_uid,
        access_rights=rights_for(body.access_rights, default_rights(actor)),
        name=body.name,
        type=body.type,
        os=body.os.value,
        cpu=body.cpu.value,
        size=body.size,
        declared_sha256=body.sha256,
        status=DataStatus.UNAVAILABLE.value,
    )
    async with svc.sessions() as session, session.begin():
        session.add(data)
        record(session, actor, "data", data, "create", to_status=data.status, reason=body.name)
    return reply(data_out(data), status=201)


@routes.add("GET", "/data/{uid}", summary="Show a data object", response=DataOut)
async def get_data(request: web.Request) -> web.Response:
    async with services(request).sessions() as session:
        data = await load(session, Data, path_uid(request), actor_of(request), Perm.READ, "data")
    return reply(data_out(data))


@routes.add(
    "PUT",
    "/data/{uid}/content",
    summary="Upload a data object's content (streamed)",
    response=DataOut,
    raw_body=OCTET,
)
async def put_content(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    uid = path_uid(request)
    async with svc.sessions() as session:
        data = await load(session, Data, uid, actor, Perm.WRITE, "data")
        if data.status == DataStatus.AVAILABLE.value:
            raise Conflict(f"data {uid} already has content; data objects are immutable")
    item = await svc.store.ingest(
        request.content.iter_any(),
        max_size=MAX_DATA_BYTES,
        expect_size=data.size,
        expect_sha256=data.declared_sha256,
    )
    svc.metrics.data_received.inc(item.size)
    async with svc.store.lock(item.sha256):
        try:
            async with svc.sessions() as session, session.begin():
                data = await load(session, Data, uid, actor, Perm.WRITE, "data")
                if data.status == DataStatus.AVAILABLE.value:
                    raise Conflict(f"data {uid} already has content; data objects are immutable")
                await attach(session, svc.store, data, item)
                record(
                    session,
                    actor,
                    "data",
                    data,
                    "upload",
                    from_status=DataStatus.UNAVAILABLE.value,
                    to_status=data.status,
                    reason=f"{item.size} bytes sha256 {item.sha256}",
                )
                await lifecycle.inputs_arrived(session, actor, data)
        finally:
            svc.store.discard(item)
    return reply(data_out(data))


async def attach(session: AsyncSession, store: DataStore, data: Data, item: Ingested) -> None:
    """Give ``data`` the uploaded content: count a reference to its blob and move the file into place.

    The caller holds ``store.lock(item.sha256)`` and discards ``item`` afterwards; the file is placed
    inside the transaction that makes the data AVAILABLE.
    """
    await blobs.ref(session, item.sha256, item.size)
    store.place(item)
    data.sha256, data.size, data.status = item.sha256, item.size, DataStatus.AVAILABLE.value


@routes.add(
    "GET", "/data/{uid}/content", summary="Download a data object's content (streamed)", raw_response=OCTET
)
async def get_content(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    found = await content.readable_content(svc, actor_of(request), path_uid(request))
    svc.metrics.data_sent.inc(found.data.size or 0)
    return content.response(found)


@routes.add("DELETE", "/data/{uid}", summary="Delete a data object", status=204)
async def delete_data(request: web.Request) -> web.Response:
    svc = services(request)
    actor = actor_of(request)
    async with svc.sessions() as session, session.begin():
        data = await load(session, Data, path_uid(request), actor, Perm.READ, "data")
        gone = await delete_data_in(session, actor, data)
    if gone is not None:
        await collect_now(svc, gone)
    return web.Response(status=204)
