"""Tunnel endpoints for workers and xwproxy: one reconnecting SSH link to the relay carries every tunnel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from asyncssh.listener import TCPListenerFactory
from asyncssh.stream import SSHTCPStreamSession

from common.errors import Conflict, Forbidden, NotFound, TransportError, XWError
from proxy.algorithms import ENCRYPTION_ALGS, HOST_KEY_ALGS, KEX_ALGS, MAC_ALGS
from proxy.logs import Tagged
from proxy.relay import KEEPALIVE_COUNT_MAX, KEEPALIVE_INTERVAL, USERNAME
from proxy.renewal import RENEW_TIMEOUT, Lease
from proxy.splice import CountingReader, CountingWriter, Traffic, splice
from proxy.tickets import TicketError, port_of

logger = logging.getLogger(__name__)

OPEN_TIMEOUT = 10.0  # how long open()/publish()/allow() wait for a link that is down
BACKOFF_MIN = 0.2
BACKOFF_MAX = 10.0
CONNECT_TIMEOUT = 15.0  # TCP + SSH handshake + authentication
REQUEST_TIMEOUT = 15.0  # one grant exec, or one local target connection
RETRY_INTERVAL = 0.2  # between open() attempts while a name is not (yet, or again) published


@dataclass(frozen=True)
class Ticket:
    """What the server hands out for a relay connection."""

    relay: str  # "host:port"
    host_key: str | None  # OpenSSH public key to pin (None = don't check, tests only)
    token: str


TicketSource = Callable[[], Awaitable[Ticket]]
# A fresh grant token each call (the relay accepts a ticket once), with the same rights every call: the
# link renews everything a source granted with one new token from it.
GrantSource = Callable[[], Awaitable[str]]
Target = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]  # opens the local service


class _LinkClient(asyncssh.SSHClient):
    """Keeps the relay's authentication banner: it carries the reason a ticket was refused."""

    def __init__(self) -> None:
        self.banner = ""

    def auth_banner_received(self, msg: str, lang: str) -> None:
        self.banner = msg.strip()


def _host_port(relay: str) -> tuple[str, int]:
    host, sep, port = relay.rpartition(":")
    if not sep or not port.isdigit():
        raise TransportError(f"bad relay address {relay!r} (expected host:port)")
    return host.strip("[]"), int(port)


class RelayLink:
    """One SSH connection to the relay that reconnects with backoff and restores its grants and names."""

    def __init__(
        self,
        tickets: TicketSource,
        *,
        label: str = "",
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        open_timeout: float = OPEN_TIMEOUT,
    ) -> None:
        self._tickets = tickets
        self._keepalive = keepalive_interval
        self._open_timeout = open_timeout
        self._conn: asyncssh.SSHClientConnection | None = None
        self._up = asyncio.Event()
        self._lock = asyncio.Lock()  # serialises (re)configuration of the current connection
        self._published: dict[str, tuple[Target, GrantSource]] = {}
        self._allowed: dict[str, GrantSource] = {}
        self._listeners: dict[str, asyncssh.SSHListener] = {}  # names published on the current connection
        self._leases: dict[object, Lease] = {}  # by source (self._tickets or a GrantSource), this connection
        self._wake = asyncio.Event()  # leases or the connection changed: the renewer looks again
        self._traffic: dict[str, Traffic] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False
        self.relay = ""
        self.reconnects = 0
        self.log = Tagged(logger, f"link {label}".strip())

    async def __aenter__(self) -> RelayLink:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def connected(self) -> bool:
        """Whether the link is up now."""
        return self._up.is_set() and not self._closed

    async def start(self) -> None:
        """Connect for the first time (TicketError if refused, TransportError if unreachable)."""
        if self._supervisor is not None:
            raise RuntimeError("link already started")
        conn, lease = await self._connect()
        try:
            await self._restore(conn, lease)
        except BaseException:
            conn.close()
            raise
        self._supervisor = asyncio.create_task(self._supervise(conn))
        self._renewer = asyncio.create_task(self._renew_forever())

    async def aclose(self) -> None:
        """Close the link; published names disappear from the relay."""
        self._closed = True
        for task in (self._supervisor, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        conn = self._conn
        self._drop(conn)
        self._up.set()  # wake waiters: they see the link closed
        if conn is not None:
            conn.close()
            await conn.wait_closed()

    def stats(self, name: str) -> tuple[int, int]:
        """(bytes_in: received from the relay, bytes_out: sent to it) on ``name`` through this link."""
        traffic = self._traffic.get(name.lower())
        return traffic.totals() if traffic else (0, 0)

    # -- what callers ask for ----------------------------------------------------------------------------

    async def publish(self, name: str, target: Target, grant: GrantSource) -> None:
        """Publish ``name``, splicing each connection to ``target()``; kept and restored across reconnects."""
        name = _checked(name)
        if name in self._published:
            raise Conflict(f"{name} is already published on this link")
        await self._wait_up(self._open_timeout)
        async with self._lock:
            self._published[name] = (target, grant)
            try:
                if self._conn is not None:
                    await self._publish_on(self._conn, name, target, grant, self._leases)
            except (OSError, asyncssh.Error) as exc:
                self.log.info("publish %s interrupted (%s): done again on reconnect", name, exc)
            except BaseException:
                del self._published[name]
                self._forget_unused()
                raise

    async def unpublish(self, name: str) -> None:
        """Stop publishing ``name`` (connections already spliced keep going)."""
        name = name.lower()
        self._published.pop(name, None)
        self._forget_unused()
        listener = self._listeners.pop(name, None)
        if listener is not None:
            listener.close()
            with contextlib.suppress(OSError, asyncssh.Error):
                await listener.wait_closed()
            self.log.info("unpublished %s", name)

    def disallow(self, name: str) -> None:
        """Stop renewing (and restoring) connect rights to ``name``; the relay lets them expire."""
        self._allowed.pop(name.lower(), None)
        self._forget_unused()

    async def allow(self, name: str, grant: GrantSource) -> None:
        """Acquire connect rights to ``name`` with tokens from ``grant``; re-granted after every reconnect."""
        name = _checked(name)
        await self._wait_up(self._open_timeout)
        async with self._lock:
            self._allowed[name] = grant
            try:
                if self._conn is not None:
                    await self._grant_from(self._conn, grant, self._leases)
            except (OSError, asyncssh.Error) as exc:
                self.log.info("allow %s interrupted (%s): done again on reconnect", name, exc)
            except BaseException:
                del self._allowed[name]
                self._forget_unused()
                raise

    async def open(self, name: str, timeout: float | None = None) -> tuple[CountingReader, CountingWriter]:
        """A direct-tcpip stream to ``name``, waiting up to ``timeout`` for the link or the name to be up."""
        name = _checked(name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._open_timeout if timeout is None else timeout)
        while True:
            conn = await self._wait_up(deadline - loop.time())
            try:
                reader, writer = await conn.open_connection(name, port_of(name))
            except asyncssh.ChannelOpenError as exc:
                if exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
                    raise Forbidden(f"relay refused {name}: {exc.reason}") from None
                if loop.time() + RETRY_INTERVAL >= deadline:
                    raise NotFound(f"relay cannot reach {name}: {exc.reason}") from None
            except (OSError, asyncssh.Error) as exc:  # the link broke under us: wait for the next one
                if loop.time() + RETRY_INTERVAL >= deadline:
                    raise TransportError(f"relay {self.relay} lost while opening {name}: {exc}") from None
            else:
                traffic = self._traffic.setdefault(name, Traffic())
                return CountingReader(reader, traffic), CountingWriter(writer, traffic)
            await asyncio.sleep(RETRY_INTERVAL)

    # -- the connection ----------------------------------------------------------------------------------

    async def _connect(self) -> tuple[asyncssh.SSHClientConnection, Lease]:
        """One authenticated connection with a fresh ticket, and the lease of that ticket."""
        ticket = await self._tickets()
        fetched = asyncio.get_running_loop().time()
        self.relay = ticket.relay
        host, port = _host_port(ticket.relay)
        client = _LinkClient()
        try:
            pinned = [asyncssh.import_public_key(ticket.host_key)] if ticket.host_key else None
        except (ValueError, asyncssh.KeyImportError) as exc:
            raise TransportError(f"bad relay host key in ticket: {exc}") from None
        try:
            conn = await asyncssh.connect(
                host,
                port,
                username=USERNAME,
                password=ticket.token,
                known_hosts=(pinned, [], []) if pinned else None,
                client_keys=None,
                agent_path=None,
                config=None,
                preferred_auth="password",
                kex_algs=KEX_ALGS,
                encryption_algs=ENCRYPTION_ALGS,
                mac_algs=MAC_ALGS,
                server_host_key_algs=HOST_KEY_ALGS,
                keepalive_interval=self._keepalive,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
                connect_timeout=CONNECT_TIMEOUT,
                client_factory=lambda: client,
            )
        except asyncssh.PermissionDenied:
            reason = client.banner or "ticket not accepted"
            raise TicketError(f"relay {ticket.relay} refused the ticket: {reason}") from None
        except asyncssh.HostKeyNotVerifiable:
            raise TransportError(f"relay {ticket.relay}: host key does not match the pinned key") from None
        except (OSError, asyncssh.Error) as exc:
            raise TransportError(f"relay {ticket.relay} unreachable: {exc}") from None
        self.log.info("connected to relay %s", ticket.relay)
        return conn, Lease.of(self._link_token, ticket.token, fetched)

    async def _link_token(self) -> str:
        """A fresh link ticket's token: renews ``link`` and whatever else the link tickets carry."""
        return (await self._tickets()).token

    def _drop(self, conn: asyncssh.SSHClientConnection | None) -> None:
        if conn is not None and self._conn is conn:
            self._conn = None
            self._up.clear()
            self._listeners.clear()
            self._leases = {}
            self._wake.set()

    async def _wait_up(self, timeout: float) -> asyncssh.SSHClientConnection:
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await self._up.wait()
        except TimeoutError:
            raise TransportError(f"relay {self.relay or '?'} unreachable: link down") from None
        if self._closed or self._conn is None:
            raise TransportError("relay link closed")
        return self._conn

    async def _supervise(self, conn: asyncssh.SSHClientConnection) -> None:
        """Wait for the connection to end, then reconnect (backoff 0.2 s .. 10 s) and restore everything."""
        while not self._closed:
            await conn.wait_closed()
            self._drop(conn)
            self.log.warning("lost the relay connection; reconnecting")
            conn = await self._reconnect()

    async def _reconnect(self) -> asyncssh.SSHClientConnection:
        delay = BACKOFF_MIN
        failures = 0
        while True:
            # jitter: a restarted relay does not see all its links at once
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX)
            try:
                conn, lease = await self._connect()
                try:
                    await self._restore(conn, lease)
                except BaseException:
                    conn.close()
                    raise
            except Exception as exc:  # the ticket source is the caller's code: keep the link alive regardless
                failures += 1
                # Once as a warning: a relay down for an hour must not fill the log with the same line.
                log = self.log.warning if failures == 1 else self.log.debug
                log("reconnect failed (retrying with backoff up to %.0fs): %s", BACKOFF_MAX, exc)
                continue
            if failures:
                self.log.info("reconnected after %s failed attempts", failures)
            self.reconnects += 1
            return conn

    async def _restore(self, conn: asyncssh.SSHClientConnection, link: Lease) -> None:
        """Re-grant and re-publish everything registered on a new connection, then make it the current one.

        One fresh token per source: it carries the rights of every name registered with that source.
        """
        async with self._lock:  # publish()/allow() see either the old state or the restored connection
            leases: dict[object, Lease] = {self._tickets: link}
            for name, grant in list(self._allowed.items()):
                if grant not in leases:
                    await self._best_effort(f"allow {name}", self._grant_from(conn, grant, leases))
            for name, (target, grant) in list(self._published.items()):
                step = self._publish_on(conn, name, target, grant, leases, fresh=grant not in leases)
                await self._best_effort(f"publish {name}", step)
            # A source whose grant was refused is retried by the renewer (with backoff), which then
            # publishes its names: a source failing for a moment does not wait for the next reconnect.
            now = asyncio.get_running_loop().time()
            for grant in [*self._allowed.values(), *(g for _, g in self._published.values())]:
                if grant not in leases:
                    leases[grant] = Lease.retry(grant, now)
            self._leases = leases
            self._conn = conn
            self._up.set()
            self._wake.set()

    async def _best_effort(self, what: str, step: Awaitable[None]) -> None:
        """Run one restore step: a refusal is logged (retried by the renewer), a lost link raises."""
        try:
            await step
        except (OSError, asyncssh.Error):
            raise
        except Exception as exc:  # a grant source is the caller's code: one bad name must not stop the rest
            self.log.warning("%s not restored: %s", what, exc)

    async def _grant(self, conn: asyncssh.SSHClientConnection, token: str) -> None:
        """Run ``grant <token>`` on the relay (TicketError with the relay's reason if refused)."""
        result = await conn.run(f"grant {token}", check=False, timeout=REQUEST_TIMEOUT)
        if result.exit_status != 0:
            lines = str(result.stderr or "").strip().splitlines()
            raise TicketError(lines[0] if lines else f"grant refused (exit {result.exit_status})")

    async def _grant_from(
        self, conn: asyncssh.SSHClientConnection, grant: GrantSource, leases: dict[object, Lease]
    ) -> None:
        """Grant a fresh token from ``grant`` and record its lease in ``leases`` (the connection's)."""
        token = await grant()
        fetched = asyncio.get_running_loop().time()
        await self._grant(conn, token)
        leases[grant] = Lease.of(grant, token, fetched)
        self._wake.set()

    async def _publish_on(
        self,
        conn: asyncssh.SSHClientConnection,
        name: str,
        target: Target,
        grant: GrantSource,
        leases: dict[object, Lease],
        *,
        fresh: bool = True,
    ) -> None:
        if fresh:
            await self._grant_from(conn, grant, leases)
        await self._forward(conn, name, target)

    async def _forward(self, conn: asyncssh.SSHClientConnection, name: str, target: Target) -> None:
        """``tcpip-forward`` the name; again on the same connection, it replaces the relay's registration."""
        try:
            listener = await conn.create_server(self._acceptor(name, target), name, port_of(name))
        except asyncssh.ChannelListenError:
            raise Forbidden(f"relay refused to publish {name} (no right, or held by another)") from None
        self._listeners[name] = listener
        self.log.info("published %s", name)

    # -- renewal -----------------------------------------------------------------------------------------

    async def _renew_forever(self) -> None:
        """Renew each source's rights when due, one at a time, while the link is up."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            self._wake.clear()
            conn = self._conn if self._up.is_set() else None
            leases = list(self._leases.items()) if conn is not None else []
            if conn is None or not leases:
                await self._wake.wait()
                continue
            key, lease = min(leases, key=lambda item: item[1].due)
            delay = lease.due - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if math.isinf(delay) else delay):
                        await self._wake.wait()
                continue
            await self._renew(conn, key, lease)

    async def _renew(self, conn: asyncssh.SSHClientConnection, key: object, lease: Lease) -> None:
        """Grant a fresh token from the lease's source; on failure log (once) and retry with backoff."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RENEW_TIMEOUT):
                token = await lease.fetch()
                fetched = loop.time()
                await self._grant(conn, token)
        except Exception as exc:  # the source is the caller's code, the relay may refuse: the link stays
            backoff = lease.failed(loop.time())
            if self._conn is not conn or conn.is_closed():
                return  # the link went down: restoring the next connection grants afresh
            what = self._describe(key)
            if lease.failures == 1:  # once as a warning: a server down for an hour is one line
                self.log.warning("renewing %s failed (retrying with backoff): %s", what, exc)
            else:
                self.log.debug(
                    "renewing %s failed %s times (next try in %.1fs): %s", what, lease.failures, backoff, exc
                )
            return
        if self._conn is not conn or self._leases.get(key) is not lease:
            return  # reconnected or forgotten meanwhile: that path granted afresh
        self._leases[key] = Lease.of(lease.fetch, token, fetched)
        if lease.failures:
            self.log.info("renewed %s after %s failures", self._describe(key), lease.failures)
        # A late renewal may come after the relay dropped the rights and withdrew names: forward them again.
        await self._republish(conn, key, everything=lease.late(fetched))

    async def _republish(self, conn: asyncssh.SSHClientConnection, key: object, *, everything: bool) -> None:
        """Forward again the names this source's rights cover: all of them, or those not published now.

        Forwarding a name again on the same connection replaces our own registration on the relay,
        without a moment where the name is unpublished.
        """
        async with self._lock:
            for name, (target, grant) in list(self._published.items()):
                if self._conn is not conn:
                    return
                if (key is self._tickets or grant is key) and (everything or name not in self._listeners):
                    try:
                        await self._best_effort(f"publish {name}", self._forward(conn, name, target))
                    except (OSError, asyncssh.Error):
                        return  # the link broke: restoring the next connection publishes everything

    def _describe(self, key: object) -> str:
        if key is self._tickets:
            return "the link ticket"
        names = [n for n, (_, g) in self._published.items() if g is key]
        names += [n for n, g in self._allowed.items() if g is key]
        return "the grant for " + (", ".join(sorted(set(names))) or "nothing")

    def _forget_unused(self) -> None:
        """Stop renewing sources no name uses any more."""
        used: set[object] = {
            self._tickets,
            *self._allowed.values(),
            *(g for _, g in self._published.values()),
        }
        for key in [k for k in self._leases if k not in used]:
            del self._leases[key]

    def _acceptor(self, name: str, target: Target) -> TCPListenerFactory[bytes]:
        """The session factory for forwarded connections to ``name``: connect the target, then splice."""
        traffic = self._traffic.setdefault(name, Traffic())
        log = Tagged(logger, f"link name={name}")

        async def accept(orig_host: str, orig_port: int) -> asyncssh.SSHTCPSession[bytes]:
            try:
                local = await asyncio.wait_for(target(), REQUEST_TIMEOUT)
            except Exception as exc:  # refuse the channel, whatever the target's failure is
                log.warning("local service unreachable: %s", exc)
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_CONNECT_FAILED, f"{name}: service unreachable"
                ) from None

            async def run(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
                await splice((reader, writer), local, traffic)

            return SSHTCPStreamSession[bytes](run)

        return accept


def _checked(name: str) -> str:
    """``name`` lowercased, after checking it is a valid relay name (ValueError otherwise)."""
    name = name.lower()
    port_of(name)
    return name


async def serve_local(
    link: RelayLink, name: str, *, host: str = "127.0.0.1", port: int = 0, path: Path | None = None
) -> asyncio.AbstractServer:
    """Accept local TCP (or Unix-socket, when ``path``) connections and splice each to ``link.open(name)``."""
    name = _checked(name)
    log = Tagged(logger, f"link name={name}")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            far = await link.open(name)
        except XWError as exc:
            log.warning("local connection dropped: %s", exc.reason)
            writer.close()
            return
        await splice((reader, writer), far)

    if path is not None:
        return await asyncio.start_unix_server(handle, path=str(path))
    return await asyncio.start_server(handle, host, port)
