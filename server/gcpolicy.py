"""Garbage collection for a server that holds thousands of idle workers.

Each idle worker keeps a TLS connection and a parked long-poll in the server: ~130 objects that the
cyclic garbage collector must visit on every full collection. With 5,000 workers the heap held
~800,000 tracked objects and CPython's full collections, which ran every ~10 s as long-polls aged
into the oldest generation, paused the event loop for 650-900 ms each and found 0-6 objects to free
(measured with a gc callback during ``bench.scale``; docs/BENCHMARKS.md). Refcounting frees nearly
everything; the full collections were pure pause.

Most of those objects are the parked long-polls themselves, which live one long-poll period (up to a
minute) and are then freed by refcounting. So ``xwserver run`` freezes what has survived
(``gc.freeze()``, a list splice: those objects leave every collection) every ``gc_freeze_every``
seconds (5), and automatic collections visit only what was allocated since. What dies within the
frozen set is still freed by refcounting; only reference cycles inside it wait for the next full
collection, which unfreezes everything and collects once every ``gc_full_every`` seconds (an hour),
logged with its duration and what it found. A process-wide policy: the command runs it, not
``start()``, which tests call many times in one process.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

logger = logging.getLogger(__name__)

FREEZE_EVERY = 5.0  # seconds between two freezes of the surviving objects
FULL_EVERY = 3600.0  # seconds between two collections of everything (frozen objects included)


def full_collection() -> tuple[int, float]:
    """Unfreeze, collect everything, freeze the survivors again: (objects found unreachable, seconds)."""
    start = time.perf_counter()
    gc.unfreeze()
    found = gc.collect()
    gc.freeze()
    return found, time.perf_counter() - start


async def keep_survivors_frozen(freeze_every: float = FREEZE_EVERY, full_every: float = FULL_EVERY) -> None:
    """Freeze the surviving objects now and every ``freeze_every`` seconds, collect everything every
    ``full_every`` seconds; until cancelled. ``freeze_every`` 0: only the objects of start-up."""
    gc.freeze()
    if freeze_every <= 0:
        return
    last_full = time.monotonic()
    while True:
        await asyncio.sleep(freeze_every)
        if time.monotonic() - last_full >= full_every:
            found, took = full_collection()
            last_full = time.monotonic()
            logger.info("full garbage collection: %d unreachable objects, %.0f ms", found, took * 1000)
        else:
            gc.freeze()
