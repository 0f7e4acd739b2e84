"""Ports a test picks now and binds later (a relay the server must be told of first, a job's port).

Asking the kernel for port 0 and closing the socket hands out a number from the ephemeral range, the
same range outgoing connections take their local ports from: on a busy machine one of them may take it
before the test binds it (EADDRINUSE). A port below that range is never given to a connection, so only
another explicit bind can collide, and the probe below skips ports already bound.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
SPAN = 16384  # how far below the ephemeral range to pick


def _ephemeral_low() -> int:
    try:
        return int(PORT_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A port of 127.0.0.1 that nothing is bound to, outside the ephemeral range."""
    low = _ephemeral_low()
    pick = random.SystemRandom()
    for _ in range(1000):
        port = pick.randrange(max(1024, low - SPAN), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low}")
