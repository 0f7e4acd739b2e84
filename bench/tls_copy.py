"""The plain-TLS baseline of bench.data: a minimal asyncio TLS file server and its client, no HTTP.

Server (its own process, like ``xwserver``): ``python -m bench.tls_copy --cert C --key K --dir D`` prints
``ready PORT``. A connection sends ``PUT NAME SIZE\\n`` then SIZE bytes (written to D/NAME in 1 MiB
writes, fsynced, answered ``OK\\n``), or ``GET NAME\\n`` (answered ``SIZE\\n`` then the bytes, read in
256 KiB blocks like the server's FileResponse).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

READ = 1 << 20
SEND = 256 * 1024


async def _put(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: Path, size: int) -> None:
    with path.open("wb") as fh:
        left = size
        buf = bytearray()
        while left:
            chunk = await reader.read(min(left, READ))
            if not chunk:
                raise ConnectionError("upload ended early")
            left -= len(chunk)
            buf += chunk
            if len(buf) >= READ or not left:
                await asyncio.to_thread(fh.write, bytes(buf))
                buf.clear()
        fh.flush()
        await asyncio.to_thread(os.fsync, fh.fileno())
    writer.write(b"OK\n")
    await writer.drain()


async def _get(writer: asyncio.StreamWriter, path: Path) -> None:
    writer.write(f"{path.stat().st_size}\n".encode())
    with path.open("rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, SEND):
            writer.write(chunk)
            await writer.drain()


def handler(root: Path) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            verb, name, *rest = (await reader.readline()).decode().split()
            path = root / Path(name).name
            if verb == "PUT":
                await _put(reader, writer, path, int(rest[0]))
            elif verb == "GET":
                await _get(writer, path)
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    return handle


async def serve(ns: argparse.Namespace) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(ns.cert, ns.key)
    server = await asyncio.start_server(handler(Path(ns.dir)), "127.0.0.1", 0, ssl=ctx)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


# --- the client (used in the benchmark's process) ---------------------------------------------------


def client_context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def put(port: int, ctx: ssl.SSLContext, src: Path, name: str) -> None:
    """Stream ``src`` to the server (read in 1 MiB blocks off the event loop, like XWClient.upload)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    size = src.stat().st_size
    writer.write(f"PUT {name} {size}\n".encode())
    with src.open("rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, READ):
            writer.write(chunk)
            await writer.drain()
    if await reader.readline() != b"OK\n":
        raise RuntimeError("TLS copy server did not confirm the upload")
    writer.close()


async def get(port: int, ctx: ssl.SSLContext, name: str, dest: Path) -> int:
    """Stream ``name`` from the server into ``dest``; bytes received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    writer.write(f"GET {name}\n".encode())
    size = int(await reader.readline())
    got = 0
    with dest.open("wb") as fh:
        while got < size:
            chunk = await reader.read(SEND)
            if not chunk:
                raise RuntimeError("download ended early")
            fh.write(chunk)
            got += len(chunk)
    writer.close()
    return got


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tls_copy", description=__doc__)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--dir", required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
