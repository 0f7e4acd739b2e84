"""The three internode examples of the XWHEP slides on a real local grid, through the relay.

1. client -> job: a job serves HTTP on its port 8080; `xwproxy <job> --xwlistenport P` reaches it.
2. job -> client: `xwproxy --xwlistenport X` publishes a client's HTTP server; a job submitted with
   --xwforwardaddresses "ADDR,1234" fetches from it as 127.0.0.1:1234.
3. job -> job: a job forwards its 127.0.0.1:1234 to another job's proxy address.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.enums import JobStatus
from common.schemas import ForwardAddress, JobIn
from tests.ports import free_port

FINAL = {JobStatus.COMPLETED, JobStatus.ERROR}
XWPROXY = str(Path(sys.executable).parent / "xwproxy")

FILESERVER = """#!/usr/bin/python3
import asyncio, sys
async def handle(r, w):
    line = await r.readline()
    while (await r.readline()) not in (b"\\r\\n", b"\\n", b""):
        pass
    path = line.split()[1].decode().lstrip("/") if line else ""
    try:
        body, head = open(path, "rb").read(), b"HTTP/1.0 200 OK\\r\\n"
    except OSError:
        body, head = b"missing\\n", b"HTTP/1.0 404 Not Found\\r\\n"
    w.write(head + b"Content-Length: %d\\r\\n\\r\\n" % len(body) + body)
    await w.drain()
    w.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=512)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""

FETCH = """#!/usr/bin/python3
import sys, time, urllib.request
url = "http://127.0.0.1:%s/%s" % (sys.argv[1], sys.argv[2])
deadline = time.time() + 20
while True:
    try:
        data = urllib.request.urlopen(url, timeout=20).read()
        break
    except OSError as exc:
        print("retry", exc, file=sys.stderr)
        if time.time() > deadline:
            sys.exit(3)
        time.sleep(0.5)
open("fetched.bin", "wb").write(data)
print(len(data))
"""


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """A minimal HTTP/1.0 GET to 127.0.0.1:port: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /{path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head else 0
    return status, body


async def get_until_ok(port: int, path: str, timeout: float = 30) -> bytes:
    deadline = asyncio.get_running_loop().time() + timeout
    last: object = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            status, body = await http_get(port, path)
            if status == 200:
                return body
            last = status
        except (OSError, IndexError, ValueError) as exc:
            last = exc
        await asyncio.sleep(0.3)
    raise AssertionError(f"no 200 from 127.0.0.1:{port}/{path} within {timeout} s (last: {last!r})")


@contextlib.asynccontextmanager
async def xwproxy(conf: Path, *args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Run xwproxy; yields the process and its first stdout line."""
    proc = await asyncio.create_subprocess_exec(
        XWPROXY,
        "--xwconfig",
        str(conf),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
        if not line:
            err = (await proc.stderr.read()).decode()
            raise AssertionError(f"xwproxy printed nothing: {err}")
        yield proc, line
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _fileserver_job(lg, alice, blob: bytes):  # type: ignore[no-untyped-def]
    path = lg.tmp / "blob.bin"
    path.write_bytes(blob)
    data = await alice.send_file(path)
    app = await lg.script_app(alice, "fileserver", FILESERVER)
    job = await alice.submit(JobIn(app=app, args="8080", inputs=[data.uid], listen_ports=[8080]))
    running = await lg.wait_job(alice, job.uid, {JobStatus.RUNNING})
    assert running.proxy_addresses == [f"job-{job.uid}-8080"]
    return job


async def test_example1_client_reaches_job_service(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    alice = await lg.grid.add_user("alice")
    bob = await lg.grid.add_user("bob")
    blob = os.urandom(300_000)
    job = await _fileserver_job(lg, alice, blob)
    alice_conf = lg.grid.write_client_conf(
        lg.tmp / "alice.conf", login="alice", password="correct horse battery"
    )
    port = free_port()
    async with xwproxy(alice_conf, job.uid, "--xwlistenport", str(port)) as (_, line):
        assert line.startswith(f"listening on 127.0.0.1:{port}")
        assert await get_until_ok(port, "blob.bin") == blob

        results = await asyncio.gather(*(http_get(port, "blob.bin") for _ in range(100)))
        assert [s for s, _ in results] == [200] * 100
        assert all(body == blob for _, body in results), "100 concurrent connections, byte-exact"

        await lg.restart_relay()  # both ends must heal without any action
        assert await get_until_ok(port, "blob.bin", timeout=30) == blob

    async def counted() -> bool:
        j = await alice.get_job(job.uid)
        return j.net_out >= 101 * len(blob)

    await lg.wait_for(counted, 30, "the job's network counters")

    bob_conf = lg.grid.write_client_conf(lg.tmp / "bob.conf", login="bob", password="correct horse battery")
    proc = await asyncio.create_subprocess_exec(
        XWPROXY,
        "--xwconfig",
        str(bob_conf),
        job.uid,
        "--xwlistenport",
        str(free_port()),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1 and out == b""
    assert len(err.decode().strip().splitlines()) == 1, err
    assert bob is not None
    name = f"job-{job.uid}-8080"
    assert name in lg.relay.names()
    await alice.remove(job.uid)  # the worker kills the job and its tunnels end with it

    async def unpublished() -> bool:
        return name not in lg.relay.names()

    await lg.wait_for(unpublished, 30, "the deleted job's tunnel to end")


async def test_example2_job_reaches_client_service(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    alice = await lg.grid.add_user("alice")
    payload = os.urandom(200_000)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
        await writer.drain()
        writer.close()

    client_service = await asyncio.start_server(serve, "127.0.0.1", 0)
    service_port = client_service.sockets[0].getsockname()[1]
    alice_conf = lg.grid.write_client_conf(
        lg.tmp / "alice.conf", login="alice", password="correct horse battery"
    )
    app = await lg.script_app(alice, "fetch", FETCH)
    async with client_service, xwproxy(alice_conf, "--xwlistenport", str(service_port)) as (_, address):
        assert address.startswith("proxy-") and address.endswith(f"-{service_port}")
        job = await alice.submit(
            JobIn(
                app=app, args="1234 payload", forward_addresses=[ForwardAddress(address=address, port=1234)]
            )
        )
        done = await lg.wait_job(alice, job.uid, FINAL, timeout=90)
    files = await lg.results(alice, done)
    assert done.status is JobStatus.COMPLETED and done.return_code == 0, files.get("stderr.txt")
    assert files["fetched.bin"] == payload


async def test_example3_job_reaches_another_job(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    alice = await lg.grid.add_user("alice")
    blob = os.urandom(250_000)
    server_job = await _fileserver_job(lg, alice, blob)
    app = await lg.script_app(alice, "fetch", FETCH)
    client_job = await alice.submit(
        JobIn(
            app=app,
            args="1234 blob.bin",
            forward_addresses=[ForwardAddress(address=f"job-{server_job.uid}-8080", port=1234)],
        )
    )
    done = await lg.wait_job(alice, client_job.uid, FINAL, timeout=90)
    files = await lg.results(alice, done)
    assert done.status is JobStatus.COMPLETED and done.return_code == 0, files.get("stderr.txt")
    assert files["fetched.bin"] == blob
    await alice.remove(server_job.uid)


@pytest.mark.parametrize("who", ["bob"])
async def test_forward_to_unreadable_job_is_refused(local_grid, who: str) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    alice = await lg.grid.add_user("alice")
    other = await lg.grid.add_user(who)
    server_job = await _fileserver_job(lg, alice, b"secret")
    app = await lg.script_app(other, "fetch", FETCH)
    job = await other.submit(
        JobIn(
            app=app,
            args="1234 blob.bin",
            forward_addresses=[ForwardAddress(address=f"job-{server_job.uid}-8080", port=1234)],
        )
    )
    done = await lg.wait_job(other, job.uid, FINAL, timeout=90)
    assert done.return_code != 0, "bob's job must not reach alice's private job"
    files = await lg.results(other, done)
    assert "fetched.bin" not in files
    await alice.remove(server_job.uid)
