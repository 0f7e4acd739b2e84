"""The SQLite writer runs its statements on the event loop's thread (server/db/inline_sqlite.py): it
must still wait for another connection's lock (without stalling the loop), run big batches, keep
the WAL small, and behave like any DBAPI connection to SQLAlchemy."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from server.db import inline_sqlite
from server.db.engine import make_engine, make_sessionmaker


@pytest_asyncio.fixture
async def writer(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)"))
    yield engine
    await engine.dispose()


async def test_the_writer_is_inline(writer: AsyncEngine) -> None:
    async with writer.connect() as conn:
        raw = await conn.get_raw_connection()
        assert isinstance(raw.driver_connection, inline_sqlite.InlineConnection)


async def test_a_locked_database_is_waited_for_off_the_loop(writer: AsyncEngine, tmp_path: Path) -> None:
    other = sqlite3.connect(tmp_path / "w.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
    other.execute("INSERT INTO t (id) VALUES (1)")
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def write() -> None:
        async with make_sessionmaker(writer)() as session:
            await session.execute(text("INSERT INTO t (id) VALUES (2)"))
            await session.commit()

    tick = asyncio.create_task(ticker())
    writing = asyncio.create_task(write())
    await asyncio.sleep(0.6)
    assert not writing.done(), "the write should be waiting for the other connection's lock"
    waited = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(waited) > 10 and max(waited) < 0.4, "the event loop stalled while the write waited"
    other.execute("COMMIT")
    await asyncio.wait_for(writing, 10)
    tick.cancel()
    other.close()
    async with writer.connect() as conn:
        ids = (await conn.execute(text("SELECT id FROM t ORDER BY id"))).scalars().all()
    assert ids == [1, 2]


async def test_big_batches_and_errors_behave_as_on_any_driver(writer: AsyncEngine) -> None:
    rows = [{"id": i, "body": b"x"} for i in range(inline_sqlite.INLINE_ROWS * 4)]
    async with make_sessionmaker(writer)() as session:
        await session.execute(text("INSERT INTO t (id, body) VALUES (:id, :body)"), rows)
        await session.commit()
    async with make_sessionmaker(writer)() as session:
        with pytest.raises(IntegrityError):
            await session.execute(text("INSERT INTO t (id) VALUES (:id)"), [{"id": 9999}, {"id": 3}])
        await session.rollback()
        count = (await session.execute(text("SELECT count(*) FROM t"))).scalar_one()
    assert count == len(rows)  # the failed batch left nothing behind


async def test_the_wal_is_checkpointed_off_the_loop(
    writer: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inline_sqlite, "CHECKPOINT_EVERY", 20)
    wal = tmp_path / "w.db-wal"
    blob = b"z" * 8192  # three pages a commit
    largest = 0
    sessions = make_sessionmaker(writer)
    for i in range(600):
        async with sessions() as session:
            await session.execute(text("INSERT INTO t (id, body) VALUES (:id, :b)"), {"id": i, "b": blob})
            await session.commit()
        largest = max(largest, wal.stat().st_size)
    # without checkpoints the WAL would hold all 600 commits (~7 MiB); automatic ones are off
    assert largest < 3 * 1024 * 1024, f"WAL grew to {largest} bytes"
