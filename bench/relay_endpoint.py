"""One end of a relay tunnel, as its own process (what a worker or ``xwproxy`` would run), for bench.relay.

``publish NAME=PORT...``: one RelayLink publishing each NAME, spliced to 127.0.0.1:PORT (the worker side).
``connect NAME...``: one RelayLink allowed to connect each NAME, with a local TCP entrance per name (the
client side, like ``xwproxy``); prints ``ready NAME=PORT ...`` once everything is up; runs until SIGTERM.
Tickets are signed here with the benchmark's own key (the relay verifies them with its public half).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
import uuid
from pathlib import Path

from joserfc import jwt
from joserfc.jwk import ECKey

from proxy.endpoints import RelayLink, Target, Ticket, serve_local


def signer(key_pem: bytes, scopes: list[str]) -> str:
    now = int(time.time())
    claims = {
        "iss": "xwhep",
        "sub": "bench",
        "aud": "relay",
        "iat": now,
        "nbf": now - 5,
        "exp": now + 3600,
        "jti": uuid.uuid4().hex,
        "scope": ["link", *scopes],
    }
    return jwt.encode({"alg": "ES256"}, claims, ECKey.import_key(key_pem))


def target(port: int) -> Target:
    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port)

    return connect


async def run(ns: argparse.Namespace) -> None:
    key_pem = Path(ns.key).read_bytes()
    host_key = Path(ns.host_key).read_text().strip()
    pairs = [item.split("=", 1) for item in ns.names]
    scope = "publish:" if ns.mode == "publish" else "connect:"
    scopes = [scope + p[0] for p in pairs]

    async def tickets() -> Ticket:
        return Ticket(ns.relay, host_key, signer(key_pem, scopes))

    async def grant() -> str:
        return signer(key_pem, scopes)

    link = RelayLink(tickets, label=ns.mode)
    await link.start()
    entrances: list[str] = []
    servers: list[asyncio.AbstractServer] = []
    for pair in pairs:
        if ns.mode == "publish":
            await link.publish(pair[0], target(int(pair[1])), grant)
            entrances.append(pair[0])
        else:
            await link.allow(pair[0], grant)
            server = await serve_local(link, pair[0])
            servers.append(server)
            port = server.sockets[0].getsockname()[1] if isinstance(server, asyncio.Server) else 0
            entrances.append(f"{pair[0]}={port}")
    print("ready " + " ".join(entrances), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
    await link.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_endpoint", description=__doc__)
    parser.add_argument("mode", choices=["publish", "connect"])
    parser.add_argument("--relay", required=True, help="host:port of the relay")
    parser.add_argument("--host-key", required=True, help="file with the relay's OpenSSH public host key")
    parser.add_argument("--key", required=True, help="private EC key (PEM) to sign tickets with")
    parser.add_argument("names", nargs="+", help="NAME=PORT (publish) or NAME (connect)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
