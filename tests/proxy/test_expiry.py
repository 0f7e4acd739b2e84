"""Scopes end with their ticket; RelayLink renews its tickets before they end.

The relay here allows no clock skew (leeway 0), so a ticket of ttl T lasts exactly T seconds.
"""

from __future__ import annotations

import asyncio
import logging

import asyncssh
import pytest

from common.errors import NotFound
from proxy.endpoints import RelayLink

pytestmark = pytest.mark.timeout(40)

SHORT = 1.5  # seconds: a short ticket lifetime (a float: exact iat/exp, see Signer.token)


async def test_an_expired_grant_no_longer_allows_connecting_or_publishing(strict_grid, echo_port) -> None:
    grid = strict_grid
    published, fresh = grid.name(), grid.name()
    owner = await grid.link(f"publish:{published}", sub="worker-1")
    await owner.publish(published, grid.target(echo_port), grid.grants())
    loop = asyncio.get_running_loop()
    async with grid.ssh(grid.signer.token([])) as conn:  # its link ticket lasts
        granted = loop.time()
        token = grid.signer.token([f"connect:{published}", f"publish:{fresh}"], ttl=SHORT)
        assert (await conn.run(f"grant {token}")).exit_status == 0
        reader, writer = await conn.open_connection(published, 8080)  # allowed while the grant lasts
        assert await grid.roundtrip(reader, writer, b"in time") == b"in time"

        await asyncio.sleep(max(granted + SHORT - loop.time(), 0) + 0.1)
        with pytest.raises(asyncssh.ChannelOpenError, match="not allowed to connect"):
            await conn.open_connection(published, 8080)
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port(fresh, 8080, "127.0.0.1", echo_port)
        assert fresh not in grid.relay.names()
        # The connection itself lives on (its link ticket has not expired), and a new grant works again.
        assert (await conn.run(f"grant {grid.signer.token([f'connect:{published}'])}")).exit_status == 0
        reader, writer = await conn.open_connection(published, 8080)
        assert await grid.roundtrip(reader, writer, b"renewed") == b"renewed"


async def test_a_publication_is_withdrawn_when_its_scope_expires(strict_grid, echo_port) -> None:
    grid = strict_grid
    name = grid.name()
    async with grid.ssh(grid.signer.token([])) as conn:
        assert (await conn.run(f"grant {grid.signer.token([f'publish:{name}'], ttl=SHORT)}")).exit_status == 0
        await conn.forward_remote_port(name, 8080, "127.0.0.1", echo_port)
        assert grid.relay.names() == [name]
        await grid.eventually(lambda: grid.relay.names() == [], timeout=SHORT + 3)
        client = await grid.link(f"connect:{name}", sub="user-1")
        with pytest.raises(NotFound, match="not published"):
            await client.open(name, timeout=0.3)
        assert not conn.is_closed()  # only the publication went: the link scope still holds


async def test_a_connection_whose_link_ticket_expired_is_closed(strict_grid) -> None:
    grid = strict_grid
    conn = await grid.ssh(grid.signer.token([], ttl=SHORT))
    try:
        await asyncio.wait_for(conn.wait_closed(), SHORT + 3)
    finally:
        conn.close()
    assert conn.is_closed()


async def test_a_later_grant_extends_the_scopes_it_repeats(strict_grid) -> None:
    grid = strict_grid
    loop = asyncio.get_running_loop()
    conn = await grid.ssh(grid.signer.token([], ttl=SHORT))
    try:
        started = loop.time()
        assert (await conn.run(f"grant {grid.signer.token([], ttl=SHORT + 1)}")).exit_status == 0
        await asyncio.sleep(max(started + SHORT - loop.time(), 0) + 0.3)
        assert not conn.is_closed()  # the first ticket has expired, the grant's keeps "link"
        await asyncio.wait_for(conn.wait_closed(), 3)  # until that one expires too
    finally:
        conn.close()


async def test_renewal_keeps_a_tunnel_across_several_ticket_lifetimes(strict_grid, echo_port) -> None:
    grid = strict_grid
    name = grid.name()
    issued: list[str] = []

    def counted(source):
        async def fresh() -> str:
            issued.append(token := await source())
            return token

        return fresh

    publisher = await grid.link(sub="worker-1", ttl=SHORT)
    await publisher.publish(
        name, grid.target(echo_port), counted(grid.grants(f"publish:{name}", sub="worker-1", ttl=SHORT))
    )
    client = await grid.link(sub="user-1", ttl=SHORT)
    await client.allow(name, counted(grid.grants(f"connect:{name}", sub="user-1", ttl=SHORT)))

    loop = asyncio.get_running_loop()
    until = loop.time() + 3 * SHORT
    rounds = 0
    while loop.time() < until:
        reader, writer = await client.open(name, timeout=0)  # no waiting: it must be there right away
        payload = f"round {rounds}".encode()
        assert await grid.roundtrip(reader, writer, payload) == payload
        assert grid.relay.names() == [name]
        rounds += 1
        await asyncio.sleep(0.1)
    assert (publisher.reconnects, client.reconnects) == (0, 0)  # renewed on the same connections
    assert publisher.connected and client.connected
    # Covering 3 lifetimes takes at least 3 tokens per grant source, each a fresh one.
    assert len(issued) == len(set(issued)) >= 2 * 3


async def test_a_failing_renewal_is_logged_once_and_heals(
    strict_grid, echo_port, caplog, monkeypatch
) -> None:
    monkeypatch.setattr("proxy.renewal.RENEW_RETRY_MAX", 0.3)  # retry quickly once the source is back
    grid = strict_grid
    name = grid.name()
    broken = False
    refusals = 0
    good = grid.grants(f"publish:{name}", ttl=SHORT)

    async def flaky() -> str:
        nonlocal refusals
        if broken:
            refusals += 1
            raise RuntimeError("server briefly unavailable")
        return await good()

    publisher = await grid.link()  # a long link ticket: only the publication's grant expires
    await publisher.publish(name, grid.target(echo_port), flaky)
    assert grid.relay.names() == [name]
    caplog.set_level(logging.WARNING, logger="proxy.endpoints")
    broken = True
    await grid.eventually(lambda: grid.relay.names() == [], timeout=SHORT + 3)  # its scope ran out
    await grid.eventually(lambda: refusals >= 3)  # retried, again and again
    assert publisher.connected
    broken = False
    await grid.eventually(lambda: grid.relay.names() == [name], timeout=5)  # granted and published again
    client = await grid.link(f"connect:{name}", sub="user-1")
    reader, writer = await client.open(name)
    assert await grid.roundtrip(reader, writer, b"healed") == b"healed"
    failures = [r for r in caplog.records if "renewing" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert "server briefly unavailable" in failures[0].getMessage()
    assert publisher.reconnects == 0


async def test_a_refused_renewal_does_not_kill_the_link(strict_grid, echo_port) -> None:
    """The relay refuses a bad renewal ticket (here: reused); the link stays up and keeps trying."""
    grid = strict_grid
    name = grid.name()
    tokens = [grid.signer.token([f"publish:{name}"], ttl=SHORT)]

    async def stuck() -> str:
        return tokens[0]  # the same ticket every time: the relay refuses it after the first grant

    link = await grid.link()
    await link.publish(name, grid.target(echo_port), stuck)
    await grid.eventually(lambda: grid.relay.names() == [], timeout=SHORT + 3)
    assert link.connected and link.reconnects == 0
    other = grid.name()  # the link still does what it is asked
    await link.publish(other, grid.target(echo_port), grid.grants(f"publish:{other}"))
    assert grid.relay.names() == [other]


async def test_a_link_whose_ticket_source_fails_is_closed_at_expiry_then_heals(
    strict_grid, echo_port
) -> None:
    grid = strict_grid
    name = grid.name()
    failing = False
    good_ticket, good_grant = grid.tickets(ttl=SHORT), grid.grants(f"publish:{name}", ttl=SHORT)

    async def tickets():
        if failing:
            raise RuntimeError("no ticket now")
        return await good_ticket()

    async def grant() -> str:
        if failing:
            raise RuntimeError("no ticket now")
        return await good_grant()

    link = RelayLink(tickets, label="expiring")
    grid.links.append(link)
    await link.start()
    await link.publish(name, grid.target(echo_port), grant)
    failing = True  # no renewal and no reconnection gets a ticket: the relay closes the connection
    await grid.eventually(lambda: not link.connected, timeout=2 * SHORT + 3)
    assert grid.relay.names() == []
    failing = False
    await grid.eventually(lambda: link.connected and grid.relay.names() == [name], timeout=15)
    assert link.reconnects == 1
