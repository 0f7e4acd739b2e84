"""serve_local: local TCP and Unix-socket listeners whose connections go through the relay."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from proxy.endpoints import serve_local

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def http_port() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.query.get('who', 'nobody')}")

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_serve_local_over_tcp_reaches_a_published_http_service(grid, http_port) -> None:
    name = grid.name(8080)
    publisher = await grid.link(f"publish:{name}", sub="worker-1")
    await publisher.publish(name, grid.target(http_port), grid.grants())
    client = await grid.link(f"connect:{name}", sub="user-1")
    server = await serve_local(client, name)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            for who in ("alice", "bob"):
                async with session.get(f"http://127.0.0.1:{port}/hello", params={"who": who}) as reply:
                    assert reply.status == 200
                    assert await reply.text() == f"hello {who}"
    finally:
        server.close()
        await server.wait_closed()
    assert client.stats(name)[0] > 0 and client.stats(name)[1] > 0


async def test_serve_local_over_a_unix_socket(grid, echo_port, tmp_path) -> None:
    name = grid.name(22, kind="proxy")
    publisher = await grid.link(f"publish:{name}", sub="client-1")
    await publisher.publish(name, grid.target(echo_port), grid.grants())
    client = await grid.link(f"connect:{name}", sub="worker-1")
    path = tmp_path / "tunnel.sock"
    server = await serve_local(client, name, path=path)
    try:
        payload = os.urandom(300_000)
        reader, writer = await asyncio.open_unix_connection(str(path))
        assert await grid.roundtrip(reader, writer, payload) == payload
    finally:
        server.close()
        await server.wait_closed()
    assert client.stats(name) == (len(payload), len(payload))


async def test_serve_local_drops_a_connection_the_relay_refuses(grid) -> None:
    name = grid.name()
    client = await grid.link(sub="user-1")  # no connect right
    server = await serve_local(client, name)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_serve_local_checks_the_name(grid) -> None:
    client = await grid.link(sub="user-1")
    with pytest.raises(ValueError, match="not a relay name"):
        await serve_local(client, "somewhere:80")
