"""The listening site: accept TCP connections ourselves, so that idle ones cost almost nothing.

aiohttp's ``TCPSite`` hands every accepted socket to asyncio's TLS layer at once, which allocates a
256 KiB read buffer (``asyncio.sslproto.SSLProtocol.max_size``) and an OpenSSL object before the
client has sent a byte; with aiohttp's keep-alive of 3,630 s idle sockets pile up at ~300 KiB each, and
once descriptors run out asyncio logs a traceback for every failed ``accept()``.

:class:`GatedSite` replaces it for the HTTPS listener:

* **the gate** (``server/gate.py``): an accepted socket that has not sent a byte is a bare descriptor
  in an epoll set; no TLS object, no buffer, no aiohttp protocol. On its first byte — a TLS record must
  start with 0x16; anything else is closed — it goes to the TLS layer and, once the handshake is done,
  to aiohttp (``server/connguard.py``). Accept, gate and handshake share one budget,
  ``handshake_timeout``;
* **the cap** (``server/conntable.py``): at ``max_connections`` the oldest unfinished connection is
  evicted to make room, and a new one is refused only when every connection is busy with a request;
* **descriptor exhaustion** (EMFILE/ENFILE on ``accept``): evict one connection, pause accepting for
  a moment, and count it in the table's summary line — no traceback;
* **no TLS receive buffer per connection**: asyncio gives each TLS connection its own 256 KiB; our
  connections share one per listener (``server/tlsbuffer.py``). ``tls_read_buffer = 0`` uses asyncio's
  public ``connect_accepted_socket(ssl=...)`` and its per-connection buffer instead.

Measured with 2,000-5,000 connections (server RSS growth per connection): a silent socket in the gate
~1 KiB instead of ~307 KiB; a TLS connection trickling a request head ~29 KiB instead of ~285 KiB.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from asyncio import sslproto
from dataclasses import dataclass
from typing import cast

from aiohttp import web

from server.connguard import ConnectionGuard
from server.conntable import ConnectionTable, Phase, derive_max_connections, raise_nofile_limit
from server.gate import Gate
from server.settings import ServerSettings
from server.tlsbuffer import shared_buffer_protocol

logger = logging.getLogger(__name__)

TLS_HANDSHAKE_RECORD = 0x16  # first byte of every TLS ClientHello
ACCEPT_BATCH = 128  # accept() calls per readiness event, so one flood cannot starve the loop
ACCEPT_PAUSE = 0.25  # seconds without accepting after EMFILE/ENFILE (the backlog holds new clients)
TLS_SHUTDOWN_TIMEOUT = 5.0  # wait this long for the peer's close_notify, not asyncio's 30 s
GATE_SWEEP_SLACK = 0.25  # expire gate entries in batches rather than one timer wake-up each
_CLIENT_GONE = {errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN, errno.EHOSTUNREACH, errno.ENETUNREACH}
_NO_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


@dataclass(frozen=True)
class ConnectionLimits:
    """The connection settings the listener applies (from ServerSettings, see there for defaults)."""

    max_connections: int
    handshake_timeout: float
    header_timeout: float
    body_timeout: float | None
    tls_read_buffer: int

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ConnectionLimits:
        """Raises the open-file limit to its hard limit when the cap is derived from it."""
        for name in ("handshake_timeout", "header_timeout", "keepalive_timeout"):
            if getattr(settings, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(settings, name)}")
        if settings.body_timeout < 0 or settings.max_connections < 0 or settings.tls_read_buffer < 0:
            raise ValueError("body_timeout, max_connections and tls_read_buffer must be >= 0 (0: default)")
        cap = settings.max_connections or derive_max_connections(raise_nofile_limit())
        return cls(
            max_connections=cap,
            handshake_timeout=settings.handshake_timeout,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout or None,
            tls_read_buffer=settings.tls_read_buffer,
        )


class GatedSite(web.BaseSite):
    """An HTTPS site for an AppRunner whose idle connections are cheap and whose count is capped."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        limits: ConnectionLimits,
        backlog: int = 1024,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port = host, port
        # SO_REUSEPORT: several server processes listen on one port; the kernel spreads new connections
        # over them (xwserver run --processes N). Any process of the same user could join the group.
        self._reuse_port = reuse_port
        self._ssl = ssl_context
        self.limits = limits
        self.table = ConnectionTable(limits.max_connections)
        self.tls_protocol: type[sslproto.SSLProtocol] | None = None  # set at start, on the loop
        self._lsock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate: Gate | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port (the requested one before start)."""
        return int(self._lsock.getsockname()[1]) if self._lsock is not None else self._port

    async def start(self) -> None:
        await super().start()
        self._loop = loop = asyncio.get_running_loop()
        self.tls_protocol = shared_buffer_protocol(loop, self.limits.tls_read_buffer, self._ssl)
        infos = await loop.getaddrinfo(
            self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        lsock = socket.socket(family, kind, proto)
        try:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            lsock.bind(address)
            lsock.listen(self._backlog)
            lsock.setblocking(False)
        except OSError:
            lsock.close()
            raise
        self._lsock = lsock
        self._gate = self.table.gate = Gate(loop, self._first_byte)
        loop.add_reader(lsock.fileno(), self._accept)
        body = f"{self.limits.body_timeout:g} s" if self.limits.body_timeout else "unlimited"
        logger.info(
            "listening on %s (max_connections %d; timeouts: handshake %g s, header %g s, body %s)",
            self.name,
            self.table.cap,
            self.limits.handshake_timeout,
            self.limits.header_timeout,
            body,
        )

    async def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._lsock is not None:
            loop.remove_reader(self._lsock.fileno())
            self._lsock.close()
            self._lsock = None
        for handle in (self._resume, self._sweep):
            if handle is not None:
                handle.cancel()
        if self._gate is not None:
            self._gate.close()
        handshakes = []
        while (guard := self.table.oldest(Phase.HANDSHAKE)) is not None:
            self.table.discard(guard)
            task = cast(ConnectionGuard, guard).handshake
            if task is not None:
                task.cancel()
                handshakes.append(task)
        await asyncio.gather(*handshakes, return_exceptions=True)
        self.table.close()
        await super().stop()

    # --- accept ------------------------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._loop is not None and self._lsock is not None and self._gate is not None
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _CLIENT_GONE:
                    continue
                self._accept_failed(exc)  # EMFILE/ENFILE above all: pause, count, no traceback
                return
            if not self.table.admit():
                sock.close()
                continue
            self._gate.add(sock.detach(), self._loop.time())
            if self._sweep is None:
                self._schedule_sweep()

    def _accept_failed(self, exc: OSError) -> None:
        """accept() failed (for want of descriptors, mostly): make room, then wait a moment."""
        assert self._loop is not None and self._lsock is not None
        self.table.note(f"accept() {errno.errorcode.get(exc.errno or 0, exc.errno)}")
        if exc.errno in _NO_RESOURCES:
            self.table.evict_one()
        self._loop.remove_reader(self._lsock.fileno())
        self._resume = self._loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._loop is not None and self._lsock is not None:
            self._loop.add_reader(self._lsock.fileno(), self._accept)

    # --- the gate ----------------------------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        assert self._loop is not None and self._gate is not None
        oldest = self._gate.oldest()
        if oldest is not None:
            due = oldest + self.limits.handshake_timeout + GATE_SWEEP_SLACK
            self._sweep = self._loop.call_at(due, self._expire_gate)

    def _expire_gate(self) -> None:
        """Close the gate entries whose handshake budget is spent."""
        assert self._loop is not None and self._gate is not None
        self._sweep = None
        expired = self._gate.expire(self._loop.time() - self.limits.handshake_timeout)
        self.table.totals["gate_expired"] += expired
        self._schedule_sweep()

    def _first_byte(self, fd: int, accepted_at: float) -> None:
        """A gate entry is readable: a TLS ClientHello goes on to the handshake, anything else is closed."""
        assert self._loop is not None and self._lsock is not None
        sock = socket.socket(self._lsock.family, socket.SOCK_STREAM, fileno=fd)
        try:
            sock.setblocking(False)
            first = sock.recv(1, socket.MSG_PEEK)
            peer = sock.getpeername()
        except OSError:  # reset, or gone already
            first, peer = b"", None
        if not first or first[0] != TLS_HANDSHAKE_RECORD:
            sock.close()
            self.table.totals["not_tls" if first else "closed_in_gate"] += 1
            return
        budget = accepted_at + self.limits.handshake_timeout - self._loop.time()
        server = self._runner.server
        if budget <= 0 or server is None:
            sock.close()
            self.table.totals["gate_expired"] += 1
            return
        guard = ConnectionGuard(
            server,
            self.table,
            header_timeout=self.limits.header_timeout,
            body_timeout=self.limits.body_timeout,
            peer=peer,
        )
        self.table.add(guard, Phase.HANDSHAKE)
        guard.handshake = self._loop.create_task(self._handshake(sock, guard, budget))

    async def _handshake(self, sock: socket.socket, guard: ConnectionGuard, budget: float) -> None:
        """TLS handshake within ``budget`` seconds; the guard then hands the connection to aiohttp."""
        loop = asyncio.get_running_loop()
        try:
            if self.tls_protocol is None:
                await loop.connect_accepted_socket(
                    lambda: guard,
                    sock,
                    ssl=self._ssl,
                    ssl_handshake_timeout=budget,
                    ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
                )
            else:
                done = loop.create_future()
                tls = self.tls_protocol(
                    loop,
                    guard,
                    self._ssl,
                    done,
                    server_side=True,
                    ssl_handshake_timeout=budget,  # type: ignore[arg-type]  # typeshed says int
                    ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
                )
                transport, _ = await loop.connect_accepted_socket(lambda: tls, sock)
                try:
                    await done
                except BaseException:
                    transport.abort()
                    raise
        except asyncio.CancelledError:
            sock.close()  # evicted or shutting down (a no-op if a transport owns and closed it)
            self.table.discard(guard)
        except OSError as exc:  # ssl.SSLError, resets, the handshake timeout: all the client's doing
            sock.close()
            self.table.discard(guard)
            self.table.totals["handshake_failed"] += 1
            logger.debug("TLS handshake with %s failed: %s", guard.peer, exc or type(exc).__name__)
        except Exception:  # a bug of ours, not the client's: say so, and keep the table right
            sock.close()
            self.table.discard(guard)
            logger.exception("setting up the connection from %s failed", guard.peer)
        finally:
            guard.handshake = None
