"""Dashboard sessions and CSRF tokens, without a browser: a real database (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from common.enums import UserRights
from server.db.engine import make_engine, make_sessionmaker, upgrade_sync
from server.db.models import UiSession, User, utcnow
from server.ui import sessions
from server.ui.web import safe_next


def test_csrf_token_is_bound_to_the_session_and_is_not_what_the_database_keeps() -> None:
    a, b = sessions.new_session_id(), sessions.new_session_id()
    assert a != b and len(a) >= 40
    assert sessions.csrf_token(a) == sessions.csrf_token(a)
    assert sessions.csrf_token(a) != sessions.csrf_token(b)
    assert sessions.csrf_token(a) != sessions.id_hash(a)  # a leaked table gives no form token
    assert sessions.csrf_ok(a, sessions.csrf_token(a))
    assert not sessions.csrf_ok(a, sessions.csrf_token(b))
    assert not sessions.csrf_ok(a, None)
    assert not sessions.csrf_ok(a, "")


def test_expiry_slides_with_use_but_never_past_the_maximum_age() -> None:
    t0 = utcnow()
    assert sessions.expiry(t0, t0) == t0 + sessions.IDLE
    late = t0 + sessions.MAX_AGE - timedelta(minutes=5)
    assert sessions.expiry(t0, late) == t0 + sessions.MAX_AGE


def test_sign_in_goes_back_only_inside_the_dashboard() -> None:
    assert safe_next("/ui/jobs?status=PENDING") == "/ui/jobs?status=PENDING"
    for bad in ("https://evil.example/", "//evil.example/ui/", "/api/v1/jobs", "/ui\\..", None, ""):
        assert safe_next(bad) == "/ui/"


async def test_start_resolve_end_and_revocation(tmp_path: Path, database_url: str) -> None:
    url = database_url or f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
    await asyncio.to_thread(upgrade_sync, url)
    engine = make_engine(url)
    made = make_sessionmaker(engine)
    try:
        user = User(
            uid=str(uuid.uuid4()),
            owner_uid=None,
            group_uid=None,
            access_rights=0o700,
            login="alice",
            password_hash="x",
            rights=UserRights.STANDARD_USER.value,
            token_version=3,
        )
        async with made() as s, s.begin():
            s.add(user)
        sid = await sessions.start(made, user)
        found = await sessions.resolve(made, sid)
        assert found is not None and found.actor.login == "alice" and found.actor.auth == "session"
        assert await sessions.resolve(made, sid + "x") is None
        assert await sessions.resolve(made, "") is None
        async with made() as s:
            kept = (await s.execute(select(UiSession.id_hash))).scalars().all()
        assert kept == [sessions.id_hash(sid)]  # the id itself is nowhere in the database

        # a password or rights change (the token version moves) ends it, as it ends API tokens
        async with made() as s, s.begin():
            await s.execute(update(User).where(User.uid == user.uid).values(token_version=4))
        assert await sessions.resolve(made, sid) is None

        # a new session of the new version works until it expires or is ended
        user.token_version = 4
        sid2 = await sessions.start(made, user)
        assert await sessions.resolve(made, sid2) is not None
        async with made() as s, s.begin():
            await s.execute(update(UiSession).values(expires=utcnow() - timedelta(seconds=1)))
        assert await sessions.resolve(made, sid2) is None
        sid3 = await sessions.start(made, user)  # also sweeps the expired rows
        async with made() as s:
            assert (await s.execute(select(UiSession.id_hash))).scalars().all() == [sessions.id_hash(sid3)]
        await sessions.end(made, sid3)
        assert await sessions.resolve(made, sid3) is None
    finally:
        await engine.dispose()
