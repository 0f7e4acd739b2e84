"""Request body timeouts: a body that stops arriving ends its request with 408 instead of holding on.

The limit is on inactivity, not on the whole body: an upload that keeps flowing is never cut however
long it takes, and the handler's own time between reads (hashing, writing, fsync; aiohttp stops reading
the socket meanwhile) does not count. Only waiting for the client does.

The connection middleware (``server/connguard.py``) sets :data:`BODY_TIMEOUT` in the request's task, so
the body readers (``read_body`` in ``server/http.py``, ``DataStore.ingest``) apply it without every route
passing it along. Where no connection middleware runs (test clients, the plain listener) it is unset and
bodies are read as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from contextvars import ContextVar

from aiohttp import web

from common.errors import RequestTimeout

BODY_TIMEOUT: ContextVar[float | None] = ContextVar("xw_body_timeout", default=None)

BodyTimeout = RequestTimeout  # the client stopped sending the request body


class IdleLimited:
    """``chunks`` with an inactivity limit: waiting longer than ``timeout`` for one raises BodyTimeout.

    ``timeout`` defaults to the request's :data:`BODY_TIMEOUT` (None: no limit).
    """

    def __init__(self, chunks: AsyncIterable[bytes], timeout: float | None = None) -> None:
        self._chunks: AsyncIterator[bytes] = aiter(chunks)
        self._timeout = BODY_TIMEOUT.get() if timeout is None else timeout

    def __aiter__(self) -> IdleLimited:
        return self

    async def __anext__(self) -> bytes:
        if self._timeout is None:
            return await anext(self._chunks)
        try:
            async with asyncio.timeout(self._timeout):
                return await anext(self._chunks)
        except TimeoutError:
            raise BodyTimeout(f"no byte of the request body for {self._timeout:g} s") from None


async def read_all(request: web.BaseRequest) -> bytes:
    """The whole body like ``request.read()`` (413 past ``client_max_size``), 408 if it stalls."""
    if BODY_TIMEOUT.get() is None:
        return await request.read()
    limit = request.client_max_size
    body = bytearray()
    async for chunk in IdleLimited(request.content.iter_any()):
        body += chunk
        if limit and len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    return bytes(body)
