"""What authentication reads on every request, kept for a few seconds: users, hosts, verified tokens.

Checking a bearer token used to cost a signature check and a user lookup per request; a heartbeat of a
host credential a host lookup. Here a user's or a host's row is read at most once per ``ttl`` seconds
per process, and a verified token is remembered until it expires. Changes still take effect within
``ttl``: a deleted or demoted user, a changed password (token version), a revoked host. The process
that makes such a change forgets the entry at once (:meth:`forget_user`, :meth:`forget_host`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.enums import UserRights
from server.db.models import Host, User
from server.scheduler.matching import HostView

TTL = 2.0  # seconds a user or host row is trusted without reading it again
MAX_ENTRIES = 100_000
MAX_TOKENS = 50_000


@dataclass(frozen=True)
class UserSnap:
    """The fields of a user that authentication and authorisation need."""

    uid: str
    login: str
    rights: UserRights
    group_uid: str | None
    token_version: int


@dataclass(frozen=True)
class HostSnap:
    """A host as its credential check and the scheduler need it, with its owner."""

    view: HostView
    credential_hash: str | None
    revoked: datetime | None
    owner: UserSnap


def user_snap(u: User) -> UserSnap:
    return UserSnap(u.uid, u.login, UserRights(u.rights), u.usergroup_uid, u.token_version or 0)


class _Timed:
    """A bounded map whose entries expire ``ttl`` seconds after they were put."""

    def __init__(self, ttl: float, cap: int, clock: Callable[[], float]) -> None:
        self.ttl, self.cap, self.clock = ttl, cap, clock
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def get(self, key: str) -> tuple[bool, Any]:
        hit = self._items.get(key)
        if hit is None or hit[0] <= self.clock():
            return False, None
        return True, hit[1]

    def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        self._items[key] = (self.clock() + (self.ttl if ttl is None else ttl), value)
        self._items.move_to_end(key)
        while len(self._items) > self.cap:
            self._items.popitem(last=False)

    def pop(self, key: str) -> None:
        self._items.pop(key, None)


class AuthCache:
    """Per-process cache of users, hosts and verified tokens (see the module docstring)."""

    def __init__(self, ttl: float = TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._users = _Timed(ttl, MAX_ENTRIES, clock)
        self._hosts = _Timed(ttl, MAX_ENTRIES, clock)
        self._tokens = _Timed(ttl, MAX_TOKENS, clock)

    async def user(self, sessions: async_sessionmaker[AsyncSession], uid: str) -> UserSnap | None:
        hit, snap = self._users.get(uid)
        if hit:
            return snap  # type: ignore[no-any-return]
        async with sessions() as session:
            row = await session.get(User, uid)
        found = user_snap(row) if row is not None else None
        self._users.put(uid, found)
        return found

    async def host(self, sessions: async_sessionmaker[AsyncSession], uid: str) -> HostSnap | None:
        hit, snap = self._hosts.get(uid)
        if hit:
            return snap  # type: ignore[no-any-return]
        async with sessions() as session:
            row = (
                await session.execute(
                    select(Host, User).join(User, User.uid == Host.owner_uid).where(Host.uid == uid)
                )
            ).first()
        found = None
        if row is not None:
            h, owner = row
            found = HostSnap(HostView.of(h), h.credential_hash, h.revoked, user_snap(owner))
        self._hosts.put(uid, found)
        return found

    def token(self, token: str) -> dict[str, Any] | None:
        """The claims of a token verified before (and not expired since), or None."""
        hit, claims = self._tokens.get(token)
        return claims if hit else None

    def remember_token(self, token: str, claims: dict[str, Any]) -> None:
        left = float(claims.get("exp", 0)) - time.time()
        if left > 0:
            self._tokens.put(token, claims, ttl=left)

    def forget_user(self, uid: str) -> None:
        self._users.pop(uid)

    def forget_host(self, uid: str) -> None:
        self._hosts.pop(uid)
