"""server.authz.visible: the SQL clause selects exactly the rows that can() allows, on a real database.

SQLite always runs. PostgreSQL runs when XW_TEST_DATABASE_URL names a server (for example
``postgresql+asyncpg://user@host/db``); the test then creates and drops a fresh database of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from common.enums import UserRights as R
from common.rights import Perm
from server.authz import Actor, can, visible
from server.db.engine import make_engine, make_sessionmaker, upgrade_sync
from server.db.models import App

PG_ENV = "XW_TEST_DATABASE_URL"
GROUPS = ["g1", "g2", None]
MATRIX_MODES = [0o700, 0o750, 0o755, 0o711, 0o704, 0o070, 0o007, 0o1700]
EDGE_MODES = [0o000, 0o777, 0o1000, 0o1777, 0o040, 0o020, 0o010, 0o400, 0o200, 0o100, 0o004, 0o002, 0o001]
PERMS = [Perm.READ, Perm.WRITE, Perm.EXECUTE]
ACTORS = [
    Actor(
        uid=f"{level.value.lower()}-{group or 'nogroup'}",
        login=f"{level.value.lower()}-{group}",
        rights=level,
        group_uid=group,
    )
    for level, group in itertools.product(R, ["g1", None])
]
OWNERS: list[str | None] = [a.uid for a in ACTORS] + ["stranger", None]


def _modes() -> list[int]:
    rng = random.Random(0x5EED)
    return MATRIX_MODES + EDGE_MODES + [rng.randrange(0o2000) for _ in range(24)]


def _rows() -> Iterator[App]:
    for n, (owner, group, mode) in enumerate(itertools.product(OWNERS, GROUPS, _modes())):
        yield App(
            uid=f"app-{n:05d}",
            name=f"app-{n:05d}",
            type="binary",
            binaries=[],
            owner_uid=owner,
            group_uid=group,
            access_rights=mode,
        )


async def _check(url: str) -> None:
    await asyncio.to_thread(upgrade_sync, url)
    engine = make_engine(url)
    try:
        sessions = make_sessionmaker(engine)
        async with sessions() as session:
            session.add_all(_rows())
            await session.commit()
        async with sessions() as session:
            apps = list(await session.scalars(select(App)))
            assert len(apps) == len(OWNERS) * len(GROUPS) * len(_modes())
            everyone = {a.uid for a in apps}
            partial = 0
            for actor, perm in itertools.product(ACTORS, PERMS):
                query = select(App.uid).where(visible(actor, App, perm))
                got = set(await session.scalars(query))
                want = {a.uid for a in apps if can(actor, a, perm)}
                diff = sorted(got ^ want)[:5]
                assert got == want, f"{actor.login} {perm.name}: visible() and can() differ on {diff}"
                if actor.rights is R.SUPER_USER:
                    assert got == everyone
                elif actor.rights is R.WORKER_USER and perm is not Perm.READ:
                    assert got == set()
                else:
                    partial += 0 < len(got) < len(everyone)
            # every non-super, non-worker-write combination selects a proper, non-empty subset
            assert partial == 4 * 3 + 2
            std = next(a for a in ACTORS if a.rights is R.STANDARD_USER and a.group_uid)
            default = set(await session.scalars(select(App.uid).where(visible(std, App))))
            assert default == {a.uid for a in apps if can(std, a, Perm.READ)}
    finally:
        await engine.dispose()


async def test_visible_matches_can_sqlite(tmp_path: Path) -> None:
    await _check(f"sqlite+aiosqlite:///{tmp_path}/t.db")


@pytest.mark.database
async def test_visible_matches_can_postgresql() -> None:
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set (e.g. postgresql+asyncpg://user@host/db): PostgreSQL not tested")
    import asyncpg

    url = make_url(base)
    name = f"xwt_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        try:
            await _check(url.set(database=name).render_as_string(hide_password=False))
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()
