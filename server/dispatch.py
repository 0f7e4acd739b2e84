"""Waking long-polling workers: a generation counter bumped whenever a job may have become claimable.

A work request reads the generation, tries to claim, and if nothing matched waits for the generation to
move on (or a short slice, so that jobs made PENDING by another server process are found too).
"""

from __future__ import annotations

import asyncio


class Dispatcher:
    """Process-local notifications of 'there may be new work'."""

    def __init__(self) -> None:
        self._generation = 0
        self._event = asyncio.Event()

    @property
    def generation(self) -> int:
        return self._generation

    def notify(self) -> None:
        """Wake every waiting work request."""
        self._generation += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, seen: int, timeout: float) -> None:
        """Return when the generation differs from ``seen``, or after ``timeout`` seconds."""
        if self._generation != seen or timeout <= 0:
            return
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
