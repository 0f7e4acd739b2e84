#!/usr/bin/python3
"""xwbridge: run a job command inside its sandbox and bridge its declared ports to Unix sockets.

Standard library only (Python >= 3.7): the worker copies this file into the job directory and runs it
under the sandbox's /usr/bin/python3, so it cannot import our packages. One process, one thread.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

CHUNK = 1 << 16
BACKLOG = 128
# How long a bridged connection waits for the far end (the job's port, the worker's socket) to listen.
CONNECT_RETRY_SECONDS = 5.0
CONNECT_RETRY_INTERVAL = 0.05
ACCEPT_ERROR_PAUSE = 0.1
READY_NAME = "ready"
LOOPBACK = "127.0.0.1"


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Options before ``--``, the job command after it."""
    argv = list(argv)
    if "--" not in argv:
        raise SystemExit("usage: xwbridge.py --sockdir DIR [--listen P]... [--forward Q]... -- CMD...")
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="xwbridge")
    parser.add_argument("--sockdir", required=True)
    parser.add_argument("--listen", type=int, action="append", default=[])
    parser.add_argument("--forward", type=int, action="append", default=[])
    opts = parser.parse_args(argv[:cut])
    command = argv[cut + 1 :]
    if not command:
        parser.error("no job command after --")
    return opts, command


def unix_listener(name: str) -> socket.socket:
    """A listening Unix socket at ``name`` (relative to the socket directory, our cwd)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(name)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def tcp_listener(port: int) -> socket.socket:
    """A listening TCP socket on the namespace's loopback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


async def connect(family: int, address: str | tuple[str, int]) -> socket.socket | None:
    """A connected non-blocking socket, retrying while nobody listens yet; None after the retry time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_RETRY_SECONDS
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
            return sock
        except OSError:
            sock.close()
            if loop.time() > deadline:
                return None
        await asyncio.sleep(CONNECT_RETRY_INTERVAL)


def _shut(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


async def copy(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until EOF, then half-close ``dst``; on an error tear both down."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await loop.sock_recv(src, CHUNK)
            if not data:
                break
            await loop.sock_sendall(dst, data)
    except OSError:
        # A reset on one side: shutting both down wakes the other direction's pending recv with EOF.
        _shut(src, socket.SHUT_RDWR)
        _shut(dst, socket.SHUT_RDWR)
    else:
        _shut(dst, socket.SHUT_WR)  # HTTP/1.0 clients half-close after the request


async def relay(conn: socket.socket, family: int, address: str | tuple[str, int]) -> None:
    """Bridge one accepted connection to a new connection to ``address``."""
    try:
        far = await connect(family, address)
        if far is None:
            return
        try:
            await asyncio.gather(copy(conn, far), copy(far, conn))
        finally:
            far.close()
    finally:
        conn.close()


async def serve(listener: socket.socket, family: int, address: str | tuple[str, int]) -> None:
    """Accept on ``listener`` forever, relaying each connection to ``address``."""
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[None]] = set()
    while True:
        try:
            conn, _ = await loop.sock_accept(listener)
        except OSError:  # out of file descriptors, say: the job's limit applies to us too
            await asyncio.sleep(ACCEPT_ERROR_PAUSE)
            continue
        conn.setblocking(False)
        task = loop.create_task(relay(conn, family, address))
        running.add(task)
        task.add_done_callback(running.discard)


async def run(opts: argparse.Namespace, command: list[str]) -> int:
    """Listen on every bridge, start the job, relay until it exits; its exit status (signal N: 128+N)."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, _context: None)  # the job's stderr is the job's alone
    cwd = os.getcwd()
    os.chdir(opts.sockdir)  # relative socket names: no 108-byte sun_path limit on deep job directories
    bridges: list[tuple[socket.socket, int, str | tuple[str, int]]] = []
    names: list[str] = []
    for port in dict.fromkeys(opts.listen):
        names.append(f"listen-{port}.sock")
        bridges.append((unix_listener(names[-1]), socket.AF_INET, (LOOPBACK, port)))
    for port in dict.fromkeys(opts.forward):
        bridges.append((tcp_listener(port), socket.AF_UNIX, f"forward-{port}.sock"))
    with open(READY_NAME, "w"):
        names.append(READY_NAME)

    ended: asyncio.Future[int] = loop.create_future()
    child: subprocess.Popen[bytes] | None = None

    def reap() -> None:
        if child is not None and child.poll() is not None and not ended.done():
            code = child.returncode
            ended.set_result(128 - code if code < 0 else code)

    def forward(sig: int) -> None:
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)

    # Installed before the child starts; exec resets caught signals, so the job gets the defaults.
    loop.add_signal_handler(signal.SIGCHLD, reap)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, forward, sig)
    try:
        child = subprocess.Popen(command, cwd=cwd)
        reap()  # in case it exited before the handler saw SIGCHLD
        servers = [loop.create_task(serve(*bridge)) for bridge in bridges]
        code = await ended
        for task in servers:
            task.cancel()
        return code
    except OSError as exc:
        sys.stderr.write(f"xwbridge: cannot run {command[0]}: {exc}\n")
        return 127 if isinstance(exc, FileNotFoundError) else 126
    finally:
        for name in names:  # the worker sees the bridges gone
            with contextlib.suppress(OSError):
                os.unlink(name)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the job behind its bridges and exit as soon as it does, with its status."""
    opts, command = parse(sys.argv[1:] if argv is None else argv)
    try:
        code = asyncio.run(run(opts, command))
    except OSError as exc:
        sys.stderr.write(f"xwbridge: cannot set up the bridges: {exc}\n")
        code = 126
    sys.stderr.flush()
    os._exit(code)  # open relays die with the job; no interpreter teardown noise on the job's stderr


if __name__ == "__main__":
    main()
