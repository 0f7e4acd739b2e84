"""Fixtures: a ticket signer like the server's, a real relay on 127.0.0.1 port 0, links, local services."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncssh
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from proxy.endpoints import RelayLink, Target, Ticket
from proxy.relay import Relay


@dataclass
class Signer:
    """Signs relay tickets the way the server does."""

    key: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256"))

    @property
    def public_pem(self) -> bytes:
        return self.key.as_pem(private=False)

    def token(self, scopes: Iterable[str], *, sub: str = "host-1", ttl: float = 300, **over: Any) -> str:
        """A ticket for ``link`` and ``scopes``; ``over`` replaces claims (None leaves a claim out).

        An int ``ttl`` gives whole-second times as the server does; a float one, exact times (iat = now,
        exp = now + ttl) for tests where a ticket must last a precise, short while.
        """
        now: float = time.time() if isinstance(ttl, float) else int(time.time())
        claims = {
            "iss": "xwhep",
            "sub": sub,
            "aud": "relay",
            "iat": now,
            "nbf": int(now) - 5,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "scope": ["link", *scopes],
            **over,
        }
        return jwt.encode({"alg": "ES256"}, {k: v for k, v in claims.items() if v is not None}, self.key)


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="session")
def host_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture
async def relay(signer: Signer, host_key: asyncssh.SSHKey) -> AsyncIterator[Relay]:
    server = Relay(signer.public_pem, host_key)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.aclose()


@dataclass
class Grid:
    """Makes tickets and links against one relay, and closes what it made."""

    signer: Signer
    relay: Relay
    links: list[RelayLink] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.relay.port}"

    def tickets(self, *scopes: str, sub: str = "host-1", **over: Any) -> Callable[[], Awaitable[Ticket]]:
        async def source() -> Ticket:
            return Ticket(self.address, self.relay.host_key_line, self.signer.token(scopes, sub=sub, **over))

        return source

    def grants(self, *scopes: str, sub: str = "host-1", **over: Any) -> Callable[[], Awaitable[str]]:
        async def source() -> str:
            return self.signer.token(scopes, sub=sub, **over)

        return source

    async def link(self, *scopes: str, sub: str = "host-1", ttl: float = 300, **kwargs: Any) -> RelayLink:
        link = RelayLink(self.tickets(*scopes, sub=sub, ttl=ttl), label=sub, **kwargs)
        self.links.append(link)
        await link.start()
        return link

    def ssh(self, token: str, **options: Any) -> Any:
        """A raw asyncssh connection to the relay (``async with``), authenticated with ``token``."""
        return asyncssh.connect(
            "127.0.0.1",
            self.relay.port,
            username="xw",
            password=token,
            known_hosts=None,
            config=None,
            **options,
        )

    @staticmethod
    async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``check()`` holds, polling; fail if it does not within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not check():
            assert loop.time() < deadline, "condition not reached in time"
            await asyncio.sleep(0.02)

    @staticmethod
    def target(port: int) -> Target:
        """A Target that connects to 127.0.0.1:port."""

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", port)

        return connect

    @staticmethod
    def name(port: int = 8080, kind: str = "job") -> str:
        return f"{kind}-{uuid.uuid4()}-{port}"

    @staticmethod
    async def roundtrip(reader: Any, writer: Any, payload: bytes) -> bytes:
        """Send ``payload`` (then EOF) while reading everything back; what came back."""

        async def send() -> None:
            view = memoryview(payload)
            for start in range(0, len(payload), 65536):
                writer.write(bytes(view[start : start + 65536]))
                await writer.drain()
            writer.write_eof()

        async def receive() -> bytes:
            parts = []
            while data := await reader.read(65536):
                parts.append(data)
            return b"".join(parts)

        _, received = await asyncio.gather(send(), receive())
        writer.close()
        return received


@pytest.fixture
async def grid(signer: Signer, relay: Relay) -> AsyncIterator[Grid]:
    made = Grid(signer, relay)
    try:
        yield made
    finally:
        await asyncio.gather(*(link.aclose() for link in made.links))


@pytest.fixture
async def strict_grid(signer: Signer, host_key: asyncssh.SSHKey) -> AsyncIterator[Grid]:
    """A grid whose relay allows no clock skew: a ticket, and what it grants, ends exactly at its exp."""
    server = Relay(signer.public_pem, host_key, leeway=0)
    await server.start("127.0.0.1", 0)
    made = Grid(signer, server)
    try:
        yield made
    finally:
        await asyncio.gather(*(link.aclose() for link in made.links))
        await server.aclose()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
