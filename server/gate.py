"""The gate: accepted connections that have not sent a byte yet, kept as bare file descriptors.

Opening sockets and saying nothing is the cheapest attack on a server, so a silent connection here
costs one descriptor, one entry in a private epoll set and one dict slot (descriptor -> accept time):
no Python socket, no asyncio handle, no TLS object. Nothing in the gate is an object the garbage
collector walks, which matters at 20,000 entries: with an asyncio reader per socket (a handle, a
selector key, a socket object each), collections over a full gate measured 100-300 ms, all of it
latency for every request in flight.

The event loop watches the epoll set's own descriptor only. When sockets in it become readable (a
first byte, or the client closing) the gate hands them on, descriptor and accept time, to the
listener; entries also leave oldest first when evicted, or when their time is up. Without epoll (not
Linux) each descriptor gets an ordinary loop reader instead: the same behaviour, at the old cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
from collections.abc import Callable

READY_BATCH = 256  # readable entries handed on per wake-up; the rest stay readable for the next one


class Gate:
    """Silent connections by descriptor, oldest first; ``on_ready(fd, accepted_at)`` takes them on."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_ready: Callable[[int, float], None]) -> None:
        self._loop = loop
        self._on_ready = on_ready
        self._since: dict[int, float] = {}  # insertion order is accept order
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        if self._epoll is not None:
            loop.add_reader(self._epoll.fileno(), self._ready)

    def __len__(self) -> int:
        return len(self._since)

    def add(self, fd: int, accepted_at: float) -> None:
        """Take ownership of ``fd`` until it is handed on or closed."""
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        else:
            self._loop.add_reader(fd, self._hand_on, fd)
        self._since[fd] = accepted_at

    def oldest(self) -> float | None:
        """The accept time of the oldest entry (None if the gate is empty)."""
        return next(iter(self._since.values()), None)

    def evict_oldest(self) -> bool:
        """Close the oldest entry to make room; False if the gate is empty."""
        fd = next(iter(self._since), None)
        if fd is None:
            return False
        self._close(fd)
        return True

    def expire(self, accepted_before: float) -> int:
        """Close the entries accepted before ``accepted_before``; how many."""
        closed = 0
        for fd, since in list(self._since.items()):
            if since >= accepted_before:
                break
            self._close(fd)
            closed += 1
        return closed

    def close(self) -> None:
        """Close every entry and the epoll set (the listener is stopping)."""
        for fd in list(self._since):
            self._close(fd)
        if self._epoll is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()

    def _ready(self) -> None:
        assert self._epoll is not None
        for fd, _ in self._epoll.poll(0, READY_BATCH):
            self._hand_on(fd)

    def _hand_on(self, fd: int) -> None:
        since = self._since.pop(fd, None)
        if since is None:
            return  # closed by an eviction in the same batch
        self._forget(fd)
        self._on_ready(fd, since)

    def _close(self, fd: int) -> None:
        del self._since[fd]
        self._forget(fd)
        os.close(fd)

    def _forget(self, fd: int) -> None:
        if self._epoll is not None:
            with contextlib.suppress(OSError):  # closing the fd already removed it from the set
                self._epoll.unregister(fd)
        else:
            self._loop.remove_reader(fd)
