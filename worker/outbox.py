"""Small results travel together: one request completes every attempt that finished meanwhile.

A sweep's jobs often end within milliseconds of each other with results of a few hundred bytes; a
request each would cost more than the jobs. :meth:`Outbox.send` queues a result (up to
``INLINE_RESULT_BYTES``) and waits for its fate; :meth:`Outbox.run` sends what is queued, lingering a
few milliseconds for more, as one ``POST /hosts/{h}/results`` of at most ``MAX_BATCH_BYTES``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.api import XWClient
from common.errors import Conflict, XWError
from common.schemas import InlineResult

LINGER = 0.02  # seconds to wait for more results before sending
MAX_BATCH_BYTES = 768 * 1024  # base64 bytes per request (the server takes JSON bodies up to 1 MiB)
MAX_BATCH_ITEMS = 64


@dataclass
class _Queued:
    result: InlineResult
    done: asyncio.Future[None]


class Outbox:
    """Queued small results of this worker's attempts."""

    def __init__(
        self, client: XWClient, host_uid: Callable[[], str], log: logging.LoggerAdapter[Any]
    ) -> None:
        self._client = client
        self._host_uid = host_uid
        self._log = log
        self._queue: list[_Queued] = []
        self._ready = asyncio.Event()

    async def send(self, attempt: str, results: Path, return_code: int) -> None:
        """Queue a finished attempt's results zip; returns once the server accepted it. Raises Conflict
        if the server refused it (the attempt is not current any more), XWError if it could not be sent."""
        raw = await asyncio.to_thread(results.read_bytes)
        item = InlineResult(
            attempt=attempt,
            return_code=return_code,
            content=base64.b64encode(raw).decode(),
            sha256=hashlib.sha256(raw).hexdigest(),
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(item, done))
        self._ready.set()
        await done

    async def run(self) -> None:
        """Send queued results until cancelled."""
        while True:
            await self._ready.wait()
            await asyncio.sleep(LINGER)
            self._ready.clear()
            while self._queue:
                batch = self._take()
                await self._flush(batch)

    def _take(self) -> list[_Queued]:
        batch: list[_Queued] = []
        size = 0
        while self._queue and len(batch) < MAX_BATCH_ITEMS:
            n = len(self._queue[0].result.content)
            if batch and size + n > MAX_BATCH_BYTES:
                break
            batch.append(self._queue.pop(0))
            size += n
        return batch

    async def _flush(self, batch: list[_Queued]) -> None:
        try:
            reply = await self._client.send_results(self._host_uid(), [q.result for q in batch])
        except XWError as err:
            for q in batch:
                if not q.done.done():
                    q.done.set_exception(err)
            return
        accepted = set(reply.accepted)
        for q in batch:
            if q.done.done():
                continue
            if q.result.attempt in accepted:
                q.done.set_result(None)
            else:
                why = reply.refused.get(q.result.attempt, "refused without a reason")
                q.done.set_exception(Conflict(why))
        if reply.refused:
            self._log.info("%d result(s) refused: %s", len(reply.refused), "; ".join(reply.refused.values()))
