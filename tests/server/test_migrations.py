"""The alembic migrations build exactly the schema the models describe (on SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from server.db.engine import make_engine, upgrade_sync
from server.db.models import App, Base, Event, Job, table_of


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


def _job(uid: str, owner: str, label: str | None, minute: int) -> dict[str, Any]:
    at = datetime(2026, 1, 1, 12, minute, tzinfo=UTC)
    return {
        "uid": uid,
        "owner_uid": owner,
        "group_uid": None,
        "access_rights": 0o700,
        "created": at,
        "modified": at,
        "app_uid": APP,
        "args": "",
        "env": [],
        "inputs": [],
        "label": label,
        "max_retries": 10,
        "retry": 0,
        "listen_ports": [],
        "forward_addresses": [],
        "status": "PENDING",
        "platforms": "*",
        "memory": 0,
        "cpu_seconds": 0.0,
        "max_rss": 0,
        "net_in": 0,
        "net_out": 0,
    }


APP = str(uuid.uuid4())


async def test_0004_relabels_shared_labels_then_keeps_labels_unique_per_owner(
    tmp_path: Path, database_url: str
) -> None:
    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await asyncio.to_thread(upgrade_sync, url, "0003")
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    uids = [str(uuid.uuid4()) for _ in range(10)]
    long = "L" * 128
    rows = [
        _job(uids[0], alice, "run", 0),  # the oldest keeps its label
        _job(uids[2], alice, "run", 2),
        _job(uids[1], alice, "run", 1),
        _job(uids[3], bob, "run", 0),  # another owner's: untouched
        _job(uids[4], alice, None, 0),  # no label, empty label: unlimited
        _job(uids[5], alice, None, 1),
        _job(uids[6], alice, "", 0),
        _job(uids[7], alice, "", 1),
        _job(uids[8], alice, long, 0),
        _job(uids[9], alice, long, 1),
    ]
    jobs, events, apps = table_of(Job), table_of(Event), table_of(App)
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            now = datetime.now(UTC)
            await conn.execute(
                insert(apps).values(
                    uid=APP,
                    name="a",
                    type="script",
                    binaries=[],
                    min_memory=0,
                    access_rights=0o700,
                    created=now,
                    modified=now,
                )
            )
            await conn.execute(insert(jobs), rows)
        await asyncio.to_thread(upgrade_sync, url)
        async with engine.connect() as conn:
            labels = dict((await conn.execute(select(jobs.c.uid, jobs.c.label))).all())
            relabels = (
                await conn.execute(
                    select(events.c.object_uid, events.c.object_owner_uid, events.c.reason).where(
                        events.c.action == "relabel"
                    )
                )
            ).all()
        assert labels == {
            uids[0]: "run",
            uids[1]: f"run-{uids[1]}",
            uids[2]: f"run-{uids[2]}",
            uids[3]: "run",
            uids[4]: None,
            uids[5]: None,
            uids[6]: "",
            uids[7]: "",
            uids[8]: long,
            uids[9]: f"{long[:91]}-{uids[9]}",
        }
        assert len(labels[uids[9]]) == 128
        assert sorted((uid, owner) for uid, owner, _ in relabels) == sorted(
            [(uids[1], alice), (uids[2], alice), (uids[9], alice)]
        )
        assert all(uids[0] in why or uids[8] in why for _, _, why in relabels)  # names the job keeping it

        # the database itself now refuses a second job with one owner's label, and only that
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(insert(jobs), [_job(str(uuid.uuid4()), alice, "run", 5)])
        async with engine.begin() as conn:
            more = [_job(str(uuid.uuid4()), alice, label, 6) for label in (None, None, "", "")]
            await conn.execute(insert(jobs), [*more, _job(str(uuid.uuid4()), bob, "other", 6)])
    finally:
        await engine.dispose()
