"""The dashboard's job list stays fast at 100,000 jobs: keyset pages (no OFFSET), on the
(created, uid) index; the first and a deep page are timed (printed with -s) and bounded."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text

from common.enums import JobStatus, UserRights
from server.authz import Actor
from server.db.engine import make_engine, make_sessionmaker, upgrade_sync
from server.db.models import App, Job, table_of
from server.listing import JobFilter
from server.ui.queries import Cursor, history, job_page, status_counts

pytestmark = pytest.mark.slow
JOBS = 100_000
OWNERS = 10
STATUSES = [JobStatus.PENDING, JobStatus.COMPLETED, JobStatus.RUNNING, JobStatus.ERROR]
BOUND = 0.5  # seconds: far above what either database takes, far below an unindexed sort on a slow CI


def _jobs(app: str, owners: list[str], t0: datetime) -> list[dict[str, Any]]:
    return [
        {
            "uid": str(uuid.uuid4()),
            "owner_uid": owners[i % OWNERS],
            "group_uid": None,
            "access_rights": 0o700,
            "created": t0 + timedelta(milliseconds=10 * i),
            "modified": t0,
            "app_uid": app,
            "args": "",
            "env": [],
            "inputs": [],
            "label": f"job-{i}",
            "max_retries": 10,
            "retry": 0,
            "listen_ports": [],
            "forward_addresses": [],
            "status": STATUSES[i % 4].value,
            "platforms": "*",
            "memory": 0,
            "cpu_seconds": 0.0,
            "max_rss": 0,
            "net_in": 0,
            "net_out": 0,
        }
        for i in range(JOBS)
    ]


async def _timed(coro: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = await coro
    return out, time.perf_counter() - t


async def test_first_and_deep_pages_at_100k_jobs(tmp_path: Path, database_url: str) -> None:
    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 'big.db'}"
    await asyncio.to_thread(upgrade_sync, url)
    engine = make_engine(url)
    made = make_sessionmaker(engine)
    owners = [str(uuid.uuid4()) for _ in range(OWNERS)]
    app = str(uuid.uuid4())
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(table_of(App)),
                [
                    {
                        "uid": app,
                        "owner_uid": owners[0],
                        "group_uid": None,
                        "access_rights": 0o755,
                        "created": t0,
                        "modified": t0,
                        "name": "a",
                        "type": "script",
                        "binaries": [],
                        "min_memory": 0,
                    }
                ],
            )
            rows = _jobs(app, owners, t0)
            for k in range(0, JOBS, 5_000):
                await conn.execute(insert(table_of(Job)), rows[k : k + 5_000])
            if engine.dialect.name == "postgresql":
                await conn.execute(text("ANALYZE jobs"))
        admin = Actor(uid=str(uuid.uuid4()), login="admin", rights=UserRights.SUPER_USER, group_uid=None)
        user = Actor(uid=owners[3], login="u3", rights=UserRights.STANDARD_USER, group_uid=None)
        report = []
        async with made() as s:
            deep_key = (
                await s.execute(
                    select(Job.created, Job.uid)
                    .order_by(Job.created.desc(), Job.uid.desc())
                    .offset(90_000)
                    .limit(1)
                )
            ).one()
            deep = Cursor(deep_key[0], deep_key[1])
            await job_page(s, admin, JobFilter())  # warm the statement caches
            for who in (admin, user):
                for wanted in (JobFilter(), JobFilter(statuses=(JobStatus.COMPLETED, JobStatus.ERROR))):
                    first, t_first = await _timed(job_page(s, who, wanted))
                    far, t_deep = await _timed(job_page(s, who, wanted, after=deep))
                    assert len(first.jobs) == 50 and first.next is not None
                    assert far.jobs and all(j.created <= deep.created for j in far.jobs)
                    if who is user:
                        assert {j.owner_uid for j in first.jobs + far.jobs} == {user.uid}
                    which = ",".join(wanted.statuses) or "all"
                    report.append(
                        f"{who.login} {which}: first {t_first * 1e3:.1f} ms, deep {t_deep * 1e3:.1f} ms"
                    )
                    assert t_first < BOUND and t_deep < BOUND, report[-1]
            counts, t_counts = await _timed(status_counts(s, admin))
            assert sum(counts.values()) == JOBS
            _, t_hist = await _timed(history(s, admin))
            report.append(f"status counts {t_counts * 1e3:.1f} ms, last hour {t_hist * 1e3:.1f} ms")
        print(f"\n[{engine.dialect.name}, {JOBS:,} jobs] " + "; ".join(report))
    finally:
        await engine.dispose()
