"""The server's garbage-collection policy (server/gcpolicy.py): survivors are frozen on schedule, and
the periodic full collection still frees reference cycles that were frozen."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from server import gcpolicy


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # leave the test process as it found it


class Node:
    other: Node | None = None


def test_a_full_collection_frees_cycles_that_were_frozen() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    gc.freeze()
    del a, b
    gc.collect()
    assert alive() is not None  # frozen: no ordinary collection looks at it
    found, took = gcpolicy.full_collection()
    assert alive() is None and found >= 2 and took >= 0
    assert gc.get_freeze_count() > 0  # the survivors are frozen again


async def test_survivors_are_frozen_every_period() -> None:
    freezer = asyncio.create_task(gcpolicy.keep_survivors_frozen(freeze_every=0.05, full_every=3600))
    await asyncio.sleep(0.01)
    first = gc.get_freeze_count()
    assert first > 0
    kept = [[i] for i in range(5000)]  # new objects that survive
    await asyncio.sleep(0.2)
    assert gc.get_freeze_count() >= first + len(kept)
    freezer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await freezer


async def test_no_period_freezes_only_once() -> None:
    await gcpolicy.keep_survivors_frozen(freeze_every=0)  # returns at once
    assert gc.get_freeze_count() > 0
