"""One TLS connection's guard: its phase in the connection table and its request-head timeout.

:class:`ConnectionGuard` is the protocol the TLS layer talks to. It creates aiohttp's own protocol (the
runner's ``web.Server`` makes one per connection) only once the handshake is done, and passes every
event through to it unchanged; what it adds is bookkeeping:

* the phase (``server/conntable.py``): HEAD from the handshake or from the first byte of a request, BUSY
  from the moment the request reaches the application until its response is fully written, then IDLE;
* the header timeout: a request head must be complete ``header_timeout`` seconds after its first byte
  (after the handshake for the first request). Bytes that keep trickling do not extend it: a client
  sending one header line every few seconds is closed like a silent one.

aiohttp has no public hook for "request head parsed"; :func:`connection_middleware` is that hook. It
must be the outermost middleware: it marks the connection BUSY, and it makes the request task's
completion — after aiohttp has written the whole response, streamed files included — mark it IDLE. It
also publishes the body timeout for ``server/bodytimeout.py``. The idle keep-alive timeout itself is
aiohttp's (``keepalive_timeout``, set on the runner).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from server.bodytimeout import BODY_TIMEOUT
from server.conntable import ConnectionTable, Phase

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionGuard(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection; created before its TLS handshake starts."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        table: ConnectionTable,
        *,
        header_timeout: float,
        body_timeout: float | None,
        peer: object = None,
    ) -> None:
        self.phase = Phase.HANDSHAKE
        self.body_timeout = body_timeout
        self.peer = peer
        self.handshake: asyncio.Task[None] | None = None  # set by the listener while it runs
        self._factory = factory
        self._table = table
        self._header_timeout = header_timeout
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    # --- asyncio.Protocol: pass through, keeping the phase ----------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._table.move(self, Phase.HEAD)
        self._arm()
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.phase is Phase.IDLE:
            self._table.move(self, Phase.HEAD)
            self._arm()
        assert self._inner is not None
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._disarm()
        self._table.discard(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    # --- the table and the middleware ------------------------------------------------------------------

    def evict(self) -> None:
        """Close now (the table needs the room): abort the handshake or the connection."""
        self._disarm()
        if self.handshake is not None and not self.handshake.done():
            self.handshake.cancel()
        elif self._transport is not None:
            self._transport.abort()

    def request_started(self) -> None:
        self._disarm()
        self._table.move(self, Phase.BUSY)

    def request_finished(self, _task: object = None) -> None:
        if not self._closed:
            self._table.move(self, Phase.IDLE)

    # --- the header timeout ------------------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_too_slow(self) -> None:
        self._timer = None
        if self.phase is not Phase.HEAD or self._transport is None:
            return
        self._table.totals["header_timeouts"] += 1
        logger.debug("closing %s: no complete request head within %g s", self.peer, self._header_timeout)
        self._table.discard(self)
        self._transport.abort()


def guard_of(request: web.BaseRequest) -> ConnectionGuard | None:
    """The guard of the connection ``request`` came on (None under other sites, e.g. test clients)."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, ConnectionGuard) else None


@web.middleware
async def connection_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Mark the connection BUSY for the whole request and its response; publish the body timeout."""
    guard = guard_of(request)
    if guard is None:
        return await handler(request)
    guard.request_started()
    task = asyncio.current_task()
    if task is not None:  # aiohttp runs each request in a task of its own that ends after the response
        task.add_done_callback(guard.request_finished)
    token = BODY_TIMEOUT.set(guard.body_timeout)
    try:
        return await handler(request)
    finally:
        BODY_TIMEOUT.reset(token)


def install(app: web.Application) -> None:
    """Make :func:`connection_middleware` the outermost middleware of ``app`` (before it is frozen)."""
    if connection_middleware not in app.middlewares:
        app.middlewares.insert(0, connection_middleware)
