"""A process caches the users behind bearer tokens and the hosts behind host credentials
(server/authcache.py); a change made by another server process on the same database still ends access
within a few seconds."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from client.api import XWClient
from common.enums import CPU, OS, UserRights
from common.errors import Unauthorized
from common.schemas import Heartbeat, HostIn, UserPatch
from server.app import start
from server.authcache import HOST_TTL, TTL
from tests.conftest import PASSWORD

API = "/api/v1"


async def _status(http: aiohttp.ClientSession, url: str, token: str) -> int:
    async with http.get(f"{url}{API}/ping", headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status


@pytest.fixture
async def http(grid: Any) -> AsyncIterator[aiohttp.ClientSession]:
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        yield session


async def _demote(admin: XWClient, uid: str) -> None:
    await admin.patch_user(uid, UserPatch(rights=UserRights.WORKER_USER))


async def _new_password(admin: XWClient, uid: str) -> None:
    await admin.patch_user(uid, UserPatch(password="set elsewhere"))


async def _delete(admin: XWClient, uid: str) -> None:
    await admin.remove(uid)


@pytest.mark.parametrize("change", [_delete, _demote, _new_password], ids=["deleted", "demoted", "password"])
async def test_a_change_made_by_another_process_ends_access_within_seconds(
    grid: Any, http: aiohttp.ClientSession, change: Callable[[XWClient, str], Awaitable[None]]
) -> None:
    await grid.add_user("alice")
    async with http.post(f"{grid.url}{API}/auth/token", json={"login": "alice", "password": PASSWORD}) as r:
        token = str((await r.json())["access_token"])
    [alice] = await grid.admin.users(login="alice")
    assert await _status(http, grid.url, token) == 200  # this process now holds alice for TTL seconds

    # a second server process on the same database (its own cache) makes the change
    other = await start(grid.settings, migrate=False)
    try:
        admin_there = XWClient(grid.config(server=other.url, login="admin", password=grid.admin_cfg.password))
        try:
            changed = time.monotonic()
            await change(admin_there, alice.uid)
        finally:
            await admin_there.aclose()
        assert await _status(http, other.url, token) == 401  # the changing process: at once

        deadline = changed + TTL + 3.0
        while (status := await _status(http, grid.url, token)) == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert status == 401, "the first process still accepts the token"
        assert time.monotonic() - changed <= TTL + 3.0
    finally:
        await other.aclose()


@pytest.mark.parametrize("how", ["revoked", "deleted"])
async def test_a_host_revoked_or_deleted_by_another_process_is_refused_within_seconds(
    grid: Any, how: str
) -> None:
    await grid.add_user("worker", UserRights.WORKER_USER)
    volunteer = grid.client(grid.config(login="worker", password=PASSWORD))
    host = (await volunteer.enrol(HostIn(name="alpha", os=OS.LINUX, cpu=CPU.AMD64, cores=1))).host.uid
    await volunteer.heartbeat(host, Heartbeat())  # this process now holds the host (refreshed in bulk)
    await asyncio.sleep(2.0)  # past a refresh of the cache: the entry stays because the host calls
    await volunteer.heartbeat(host, Heartbeat())

    other = await start(grid.settings, migrate=False)
    try:
        admin_there = XWClient(grid.config(server=other.url, login="admin", password=grid.admin_cfg.password))
        try:
            changed = time.monotonic()
            if how == "revoked":
                await admin_there.revoke_host(host)
            else:
                await admin_there.remove(host)
        finally:
            await admin_there.aclose()
        with pytest.raises(Unauthorized):
            while time.monotonic() < changed + HOST_TTL + 3.0:
                await volunteer.heartbeat(host, Heartbeat())
                await asyncio.sleep(0.1)
        assert time.monotonic() - changed <= HOST_TTL + 3.0
    finally:
        await other.aclose()
