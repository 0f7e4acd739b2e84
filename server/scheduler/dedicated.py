"""A dedicated PostgreSQL connection outside SQLAlchemy's pool, held for the life of the process.

LISTEN and session-level advisory locks belong to one database session: a pooled connection would
hand them to whichever request borrows it next, and lose them when the pool recycles it. So the
wake-up listener (``notify.py``) and the reaper's leadership (``leader.py``) each hold a connection of
their own through :func:`hold`, which connects, runs a session on it until the connection is lost or the
session fails, tells the owner, waits a little (doubling up to :data:`BACKOFF_MAX`) and starts again.

The server side is asked to probe the connection with TCP keepalives, so that a process whose machine
vanishes (no FIN, no RST) gives up its LISTEN and its locks within about half a minute instead of the
kernel's two hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
PING_TIMEOUT = 5.0  # a liveness query slower than this: the connection is taken for lost
BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
# The server closes a silent client's session (and releases what it held) after idle + interval * count.
KEEPALIVES = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}
# What the asyncpg driver raises for a broken or refused connection.
LOST = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

Session = Callable[[Any], Coroutine[Any, Any, None]]


def connect_kwargs(url: str) -> dict[str, Any]:
    """asyncpg.connect() arguments for a SQLAlchemy ``postgresql+asyncpg://`` URL."""
    u = make_url(url)
    kwargs: dict[str, Any] = {
        "host": u.host,
        "port": u.port,
        "user": u.username,
        "password": u.password,
        "database": u.database,
    }
    query = {k: v if isinstance(v, str) else v[-1] for k, v in u.query.items()}
    if "host" in query:  # ?host=/run/postgresql: a Unix socket directory, as SQLAlchemy accepts it
        kwargs["host"] = query["host"]
    if "ssl" in query or "sslmode" in query:
        kwargs["ssl"] = query.get("ssl") or query.get("sslmode")
    return {k: v for k, v in kwargs.items() if v is not None}


def application_name(name: str) -> str:
    """How the connection shows in pg_stat_activity: which process holds it, for what."""
    return f"xwserver {os.getpid()} {name}"


async def connect(url: str, name: str) -> Any:
    """One new connection (an ``asyncpg.Connection``) with server-side keepalives."""
    settings = {**KEEPALIVES, "application_name": application_name(name)}
    return await asyncpg.connect(**connect_kwargs(url), timeout=CONNECT_TIMEOUT, server_settings=settings)


async def hold(url: str, name: str, session: Session, *, on_down: Callable[[], None]) -> None:
    """Forever (until cancelled): connect, run ``session(conn)``; when the connection is lost or the
    session fails, call ``on_down`` and connect again after a backoff. ``session`` returns only to end
    the connection (it normally loops until cancelled or until a query fails)."""
    backoff = BACKOFF_MIN
    down_since_logged = False  # one warning per outage, not one per attempt
    while True:
        try:
            conn = await connect(url, name)
        except LOST as exc:
            if not down_since_logged:
                logger.warning("%s: cannot connect to PostgreSQL (%s); retrying", name, _reason(exc))
                down_since_logged = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            continue
        if down_since_logged:
            logger.info("%s: connected to PostgreSQL again", name)
            down_since_logged = False
        backoff = BACKOFF_MIN
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _conn, closed=closed: closed.set())
        work = asyncio.create_task(session(conn), name=f"{name}-session")
        ended = asyncio.create_task(closed.wait(), name=f"{name}-closed")
        try:
            await asyncio.wait({work, ended}, return_when=asyncio.FIRST_COMPLETED)
            failure = work.exception() if work.done() and not work.cancelled() else None
            if failure is not None and not isinstance(failure, LOST):
                # a bug of ours, not the network's: say so, and start over slowly rather than stop
                logger.error("%s: session failed", name, exc_info=failure)
                backoff = BACKOFF_MAX
            elif failure is not None:
                logger.warning("%s: connection to PostgreSQL lost (%s); reconnecting", name, _reason(failure))
            else:
                logger.warning("%s: connection to PostgreSQL closed; reconnecting", name)
            down_since_logged = True
        finally:
            for task in (work, ended):
                task.cancel()
            await asyncio.gather(work, ended, return_exceptions=True)
            on_down()
            await close(conn)
        await asyncio.sleep(backoff)


async def close(conn: Any) -> None:
    """Close politely if the connection still answers, else drop it."""
    if conn.is_closed():
        return
    try:
        await asyncio.wait_for(conn.close(), PING_TIMEOUT)
    except LOST:
        conn.terminate()
    except asyncio.CancelledError:
        conn.terminate()
        raise


async def ping(conn: Any) -> None:
    """A round trip; raises (one of :data:`LOST`) if the connection does not answer in time."""
    await conn.fetchval("SELECT 1", timeout=PING_TIMEOUT)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


@contextlib.asynccontextmanager
async def running(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``coro`` as a background task for the duration of the block; cancel it afterwards."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
