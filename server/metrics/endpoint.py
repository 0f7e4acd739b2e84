"""``GET /metrics`` (Prometheus text format): what it shows, who may read it, and the request counter.

Who may read it: a request without credentials from an address of ``metrics_allow`` (default: loopback),
or a request with an administrator's credential (a SUPER_USER's bearer token or client certificate,
authenticated as the API does) from anywhere. Credentials of anyone else — another user, a host — are
refused (403) even from an allowed address, and so is a request without credentials from elsewhere.

One process (the default): the instruments live in memory and a scrape shows them. Several processes
(``xwserver run --processes N``): the supervisor gives every child the same fresh
``PROMETHEUS_MULTIPROC_DIR``; prometheus-client then keeps each process's values in memory-mapped files
there, and a scrape — whichever process the kernel hands the connection to — sums every process's files,
the dead ones' included, so the counters are the whole server's and never go back when a child restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from common.errors import Forbidden
from common.netallow import allowed, parse_allow
from server.auth import authenticate, peer_certificate
from server.http import Handler
from server.metrics.database import DatabaseFigures
from server.metrics.instruments import ServerMetrics
from server.scheduler.writer import observe, observe_submissions
from server.state import SERVICES, Services
from server.validation.observers import observe_verdicts

PATH = "/metrics"
# The classic text format (our names need none of 1.0.0's escaping; every Prometheus version reads it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own switch, read when it is imported
SYNC_EVERY = 1.0  # seconds between two copies of this process's long-poll count into the shared files


def multiprocess() -> bool:
    """Whether prometheus-client runs in multiprocess mode in this process (as the library decides)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def watch(factory_info: dict[str, object], metrics: ServerMetrics) -> None:
    """Feed ``metrics`` from the status writer (every committed status change and submission) and from the
    validator (every committed verdict)."""
    observe(factory_info, metrics.observe)
    observe_submissions(factory_info, metrics.jobs_submitted)
    observe_verdicts(factory_info, metrics.verdicts_judged)


class Exposition:
    """What a scrape renders: this process's (or every process's) instruments and the database figures."""

    def __init__(self, svc: Services) -> None:
        self._svc = svc
        self.figures = DatabaseFigures(svc.readers, svc.alive_timeout)
        self.registry = CollectorRegistry(auto_describe=False)
        if multiprocess():
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        else:
            for collector in svc.metrics.collectors():
                self.registry.register(collector)
        self.registry.register(self.figures)
        self.allow = parse_allow(svc.settings.metrics_allow)

    def sync(self) -> None:
        """Copy what this process counts in place rather than per event (waiting long-polls)."""
        self._svc.metrics.longpolls.set(self._svc.longpolls.waiting)

    async def render(self) -> bytes:
        await self.figures.refresh()
        self.sync()
        return generate_latest(self.registry)


EXPOSITION = web.AppKey("metrics_exposition", Exposition)


async def check_access(request: web.Request, exposition: Exposition) -> None:
    """Let an administrator's credential, or no credential from an allowed address, through; else 403."""
    if request.headers.get("Authorization") or peer_certificate(request) is not None:
        actor = await authenticate(request)  # a bad or expired credential is a 401, as on the API
        if not actor.is_admin or actor.host_uid is not None:
            raise Forbidden(f"{actor.login} may not read {PATH}: it is for administrators and the scraper")
        return
    if not allowed(request.remote, exposition.allow):
        raise Forbidden(
            f"{request.remote} may not read {PATH} without an administrator's credential "
            "(addresses allowed without one: the metrics_allow setting)"
        )


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus text exposition."""
    exposition = request.app[EXPOSITION]
    await check_access(request, exposition)
    body = await exposition.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


metrics.xw_public = True  # type: ignore[attr-defined]  # the auth middleware leaves it to check_access


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """Make the exposition once services exist; with several processes, keep the shared gauge current."""
    exposition = app[EXPOSITION] = Exposition(app[SERVICES])
    task = None
    if multiprocess():

        async def sync_forever() -> None:
            while True:
                exposition.sync()
                await asyncio.sleep(SYNC_EVERY)

        task = asyncio.create_task(sync_forever(), name="metrics-sync")
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def install(app: web.Application) -> None:
    """Serve ``GET /metrics`` (after the services' context, which it reads)."""
    app.cleanup_ctx.append(metrics_ctx)
    app.router.add_get(PATH, metrics)


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answered request by method, route template (never the raw path) and status class."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # what problem_middleware lets through (redirects and the like)
        _count(request, exc.status)
        raise
    _count(request, response.status)
    return response


def _count(request: web.Request, status: int) -> None:
    svc = request.app.get(SERVICES)
    if svc is None:  # before start-up finished
        return
    resource = request.match_info.route.resource
    svc.metrics.request(request.method, resource.canonical if resource is not None else None, status)
