"""The relay's policy end to end: a real relay on 127.0.0.1:0, real links, local echo servers."""

from __future__ import annotations

import asyncio
import os

import asyncssh
import pytest

from common.errors import Forbidden, NotFound, TransportError
from proxy.endpoints import RelayLink, Ticket
from proxy.tickets import TicketError

pytestmark = pytest.mark.timeout(30)


async def test_publish_and_connect_are_byte_exact_both_ways(grid, echo_port) -> None:
    name = grid.name()
    publisher = await grid.link(f"publish:{name}", sub="worker-1")
    await publisher.publish(name, grid.target(echo_port), grid.grants(f"publish:{name}", sub="worker-1"))
    client = await grid.link(f"connect:{name}", sub="user-1")
    payload = os.urandom(1 << 20)

    reader, writer = await client.open(name)
    assert await grid.roundtrip(reader, writer, payload) == payload

    n = len(payload)
    assert client.stats(name) == (n, n)  # connector: bytes read back, bytes sent
    await _eventually(lambda: grid.relay.stats(name) == (n, n) and publisher.stats(name) == (n, n))
    assert grid.relay.names() == [name]


async def test_names_are_lowercased(grid, echo_port) -> None:
    name = grid.name()
    publisher = await grid.link(f"publish:{name}")
    await publisher.publish(name.upper(), grid.target(echo_port), grid.grants())
    client = await grid.link(f"connect:{name}", sub="user-1")
    reader, writer = await client.open(name.upper())
    assert await grid.roundtrip(reader, writer, b"hello") == b"hello"


async def test_connecting_needs_the_connect_scope(grid, echo_port) -> None:
    name = grid.name()
    publisher = await grid.link(f"publish:{name}")
    await publisher.publish(name, grid.target(echo_port), grid.grants())
    stranger = await grid.link(f"connect:{grid.name()}", sub="user-2")
    with pytest.raises(Forbidden, match="not allowed to connect"):
        await stranger.open(name)
    assert grid.relay.stats(name) == (0, 0)


async def test_allow_grants_connect_rights_on_a_live_link(grid, echo_port) -> None:
    name = grid.name()
    publisher = await grid.link(f"publish:{name}")
    await publisher.publish(name, grid.target(echo_port), grid.grants())
    client = await grid.link(sub="user-1")
    with pytest.raises(Forbidden):
        await client.open(name)
    await client.allow(name, grid.grants(f"connect:{name}", sub="user-1"))
    reader, writer = await client.open(name)
    assert await grid.roundtrip(reader, writer, b"granted") == b"granted"


async def test_an_unpublished_name_is_not_found(grid) -> None:
    name = grid.name()
    client = await grid.link(f"connect:{name}", sub="user-1")
    with pytest.raises(NotFound, match="not published"):
        await client.open(name, timeout=0.5)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda s: type(s)().token([]), "signature"),
        (lambda s: s.token([], ttl=-60), "expired"),
        (lambda s: _tamper(s.token(["connect:x"])), "signature"),
        (lambda s: s.token([], scope=["publish:x"]), "'link'"),
    ],
    ids=["forged", "expired", "tampered", "no-link-scope"],
)
async def test_bad_tickets_are_refused_at_authentication(grid, token, reason) -> None:
    async def tickets() -> Ticket:
        return Ticket(grid.address, grid.relay.host_key_line, token(grid.signer))

    link = RelayLink(tickets)
    with pytest.raises(TicketError, match="refused the ticket") as info:
        await link.start()
    assert reason in info.value.reason
    await link.aclose()


async def test_a_wrong_host_key_is_refused(grid) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode()

    async def tickets() -> Ticket:
        return Ticket(grid.address, other, grid.signer.token([]))

    link = RelayLink(tickets)
    with pytest.raises(TransportError, match="host key"):
        await link.start()
    await link.aclose()


async def test_an_unreachable_relay_is_a_transport_error(grid) -> None:
    async def tickets() -> Ticket:
        return Ticket("127.0.0.1:1", None, grid.signer.token([]))

    link = RelayLink(tickets)
    with pytest.raises(TransportError, match="unreachable"):
        await link.start()
    await link.aclose()


async def test_publishing_needs_the_publish_scope_for_that_name(grid, echo_port) -> None:
    name = grid.name(8080)
    link = await grid.link(f"publish:{grid.name(8080)}")
    with pytest.raises(Forbidden, match="refused to publish"):
        await link.publish(name, grid.target(echo_port), grid.grants())
    # A grant for another name (or another port of the same job) does not help.
    other_port = name.rsplit("-", 1)[0] + "-8081"
    with pytest.raises(Forbidden, match="refused to publish"):
        await link.publish(name, grid.target(echo_port), grid.grants(f"publish:{other_port}"))
    assert grid.relay.names() == []
    # The right grant does.
    await link.publish(name, grid.target(echo_port), grid.grants(f"publish:{name}"))
    assert grid.relay.names() == [name]


async def test_a_grant_with_a_bad_ticket_is_refused_with_a_reason(grid, echo_port) -> None:
    name = grid.name()
    link = await grid.link()

    async def forged() -> str:
        return type(grid.signer)().token([f"publish:{name}"])

    with pytest.raises(TicketError, match="grant refused: ticket signature"):
        await link.publish(name, grid.target(echo_port), forged)
    assert grid.relay.names() == []


async def test_grant_exec_protocol(grid) -> None:
    """The raw conversation: exit 0 on success; exit 1 and one line on stderr otherwise."""
    token = grid.signer.token([])
    async with asyncssh.connect(
        "127.0.0.1", grid.relay.port, username="xw", password=token, known_hosts=None, config=None
    ) as conn:
        ok = await conn.run(f"grant {grid.signer.token(['connect:x'])}")
        assert (ok.exit_status, ok.stderr) == (0, "")
        bad = await conn.run(f"grant {grid.signer.token([], ttl=-60)}")
        assert bad.exit_status == 1
        assert bad.stderr == "grant refused: ticket expired\n"
        usage = await conn.run("ls /")
        assert (usage.exit_status, usage.stderr) == (1, "usage: grant <ticket>\n")


async def test_the_relay_user_must_be_xw(grid) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            "127.0.0.1",
            grid.relay.port,
            username="root",
            password=grid.signer.token([]),
            known_hosts=None,
            config=None,
        )


async def test_publishing_needs_the_names_own_port(grid, echo_port) -> None:
    name = grid.name(8080)
    token = grid.signer.token([f"publish:{name}"])
    async with asyncssh.connect(
        "127.0.0.1", grid.relay.port, username="xw", password=token, known_hosts=None, config=None
    ) as conn:
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port(name, 9999, "127.0.0.1", echo_port)
        listener = await conn.forward_remote_port(name, 8080, "127.0.0.1", echo_port)
        assert grid.relay.names() == [name]
        listener.close()
        await listener.wait_closed()
        await _eventually(lambda: grid.relay.names() == [])  # cancel-tcpip-forward unpublishes


async def test_another_connection_cannot_take_a_published_name(grid, echo_port) -> None:
    name = grid.name()
    owner = await grid.link(f"publish:{name}", sub="worker-1")
    await owner.publish(name, grid.target(echo_port), grid.grants())
    thief = await grid.link(f"publish:{name}", sub="worker-2")
    with pytest.raises(Forbidden, match="refused to publish"):
        await thief.publish(name, grid.target(echo_port), grid.grants())
    client = await grid.link(f"connect:{name}", sub="user-1")
    reader, writer = await client.open(name)
    assert await grid.roundtrip(reader, writer, b"still the owner") == b"still the owner"
    assert owner.stats(name)[0] == len(b"still the owner")
    assert thief.stats(name) == (0, 0)


async def test_the_same_publisher_replaces_its_stale_registration(grid, echo_port) -> None:
    name = grid.name()
    stale = await grid.link(f"publish:{name}", sub="worker-1")
    await stale.publish(name, grid.target(echo_port), grid.grants())
    fresh = await grid.link(f"publish:{name}", sub="worker-1")  # say the old TCP connection is half-dead
    await fresh.publish(name, grid.target(echo_port), grid.grants())
    client = await grid.link(f"connect:{name}", sub="user-1")
    reader, writer = await client.open(name)
    assert await grid.roundtrip(reader, writer, b"new") == b"new"
    assert (stale.stats(name)[0], fresh.stats(name)[0]) == (0, 3)
    await stale.aclose()  # the stale connection ending must not take the name away from the fresh one
    await asyncio.sleep(0.1)
    assert grid.relay.names() == [name]


async def test_closing_or_unpublishing_withdraws_the_name(grid, echo_port) -> None:
    first, second = grid.name(), grid.name()
    link = await grid.link(f"publish:{first}", f"publish:{second}")
    await link.publish(first, grid.target(echo_port), grid.grants())
    await link.publish(second, grid.target(echo_port), grid.grants())
    assert grid.relay.names() == sorted([first, second])
    await link.unpublish(first)
    await _eventually(lambda: grid.relay.names() == [second])
    await link.aclose()
    await _eventually(lambda: grid.relay.names() == [])


async def test_a_dead_local_service_refuses_the_channel(grid) -> None:
    name = grid.name()
    publisher = await grid.link(f"publish:{name}")
    await publisher.publish(name, grid.target(1), grid.grants())  # nothing listens on port 1
    client = await grid.link(f"connect:{name}", sub="user-1")
    with pytest.raises(NotFound, match="service unreachable"):
        await client.open(name, timeout=0.3)


async def test_a_hundred_concurrent_connections_through_one_name(grid, echo_port) -> None:
    name = grid.name()
    publisher = await grid.link(f"publish:{name}")
    await publisher.publish(name, grid.target(echo_port), grid.grants())
    client = await grid.link(f"connect:{name}", sub="user-1")
    payloads = [os.urandom(16384 + i * 97) for i in range(100)]

    async def one(payload: bytes) -> bytes:
        reader, writer = await client.open(name)
        return await grid.roundtrip(reader, writer, payload)

    assert await asyncio.gather(*(one(p) for p in payloads)) == payloads
    total = sum(map(len, payloads))
    assert client.stats(name) == (total, total)
    await _eventually(lambda: grid.relay.stats(name) == (total, total))
    await _eventually(lambda: publisher.stats(name) == (total, total))


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    flipped = "A" if signature[5] != "A" else "B"
    return f"{header}.{payload}.{signature[:5]}{flipped}{signature[6:]}"


async def _eventually(check, timeout: float = 5.0) -> None:
    """Wait until ``check()`` holds (counters settle after the last byte has been echoed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
