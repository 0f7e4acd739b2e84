"""The SQLite writer's connection, run on the event loop's own thread.

aiosqlite sends every statement to a worker thread and back: a queue put, a thread wake-up, a
``call_soon_threadsafe`` and the GIL changing hands twice. On this project's hot path (a claim is ~6
statements, a results report ~8) that hop, not SQLite, was the cost: ~1 ms of wall and CPU per statement
under load, when SQLite answers these indexed statements in microseconds (docs/BENCHMARKS.md).

This module gives SQLAlchemy's aiosqlite dialect (through ``create_async_engine(async_creator=...)``) a
driver connection with aiosqlite's interface that runs statements inline. What could stall the loop is
kept off it:

* **Lock waits.** The connection has no busy timeout: a statement that finds the database locked by
  another connection (an admin command, a second tool) fails at once with SQLITE_BUSY, and is then
  retried in a worker thread that waits up to :data:`PATIENCE` seconds, as aiosqlite would have.
* **Big batches.** An executemany of more than :data:`INLINE_ROWS` rows (bulk submission) runs in a
  worker thread, where the hop is paid once for thousands of rows and the loop keeps serving.
* **Checkpoints.** Automatic WAL checkpoints (which fsync) are off on this connection; after every
  :data:`CHECKPOINT_EVERY` commits (big batches weigh more) the committing task runs a PASSIVE
  checkpoint of this connection in a worker thread: the writer waits for it, as it would for SQLite's
  own, while the loop goes on serving everything else.

The connection is used by one task at a time (the writer pool has one connection, and SQLAlchemy holds
an execute lock), so handing it to a worker thread for a retry is safe (``check_same_thread=False``).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

PATIENCE = 30.0  # seconds a statement may wait for another connection's lock (in a worker thread)
INLINE_ROWS = 256  # executemany batches larger than this go to a worker thread
CHECKPOINT_EVERY = 500  # commits between two WAL checkpoints (SQLite's own default: 1,000 pages)
ROWS_PER_WRITE = 10  # a batch of this many rows counts as one commit towards the next checkpoint
SQLITE_BUSY = 5

T = TypeVar("T")


def connect_args(url: str) -> tuple[str, dict[str, Any]]:
    """The file name and sqlite3.connect() options SQLAlchemy's dialect would use for ``url``."""
    args, opts = SQLiteDialect_aiosqlite().create_connect_args(make_url(url))
    return str(args[0]), dict(opts)


def is_inline_capable(url: str) -> bool:
    """Inline connections are for file databases (an in-memory one is per connection anyway)."""
    database = make_url(url).database
    return bool(database) and database != ":memory:" and "mode=memory" not in url


def creator(url: str) -> Callable[[], Any]:
    """An ``async_creator`` for create_async_engine: a new inline connection to ``url``'s database."""
    filename, opts = connect_args(url)
    opts["check_same_thread"] = False
    opts["timeout"] = 0  # never wait for a lock on the loop; see InlineConnection.run

    async def create() -> InlineConnection:
        return InlineConnection(sqlite3.connect(filename, **opts))

    return create


def _busy(error: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY proper: another connection holds the lock, and waiting can help (not BUSY_SNAPSHOT,
    which needs a new transaction)."""
    return getattr(error, "sqlite_errorcode", None) == SQLITE_BUSY


class InlineCursor:
    """aiosqlite's Cursor interface over a sqlite3 cursor, run through :meth:`InlineConnection.run`."""

    def __init__(self, owner: InlineConnection, cursor: sqlite3.Cursor) -> None:
        self._owner = owner
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = ()) -> InlineCursor:
        await self._owner.run(self._cursor.execute, sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> InlineCursor:
        rows = parameters if isinstance(parameters, Sequence) else list(parameters)
        await self._owner.run(self._cursor.executemany, sql, rows, bulk=len(rows) > INLINE_ROWS)
        self._owner.wrote(len(rows) // ROWS_PER_WRITE)
        return self

    async def fetchone(self) -> Any:
        return await self._owner.run(self._cursor.fetchone)

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        n = self._cursor.arraysize if size is None else size
        return await self._owner.run(self._cursor.fetchmany, n)

    async def fetchall(self) -> list[Any]:
        return await self._owner.run(self._cursor.fetchall)

    async def close(self) -> None:
        self._cursor.close()


class _Queue:
    """What SQLAlchemy's isolation-level setter expects of aiosqlite's private queue: run now."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as error:
            future.set_exception(error)


class InlineConnection:
    """aiosqlite's Connection interface over a sqlite3 connection, run on the loop's thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._connection: sqlite3.Connection | None = conn  # SQLAlchemy checks it before commit/rollback
        self._tx = _Queue()
        self._writes = 0  # commits (and big batches) since the last checkpoint
        conn.execute("PRAGMA wal_autocheckpoint=0")

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    async def run(self, fn: Callable[..., T], *args: Any, bulk: bool = False) -> T:
        """``fn(*args)`` on this thread; in a worker thread if it is bulky or must wait for a lock."""
        if not bulk:
            try:
                return fn(*args)
            except sqlite3.OperationalError as error:
                if not _busy(error):
                    raise
                # Retrying the whole call is safe: SQLITE_BUSY comes from taking a lock, which a
                # transaction does at its first write (an executemany: at its first row, nothing done
                # yet); once it holds the write lock no statement of it is refused with BUSY.
                logger.debug("database locked by another connection; waiting off the event loop")
        return await asyncio.to_thread(self._patiently, fn, *args)

    def _patiently(self, fn: Callable[..., T], *args: Any) -> T:
        self._conn.execute(f"PRAGMA busy_timeout={int(PATIENCE * 1000)}")
        try:
            return fn(*args)
        finally:
            self._conn.execute("PRAGMA busy_timeout=0")

    def wrote(self, weight: int) -> None:
        """Count a big batch as this many commits towards the next checkpoint."""
        self._writes += weight

    def cursor(self) -> InlineCursor:
        return InlineCursor(self, self._conn.cursor())

    async def execute(self, sql: str, parameters: Any = ()) -> InlineCursor:
        cursor = self.cursor()
        return await cursor.execute(sql, parameters)

    async def commit(self) -> None:
        await self.run(self._conn.commit)
        self._writes += 1
        if self._writes >= CHECKPOINT_EVERY:
            self._writes = 0
            await asyncio.to_thread(self._checkpoint_now)

    async def rollback(self) -> None:
        await self.run(self._conn.rollback)

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    def _checkpoint_now(self) -> None:
        """A PASSIVE checkpoint on this connection, between two of its transactions: nothing of ours is
        written meanwhile, so it can copy the whole WAL and the next transaction starts it afresh (one
        on another connection would chase the writer's new frames and never let the WAL restart)."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as error:  # a missed checkpoint only lets the WAL grow until the next one
            logger.warning("WAL checkpoint failed: %s", error)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Close at once (SQLAlchemy's terminate)."""
        if self._connection is not None:
            self._connection = None
            self._conn.close()
