"""What authentication reads on every request, kept for a few seconds: users, hosts, verified tokens.

Checking a bearer token used to cost a signature check and a user lookup per request; a heartbeat of a
host credential a host lookup. Here a user's row is read at most once per ``ttl`` seconds per process,
and a verified token is remembered until it expires. Hosts are many and each calls rarely (a heartbeat
a minute, a long-poll return): one read per call would be one query per request of an idle fleet. So a
host, once read, stays while it keeps calling, and :meth:`AuthCache.refresh_hosts` (a background loop,
every second) re-reads every such host in one query per 5,000; an entry not refreshed within
``HOST_TTL`` (5 s: the refresh waits its turn for a busy database) is read again on its next use.
Changes take effect within ``ttl`` (2 s) for users — deleted or demoted, a changed password (token
version) — and within ``HOST_TTL`` for hosts, revoked or deleted. The process that makes such a
change forgets the entry at once (:meth:`forget_user`, :meth:`forget_host`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.enums import UserRights
from server.db.models import Host, User, table_of, utcnow
from server.scheduler.matching import HostView, quarantine_of

logger = logging.getLogger(__name__)

TTL = 2.0  # seconds a user or host row is trusted without reading it again
HOST_TTL = 5.0  # seconds a host row is trusted (refreshed in bulk every second: see the docstring)
HOST_IDLE = 900.0  # a host silent this long leaves the cache (read again when it calls)
CHANGES_OVERLAP = timedelta(seconds=10)  # rows modified this long before the last look are read again
FULL_EVERY = 60.0  # seconds between re-reads of every cached host, whatever ``modified`` says
REFRESH_CHUNK = 5_000  # hosts per refreshing query (bound parameters: both databases take 32,000)
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

    def __init__(
        self, ttl: float = TTL, clock: Callable[[], float] = time.monotonic, host_ttl: float = HOST_TTL
    ) -> None:
        self._clock = clock
        self._users = _Timed(ttl, MAX_ENTRIES, clock)
        self._host_ttl = host_ttl
        self._hosts: dict[str, list[Any]] = {}  # uid -> [HostSnap | None, read at, last used]
        self._last_look: datetime | None = None  # database time of the last refresh
        self._last_full = 0.0
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
        now = self._clock()
        entry = self._hosts.get(uid)
        if entry is not None and now - entry[1] <= self._host_ttl:
            entry[2] = now
            snap: HostSnap | None = entry[0]
            return snap
        found = (await _read_hosts(sessions, [uid])).get(uid)
        if found is None:
            self._hosts.pop(uid, None)  # unknown uids are not kept: anyone may send those
        elif entry is not None or len(self._hosts) < MAX_ENTRIES:
            self._hosts[uid] = [found, now, now]  # read after ``now``: at least as fresh as that
        return found

    async def refresh_hosts(self, sessions: async_sessionmaker[AsyncSession]) -> int:
        """Confirm or re-read every host that called within ``HOST_IDLE`` (dropping the others); how
        many were re-read.

        Re-reading every cached host each second would cost a row per host per second. Instead: the
        hosts whose row or owner's row changed since the last look (``modified``, with an overlap for
        clocks of several machines), and a count of those still there (a deleted host or owner has no
        row left to look at); all of them every ``FULL_EVERY`` seconds as a backstop.
        """
        start, wall = self._clock(), utcnow()
        for uid in [u for u, e in self._hosts.items() if start - e[2] > HOST_IDLE]:
            del self._hosts[uid]
        cached = list(self._hosts)
        if not cached:
            return 0
        full = self._last_look is None or start - self._last_full >= FULL_EVERY
        if full:
            self._last_full = start
            reread = cached
        else:
            assert self._last_look is not None
            changed = await _changed_hosts(sessions, self._last_look - CHANGES_OVERLAP)
            reread = [uid for uid in changed if uid in self._hosts]
            if await _count_hosts(sessions, cached) != len(cached):
                reread = cached  # some are gone: find out which
        snaps: dict[str, HostSnap] = {}
        for i in range(0, len(reread), REFRESH_CHUNK):
            snaps.update(await _read_hosts(sessions, reread[i : i + REFRESH_CHUNK]))
        self._last_look = wall
        again = set(reread)
        for uid in cached:
            entry = self._hosts.get(uid)
            # forgotten meanwhile, or read again since we started: keep what is there
            if entry is None or entry[1] >= start:
                continue
            if uid in again:
                entry[0] = snaps.get(uid)
            entry[1] = start
        return len(reread)

    def token(self, token: str) -> dict[str, Any] | None:
        """The claims of a token verified before (and not expired since), or None."""
        hit, claims = self._tokens.get(token)
        return claims if hit else None

    def remember_token(self, token: str, claims: dict[str, Any]) -> None:
        left = float(claims.get("exp", 0)) - time.time()
        if left > 0:
            self._tokens.put(token, claims, ttl=left)

    async def refresh_forever(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        """:meth:`refresh_hosts` every second until cancelled (a failed refresh is logged:
        the entries then expire and are read on their next use)."""
        while True:
            await asyncio.sleep(min(1.0, self._host_ttl / 2))
            try:
                await self.refresh_hosts(sessions)
            except Exception as exc:  # the database away: requests find out, and say so, themselves
                logger.warning("auth cache: hosts not refreshed: %s", exc)

    def forget_user(self, uid: str) -> None:
        self._users.pop(uid)

    def forget_host(self, uid: str) -> None:
        self._hosts.pop(uid, None)


_HOSTS, _USERS = table_of(Host), table_of(User)
_READ_HOSTS = (
    select(
        _HOSTS.c.uid,
        _HOSTS.c.name,
        _HOSTS.c.os,
        _HOSTS.c.cpu,
        _HOSTS.c.memory,
        _HOSTS.c.owner_uid,
        _HOSTS.c.project_uid,
        _HOSTS.c.quarantine,
        _HOSTS.c.credential_hash,
        _HOSTS.c.revoked,
        _USERS.c.login,
        _USERS.c.rights,
        _USERS.c.usergroup_uid,
        _USERS.c.token_version,
    )
    .join(_USERS, _USERS.c.uid == _HOSTS.c.owner_uid)
    .where(_HOSTS.c.uid.in_(bindparam("uids", expanding=True)))
)


async def _read_hosts(sessions: async_sessionmaker[AsyncSession], uids: list[str]) -> dict[str, HostSnap]:
    """The hosts among ``uids`` that exist, with their owners (one Core query, no ORM objects)."""
    async with sessions() as session:
        rows = (await session.execute(_READ_HOSTS, {"uids": uids})).all()
    return {
        r.uid: HostSnap(
            HostView(
                r.uid, r.name, r.os, r.cpu, r.memory, r.owner_uid, r.project_uid, quarantine_of(r.quarantine)
            ),
            r.credential_hash,
            r.revoked,
            UserSnap(r.owner_uid, r.login, UserRights(r.rights), r.usergroup_uid, r.token_version or 0),
        )
        for r in rows
    }


_CHANGED_HOSTS = (
    select(_HOSTS.c.uid)
    .join(_USERS, _USERS.c.uid == _HOSTS.c.owner_uid)
    .where(or_(_HOSTS.c.modified >= bindparam("since"), _USERS.c.modified >= bindparam("since")))
)
_COUNT_HOSTS = (
    select(func.count())
    .select_from(_HOSTS.join(_USERS, _USERS.c.uid == _HOSTS.c.owner_uid))
    .where(_HOSTS.c.uid.in_(bindparam("uids", expanding=True)))
)


async def _changed_hosts(sessions: async_sessionmaker[AsyncSession], since: datetime) -> list[str]:
    """Hosts whose row or whose owner's row was modified at or after ``since``."""
    async with sessions() as session:
        return list((await session.execute(_CHANGED_HOSTS, {"since": since})).scalars())


async def _count_hosts(sessions: async_sessionmaker[AsyncSession], uids: list[str]) -> int:
    """How many of ``uids`` are still hosts with an owner."""
    total = 0
    async with sessions() as session:
        for i in range(0, len(uids), REFRESH_CHUNK):
            chunk = uids[i : i + REFRESH_CHUNK]
            total += (await session.execute(_COUNT_HOSTS, {"uids": chunk})).scalar_one()
    return total
