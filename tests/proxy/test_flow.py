"""Flow control and healing: a slow reader holds the sender back; links survive a relay restart."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from proxy.endpoints import RelayLink
from proxy.relay import Relay

pytestmark = pytest.mark.timeout(40)

MiB = 1 << 20
# What may sit between the sender and a reader that does not read: each SSH hop holds at most one
# channel window (2 MiB) per side plus a chunk, and the kernel keeps its loopback socket buffers.
IN_FLIGHT_BOUND = 24 * MiB
RELAY_HELD_BOUND = 8 * MiB  # forwarded by the relay but not yet taken by the publisher


async def test_a_slow_reader_bounds_what_is_buffered(grid) -> None:
    total = 64 * MiB
    gate = asyncio.Event()
    received = hashlib.sha256()
    counted = 0
    finished = asyncio.Event()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal counted
        await gate.wait()  # the consumer is asleep until the test wakes it up
        while data := await reader.read(1 << 18):
            received.update(data)
            counted += len(data)
        writer.close()
        finished.set()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    name = grid.name()
    publisher = await grid.link(f"publish:{name}")
    await publisher.publish(name, grid.target(server.sockets[0].getsockname()[1]), grid.grants())
    client = await grid.link(f"connect:{name}", sub="user-1")
    _, writer = await client.open(name)

    chunk = bytes(range(256)) * 1024  # 256 KiB
    sent = hashlib.sha256()
    written = 0

    async def produce() -> None:
        nonlocal written
        while written < total:
            writer.write(chunk)
            sent.update(chunk)
            written += len(chunk)
            await writer.drain()
        writer.write_eof()

    producer = asyncio.create_task(produce())
    await asyncio.sleep(1.0)
    stalled_at = written
    await asyncio.sleep(0.5)
    assert not producer.done()
    assert written == stalled_at, "drain() did not block: the sender kept writing"
    assert written <= IN_FLIGHT_BOUND
    assert grid.relay.stats(name)[0] - publisher.stats(name)[0] <= RELAY_HELD_BOUND

    gate.set()
    await producer
    await asyncio.wait_for(finished.wait(), 20)
    assert counted == total
    assert received.digest() == sent.digest()
    assert client.stats(name)[1] == total
    assert grid.relay.stats(name)[0] == total
    writer.close()
    server.close()
    await server.wait_closed()


async def test_links_heal_after_a_relay_restart(grid, echo_port) -> None:
    name = grid.name()
    issued: list[str] = []

    def counted(source):
        async def fresh() -> str:
            issued.append(token := await source())
            return token

        return fresh

    publisher = await grid.link(sub="worker-1")  # publish rights come from a grant, as for a new job
    await publisher.publish(
        name, grid.target(echo_port), counted(grid.grants(f"publish:{name}", sub="worker-1"))
    )
    client = await grid.link(sub="user-1")  # connect rights too: both must be re-granted
    await client.allow(name, counted(grid.grants(f"connect:{name}", sub="user-1")))
    reader, writer = await client.open(name)
    assert await grid.roundtrip(reader, writer, b"before") == b"before"

    old = grid.relay
    port = old.port
    await old.aclose()
    await asyncio.sleep(1.0)  # down for a while: the links back off and keep trying
    assert not publisher.connected and not client.connected
    grid.relay = Relay(grid.signer.public_pem, old.host_key)
    try:
        assert await grid.relay.start("127.0.0.1", port) == port
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await client.open(name, timeout=8.0)
        assert await grid.roundtrip(reader, writer, b"after") == b"after"
        assert loop.time() - started < 5.0
        assert (publisher.reconnects, client.reconnects) == (1, 1)
        assert grid.relay.names() == [name]
        assert grid.relay.stats(name) == (5, 5)
        assert len(issued) == len(set(issued)) == 4  # a fresh grant token for each (re)connection
    finally:
        await grid.relay.aclose()
        grid.relay = old


async def test_a_failing_ticket_source_only_delays_the_reconnect(grid, echo_port) -> None:
    name = grid.name()
    failures = 2
    restarted = False
    good = grid.tickets(f"publish:{name}", f"connect:{name}")

    async def flaky():
        nonlocal failures
        if restarted and failures:
            failures -= 1
            raise RuntimeError("server briefly unavailable")
        return await good()

    link = RelayLink(flaky, label="flaky")
    grid.links.append(link)
    await link.start()
    await link.publish(name, grid.target(echo_port), grid.grants())
    old = grid.relay
    await old.aclose()
    restarted = True
    grid.relay = Relay(grid.signer.public_pem, old.host_key)
    try:
        await grid.relay.start("127.0.0.1", old.port)
        reader, writer = await link.open(name, timeout=8.0)
        assert await grid.roundtrip(reader, writer, b"healed") == b"healed"
        assert failures == 0 and link.reconnects == 1
    finally:
        await grid.relay.aclose()
        grid.relay = old
