"""The attacker of bench.connections, as its own process: idle TCP connections and trickling TLS heads.

``python -m bench.flood --port P --ca CA --idle N --trickle M [--source 127.1.0.1 ...]``

* **idle**: N TCP connections that never send a byte. When the server closes one, it is opened again
  after a short random delay (an attacker keeps the pressure on).
* **trickle**: M TLS connections that send ``GET /api/v1/ping HTTP/1.1`` and then one more byte of
  header lines every ``--interval`` seconds, never finishing the head; reopened likewise when closed.

Sockets are bound to the ``--source`` loopback addresses in turn: every address has its own ephemeral
ports, so tens of thousands of connections and their TIME_WAIT remnants do not run out of ports.
The flood runs at nice 10: on a machine it shares with the server, it then takes CPU the server leaves
idle rather than competing with it as equals (a real flood's CPU is on other machines). Prints a JSON
status line every second (``{"idle": open, "trickle": open, "opened": n, "closed": n,
"errors": {...}}``) and a last one on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import resource
import signal
import socket
import ssl
import sys
from collections import Counter
from dataclasses import dataclass, field

CONNECT_TIMEOUT = 15.0
# asyncio.timeout, never wait_for: in 3.11 wait_for can swallow a cancel, and a task of the flood that
# ignores its cancel keeps the process alive after SIGTERM.
REOPEN_DELAY = 1.0  # mean seconds before a closed connection is opened again (0.5x to 1.5x)
NICE = 10  # a real flood runs on other machines: here it should take CPU the server does not want
RAMP_CONCURRENCY = 256  # connects in flight while the flood builds up (no SYN storm of our own)
HEAD_START = b"GET /api/v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\n"
TRICKLE = b"X-Trickle: a-header-that-never-ends\r\n"


@dataclass
class Stats:
    idle: int = 0
    trickle: int = 0
    opened: int = 0
    closed: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        return json.dumps(
            {
                "idle": self.idle,
                "trickle": self.trickle,
                "opened": self.opened,
                "closed": self.closed,
                "errors": dict(self.errors),
            }
        )


class Flood:
    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns
        self.stats = Stats()
        self.sources = itertools.cycle(ns.source or ["127.0.0.1"])
        self.ramp = asyncio.Semaphore(RAMP_CONCURRENCY)
        self.ctx = ssl.create_default_context(cafile=ns.ca)

    async def pause(self) -> None:
        await asyncio.sleep(REOPEN_DELAY * random.uniform(0.5, 1.5))

    def error(self, exc: BaseException) -> None:
        errno = exc.errno if isinstance(exc, OSError) else None  # None for TimeoutError, an OSError too
        self.stats.errors[type(exc).__name__ + (f" {errno}" if errno is not None else "")] += 1

    async def idle(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock = socket.socket()
            sock.setblocking(False)
            try:
                async with self.ramp, asyncio.timeout(CONNECT_TIMEOUT):
                    sock.bind((next(self.sources), 0))
                    await loop.sock_connect(sock, ("127.0.0.1", self.ns.port))
                self.stats.idle += 1
                self.stats.opened += 1
                with contextlib.suppress(OSError):
                    await loop.sock_recv(sock, 1)  # b"" (or a reset) when the server lets go
                self.stats.idle -= 1
                self.stats.closed += 1
            except (OSError, TimeoutError) as exc:
                self.error(exc)
            finally:
                sock.close()
            await self.pause()

    async def trickle(self) -> None:
        while True:
            writer: asyncio.StreamWriter | None = None
            try:
                async with self.ramp, asyncio.timeout(CONNECT_TIMEOUT):
                    reader, w = await asyncio.open_connection(
                        "127.0.0.1",
                        self.ns.port,
                        ssl=self.ctx,
                        server_hostname="127.0.0.1",
                        local_addr=(next(self.sources), 0),
                    )
                writer = w
                self.stats.trickle += 1
                self.stats.opened += 1
                w.write(HEAD_START)
                for byte in itertools.cycle(TRICKLE):
                    try:
                        async with asyncio.timeout(self.ns.interval):
                            await reader.read(4096)
                        break  # EOF, or the server answered (an error): it let go of the head
                    except TimeoutError:
                        w.write(bytes([byte]))
                self.stats.trickle -= 1
                self.stats.closed += 1
            except (OSError, TimeoutError) as exc:
                self.error(exc)
            finally:
                if writer is not None:
                    writer.transport.abort()
            await self.pause()

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(self.idle()) for _ in range(self.ns.idle)]
        tasks += [asyncio.create_task(self.trickle()) for _ in range(self.ns.trickle)]
        while not stop.is_set():
            print(self.stats.line(), flush=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stop.wait()
        print(self.stats.line(), flush=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--idle", type=int, default=0)
    parser.add_argument("--trickle", type=int, default=0)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between trickled bytes")
    parser.add_argument("--source", action="append", help="local address to connect from (repeatable)")
    parser.add_argument(
        "--nice", type=int, default=NICE, help="scheduling niceness (the attack's CPU is not the server's)"
    )
    ns = parser.parse_args()
    os.nice(ns.nice)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if ns.idle + ns.trickle + 64 > hard:
        sys.exit(f"{ns.idle + ns.trickle} connections do not fit in {hard} descriptors: use more processes")
    asyncio.run(Flood(ns).run())


if __name__ == "__main__":
    main()
