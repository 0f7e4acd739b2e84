"""xwproxy as a real process, against a real server and a real relay (docs/RELAY.md).

The relay runs in the test's event loop next to the server; it verifies tickets with the server's
DIR/jwt.pub, so the server starts first (its relay address is a port reserved for the relay), then
the relay on that port. The worker's side of a tunnel is played by hand: an admin host claims the
job, and a RelayLink with the host's ticket publishes or connects what the job would.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pytest
from aiohttp import web
from joserfc.jwk import ECKey

from client.api import XWClient
from common.schemas import AppIn, ForwardAddress, HostIn, JobIn, JobOut, TunnelTicket
from proxy.endpoints import RelayLink, Ticket
from proxy.relay import Relay, load_or_create_host_key

pytestmark = pytest.mark.timeout(90)

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery"  # tests.conftest.PASSWORD
ADDRESS = re.compile(r"^proxy-[0-9a-f-]{36}-\d+$")
LINE_TIMEOUT = 30.0
PAYLOAD = os.urandom(700_000)  # served by the local HTTP service, compared byte for byte


def free_port() -> int:
    """A port nobody listens on now (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- a grid with a real relay ---------------------------------------------------------------------


@dataclass
class Tunnels:
    grid: Any
    relay: Relay | None
    tmp: Path

    def conf(self, login: str) -> Path:
        path: Path = self.grid.write_client_conf(self.tmp / f"{login}.conf", login=login, password=PASSWORD)
        return path


async def start_tunnels(
    grid_factory: Any,
    tmp: Path,
    *,
    relay: bool = True,
    verify_pem: bytes | None = None,
    pinned: str | None = None,
) -> Tunnels:
    """A server whose relay is a real one on a reserved port (``relay=False``: nobody listens there).

    ``verify_pem`` gives the relay another key than the server's; ``pinned`` another host key to pin.
    """
    port = free_port()
    key = load_or_create_host_key(tmp / "relay_key")  # writes relay_key.pub, what the server hands out
    pub = tmp / "relay_key.pub"
    if pinned is not None:
        pub = tmp / "pinned.pub"
        pub.write_text(pinned + "\n")
    grid = await grid_factory(relays=f"127.0.0.1:{port}", relay_host_key=str(pub))
    if not relay:
        return Tunnels(grid, None, tmp)
    server = Relay(verify_pem or (grid.home / "jwt.pub").read_bytes(), key)
    await server.start("127.0.0.1", port)
    return Tunnels(grid, server, tmp)


@pytest.fixture
async def made(grid_factory: Any, tmp_path: Path) -> AsyncIterator[list[Tunnels]]:
    """Close the relays the test started (the grids are closed by grid_factory, after them)."""
    started: list[Tunnels] = []
    yield started
    for t in started:
        if t.relay is not None:
            await t.relay.aclose()


@pytest.fixture
def tunnels(grid_factory: Any, tmp_path: Path, made: list[Tunnels]) -> Callable[..., Awaitable[Tunnels]]:
    async def make(**kw: Any) -> Tunnels:
        t = await start_tunnels(grid_factory, tmp_path, **kw)
        made.append(t)
        return t

    return make


# --- a local HTTP service, the worker's side, xwproxy processes -----------------------------------


@pytest.fixture
async def http_port() -> AsyncIterator[int]:
    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=PAYLOAD, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/blob", blob)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def script_app(xw: XWClient, tmp_path: Path, name: str) -> str:
    script = tmp_path / f"{name}.sh"
    script.write_text("#!/bin/sh\nsleep 60\n")
    exe = await xw.send_file(script, access_rights="1700")
    app = await xw.send_app(
        AppIn(
            name=name,
            type="script",
            binaries=[{"os": "ANY", "cpu": "ANY", "data": exe.uid}],
            access_rights="0755",
        )
    )
    return app.uid


class Worker:
    """An admin host claiming jobs by hand (admin hosts run everyone's jobs), with its relay links."""

    def __init__(self, grid: Any) -> None:
        self.admin: XWClient = grid.admin
        self.host = ""
        self.links: list[RelayLink] = []
        self.attempts: dict[str, str] = {}  # job uid -> its attempt on our host

    async def enrol(self) -> Worker:
        self.host = (await self.admin.enrol(HostIn(name="h1", os="LINUX", cpu="AMD64"))).host.uid
        return self

    async def run(self, job: JobOut) -> None:
        assignment = await self.admin.request_work(self.host, wait=1)
        assert assignment is not None and assignment.job.uid == job.uid
        self.attempts[job.uid] = assignment.attempt
        assert (await self.admin.get_job(job.uid)).status.value == "RUNNING"

    async def link(self, job: JobOut) -> RelayLink:
        """The job's relay link, with tickets from POST /hosts/{h}/attempts/{a}/tunnels."""

        async def fresh() -> TunnelTicket:
            t = await self.admin.host_tunnels(self.host, self.attempts[job.uid])
            assert t.refused == [], t.refused
            return t

        async def ticket() -> Ticket:
            t = await fresh()
            assert t.host_key, "the server must hand out the relay's host key"
            return Ticket(t.relay, t.host_key, t.ticket)

        link = RelayLink(ticket, label=f"job {job.uid}")
        self.links.append(link)
        await link.start()
        return link

    async def grant(self, job: JobOut) -> str:
        return (await self.admin.host_tunnels(self.host, self.attempts[job.uid])).ticket

    async def aclose(self) -> None:
        await asyncio.gather(*(link.aclose() for link in self.links))


@pytest.fixture
async def workers() -> AsyncIterator[Callable[[Any], Awaitable[Worker]]]:
    made: list[Worker] = []

    async def make(grid: Any) -> Worker:
        w = await Worker(grid).enrol()
        made.append(w)
        return w

    yield make
    for w in made:
        await w.aclose()


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[asyncio.subprocess.Process]]]:
    """Start xwproxy as a real process (killed at the end if a test left it running)."""
    procs: list[asyncio.subprocess.Process] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("XW_")} | {"HOME": str(tmp_path)}

    async def start(*args: str, stdout: int = asyncio.subprocess.PIPE) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "xwproxy"), *args, stdout=stdout, stderr=asyncio.subprocess.PIPE, env=env
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def first_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), LINE_TIMEOUT)
    if not line:  # it ended instead: show why
        err = await proc.stderr.read() if proc.stderr else b""
        pytest.fail(f"xwproxy exited {await proc.wait()} without a line: {err.decode()}")
    return line.decode()


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Signal the process; its exit code and stderr."""
    proc.send_signal(sig)
    _, err = await asyncio.wait_for(proc.communicate(), LINE_TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), LINE_TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def error_of(code: int, out: str, err: str) -> str:
    """The reason of a one-line ``xwproxy: error: ...`` failure (exit 1, nothing on stdout)."""
    assert (code, out) == (1, ""), (code, out, err)
    assert err.count("\n") == 1 and err.startswith("xwproxy: error: ") and "Traceback" not in err, err
    return err.removeprefix("xwproxy: error: ").strip()


async def http_get(reader: Any, writer: Any) -> bytes:
    """GET /blob as HTTP/1.0 over a raw stream; the body (the server closes after it)."""
    writer.write(b"GET /blob HTTP/1.0\r\nHost: service\r\n\r\n")
    await writer.drain()
    raw = bytearray()
    while chunk := await reader.read(65536):
        raw += chunk
    writer.close()
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    return body


# --- job -> client: xwproxy --xwlistenport publishes a local port ---------------------------------


async def test_serve_publishes_a_local_port_that_a_job_reaches(
    tunnels: Any, workers: Any, spawn: Any, http_port: int, tmp_path: Path
) -> None:
    t = await tunnels()
    alice = await t.grid.add_user("alice")
    worker = await workers(t.grid)

    read_end, write_end = os.pipe()  # stdout as `| head -1` sees it: read one line, then close the pipe
    proc = await spawn("--xwconfig", str(t.conf("alice")), "--xwlistenport", str(http_port), stdout=write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        line = (await asyncio.wait_for(asyncio.to_thread(pipe.readline), LINE_TIMEOUT)).decode()
    assert line.endswith("\n"), line
    address = line.strip()
    assert ADDRESS.match(address) and address.endswith(f"-{http_port}"), line
    [proxy] = await alice.proxies()
    assert proxy.name == address and proxy.port == http_port

    # a job of alice's declaring the address gets connect rights to it; its worker opens the tunnel
    app = await script_app(alice, tmp_path, "client")
    job = await alice.submit(JobIn(app=app, forward_addresses=[ForwardAddress(address=address, port=1234)]))
    await worker.run(job)
    link = await worker.link(job)
    for _ in range(2):  # each connection is spliced to a new connection to the local service
        assert await http_get(*await link.open(address)) == PAYLOAD
    assert t.relay is not None and t.relay.stats(address)[1] > 2 * len(PAYLOAD)

    code, err = await stop(proc, signal.SIGTERM)
    assert (code, err) == (0, "")
    assert await alice.proxies() == []  # its address leads nowhere any more: forgotten
    assert address not in t.relay.names()


async def test_serve_refuses_a_bad_port_and_no_relay(tunnels: Any, spawn: Any, grid_factory: Any) -> None:
    for bad in ("0", "65536", "http", "-1"):
        proc = await spawn("--xwlistenport", bad)
        assert error_of(*await finish(proc)) == f"bad --xwlistenport {bad!r}: expected a port 1-65535"
    proc = await spawn("--xwlistenport", "8080", "--xwwait")
    assert "need a JOB" in error_of(*await finish(proc))

    g = await grid_factory()  # no relays setting
    await g.add_user("alice")
    conf = g.write_client_conf(g.home.parent / "alice.conf", login="alice", password=PASSWORD)
    proc = await spawn("--xwconfig", str(conf), "--xwlistenport", "8080")
    assert error_of(*await finish(proc)) == "no relay configured on this grid"


@pytest.mark.parametrize("case", ["relay down", "foreign ticket key", "other host key"])
async def test_relay_refusals_are_one_line(tunnels: Any, spawn: Any, case: str) -> None:
    if case == "relay down":
        t, expected = await tunnels(relay=False), r"^relay 127\.0\.0\.1:\d+ unreachable: "
    elif case == "foreign ticket key":  # the relay trusts another server
        foreign = ECKey.generate_key("P-256").as_pem(private=False)
        t, expected = await tunnels(verify_pem=foreign), r"refused the ticket: .*signature"
    else:  # the server pins another key than the relay's
        other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip()
        t, expected = await tunnels(pinned=other), r"host key does not match the pinned key"
    await t.grid.add_user("alice")
    proc = await spawn("--xwconfig", str(t.conf("alice")), "--xwlistenport", "8080")
    assert re.search(expected, error_of(*await finish(proc)))


# --- client -> job: xwproxy JOB --xwlistenport forwards a local port to the job's ---------------------


async def publish_job_port(worker: Worker, job: JobOut, port: int, http_port: int) -> str:
    """What the worker running ``job`` does: publish its listen port ``port`` (here: the HTTP service)."""
    name = f"job-{job.uid}-{port}"
    link = await worker.link(job)

    async def target() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", http_port)

    await link.publish(name, target, lambda: worker.grant(job))
    return name


async def test_client_reaches_a_running_jobs_port(
    tunnels: Any, workers: Any, spawn: Any, http_port: int, tmp_path: Path
) -> None:
    t = await tunnels()
    alice = await t.grid.add_user("alice")
    worker = await workers(t.grid)
    job = await alice.submit(
        JobIn(app=await script_app(alice, tmp_path, "web"), listen_ports=[8080], label="web")
    )
    await worker.run(job)
    name = await publish_job_port(worker, job, 8080, http_port)

    local = free_port()
    proc = await spawn("--xwconfig", str(t.conf("alice")), "web", "--xwlistenport", str(local))  # by label
    assert await first_line(proc) == f"listening on 127.0.0.1:{local} -> {name}\n"
    async with aiohttp.ClientSession() as session:

        async def get() -> bytes:
            async with session.get(f"http://127.0.0.1:{local}/blob") as reply:
                assert reply.status == 200
                return await reply.read()

        bodies = await asyncio.gather(*(get() for _ in range(3)))  # concurrent connections, one link
    assert bodies == [PAYLOAD] * 3
    assert t.relay is not None and t.relay.stats(name)[1] > 3 * len(PAYLOAD)

    code, err = await stop(proc, signal.SIGINT)
    assert (code, err) == (0, "")
    with pytest.raises(OSError):  # the local port is closed
        await asyncio.open_connection("127.0.0.1", local)


async def test_the_port_is_chosen_among_the_jobs(
    tunnels: Any, workers: Any, spawn: Any, http_port: int, tmp_path: Path
) -> None:
    t = await tunnels()
    alice = await t.grid.add_user("alice")
    worker = await workers(t.grid)
    app = await script_app(alice, tmp_path, "web")
    conf = str(t.conf("alice"))
    job = await alice.submit(JobIn(app=app, listen_ports=[8080, 9090]))
    await worker.run(job)
    local = free_port()

    proc = await spawn("--xwconfig", conf, job.uid, "--xwlistenport", str(local))
    assert error_of(*await finish(proc)) == (
        f"job {job.uid} listens on ports 8080, 9090: choose one with --xwjobport"
    )
    proc = await spawn("--xwconfig", conf, job.uid, "--xwlistenport", str(local), "--xwjobport", "7")
    assert (
        error_of(*await finish(proc))
        == f"job {job.uid} does not listen on port 7 (its listen ports: 8080, 9090)"
    )
    proc = await spawn("--xwconfig", conf, job.uid, "--xwlistenport", str(local), "--xwjobport", "x")
    assert error_of(*await finish(proc)) == "bad --xwjobport 'x': expected a port 1-65535"

    name = await publish_job_port(worker, job, 9090, http_port)
    uri = f"xw://127.0.0.1/{job.uid}"
    proc = await spawn("--xwconfig", conf, uri, "--xwlistenport", str(local), "--xwjobport", "9090")
    assert await first_line(proc) == f"listening on 127.0.0.1:{local} -> {name}\n"
    assert await http_get(*await asyncio.open_connection("127.0.0.1", local)) == PAYLOAD
    async with aiohttp.ClientSession() as session:  # a keep-alive connection still open when it stops
        async with session.get(f"http://127.0.0.1:{local}/blob") as reply:
            assert await reply.read() == PAYLOAD
        assert await stop(proc) == (0, "")

    quiet = await alice.submit(JobIn(app=app))
    proc = await spawn("--xwconfig", conf, quiet.uid, "--xwlistenport", str(local))
    assert (
        error_of(*await finish(proc)) == f"job {quiet.uid} has no listen port (submit it with --xwlistenport)"
    )


async def test_job_errors_are_one_line(tunnels: Any, spawn: Any, tmp_path: Path) -> None:
    t = await tunnels()
    alice = await t.grid.add_user("alice")
    await t.grid.add_user("bob")
    job = await alice.submit(
        JobIn(app=await script_app(alice, tmp_path, "web"), listen_ports=[8080], label="web")
    )
    local = str(free_port())

    proc = await spawn("--xwconfig", str(t.conf("alice")), job.uid, "--xwlistenport", local)
    why = error_of(*await finish(proc))  # the server's 409
    assert why.startswith(f"job {job.uid} is PENDING") and "RUNNING" in why

    bob = str(t.conf("bob"))  # alice's job is private: bob may not even see it
    proc = await spawn("--xwconfig", bob, job.uid, "--xwlistenport", local)
    assert error_of(*await finish(proc)) == f"no job {job.uid} visible to bob"  # as if it did not exist
    proc = await spawn("--xwconfig", bob, "web", "--xwlistenport", local)
    assert error_of(*await finish(proc)) == "no work named 'web' visible to you"

    with socket.socket() as busy:  # someone already listens on the local port
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await spawn("--xwconfig", str(t.conf("alice")), job.uid, "--xwlistenport", str(port))
        assert error_of(*await finish(proc)) == f"cannot listen on 127.0.0.1:{port}: Address already in use"


async def test_wait_until_the_job_runs(
    tunnels: Any, workers: Any, spawn: Any, http_port: int, tmp_path: Path
) -> None:
    t = await tunnels()
    alice = await t.grid.add_user("alice")
    worker = await workers(t.grid)
    app = await script_app(alice, tmp_path, "web")
    conf = str(t.conf("alice"))
    local = free_port()

    idle = await alice.submit(JobIn(app=app, listen_ports=[8080], expected_host="elsewhere"))
    proc = await spawn("--xwconfig", conf, idle.uid, "--xwlistenport", str(local), "--xwwait")
    assert proc.stderr is not None
    note = await asyncio.wait_for(proc.stderr.readline(), LINE_TIMEOUT)
    assert note.decode() == f"xwproxy: waiting for job {idle.uid} to run (it is PENDING)\n"
    assert await stop(proc) == (0, "")  # interrupted while waiting: a clean exit too

    job = await alice.submit(JobIn(app=app, listen_ports=[8080]))
    proc = await spawn("--xwconfig", conf, job.uid, "--xwlistenport", str(local), "--xwwait")
    note = await asyncio.wait_for(proc.stderr.readline(), LINE_TIMEOUT)
    assert note.decode().startswith(f"xwproxy: waiting for job {job.uid}")
    await worker.run(job)
    name = await publish_job_port(worker, job, 8080, http_port)
    assert await first_line(proc) == f"listening on 127.0.0.1:{local} -> {name}\n"
    assert await http_get(*await asyncio.open_connection("127.0.0.1", local)) == PAYLOAD
    assert await stop(proc) == (0, "")


async def test_job_mode_without_relay(grid: Any, workers: Any, spawn: Any, tmp_path: Path) -> None:
    alice = await grid.add_user("alice")
    worker = await workers(grid)
    job = await alice.submit(JobIn(app=await script_app(alice, tmp_path, "web"), listen_ports=[8080]))
    await worker.run(job)
    conf = grid.write_client_conf(tmp_path / "alice.conf", login="alice", password=PASSWORD)
    for extra in ((), ("--xwwait",)):  # waiting does not hide it: the job runs already
        proc = await spawn("--xwconfig", str(conf), job.uid, "--xwlistenport", str(free_port()), *extra)
        assert error_of(*await finish(proc)) == "no relay configured on this grid"
