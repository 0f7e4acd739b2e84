"""Blob references and collection, safe with several server processes on one database.

A blob row counts the data objects that use a content. Counting up is an upsert, which locks the row;
collecting locks the unreferenced rows it takes (FOR UPDATE SKIP LOCKED), deletes their files
*before* deleting the rows, and commits. So an upload of the same content either waits for the
collection and then finds no row (it inserts one and places its own file), or takes the row first and
the collection skips it: a file is never deleted under a live reference.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from server.db.models import Blob
from server.store import DataStore


def _postgres(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name == "postgresql"


async def ref(session: AsyncSession, sha: str, size: int, inline: bytes | None = None) -> None:
    """Count one more reference to content ``sha``, creating its row (with ``inline`` content) if new."""
    await _upsert(session, [{"sha256": sha, "size": size, "refcount": 1, "inline": inline}])


async def ref_many(session: AsyncSession, contents: dict[str, bytes], refs: list[str]) -> None:
    """Count one reference per item of ``refs`` (sha256s of ``contents``, kept inline), in one statement."""
    wanted: dict[str, int] = {}
    for sha in refs:
        wanted[sha] = wanted.get(sha, 0) + 1
    await _upsert(
        session,
        [
            {"sha256": sha, "size": len(contents[sha]), "refcount": n, "inline": contents[sha]}
            for sha, n in wanted.items()
        ],
    )


async def _upsert(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert blob rows, or add their counts to the rows already there (ON CONFLICT: two uploads of a
    new content at once must both count, not collide). It locks each row it touches: a collection
    either waits for this transaction or has already deleted the row (then this inserts it anew)."""
    if not rows:
        return
    insert_ = pg_insert if _postgres(session) else sqlite_insert
    stmt = insert_(Blob)
    stmt = stmt.on_conflict_do_update(
        index_elements=[Blob.sha256], set_={"refcount": Blob.refcount + stmt.excluded.refcount}
    )
    await session.execute(stmt, rows)


async def unref(session: AsyncSession, sha: str) -> None:
    """Count one reference less (the row stays until collected)."""
    await session.execute(
        update(Blob)
        .where(Blob.sha256 == sha)
        .values(refcount=Blob.refcount - 1)
        .execution_options(synchronize_session=False)
    )


async def collect(session: AsyncSession, store: DataStore, only: Iterable[str] | None = None) -> int:
    """Delete unreferenced blobs (``only`` these, or up to 1,000 of any); how many went."""
    stmt = select(Blob.sha256, Blob.inline.is_not(None)).where(Blob.refcount <= 0)
    if only is not None:
        stmt = stmt.where(Blob.sha256.in_(list(only)))
    stmt = stmt.limit(1000)
    if _postgres(session):
        stmt = stmt.with_for_update(skip_locked=True)  # a blob being referenced right now: skip it
    gone = (await session.execute(stmt)).all()
    for sha, inline in gone:
        if not inline:
            store.delete(sha)
    if gone:
        await session.execute(
            delete(Blob)
            .where(Blob.sha256.in_([sha for sha, _ in gone]), Blob.refcount <= 0)
            .execution_options(synchronize_session=False)
        )
    return len(gone)
