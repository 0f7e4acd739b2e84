"""Engine and session factory set-up, and alembic migrations run from code."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from server.db import inline_sqlite

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _only_real_migrations(record: logging.LogRecord) -> bool:
    """alembic says which DDL mode it assumes on every start; keep only the steps it actually runs."""
    return record.levelno >= logging.WARNING or record.getMessage().startswith("Running ")


logging.getLogger("alembic.runtime.migration").addFilter(_only_real_migrations)


def make_reader(url: str, engine: AsyncEngine) -> AsyncEngine:
    """The engine for reads that must not queue behind writes: on SQLite a second small pool (WAL lets
    readers run beside the single writer; authentication reads hosts and users through it, and lists
    are read through it, in aiosqlite's thread rather than on the event loop), elsewhere ``engine``
    itself."""
    if not url.startswith("sqlite"):
        return engine
    return _sqlite_engine(url, pool_size=4, inline=False)


def make_engine(url: str) -> AsyncEngine:
    """An async engine; SQLite gets WAL, a busy timeout and enforced foreign keys."""
    if url.startswith("sqlite"):
        return _sqlite_engine(url, pool_size=1, inline=inline_sqlite.is_inline_capable(url))
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _sqlite_engine(url: str, pool_size: int, inline: bool) -> AsyncEngine:
    # The writer has one pooled connection: SQLite has a single writer, and serialising in the pool
    # instead of in SQLite's lock avoids SQLITE_BUSY between this process's own transactions. It runs
    # its statements on the event loop's thread (server/db/inline_sqlite.py); readers keep aiosqlite's
    # thread, so a long read never holds the loop.
    extra: dict[str, Any] = {"async_creator": inline_sqlite.creator(url)} if inline else {}
    engine = create_async_engine(
        url,
        connect_args={"timeout": 30},
        poolclass=AsyncAdaptedQueuePool,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=120,
        **extra,
    )
    busy_ms = 0 if inline else 30000  # inline: lock waits go to a worker thread, see inline_sqlite

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.close()

    return engine


def make_sessionmaker(
    engine: AsyncEngine, info: dict[str, Any] | None = None
) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded attributes after commit; ``info`` is shared by every session made
    (the job status observers live there, see server/scheduler/writer.py)."""
    return async_sessionmaker(engine, expire_on_commit=False, info=info if info is not None else {})


def alembic_config(url: str) -> Config:
    """An alembic Config pointing at our migrations and ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade_sync(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (blocking; runs its own event loop)."""
    command.upgrade(alembic_config(url), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Migrate from async code: alembic's env runs its own loop, so it goes to a thread."""
    await asyncio.to_thread(upgrade_sync, url, revision)
