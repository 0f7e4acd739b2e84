"""What assignments are made of, kept in memory: applications (briefly) and data files (for good).

Every claimed job needs its application's binary for the host and its input files (name, sha256, size).
A data object's content never changes once it is AVAILABLE, so its file reference is kept for the life
of the process (bounded). An application's binaries can change (``xwsendapp`` adds one), so it is kept
for a few seconds only; the process that changes one forgets it at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import DataStatus
from common.schemas import FileRef
from server.db.models import App, Data

APP_TTL = 2.0
MAX_FILES = 200_000


@dataclass(frozen=True)
class AppInfo:
    """An application as assignments need it."""

    uid: str
    name: str
    type: str
    binaries: list[dict[str, Any]]


class Catalog:
    """Per-process cache of applications and available data files."""

    def __init__(self) -> None:
        self._apps: dict[str, tuple[float, AppInfo]] = {}
        self._files: OrderedDict[str, FileRef] = OrderedDict()

    async def apps(self, session: AsyncSession, uids: Iterable[str]) -> dict[str, AppInfo]:
        now = time.monotonic()
        found: dict[str, AppInfo] = {}
        missing = []
        for uid in set(uids):
            hit = self._apps.get(uid)
            if hit is not None and hit[0] > now:
                found[uid] = hit[1]
            else:
                missing.append(uid)
        if missing:
            cols = (App.uid, App.name, App.type, App.binaries)
            for uid, name, kind, binaries in (
                await session.execute(select(*cols).where(App.uid.in_(missing)))
            ).all():
                info = AppInfo(uid, name, kind, list(binaries or []))
                self._apps[uid] = (now + APP_TTL, info)
                found[uid] = info
        return found

    async def files(self, session: AsyncSession, uids: Iterable[str]) -> dict[str, FileRef]:
        """File references of the AVAILABLE data objects among ``uids`` (the others are left out)."""
        found: dict[str, FileRef] = {}
        missing = []
        for uid in set(uids):
            ref = self._files.get(uid)
            if ref is not None:
                found[uid] = ref
            else:
                missing.append(uid)
        if missing:
            cols = (Data.uid, Data.name, Data.sha256, Data.size)
            stmt = select(*cols).where(Data.uid.in_(missing), Data.status == DataStatus.AVAILABLE.value)
            for uid, name, sha, size in (await session.execute(stmt)).all():
                if sha is None or size is None:
                    continue
                ref = FileRef(uid=uid, name=name, sha256=sha, size=size)
                self._files[uid] = ref
                found[uid] = ref
            while len(self._files) > MAX_FILES:
                self._files.popitem(last=False)
        return found

    def forget_app(self, uid: str) -> None:
        self._apps.pop(uid, None)

    def forget_file(self, uid: str) -> None:
        self._files.pop(uid, None)
