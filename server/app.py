"""The aiohttp application factory and the TLS site runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from server.auth import auth_middleware, server_ssl_context
from server.db.engine import make_engine, make_sessionmaker, upgrade
from server.dispatch import Dispatcher
from server.http import Routes, problem_middleware
from server.openapi import openapi_routes
from server.pki import CA
from server.routes import apps, auth, data, hosts, jobs, objects, tunnels, users
from server.settings import ServerSettings
from server.state import SERVICES, Services
from server.store import DataStore
from server.tokens import TokenSigner

logger = logging.getLogger(__name__)

ROUTE_TABLES: list[Routes] = [
    auth.routes,
    users.routes,
    apps.routes,
    data.routes,
    jobs.routes,
    hosts.routes,
    tunnels.routes,
    objects.routes,
]


def create_app(settings: ServerSettings, *, migrate: bool = True) -> web.Application:
    """A server application for ``settings``; resources open and close with the app's lifecycle."""
    app = web.Application(
        middlewares=[problem_middleware, auth_middleware], client_max_size=settings.max_json_bytes
    )

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        if migrate:
            await upgrade(settings.db_url)
        signer = TokenSigner.from_file(settings.jwt_key, settings.token_ttl)
        signer.write_public(settings.jwt_pub)  # homes made before relays existed get it too
        engine = make_engine(settings.db_url)
        app[SERVICES] = Services(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            signer=signer,
            ca=CA.load(settings.ca_cert, settings.ca_key),
            store=DataStore(settings.store_dir),
            dispatcher=Dispatcher(),
        )
        try:
            yield
        finally:
            await engine.dispose()

    async def reaper_ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(hosts.reaper_loop(app[SERVICES]), name="reaper")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(services_ctx)
    app.cleanup_ctx.append(reaper_ctx)
    for table in [*ROUTE_TABLES, openapi_routes(ROUTE_TABLES)]:
        table.install(app)
    return app


@dataclass
class RunningServer:
    """A started server: its runner and the port it bound (useful with port 0)."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    async def aclose(self) -> None:
        await self.runner.cleanup()


async def start(settings: ServerSettings, *, migrate: bool = True) -> RunningServer:
    """Start serving HTTPS on settings.host:settings.port (0 picks a free port)."""
    runner = web.AppRunner(create_app(settings, migrate=migrate), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(
        runner, settings.host, settings.port, ssl_context=server_ssl_context(settings), backlog=1024
    )
    await site.start()
    sockets = getattr(site._server, "sockets", None)
    assert sockets, "site did not bind"
    port = int(sockets[0].getsockname()[1])
    return RunningServer(runner, settings.host, port)
