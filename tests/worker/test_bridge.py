"""Declared ports: bridged by the helper under bubblewrap, plain loopback under the rlimits fallback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import uuid
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.ports import free_port
from worker.bridge import HELPER_NAME, PortBridge
from worker.sandbox import Sandbox

PY = "#!/usr/bin/python3\n"
SH = "#!/bin/sh\n"
READY_TIMEOUT = 10.0
BEFORE = ["bin", "results.zip", "scratch", "stderr.txt", "stdout.txt", "tmp"]  # a job without ports

# Retries only while nobody listens: in the fallback the job may start before the worker serves.
FETCH = """
import sys, time, urllib.error, urllib.request
deadline = time.time() + 10
while True:
    try:
        body = urllib.request.urlopen('http://127.0.0.1:{port}/x', timeout=10).read()
        break
    except urllib.error.URLError as exc:
        if not isinstance(exc.reason, ConnectionRefusedError) or time.time() > deadline:
            raise
        time.sleep(0.05)
sys.stdout.buffer.write(body)
"""


def member(results: Path, name: str) -> bytes:
    with zipfile.ZipFile(results) as zf:
        return zf.read(name)


def names_in(results: Path) -> set[str]:
    with zipfile.ZipFile(results) as zf:
        return set(zf.namelist())


def leftovers(job: Any) -> list[str]:
    """Live processes of ``job``: its directory on their command line (bwrap, the helper) or its XWJOBUID.

    Not by pid namespace, as conftest's Watch also does: the inode number of a namespace that ended is soon
    reused by a job of a concurrent test run.
    """
    found = []
    for p in psutil.process_iter(["name", "status", "cmdline"]):
        try:
            mine = any(str(job.dir) in arg for arg in p.info["cmdline"] or []) or (
                p.environ().get("XWJOBUID") == job.spec.job_uid
            )
        except (OSError, psutil.Error):
            continue
        if mine:
            found.append(f"{p.pid} {p.info['name']} {p.info['status']}")
    return found


def port_for(runner: Any, inside: int) -> int:
    """``inside`` under bubblewrap (the job's own loopback); a free host port in the fallback."""
    return inside if runner.sandbox.kind == "bwrap" else free_port()


async def http_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, half_close: bool = False
) -> bytes:
    """The raw response to an HTTP/1.0 GET, the request optionally half-closed (as simple clients do)."""
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def fetch(job: Any, port: int, path: str, half_close: bool = False) -> bytes:
    """GET ``path`` from the job's listen port ``port`` through JobRun.open_listen."""
    reader, writer = await job.open_listen(port)
    return await http_get(reader, writer, path, half_close)


def body_of(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    return body


async def first_get(job: Any, port: int, path: str) -> bytes:
    """GET once the job's server is up (bridged or not, it starts a moment after the job)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    while True:
        try:
            response = await fetch(job, port, path, half_close=True)
        except ConnectionError:
            response = b""
        if response or loop.time() > deadline:
            return body_of(response)
        await asyncio.sleep(0.05)


async def open_when_up(job: Any, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """open_listen, retried while the job is not listening yet (the fallback has no helper to wait)."""
    for _ in range(int(READY_TIMEOUT / 0.05)):
        with contextlib.suppress(ConnectionError):
            opened: tuple[asyncio.StreamReader, asyncio.StreamWriter] = await job.open_listen(port)
            return opened
        await asyncio.sleep(0.05)
    raise AssertionError(f"port {port} of the job never came up")


async def test_listen_port_serves_through_the_bridge(runner: Any) -> None:
    port = port_for(runner, 8080)
    data = os.urandom(300_000)
    index = runner.cached(f"index-{uuid.uuid4().hex}", data)
    script = SH + f"exec /usr/bin/python3 -m http.server {port} --bind 127.0.0.1\n"
    job = runner.job(script, inputs=[("index.txt", index)], listen_ports=[port])
    task = asyncio.create_task(runner.watch(job))
    try:
        assert await job.wait_bridges(READY_TIMEOUT)
        assert await first_get(job, port, "/index.txt") == data
        # Not half-closed: http.server resets early-FIN connections once its backlog of 5 overflows.
        responses = await asyncio.gather(*(fetch(job, port, "/index.txt") for _ in range(20)))
        assert [body_of(r) for r in responses] == [data] * 20
        with pytest.raises(ConnectionError):
            await job.open_listen(port + 1)  # not declared
        # under bwrap the port is the job's own; the fallback shows the check can see a served port
        assert await reaches_host_port(port, data) == (runner.sandbox.kind != "bwrap")
        # bwrap, its init, the helper and the server; or the server: the check below can see them
        assert len(leftovers(job)) == (4 if runner.sandbox.kind == "bwrap" else 1), leftovers(job)
    finally:
        job.kill("test over")
        watch = await task
    assert watch.outcome.status == "killed"
    assert leftovers(job) == []
    assert names_in(watch.outcome.results) == {"stdout.txt", "stderr.txt"}  # not sock/, not the helper


async def reaches_host_port(port: int, data: bytes) -> bool:
    """Whether the host's 127.0.0.1:``port`` serves ``data`` (someone else may listen there)."""
    try:
        response = await asyncio.wait_for(
            http_get(*await asyncio.open_connection("127.0.0.1", port), "/index.txt"), 5
        )
    except (TimeoutError, OSError):
        return False
    return data in response


async def test_forward_port_reaches_the_workers_endpoint(runner: Any) -> None:
    port = port_for(runner, 1234)
    body = os.urandom(100_000)
    asked: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        asked.append(head.split()[1])
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    job = runner.job(PY + FETCH.format(port=port), forward_ports=[port])
    task = asyncio.create_task(job.run())
    assert await job.wait_bridges(READY_TIMEOUT)
    kind, where = job.forward_endpoint(port)
    if runner.sandbox.kind == "bwrap":
        assert (kind, where) == ("unix", job.dir / "sock" / f"forward-{port}.sock")
    else:
        assert (kind, where) == ("tcp", port)
    with pytest.raises(ValueError):
        job.forward_endpoint(port + 1)
    server = await job.serve_forward(port, handle)
    try:
        out = await asyncio.wait_for(task, 30)
    finally:
        server.close()
        await server.wait_closed()
    assert (out.status, out.return_code) == ("exited", 0), member(out.results, "stderr.txt")
    assert member(out.results, "stdout.txt") == body
    assert asked == [b"/x"]


HALF_CLOSE = """
import hashlib, socket, time
server = socket.create_server(('127.0.0.1', {listen}))
conn, _ = server.accept()
data = b''
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    data += chunk
conn.sendall(hashlib.sha256(data).hexdigest().encode())
conn.close()
out = socket.create_connection(('127.0.0.1', {forward}))
out.sendall(b'x' * 200000)
out.shutdown(socket.SHUT_WR)
reply = b''
while True:
    chunk = out.recv(65536)
    if not chunk:
        break
    reply += chunk
print(reply.decode())
"""


async def test_half_close_crosses_the_bridge_both_ways(runner: Any) -> None:
    listen, forward = port_for(runner, 8080), port_for(runner, 1234)
    payload = os.urandom(300_000)

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # only returns once the job's shutdown(SHUT_WR) got through
        writer.write(b"got %d" % len(data))
        writer.close()

    job = runner.job(
        PY + HALF_CLOSE.format(listen=listen, forward=forward), listen_ports=[listen], forward_ports=[forward]
    )
    task = asyncio.create_task(job.run())
    assert await job.wait_bridges(READY_TIMEOUT)
    server = await job.serve_forward(forward, count)
    try:
        reader, writer = await open_when_up(job, listen)
        writer.write(payload)
        writer.write_eof()
        digest = await asyncio.wait_for(reader.read(), 20)
        writer.close()
        out = await asyncio.wait_for(task, 20)
    finally:
        server.close()
        await server.wait_closed()
    assert digest == hashlib.sha256(payload).hexdigest().encode()
    assert (out.status, out.return_code) == ("exited", 0), member(out.results, "stderr.txt")
    assert member(out.results, "stdout.txt") == b"got 200000\n"


async def test_exit_status_passes_through_the_helper(runner: Any) -> None:
    ports: dict[str, Any] = {
        "listen_ports": [port_for(runner, 8080)],
        "forward_ports": [port_for(runner, 1234)],
    }
    out = await runner.run(SH + "echo out\necho err >&2\nexit 7\n", **ports)
    assert (out.status, out.return_code, out.reason) == ("exited", 7, "exit code 7")
    assert member(out.results, "stdout.txt") == b"out\n"
    assert member(out.results, "stderr.txt") == b"err\n"
    # killed by a signal: the same status as without the helper
    with_helper = await runner.run(SH + "kill -TERM $$\n", **ports)
    without = await runner.run(SH + "kill -TERM $$\n")
    assert (with_helper.return_code, with_helper.reason) == (without.return_code, without.reason)
    assert without.return_code in (-15, 128 + 15)


async def test_helper_forwards_sigterm_to_the_job(bwrap_runner: Any) -> None:
    script = SH + "trap 'echo got TERM; exit 5' TERM\nkill -TERM $PPID\nsleep 10 &\nwait\n"
    out = await bwrap_runner.run(script, listen_ports=[8080])
    assert (out.status, out.return_code) == ("exited", 5), member(out.results, "stderr.txt")
    assert member(out.results, "stdout.txt") == b"got TERM\n"


async def test_wallclock_kills_helper_and_job(runner: Any) -> None:
    limits = replace(runner.spec("").limits, wallclock=1)
    job = runner.job(SH + "sleep 30 &\nexec sleep 30\n", limits=limits, listen_ports=[port_for(runner, 8080)])
    watch = await runner.watch(job)
    assert (watch.outcome.status, watch.outcome.return_code) == ("wallclock", None)
    # bwrap, its init, the helper and two sleeps; or the two sleeps
    assert watch.most >= (5 if runner.sandbox.kind == "bwrap" else 2), watch.most
    assert leftovers(job) == []


async def test_job_without_ports_runs_as_before(bwrap_runner: Any) -> None:
    parent = SH + "tr '\\0' ' ' < /proc/$PPID/cmdline\n"
    plain = bwrap_runner.job(parent)
    out = await plain.run()
    assert out.return_code == 0
    assert "bwrap" in member(out.results, "stdout.txt").decode()
    assert sorted(p.name for p in plain.dir.iterdir()) == BEFORE
    assert [p.name for p in plain.bin_dir.iterdir()] == ["prog"]
    helped = bwrap_runner.job(parent, forward_ports=[1234])
    out = await helped.run()
    assert f"bin/{HELPER_NAME} --sockdir" in member(out.results, "stdout.txt").decode()
    assert sorted(p.name for p in helped.dir.iterdir()) == sorted([*BEFORE, "sock"])
    assert names_in(out.results) == {"stdout.txt", "stderr.txt"}


async def test_job_reaches_only_its_declared_ports(bwrap_runner: Any) -> None:
    host = socket.create_server(("127.0.0.1", 0))
    host_port = host.getsockname()[1]
    script = PY + (
        "import json, socket\n"
        "seen = {}\n"
        f"for port in (1234, 1235, 8080, {host_port}):\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', port), timeout=3).close()\n"
        "        seen[port] = 'connected'\n"
        "    except OSError as exc:\n"
        "        seen[port] = type(exc).__name__\n"
        "print(json.dumps(seen))\n"
    )
    try:
        out = await bwrap_runner.run(script, forward_ports=[1234], listen_ports=[8080])
    finally:
        host.close()
    assert out.return_code == 0, member(out.results, "stderr.txt")
    seen = json.loads(member(out.results, "stdout.txt"))
    assert seen == {
        "1234": "connected",  # the helper's end of the forward port
        "1235": "ConnectionRefusedError",
        "8080": "ConnectionRefusedError",  # its own listen port, where nothing listens
        str(host_port): "ConnectionRefusedError",
    }


async def test_job_cannot_point_the_worker_at_a_host_socket(bwrap_runner: Any) -> None:
    target = bwrap_runner.root / "host.sock"
    connected: list[bool] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.append(True)
        writer.close()

    server = await asyncio.start_unix_server(handle, path=str(target))
    script = SH + (
        'd="$(dirname "$XWBINPATH")/../sock"\n'
        f'ln -sf {target} "$d/listen-8080.sock" && touch swapped\n'
        "sleep 30\n"
    )
    job = bwrap_runner.job(script, listen_ports=[8080])
    task = asyncio.create_task(job.run())
    try:
        assert await job.wait_bridges(READY_TIMEOUT)
        for _ in range(200):
            if (job.scratch / "swapped").exists():
                break
            await asyncio.sleep(0.05)
        assert (job.dir / "sock" / "listen-8080.sock").is_symlink()
        with pytest.raises(ConnectionError):
            await job.open_listen(8080)
    finally:
        job.kill("test over")
        await task
        server.close()
        await server.wait_closed()
    assert connected == []


async def test_fallback_needs_no_helper(plain_runner: Any) -> None:
    job = plain_runner.job(SH + "exit 0\n", listen_ports=[free_port()], forward_ports=[free_port()])
    out = await job.run()
    assert (out.status, out.return_code) == ("exited", 0)
    assert sorted(p.name for p in job.dir.iterdir()) == BEFORE
    assert [p.name for p in job.bin_dir.iterdir()] == ["prog"]


async def test_a_port_both_listened_on_and_forwarded_fails_the_job(runner: Any) -> None:
    out = await runner.run(SH + "echo ran\n", listen_ports=[8080], forward_ports=[8080, 9090])
    assert out.status == "failed" and "[8080] declared both" in out.reason
    assert member(out.results, "stdout.txt") == b""


def test_helper_command_line(tmp_path: Path) -> None:
    bwrap = Sandbox("bwrap", None, None, bwrap="/usr/bin/bwrap")
    job_dir = tmp_path / "job"
    ports = PortBridge(job_dir, [8080, 8080, 9000], [1234], bwrap)
    helper = f"/usr/bin/python3 -I {job_dir}/bin/{HELPER_NAME} --sockdir {job_dir}/sock"
    expected = f"{helper} --listen 8080 --listen 9000 --forward 1234 -- prog -- x"
    assert " ".join(ports.wrap(["prog", "--", "x"])) == expected
    assert ports.rw_binds() == [(job_dir / "sock", job_dir / "sock")]
    for idle in (
        PortBridge(job_dir, [], [], bwrap),
        PortBridge(job_dir, [8080], [1234], replace(bwrap, kind="rlimits")),
    ):
        assert idle.wrap(["prog"]) == ["prog"] and idle.rw_binds() == []
