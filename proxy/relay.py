"""The relay: an SSH server trusting only tickets; policy in ``RelayPolicy`` hooks, wiring in ``Relay``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import asyncssh
from asyncssh.stream import SSHTCPStreamSession

from common.config import write_private
from proxy.algorithms import ENCRYPTION_ALGS, HOST_KEY_ALG, KEX_ALGS, MAC_ALGS
from proxy.logs import Tagged
from proxy.replay import MAX_REMEMBERED, SpentTickets
from proxy.splice import Traffic, splice
from proxy.tickets import CONNECT, LEEWAY, LINK, PUBLISH, Claims, TicketError, port_of, verify

logger = logging.getLogger(__name__)

USERNAME = "xw"
KEEPALIVE_INTERVAL = 15.0  # seconds between keepalives; a peer missing KEEPALIVE_COUNT_MAX of them is dropped
KEEPALIVE_COUNT_MAX = 3
LOGIN_TIMEOUT = 30.0
BRIDGE_TIMEOUT = 15.0  # how long a publisher may take to accept a forwarded-tcpip channel
# Expiry timers fire this much after a scope's end: asyncio may run a timer a clock tick early, and
# a sweep that finds nothing expired yet would only re-arm itself.
EXPIRY_SLACK = 0.05


class HostKeyError(ValueError):
    """A relay host key that is not ed25519 (the only host key algorithm the relay offers)."""


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """The relay's ed25519 host key from ``path`` (created 0600 if missing); keeps ``path``.pub up to date."""
    if path.exists():
        key = asyncssh.read_private_key(path)
        _check_host_key(key)
    else:
        key = asyncssh.generate_private_key(HOST_KEY_ALG)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, key.export_private_key().decode())
    pub = path.with_name(path.name + ".pub")
    line = public_key_line(key) + "\n"
    if not pub.exists() or pub.read_text() != line:
        write_private(pub, line, 0o644)
    return key


def public_key_line(key: asyncssh.SSHKey) -> str:
    """The public half of ``key`` in OpenSSH format (what clients pin)."""
    return key.export_public_key("openssh").decode().strip()


def _check_host_key(key: asyncssh.SSHKey) -> None:
    if key.get_algorithm() != HOST_KEY_ALG:
        raise HostKeyError(f"the relay host key must be {HOST_KEY_ALG}, not {key.get_algorithm()}")


class Publication(asyncssh.SSHListener):
    """One published name; asyncssh closes it on cancel-tcpip-forward and when its connection ends."""

    def __init__(self, relay: Relay, owner: RelayPolicy, name: str, port: int) -> None:
        super().__init__()
        self.relay = relay
        self.owner = owner
        self.name = name
        self.port = port

    def get_port(self) -> int:
        return self.port

    def close(self) -> None:
        self.relay.withdraw(self)


class RelayPolicy(asyncssh.SSHServer):
    """What one relay connection may do: ticket authentication, grants, publish and connect decisions.

    Each scope lasts as long as the ticket that granted it (exp + leeway; a later grant extends it).
    One timer per connection, armed for the earliest end, drops lapsed scopes: then publications
    whose ``publish`` scope is gone are withdrawn, and without ``link`` the connection is closed.
    """

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._conn: asyncssh.SSHServerConnection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.subject: str | None = None
        self.scopes: dict[str, float] = {}  # scope -> until (epoch seconds)
        self.log = Tagged(logger, "relay")

    # -- connection and authentication ------------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        host, port = (conn.get_extra_info("peername") or ("?", 0))[:2]
        self.log = Tagged(logger, f"relay peer={host}:{port}")
        self._relay.attach(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.log.info("connection closed%s", f": {exc}" if exc else "")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._relay.detach(self)

    def begin_auth(self, username: str) -> bool:
        return True  # always authenticate, and only with a ticket

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        if username != USERNAME:
            return self._refuse(f"unknown user {username!r} (the relay user is {USERNAME!r})")
        try:
            claims = self.check(password)
        except TicketError as exc:
            return self._refuse(exc.reason)
        self.subject = claims.subject
        self._take(claims)
        self.log.info("authenticated sub=%s scopes=%s", claims.subject, sorted(claims.scopes))
        return True

    def _refuse(self, reason: str) -> bool:
        """Log and tell the client why (SSH has no reason field for a failed password, a banner does)."""
        self.log.warning("authentication refused: %s", reason)
        self._relay.counts.auth_refusals += 1
        if self._conn is not None:
            self._conn.send_auth_banner(reason + "\n")
        return False

    def check(self, token: str) -> Claims:
        """The claims of a ticket good for this relay (valid, ``link`` in scope, never used before).

        Using it is the last check: a ticket refused for another reason is not spent.
        """
        claims = self._relay.verify(token)
        if LINK not in claims.scopes:
            raise TicketError(f"ticket has no {LINK!r} scope")
        self._relay.spend(claims)
        return claims

    def grant(self, token: str) -> set[str]:
        """Add (or extend) a further ticket's scopes on this connection; the new ones (TicketError if not)."""
        claims = self.check(token)
        added = self._take(claims)
        if added:
            self.log.info("granted %s", sorted(added))
        else:
            self.log.debug("renewed %s", sorted(claims.scopes))
        return added

    def holds(self, scope: str) -> bool:
        """Whether ``scope`` is granted and has not expired yet (no matter whether the sweep ran)."""
        return self.scopes.get(scope, 0.0) > time.time()

    def _take(self, claims: Claims) -> set[str]:
        """Hold the ticket's scopes until it expires (extending those held already); the new ones."""
        until = claims.expires + self._relay.leeway
        now = time.time()
        added = {scope for scope in claims.scopes if self.scopes.get(scope, 0.0) <= now}
        for scope in claims.scopes:
            self.scopes[scope] = max(self.scopes.get(scope, 0.0), until)
        self._arm()
        return added

    def _arm(self) -> None:
        """(Re)schedule the sweep for the earliest scope end."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.scopes:
            delay = max(min(self.scopes.values()) - time.time(), 0.0) + EXPIRY_SLACK
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        """Drop lapsed scopes; withdraw what they allowed; close the connection once ``link`` is gone."""
        self._timer = None
        now = time.time()
        lapsed = sorted(scope for scope, until in self.scopes.items() if until <= now)
        for scope in lapsed:
            del self.scopes[scope]
        if lapsed:
            self.log.info("expired (not renewed): %s", lapsed)
        if LINK not in self.scopes:
            self.log.info("closing the connection: its tickets expired")
            if self._conn is not None:
                self._conn.disconnect(asyncssh.DISC_BY_APPLICATION, "relay ticket expired (not renewed)")
            return
        self._relay.expire(self)
        self._arm()

    # -- publish (tcpip-forward) and connect (direct-tcpip) ---------------------------------------------

    def server_requested(self, listen_host: str, listen_port: int) -> bool | asyncssh.SSHListener:
        name = listen_host.lower()
        if not self.holds(PUBLISH + name):
            self.log.warning("publish %s refused: no %s%s in scope", name, PUBLISH, name)
            return False
        if not _has_port(name, listen_port):
            self.log.warning("publish %s refused: port %s is not the name's port", name, listen_port)
            return False
        publication = self._relay.publish(self, name, listen_port)
        return publication if publication is not None else False

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        name = dest_host.lower()
        if not self.holds(CONNECT + name):
            self.log.warning("connect %s refused: no %s%s in scope", name, CONNECT, name)
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"not allowed to connect to {name}"
            )
        publication = self._relay.publisher(name)
        if publication is None or publication.port != dest_port:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, f"{name} is not published")
        return self._relay.bridge(publication, orig_host, orig_port)

    def session_requested(self) -> asyncssh.stream.SSHServerSessionFactory:
        return self._exec

    async def _exec(
        self, stdin: asyncssh.SSHReader[str], stdout: asyncssh.SSHWriter[str], stderr: asyncssh.SSHWriter[str]
    ) -> None:
        """Run ``grant <ticket>``: exit 0, or 1 with a one-line reason on stderr."""
        channel = cast(asyncssh.SSHServerChannel[str], stdout.channel)
        verb, _, token = (channel.get_command() or "").strip().partition(" ")
        status = 1
        if verb != "grant" or not token.strip():
            stderr.write("usage: grant <ticket>\n")
        else:
            try:
                self.grant(token.strip())
                status = 0
            except TicketError as exc:
                self.log.warning("grant refused: %s", exc.reason)
                stderr.write(f"grant refused: {exc.reason}\n")
        channel.exit(status)

    # -- wiring ------------------------------------------------------------------------------------------

    async def open_forwarded(self, name: str, port: int, orig_host: str, orig_port: int) -> _Streams:
        """A forwarded-tcpip channel to this (publishing) connection's client."""
        if self._conn is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "publisher is gone")
        reader, writer = await self._conn.open_connection(name, port, orig_host, orig_port)
        return reader, writer

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    async def wait_closed(self) -> None:
        if self._conn is not None:
            await self._conn.wait_closed()


_Streams = tuple[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]]


def _has_port(name: str, port: int) -> bool:
    try:
        return port_of(name) == port
    except ValueError:
        return False


@dataclass
class RelayCounts:
    """What the relay counts for its metrics (proxy/metrics.py reads them at scrape time)."""

    traffic: Traffic = field(default_factory=Traffic)  # bytes through every tunnel (in: to publishers)
    connections: int = 0  # SSH connections accepted since start
    auth_refusals: int = 0  # tickets refused at authentication
    tunnels: int = 0  # tunnels (connector <-> publisher splices) opened since start
    tunnels_open: int = 0


class Relay:
    """The relay server: owns the listening socket, the registry name -> publisher, and per-name counters."""

    def __init__(
        self,
        verify_key_pem: bytes,
        host_key: asyncssh.SSHKey,
        *,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        leeway: int = LEEWAY,
        max_tickets: int = MAX_REMEMBERED,
    ) -> None:
        _check_host_key(host_key)
        self._verify_key = verify_key_pem
        self.host_key = host_key
        self._keepalive = keepalive_interval
        self.leeway = leeway  # seconds a ticket (and what it granted) outlives its exp: clock skew
        self._spent = SpentTickets(max_tickets)
        self._names: dict[str, Publication] = {}
        self._traffic: dict[str, Traffic] = {}
        self._policies: set[RelayPolicy] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self.counts = RelayCounts()
        self.port = 0

    @property
    def host_key_line(self) -> str:
        """The relay's public host key in OpenSSH format."""
        return public_key_line(self.host_key)

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port); the bound port."""
        self._acceptor = await asyncssh.listen(
            host,
            port,
            server_factory=lambda: RelayPolicy(self),
            server_host_keys=[self.host_key],
            config=None,
            kex_algs=KEX_ALGS,
            encryption_algs=ENCRYPTION_ALGS,
            mac_algs=MAC_ALGS,
            keepalive_interval=self._keepalive,
            keepalive_count_max=KEEPALIVE_COUNT_MAX,
            login_timeout=LOGIN_TIMEOUT,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            line_editor=False,
        )
        self.port = self._acceptor.get_port()
        logger.info("[relay] listening on %s:%s", host, self.port)
        return self.port

    async def aclose(self) -> None:
        """Stop listening and close every connection (publishers' names go with them)."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        policies = list(self._policies)
        for policy in policies:
            policy.close()
        await asyncio.gather(*(p.wait_closed() for p in policies), return_exceptions=True)
        logger.info("[relay] closed")

    def verify(self, token: str) -> Claims:
        """The claims of a ticket signed by the server (TicketError otherwise)."""
        return verify(token, self._verify_key, leeway=self.leeway)

    def spend(self, claims: Claims) -> None:
        """Accept a verified ticket once on this relay (TicketError "ticket already used" the next time)."""
        self._spent.spend(claims.jti, claims.expires + self.leeway)

    def stats(self, name: str) -> tuple[int, int]:
        """(bytes_in: connectors -> publisher, bytes_out: publisher -> connectors) through ``name``."""
        traffic = self._traffic.get(name.lower())
        return traffic.totals() if traffic else (0, 0)

    def names(self) -> list[str]:
        """The names published now."""
        return sorted(self._names)

    # -- registry ----------------------------------------------------------------------------------------

    def attach(self, policy: RelayPolicy) -> None:
        self._policies.add(policy)
        self.counts.connections += 1

    def connections(self) -> int:
        """SSH connections open now."""
        return len(self._policies)

    def detach(self, policy: RelayPolicy) -> None:
        self._policies.discard(policy)
        for publication in [p for p in self._names.values() if p.owner is policy]:
            self.withdraw(publication)

    def publish(self, owner: RelayPolicy, name: str, port: int) -> Publication | None:
        """Register ``name`` for ``owner``; None if another publisher holds it."""
        held = self._names.get(name)
        if held is not None and held.owner is not owner:
            if owner.subject is None or held.owner.subject != owner.subject:
                owner.log.warning("publish %s refused: held by another connection", name)
                return None
            owner.log.info("publish %s: replaces the earlier registration of sub=%s", name, owner.subject)
        publication = Publication(self, owner, name, port)
        self._names[name] = publication
        self._traffic.setdefault(name, Traffic())
        owner.log.info("published %s", name)
        return publication

    def withdraw(self, publication: Publication, why: str = "") -> None:
        """Unpublish, unless the name has since been taken over by a newer registration."""
        if self._names.get(publication.name) is publication:
            del self._names[publication.name]
            publication.owner.log.info("unpublished %s%s", publication.name, why)

    def expire(self, owner: RelayPolicy) -> None:
        """Withdraw ``owner``'s publications whose publish scope has lapsed (spliced channels go on)."""
        for publication in [p for p in self._names.values() if p.owner is owner]:
            if not owner.holds(PUBLISH + publication.name):
                self.withdraw(publication, ": its publish scope expired")

    def publisher(self, name: str) -> Publication | None:
        return self._names.get(name)

    async def bridge(
        self, publication: Publication, orig_host: str, orig_port: int
    ) -> asyncssh.SSHTCPSession[bytes]:
        """Open the publisher's side, then hand asyncssh a session that splices the connector's side to it."""
        name = publication.name
        try:
            far = await asyncio.wait_for(
                publication.owner.open_forwarded(name, publication.port, orig_host, orig_port), BRIDGE_TIMEOUT
            )
        except asyncssh.ChannelOpenError as exc:
            raise asyncssh.ChannelOpenError(exc.code, f"{name}: {exc.reason}") from None
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            publication.owner.log.warning("bridge to %s failed: %s", name, exc)
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"{name}: publisher unreachable"
            ) from None
        traffic = self._traffic.setdefault(name, Traffic())
        counts = self.counts

        async def run(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]) -> None:
            counts.tunnels += 1
            counts.tunnels_open += 1
            try:
                await splice((reader, writer), far, traffic, counts.traffic)
            finally:
                counts.tunnels_open -= 1

        return SSHTCPStreamSession[bytes](run)
