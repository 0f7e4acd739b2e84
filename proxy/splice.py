"""Copy bytes both ways between two streams with flow control, counting them; every tunnel hop uses it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import asyncssh

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024  # at most this much is held per direction between a read and the peer's drain()

# What ends a tunnel without being a bug: resets, closed channels, a lost SSH connection.
STREAM_ERRORS = (OSError, EOFError, asyncssh.Error)


class ByteReader(Protocol):
    """The read half of an asyncio or asyncssh byte stream."""

    async def read(self, n: int = -1) -> bytes: ...


class ByteWriter(Protocol):
    """The write half of an asyncio or asyncssh byte stream."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def can_write_eof(self) -> bool: ...

    def write_eof(self) -> None: ...

    def close(self) -> None: ...


Pipe = tuple[ByteReader, ByteWriter]


@dataclass
class Traffic:
    """Bytes counted on one name; what 'in' means is up to the owner (see Relay.stats, RelayLink.stats)."""

    bytes_in: int = 0
    bytes_out: int = 0

    def totals(self) -> tuple[int, int]:
        """(bytes_in, bytes_out)."""
        return self.bytes_in, self.bytes_out


async def splice(
    left: Pipe, right: Pipe, traffic: Traffic | None = None, total: Traffic | None = None
) -> None:
    """Copy left->right (bytes_in) and right->left (bytes_out); EOF is passed on, an error closes both.

    Bytes are counted into ``traffic`` (the name's) and also into ``total`` (e.g. the relay's, for its
    metrics) when given.
    """
    counts = traffic if traffic is not None else Traffic()
    both = total if total is not None else Traffic()
    (left_reader, left_writer), (right_reader, right_writer) = left, right

    def count_in(n: int) -> None:
        counts.bytes_in += n
        both.bytes_in += n

    def count_out(n: int) -> None:
        counts.bytes_out += n
        both.bytes_out += n

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_pump(left_reader, right_writer, count_in))
            group.create_task(_pump(right_reader, left_writer, count_out))
    except* STREAM_ERRORS as failed:
        logger.debug("splice ended early: %s", failed.exceptions[0])
    finally:
        for writer in (left_writer, right_writer):
            _close_quietly(writer)


async def _pump(reader: ByteReader, writer: ByteWriter, count: Callable[[int], None]) -> None:
    """Copy one direction; drain() after every chunk is what bounds the memory a slow reader can cost."""
    while data := await reader.read(CHUNK):
        writer.write(data)
        count(len(data))
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


def _close_quietly(writer: ByteWriter) -> None:
    try:
        writer.close()
    except STREAM_ERRORS:  # already torn down by the peer
        pass


class CountingReader:
    """A reader that counts what it returns into ``traffic.bytes_in``."""

    def __init__(self, inner: ByteReader, traffic: Traffic) -> None:
        self._inner = inner
        self._traffic = traffic

    async def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (b'' at EOF)."""
        data = await self._inner.read(n)
        self._traffic.bytes_in += len(data)
        return data

    async def readexactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes; asyncio.IncompleteReadError at an early EOF."""
        parts: list[bytes] = []
        missing = n
        while missing:
            data = await self.read(missing)
            if not data:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(data)
            missing -= len(data)
        return b"".join(parts)


class CountingWriter:
    """A writer that counts what it is given into ``traffic.bytes_out``."""

    def __init__(self, inner: ByteWriter, traffic: Traffic) -> None:
        self._inner = inner
        self._traffic = traffic

    def write(self, data: bytes) -> None:
        """Queue ``data``; await drain() before writing more."""
        self._inner.write(data)
        self._traffic.bytes_out += len(data)

    async def drain(self) -> None:
        """Wait until the channel accepts more data."""
        await self._inner.drain()

    def can_write_eof(self) -> bool:
        """Whether write_eof() is supported."""
        return self._inner.can_write_eof()

    def write_eof(self) -> None:
        """Half-close: no more data from this side."""
        self._inner.write_eof()

    def close(self) -> None:
        """Close both directions."""
        self._inner.close()
