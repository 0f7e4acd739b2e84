"""Dashboard sessions and their CSRF tokens.

A session is a row of ``ui_sessions`` keyed by the SHA-256 of a random id that only the browser's
cookie holds (a database leak gives no usable cookie). Every server process sharing the database
knows it; signing out deletes the row, so the old cookie stops working everywhere at once. The row
keeps the user's token version at sign-in: a password, rights or certificate change (which ends API
tokens) ends web sessions too. A session ends after ``IDLE`` without requests, and ``MAX_AGE`` after
sign-in in any case.

The CSRF token of a session is derived from its id (a hash under a distinct prefix): only the holder
of the cookie can know it, it needs no storage, and it changes with every sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.auth import actor_from_user
from server.authz import Actor
from server.db.models import UiSession, User, utcnow

COOKIE = "xw_session"
IDLE = timedelta(hours=8)  # a session unused this long ends
MAX_AGE = timedelta(days=7)  # and none lives longer than this
TOUCH_EVERY = timedelta(minutes=1)  # last_seen is written at most this often (the page polls every 2 s)
_ID_BYTES = 32


def id_hash(session_id: str) -> str:
    """What the database keeps of a session id."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def csrf_token(session_id: str) -> str:
    """The session's CSRF token (a hash of the id under its own prefix: not the stored hash)."""
    return hashlib.sha256(b"xwhep-ui-csrf\0" + session_id.encode()).hexdigest()


def csrf_ok(session_id: str, sent: str | None) -> bool:
    """Whether a form's token is the session's (constant time)."""
    return sent is not None and hmac.compare_digest(csrf_token(session_id), sent)


def new_session_id() -> str:
    return secrets.token_urlsafe(_ID_BYTES)


def expiry(created: datetime, now: datetime) -> datetime:
    """When a session used at ``now`` ends: after ``IDLE`` more, never past ``MAX_AGE``."""
    return min(now + IDLE, created + MAX_AGE)


@dataclass(frozen=True)
class WebSession:
    """A live session: its cookie id, its CSRF token and who it is."""

    session_id: str
    actor: Actor

    @property
    def csrf(self) -> str:
        return csrf_token(self.session_id)


async def start(sessions: async_sessionmaker[AsyncSession], user: User) -> str:
    """Open a session for ``user`` (already verified by whatever sign-in); returns the cookie's id."""
    sid = new_session_id()
    now = utcnow()
    async with sessions() as session, session.begin():
        await session.execute(delete(UiSession).where(UiSession.expires < now))  # sweep the ended ones
        session.add(
            UiSession(
                id_hash=id_hash(sid),
                user_uid=user.uid,
                token_version=user.token_version,
                created=now,
                expires=expiry(now, now),
                last_seen=now,
            )
        )
    return sid


async def resolve(sessions: async_sessionmaker[AsyncSession], sid: str) -> WebSession | None:
    """The live session behind a cookie's id, or None (unknown, ended, expired, or its user's token
    version moved on). Read from the database on every request: a sign-out anywhere counts at once."""
    if not sid or len(sid) > 128:
        return None
    now = utcnow()
    key = id_hash(sid)
    async with sessions() as session:
        found = (
            await session.execute(
                select(UiSession, User)
                .join(User, User.uid == UiSession.user_uid)
                .where(UiSession.id_hash == key, UiSession.expires > now)
            )
        ).first()
        if found is None:
            return None
        row, user = found
        if row.token_version != user.token_version:
            return None
        if now - row.last_seen >= TOUCH_EVERY:
            async with session.begin():
                await session.execute(
                    update(UiSession)
                    .where(UiSession.id_hash == key)
                    .values(last_seen=now, expires=expiry(row.created, now))
                )
    return WebSession(sid, actor_from_user(user, "session"))


async def end(sessions: async_sessionmaker[AsyncSession], sid: str) -> None:
    """Sign out: the session's row goes, so its cookie no longer works in any process."""
    async with sessions() as session, session.begin():
        await session.execute(delete(UiSession).where(UiSession.id_hash == id_hash(sid)))
