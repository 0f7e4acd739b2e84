"""Connection handling under abuse: idle sockets, trickled heads, stalled bodies, a full table.

Every test runs a real server (``grid_factory``) with short timeouts and talks to it with raw TCP or
TLS streams, sending exactly the bytes an attacker would. Bounds on waiting are generous liveness bounds,
not speed assertions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import resource
import socket
import ssl
import time
from asyncio import sslproto
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from common.schemas import DataIn
from server.bodytimeout import BODY_TIMEOUT, BodyTimeout, IdleLimited
from server.conntable import ConnectionTable, Phase, derive_max_connections
from server.listener import ConnectionLimits, GatedSite
from server.longpoll import LongPollBudget
from server.settings import ServerSettings, load_settings
from server.tlsbuffer import SharedBufferSSLProtocol, shared_buffer_protocol

LIVENESS = 15.0  # seconds a test waits for something that should happen within a second or two
PING = b"GET /api/v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def tls_context(grid: Any) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(grid.settings.ca_cert))


def site_of(grid: Any) -> GatedSite:
    return next(s for s in grid.server.runner.sites if isinstance(s, GatedSite))


async def raw(grid: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", grid.server.port)


async def tls(grid: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", grid.server.port, ssl=tls_context(grid), server_hostname="127.0.0.1"
    )


async def closed_by_server(reader: asyncio.StreamReader) -> None:
    """Return once the server has closed the connection (EOF or reset); bytes sent meanwhile are dropped."""
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, ssl.SSLError):
        pass


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: status, headers (lower-case names), body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def token(grid: Any) -> str:
    tok: str = (await grid.admin.login("admin", grid.admin_cfg.password)).access_token
    return tok


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not bad, [r.getMessage() for r in bad]


# --- timeouts against a real server ---------------------------------------------------------------------


async def test_idle_tcp_connections_close_after_the_handshake_timeout(grid_factory: Any) -> None:
    grid = await grid_factory(handshake_timeout=0.5)
    site = site_of(grid)
    conns = [await raw(grid) for _ in range(20)]
    async with asyncio.timeout(LIVENESS):
        await asyncio.gather(*(closed_by_server(r) for r, _ in conns))
    for _, w in conns:
        w.close()
    assert site.table.totals["gate_expired"] == 20
    assert site.table.count(Phase.GATE) == 0
    assert (await grid.admin.ping()).login == "admin"  # the server itself is fine


async def test_stalled_tls_handshake_is_closed(grid_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    grid = await grid_factory(handshake_timeout=0.5)
    reader, writer = await raw(grid)
    writer.write(b"\x16\x03\x01")  # the start of a TLS record, then nothing
    async with asyncio.timeout(LIVENESS):
        await closed_by_server(reader)
    writer.close()
    not_tls_reader, not_tls = await raw(grid)
    not_tls.write(b"GET / HTTP/1.1\r\n\r\n")  # plain HTTP on the HTTPS port: closed at its first byte
    async with asyncio.timeout(LIVENESS):
        await closed_by_server(not_tls_reader)
    not_tls.close()
    totals = site_of(grid).table.totals
    assert totals["handshake_failed"] == 1 and totals["not_tls"] == 1
    no_tracebacks(caplog)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("server")]


async def test_trickled_request_head_is_closed_after_the_header_timeout(grid_factory: Any) -> None:
    grid = await grid_factory(header_timeout=1.0)
    reader, writer = await tls(grid)
    started = time.monotonic()
    writer.write(b"GET /api/v1/ping HTTP/1.1\r\n")

    async def trickle() -> None:
        for i in range(200):  # one header line every 0.1 s: bytes keep coming
            await asyncio.sleep(0.1)
            writer.write(f"X-Slow-{i}: x\r\n".encode())

    sender = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(LIVENESS):
            await closed_by_server(reader)
    finally:
        sender.cancel()
        writer.close()
    assert not sender.done() or sender.cancelled()  # closed while still trickling
    assert time.monotonic() - started >= 0.9
    assert site_of(grid).table.totals["header_timeouts"] == 1


async def test_idle_keepalive_is_closed_after_the_keepalive_timeout(grid_factory: Any) -> None:
    grid = await grid_factory(header_timeout=0.5, keepalive_timeout=2.0)
    bearer = f"Authorization: Bearer {await token(grid)}\r\n".encode()
    ping = PING.replace(b"\r\n\r\n", b"\r\n" + bearer + b"\r\n")
    reader, writer = await tls(grid)
    writer.write(ping)
    assert (await response(reader))[0] == 200
    await asyncio.sleep(1.0)  # idle longer than the header timeout: keep-alive is not a slow head
    writer.write(ping)
    assert (await response(reader))[0] == 200
    idle_since = time.monotonic()
    async with asyncio.timeout(LIVENESS):
        await closed_by_server(reader)
    writer.close()
    assert time.monotonic() - idle_since >= 1.5


async def test_stalled_json_body_ends_with_408(grid_factory: Any) -> None:
    grid = await grid_factory(body_timeout=1.0)
    reader, writer = await tls(grid)
    writer.write(
        b"POST /api/v1/auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"login": "adm'
    )
    async with asyncio.timeout(LIVENESS):
        status, headers, body = await response(reader)
    writer.close()
    assert status == 408
    assert headers["content-type"].startswith("application/problem+json")
    assert b"request-timeout" in body


async def test_stalled_upload_ends_with_408(grid_factory: Any) -> None:
    grid = await grid_factory(body_timeout=1.0)
    data = await grid.admin.create_data(DataIn(name="stalled.bin", size=1 << 20))
    reader, writer = await tls(grid)
    writer.write(
        f"PUT /api/v1/data/{data.uid}/content HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {await token(grid)}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {1 << 20}\r\n\r\n".encode()
        + bytes(100_000)
    )
    async with asyncio.timeout(LIVENESS):
        status, _, body = await response(reader)
    writer.close()
    assert status == 408 and b"request-timeout" in body
    assert list((grid.settings.store_dir / "tmp").iterdir()) == []  # the partial upload is gone


async def test_upload_that_keeps_flowing_is_not_cut(grid_factory: Any) -> None:
    grid = await grid_factory(body_timeout=0.5)
    chunk, count = bytes(range(256)) * 256, 16  # 64 KiB every 0.2 s: 3.2 s, six body timeouts
    content = chunk * count
    sha = hashlib.sha256(content).hexdigest()
    data = await grid.admin.create_data(DataIn(name="slow.bin", size=len(content), sha256=sha))

    async def slowly() -> AsyncIterator[bytes]:
        for _ in range(count):
            await asyncio.sleep(0.2)
            yield chunk

    headers = {
        "Authorization": f"Bearer {await token(grid)}",
        "Content-Type": "application/octet-stream",
        "Content-Length": str(len(content)),
    }
    connector = aiohttp.TCPConnector(ssl=tls_context(grid))
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"{grid.url}/api/v1/data/{data.uid}/content"
        async with session.put(url, data=slowly(), headers=headers) as resp:
            assert resp.status == 200, await resp.text()
    assert (await grid.admin.get_data(data.uid)).sha256 == sha


# --- the cap ---------------------------------------------------------------------------------------


async def test_full_table_evicts_idle_sockets_for_a_real_client(
    grid_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    grid = await grid_factory(max_connections=8, header_timeout=2.0)
    site = site_of(grid)
    idle = [await raw(grid) for _ in range(8)]
    trickler_reader, trickler = await tls(grid)  # a TLS connection sitting on half a request head
    trickler.write(b"GET /api/v1/ping HTTP/1.1\r\n")
    idle += [await raw(grid) for _ in range(40)]  # three times more than fit
    assert (await grid.admin.ping()).login == "admin"
    assert len(site.table) <= 8
    assert site.table.totals["evicted"] >= 40
    async with asyncio.timeout(LIVENESS):
        await closed_by_server(trickler_reader)  # evicted after the gate, or timed out
    for _, w in [*idle, (None, trickler)]:
        assert w is not None
        w.close()
    ours = [r for r in caplog.records if r.name.startswith("server") and r.levelno >= logging.WARNING]
    assert 1 <= len(ours) <= 3, [r.getMessage() for r in ours]
    assert "connection limit: " in ours[0].getMessage() and "max_connections=8" in ours[0].getMessage()
    no_tracebacks(caplog)


async def test_descriptor_exhaustion_pauses_accept_with_one_line(
    grid_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    grid = await grid_factory(max_connections=1000)
    site = site_of(grid)
    await grid.admin.ping()  # open the database and the client's pool before the limit drops
    loop = asyncio.get_running_loop()
    socks = [socket.socket() for _ in range(30)]  # made now: connect() needs no new descriptor
    for s in socks:
        s.setblocking(False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")), hard))
        for s in socks:  # the kernel completes each connection; the server's accept() has no fd left
            await loop.sock_connect(s, ("127.0.0.1", grid.server.port))
        await asyncio.sleep(1.0)  # several accept pauses
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert site.table.totals["accept() EMFILE"] >= 2
    assert (await grid.admin.ping()).login == "admin"  # accepting resumed
    for s in socks:
        s.close()
    ours = [r for r in caplog.records if r.name.startswith("server") and r.levelno >= logging.WARNING]
    assert 1 <= len(ours) <= 3, [r.getMessage() for r in ours]
    assert "accept() EMFILE" in ours[0].getMessage()
    no_tracebacks(caplog)


# --- listeners and the TLS buffer ---------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{"tls_read_buffer": 0}, {"listener": "plain"}])
async def test_other_listener_paths_serve(grid_factory: Any, overrides: dict[str, Any]) -> None:
    grid = await grid_factory(**overrides)
    assert (await grid.admin.ping()).login == "admin"


async def test_connections_share_one_tls_receive_buffer(grid_factory: Any) -> None:
    grid = await grid_factory()
    site = site_of(grid)
    cls = site.tls_protocol
    assert cls is not None and issubclass(cls, SharedBufferSSLProtocol)
    assert cls.max_size == grid.settings.tls_read_buffer
    assert sslproto.SSLProtocol.max_size == 256 * 1024  # the stdlib class is left alone
    bearer = f"Authorization: Bearer {await token(grid)}\r\n".encode()
    conns = [await tls(grid) for _ in range(3)]
    for _, writer in conns:  # requests in flight together through the one buffer all come back right
        writer.write(PING.replace(b"\r\n\r\n", b"\r\n" + bearer + b"\r\n"))
    for reader, _ in conns:
        status, _, body = await response(reader)
        assert status == 200 and b'"admin"' in body
    guards = [g for phase in (Phase.HEAD, Phase.IDLE, Phase.BUSY) for g in site.table._phases[phase]]
    assert len(guards) >= 3
    for guard in guards:  # the private attributes tlsbuffer.py relies on, on the live connections
        tls_protocol = guard._transport._ssl_protocol  # type: ignore[attr-defined]
        assert tls_protocol._ssl_buffer_view is cls.shared
    for _, writer in conns:
        writer.close()


async def test_shared_buffer_only_when_safe() -> None:
    loop = asyncio.get_running_loop()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert shared_buffer_protocol(loop, 0, ctx) is None  # 0: asyncio's per-connection buffer
    assert shared_buffer_protocol(loop, 4096, ctx) is not None  # pytest-asyncio runs a selector loop
    first, second = shared_buffer_protocol(loop, 4096, ctx), shared_buffer_protocol(loop, 4096, ctx)
    assert first is not None and second is not None
    assert first.shared is not second.shared  # one buffer per listener, never across loops


# --- units ----------------------------------------------------------------------------------------------


EVICTED: list[str] = []


class Conn:
    def __init__(self, name: str) -> None:
        self.name, self.phase = name, Phase.HANDSHAKE

    def evict(self) -> None:
        EVICTED.append(self.name)


class FakeGate:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def evict_oldest(self) -> bool:
        if not self.n:
            return False
        self.n -= 1
        EVICTED.append("gate")
        return True


async def test_table_evicts_cheapest_oldest_first_and_never_busy() -> None:
    EVICTED.clear()
    table = ConnectionTable(6)
    table.gate = FakeGate(2)
    for name, phase in (("busy", Phase.BUSY), ("idle", Phase.IDLE), ("head", Phase.HEAD)):
        table.add(Conn(name), phase)
    table.add(Conn("handshake 1"), Phase.HANDSHAKE)
    table.add(Conn("handshake 2"), Phase.HANDSHAKE)
    assert len(table) == 7 and table.count(Phase.GATE) == 2
    for _ in range(6):
        assert table.admit()
        table.add(Conn("new"), Phase.BUSY)
    assert EVICTED == ["gate", "gate", "handshake 1", "handshake 2", "head", "idle"]
    assert not table.admit()  # everything is busy: refuse
    assert table.totals == {"evicted": 6, "refused": 1}
    assert table.snapshot()["busy"] == 7
    table.close()


async def test_table_moves_and_discards() -> None:
    table = ConnectionTable(2)
    a = Conn("a")
    table.add(a, Phase.HANDSHAKE)
    table.move(a, Phase.HEAD)
    assert table.count(Phase.HEAD) == 1 and table.count(Phase.HANDSHAKE) == 0
    assert table.discard(a) and not table.discard(a)
    table.move(a, Phase.IDLE)  # a closed connection's late event changes nothing
    assert len(table) == 0 and table.count(Phase.IDLE) == 0


def test_derived_cap_keeps_a_reserve() -> None:
    assert derive_max_connections(20000) == 18000
    assert derive_max_connections(1024) == 768
    assert derive_max_connections(100) >= 16


def test_longpoll_budget() -> None:
    from common.errors import TooManyRequests

    budget = LongPollBudget(2, retry_after=3)
    with budget.hold(), budget.hold():
        assert budget.waiting == 2
        with pytest.raises(TooManyRequests) as err, budget.hold():
            pass
        assert 3 <= err.value.retry_after <= 6 and err.value.status == 429
    assert budget.waiting == 0 and budget.refused == 1
    with budget.waiting_place() as place:  # a place only once waiting starts, kept for the block
        assert budget.waiting == 0
        place.take()
        place.take()
        assert budget.waiting == 1
        with budget.waiting_place() as second, budget.waiting_place() as third:
            second.take()
            with pytest.raises(TooManyRequests):
                third.take()
        assert budget.waiting == 1
    assert budget.waiting == 0 and budget.refused == 2
    unlimited = LongPollBudget(0)
    assert all(unlimited.try_acquire() for _ in range(10_000))
    with pytest.raises(RuntimeError):
        LongPollBudget(1).release()


async def test_idle_limited_times_out_only_between_chunks() -> None:
    async def chunks(pause: float) -> AsyncIterator[bytes]:
        yield b"a"
        await asyncio.sleep(pause)
        yield b"b"

    assert [c async for c in IdleLimited(chunks(0.01), 1.0)] == [b"a", b"b"]
    with pytest.raises(BodyTimeout):
        _ = [c async for c in IdleLimited(chunks(1.0), 0.05)]
    assert BODY_TIMEOUT.get() is None
    assert [c async for c in IdleLimited(chunks(0.05))] == [b"a", b"b"]  # no limit outside requests


def test_limits_are_checked(template_home: Any) -> None:
    from dataclasses import replace

    base = ServerSettings(home=template_home)
    for bad in (
        replace(base, header_timeout=0),
        replace(base, handshake_timeout=-1),
        replace(base, body_timeout=-1),
    ):
        with pytest.raises(ValueError):
            ConnectionLimits.from_settings(bad)
    assert ConnectionLimits.from_settings(replace(base, body_timeout=0)).body_timeout is None
    assert ConnectionLimits.from_settings(replace(base, max_connections=7)).max_connections == 7


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, template_home: Any) -> None:
    monkeypatch.setenv("XW_MAX_CONNECTIONS", "500")
    monkeypatch.setenv("XW_HEADER_TIMEOUT", "7.5")
    monkeypatch.setenv("XW_MAX_LONGPOLLS", "10")
    monkeypatch.setenv("XW_LISTENER", "plain")
    s = load_settings(template_home)
    assert (s.max_connections, s.header_timeout, s.max_longpolls, s.listener) == (500, 7.5, 10, "plain")
    assert s.keepalive_timeout > 15  # longer than aiohttp clients keep idle connections
    monkeypatch.setenv("XW_LISTENER", "bogus")
    with pytest.raises(ValueError):
        load_settings(template_home)
    assert ServerSettings(home=template_home).listener == "gated"
