"""The aiohttp application factory and the TLS site runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from server import connguard
from server.auth import auth_middleware, server_ssl_context
from server.db.engine import make_engine, make_reader, make_sessionmaker
from server.http import Routes, problem_middleware
from server.listener import ConnectionLimits, GatedSite
from server.longpoll import LongPollBudget
from server.metrics import endpoint as metrics_endpoint
from server.metrics.instruments import ServerMetrics
from server.oidc.trust import TrustedProviders
from server.openapi import openapi_routes
from server.pki import CA
from server.routes import (
    apps,
    auth,
    certificates,
    data,
    hostrequests,
    hosts,
    jobs,
    objects,
    oidc,
    tunnels,
    users,
    worker,
)
from server.scheduler import leader, notify
from server.scheduler.reaper import reaper_loop
from server.scheduler.wakeup import Wakeups
from server.scheduler.writer import observe
from server.settings import ServerSettings
from server.state import SERVICES, Services
from server.store import DataStore
from server.tokens import TokenSigner
from server.ui import install as install_dashboard
from server.validation.observers import observe_started
from server.validation.replication import Validator

logger = logging.getLogger(__name__)

BACKLOG = 1024  # pending connections the kernel holds while the loop is busy
CLIENT_KEEPALIVE = 15.0  # aiohttp's client drops idle pooled connections after this (TCPConnector)

ROUTE_TABLES: list[Routes] = [
    auth.routes,
    oidc.routes,
    users.routes,
    apps.routes,
    data.routes,
    jobs.routes,
    hosts.routes,
    worker.routes,
    tunnels.routes,
    certificates.routes,
    objects.routes,
    hostrequests.routes,
]


def create_app(settings: ServerSettings, *, migrate: bool = True) -> web.Application:
    """A server application for ``settings``; resources open and close with the app's lifecycle."""
    app = web.Application(
        middlewares=[metrics_endpoint.count_requests, problem_middleware, auth_middleware],
        client_max_size=settings.max_json_bytes,
    )

    validator = Validator()

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        if migrate:
            await leader.upgrade_once(settings.db_url)  # processes starting together take turns
        signer = TokenSigner.from_file(settings.jwt_key, settings.token_ttl)
        signer.write_public(settings.jwt_pub)  # homes made before relays existed get it too
        engine = make_engine(settings.db_url)
        reader = make_reader(settings.db_url, engine)
        wakeups = Wakeups()
        info: dict[str, object] = {}
        observe(info, wakeups.observe)  # jobs that became PENDING wake as many waiting workers
        observe(info, validator.observe)  # replicas that ended wake the validator
        observe_started(info, wakeups.jobs_pending)  # replicas it started wake workers
        metrics = ServerMetrics()
        metrics_endpoint.watch(info, metrics)  # outcomes, queue waits, run times, submissions
        app[SERVICES] = Services(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine, info),
            readers=make_sessionmaker(reader),
            signer=signer,
            ca=CA.load(settings.ca_cert, settings.ca_key),
            store=DataStore(settings.store_dir),
            wakeups=wakeups,
            longpolls=LongPollBudget(settings.max_longpolls),
            oidc=TrustedProviders(settings.oidc),
            metrics=metrics,
        )
        try:
            yield
        finally:
            await app[SERVICES].oidc.aclose()
            await engine.dispose()
            if reader is not engine:
                await reader.dispose()

    async def notify_ctx(app: web.Application) -> AsyncIterator[None]:
        # other server processes on the same PostgreSQL: their new jobs wake our waiters, ours theirs
        async with notify.listening(settings, app[SERVICES].wakeups):
            yield

    async def reaper_ctx(app: web.Application) -> AsyncIterator[None]:
        svc = app[SERVICES]
        async with leader.leadership(settings) as lead:  # one reaper among the processes
            loop = reaper_loop(
                svc.sessions,
                svc.store,
                svc.liveness,
                alive_period=lambda: svc.alive_period(),
                alive_timeout=settings.alive_timeout,
                is_leader=lead.is_leader,
            )
            task = asyncio.create_task(loop, name="reaper")
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def authcache_ctx(app: web.Application) -> AsyncIterator[None]:
        svc = app[SERVICES]
        task = asyncio.create_task(svc.auth.refresh_forever(svc.readers), name="auth-cache")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def validator_ctx(app: web.Application) -> AsyncIterator[None]:
        svc = app[SERVICES]
        loop = validator.run(svc.sessions, svc.store, svc.readers)
        task = asyncio.create_task(loop, name="validator")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(services_ctx)
    app.cleanup_ctx.append(authcache_ctx)
    app.cleanup_ctx.append(notify_ctx)
    app.cleanup_ctx.append(reaper_ctx)
    app.cleanup_ctx.append(validator_ctx)  # replicas' results -> verdicts (server/validation/)
    metrics_endpoint.install(app)  # GET /metrics (Prometheus), outside the API and its document
    for table in [*ROUTE_TABLES, openapi_routes(ROUTE_TABLES)]:
        table.install(app)
    install_dashboard(app)  # /ui/: its own sessions, outside the API and its document
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


async def start(settings: ServerSettings, *, migrate: bool = True, reuse_port: bool = False) -> RunningServer:
    """Start serving HTTPS on settings.host:settings.port (0 picks a free port); ``reuse_port``: share the
    port with the other processes of ``xwserver run --processes N`` (SO_REUSEPORT).

    The gated listener (server/listener.py) caps open connections and times out handshakes, request
    heads, bodies and idle keep-alives. ``listener = "plain"`` is aiohttp's TCPSite as it was before
    (none of that), kept as the baseline of bench/connections.py.
    """
    app = create_app(settings, migrate=migrate)
    if settings.listener == "plain":
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            ssl_context=server_ssl_context(settings),
            backlog=BACKLOG,
            reuse_port=reuse_port or None,
        )
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        assert sockets, "site did not bind"
        return RunningServer(runner, settings.host, int(sockets[0].getsockname()[1]))
    if settings.keepalive_timeout <= CLIENT_KEEPALIVE:
        logger.warning(
            "keepalive_timeout %g s is not longer than clients keep idle connections (%g s): a request "
            "may meet a connection the server is closing",
            settings.keepalive_timeout,
            CLIENT_KEEPALIVE,
        )
    limits = ConnectionLimits.from_settings(settings)  # checks them before anything opens
    connguard.install(app)
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, keepalive_timeout=settings.keepalive_timeout
    )
    await runner.setup()
    gated = GatedSite(
        runner,
        settings.host,
        settings.port,
        ssl_context=server_ssl_context(settings),
        limits=limits,
        backlog=BACKLOG,
        reuse_port=reuse_port,
    )
    try:
        await gated.start()
    except BaseException:  # e.g. the port is taken: close the database and the rest again
        await runner.cleanup()
        raise
    return RunningServer(runner, settings.host, gated.port)
