"""The alembic migrations build exactly the schema the models describe (on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from server.db.engine import make_engine, upgrade_sync
from server.db.models import Base


async def test_migrations_match_the_models(tmp_path: Path, database_url: str) -> None:
    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await asyncio.to_thread(upgrade_sync, url)
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:

            def diff(sync_conn: Any) -> list[Any]:
                ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
                return list(compare_metadata(ctx, Base.metadata))

            changes = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    assert changes == [], changes
