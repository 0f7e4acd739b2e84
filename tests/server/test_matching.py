"""Which PENDING jobs a host may claim: the cached claim statement (server/scheduler/matching.py,
claims.py) against real rows, on the test database (SQLite, or PostgreSQL under `make test-pg`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from common.enums import JobStatus, UserRights
from server.db.engine import make_engine, upgrade
from server.db.models import App, Job, table_of, utcnow
from server.scheduler.claims import _claim_select
from server.scheduler.matching import HostView, match_of

LINUX_AMD64 = HostView("host-uid", "host-a", "LINUX", "AMD64", 2 << 30, "owner-1", None)

JOBS: dict[str, dict[str, Any]] = {
    "script": {},
    "native": {"platforms": "|LINUX/AMD64|"},
    "any-os": {"platforms": "|ANY/AMD64|"},
    "any-cpu": {"platforms": "|LINUX/ANY|"},
    "any-any": {"platforms": "|ANY/ANY|"},
    "other-platform": {"platforms": "|WIN32/AMD64|MACOSX/ARM64|"},
    "near-miss": {"platforms": "|LINUX/AMD6|"},
    "for-me-by-name": {"expected_host": "host-a"},
    "for-me-by-uid": {"expected_host": "host-uid"},
    "for-another": {"expected_host": "host-b"},
    "too-big": {"memory": 4 << 30},
    "not-pending": {"status": JobStatus.RUNNING.value},
    "of-owner-2": {"owner_uid": "owner-2", "group_uid": "group-2"},
}


@pytest.fixture
async def engine(tmp_path: Path, database_url: str) -> AsyncIterator[AsyncEngine]:
    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    eng = make_engine(url)
    now = utcnow()
    async with eng.begin() as conn:
        await conn.execute(
            insert(table_of(App)),
            {"uid": "app", "owner_uid": "owner-1", "access_rights": 0o755, "name": "a", "type": "script"},
        )
        rows = []
        for i, (name, fields) in enumerate(JOBS.items()):
            row = {
                "uid": name,
                "owner_uid": "owner-1",
                "group_uid": "group-1",
                "access_rights": 0o700,
                "created": now + timedelta(seconds=i),
                "modified": now,
                "app_uid": "app",
                "args": "",
                "status": JobStatus.PENDING.value,
                "platforms": "*",
                "expected_host": None,
                "memory": 0,
                "max_retries": 1,
                "retry": 0,
                "env": [],
                "inputs": [],
                "listen_ports": [],
                "forward_addresses": [],
                "cpu_seconds": 0.0,
                "max_rss": 0,
                "net_in": 0,
                "net_out": 0,
            }
            row.update(fields)
            rows.append(row)
        await conn.execute(insert(table_of(Job)), rows)
    try:
        yield eng
    finally:
        await eng.dispose()


async def _claimable(engine: AsyncEngine, host: HostView, rights: UserRights, group: str | None) -> list[str]:
    match = match_of(host, rights, group)
    async with engine.connect() as conn:
        rows = await conn.execute(_claim_select(match.shape, 64, False), match.params)
        return [r.uid for r in rows]


MINE_OR_ANYONES = [
    "script",
    "native",
    "any-os",
    "any-cpu",
    "any-any",
    "for-me-by-name",
    "for-me-by-uid",
]


async def test_a_volunteer_host_takes_every_owners_jobs_it_can_run_oldest_first(engine: AsyncEngine) -> None:
    got = await _claimable(engine, LINUX_AMD64, UserRights.WORKER_USER, None)
    assert got == [*MINE_OR_ANYONES, "of-owner-2"]


async def test_a_private_host_takes_only_its_owners_jobs(engine: AsyncEngine) -> None:
    assert await _claimable(engine, LINUX_AMD64, UserRights.STANDARD_USER, None) == MINE_OR_ANYONES


async def test_a_group_administrators_host_takes_its_groups_jobs(engine: AsyncEngine) -> None:
    got = await _claimable(engine, LINUX_AMD64, UserRights.ADVANCED_USER, "group-2")
    assert got == ["of-owner-2"]


async def test_a_project_host_takes_only_that_groups_jobs(engine: AsyncEngine) -> None:
    host = HostView("host-uid", "host-a", "LINUX", "AMD64", 2 << 30, "owner-1", "group-2")
    assert await _claimable(engine, host, UserRights.WORKER_USER, None) == ["of-owner-2"]


async def test_memory_bound_and_platform_wildcards(engine: AsyncEngine) -> None:
    unbounded = HostView("host-uid", "host-a", "LINUX", "AMD64", 0, "owner-1", None)
    assert "too-big" in await _claimable(engine, unbounded, UserRights.WORKER_USER, None)
    arm = HostView("arm-uid", "host-arm", "MACOSX", "ARM64", 2 << 30, "owner-1", None)
    got = await _claimable(engine, arm, UserRights.WORKER_USER, None)
    assert got == ["script", "any-any", "other-platform", "of-owner-2"]
