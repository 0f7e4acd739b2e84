"""Content-addressed LRU cache of application binaries and data, verified by sha256."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from common.errors import XWError

logger = logging.getLogger(__name__)

SHA256_RE = re.compile(r"[0-9a-f]{64}")
# mtime given to every placed file (2001-09-09): any later write moves it, whatever the clock granularity.
PLACED_MTIME_NS = 1_000_000_000 * 1_000_000_000
# A file changed this recently may change again within one timestamp tick: do not trust its stat.
RACY_SECONDS = 2.0

Download = Callable[[Path], Awaitable[None]]
Fingerprint = tuple[int, int, int, int]


class CacheError(XWError):
    """Downloaded content does not match its announced sha256 or size."""

    code = "cache"
    title = "Cache error"


@dataclass
class CacheStats:
    """Counters for logs and tests: hits (no download), misses (absent), refetches (corrupt or lost)."""

    hits: int = 0
    misses: int = 0
    refetches: int = 0


@dataclass
class _Entry:
    size: int
    last_use: float
    fingerprint: Fingerprint | None  # None: not verified by this process, or changed too recently


def _fingerprint(st: os.stat_result) -> Fingerprint:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _hash_file(path: Path) -> tuple[str, int, os.stat_result]:
    """sha256 and size of ``path`` and its stat taken on the same open file."""
    with path.open("rb") as fh:
        before = os.fstat(fh.fileno())
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
        size = fh.tell()
        after = os.fstat(fh.fileno())
    # A file written while we hashed it gets no fingerprint: it is rehashed next time.
    return digest, size, after if _fingerprint(before) == _fingerprint(after) else before


class FileCache:
    """Verified, size-bounded store of files named by their sha256."""

    # Files live at root/<sha256> (mode 0o444); downloads land in root/tmp/ and are placed only once their
    # sha256 and size match. A file is trusted without rehashing while its (size, mtime_ns, ctime_ns, inode)
    # is what we saw when we last hashed it; placed files get a fixed mtime, so an in-place write shows even
    # within one timestamp tick. Files found at start-up are rehashed on first use.
    #
    # Pinning: pin every sha256 a job uses *before* fetching it and unpin when the job is done, or use
    # `async with cache.use(sha256, size, download) as path`. Pinned and in-flight files are never evicted;
    # eviction drops the least recently used others until the total fits max_bytes. A file larger than
    # max_bytes is still fetched, and evicted once unpinned.

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.tmp = root / "tmp"
        self._stats = CacheStats()
        self._entries: dict[str, _Entry] = {}
        self._pins: dict[str, int] = {}
        self._inflight: dict[str, asyncio.Task[Path]] = {}
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)  # jobs get copies: under the rlimits fallback they must not browse the cache
        shutil.rmtree(self.tmp, ignore_errors=True)  # partial downloads of an earlier run
        self.tmp.mkdir()
        for path in root.iterdir():
            if SHA256_RE.fullmatch(path.name) and path.is_file():
                self._entries[path.name] = _Entry(path.stat().st_size, 0.0, None)

    @property
    def stats(self) -> CacheStats:
        """A copy of the counters."""
        return CacheStats(self._stats.hits, self._stats.misses, self._stats.refetches)

    @property
    def total_bytes(self) -> int:
        """Bytes held by cached files."""
        return sum(e.size for e in self._entries.values())

    def path(self, sha256: str) -> Path:
        """Where the file with ``sha256`` lives (whether or not it is there)."""
        if not SHA256_RE.fullmatch(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._entries

    def pin(self, sha256: str) -> None:
        """Protect ``sha256`` from eviction (counted; may precede the fetch)."""
        self.path(sha256)
        self._pins[sha256] = self._pins.get(sha256, 0) + 1

    def unpin(self, sha256: str) -> None:
        """Undo one ``pin``; the file becomes evictable when the last pin goes."""
        count = self._pins.get(sha256, 0)
        if count <= 0:
            raise ValueError(f"{sha256} is not pinned")
        if count == 1:
            del self._pins[sha256]
        else:
            self._pins[sha256] = count - 1
        self._evict()

    @asynccontextmanager
    async def use(self, sha256: str, size: int, download: Download) -> AsyncIterator[Path]:
        """Pin, fetch and yield the verified path; unpin on exit."""
        self.pin(sha256)
        try:
            yield await self.fetch(sha256, size, download)
        finally:
            self.unpin(sha256)

    async def fetch(self, sha256: str, size: int, download: Download) -> Path:
        """A verified copy of ``sha256``; concurrent fetches of one file share a single download."""
        self.path(sha256)
        task = self._inflight.get(sha256)
        if task is None:
            task = asyncio.create_task(self._fetch(sha256, size, download), name=f"fetch {sha256[:12]}")
            self._inflight[sha256] = task
            task.add_done_callback(lambda _: self._inflight.pop(sha256, None))
        # shield: one caller giving up does not cancel the download the others wait for.
        return await asyncio.shield(task)

    async def _fetch(self, sha256: str, size: int, download: Download) -> Path:
        path = self.path(sha256)
        entry = self._entries.get(sha256)
        if entry is not None:
            if await self._still_good(path, sha256, size, entry):
                self._stats.hits += 1
                entry.last_use = time.monotonic()
                return path
            logger.warning("cache: %s is corrupt or changed, downloading it again", sha256)
            self._drop(sha256)
            self._stats.refetches += 1
        else:
            path.unlink(missing_ok=True)  # appeared behind our back: never trusted unverified
            self._stats.misses += 1
        await self._download(path, sha256, size, download)
        self._evict()
        return path

    async def _still_good(self, path: Path, sha256: str, size: int, entry: _Entry) -> bool:
        """Whether the file on disk is still the content we verified (rehashing if in doubt)."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        if entry.fingerprint is not None and entry.fingerprint == _fingerprint(st) and st.st_size == size:
            return True
        try:
            digest, real_size, st = await asyncio.to_thread(_hash_file, path)
        except OSError:
            return False
        if digest != sha256 or real_size != size:
            return False
        entry.size = real_size
        entry.fingerprint = None if time.time() - st.st_ctime < RACY_SECONDS else _fingerprint(st)
        return True

    async def _download(self, path: Path, sha256: str, size: int, download: Download) -> None:
        tmp = self.tmp / f"{sha256}.{uuid.uuid4().hex}.part"
        try:
            await download(tmp)
            try:
                digest, real_size, _ = await asyncio.to_thread(_hash_file, tmp)
            except FileNotFoundError:
                raise CacheError(f"download of {sha256} produced no file") from None
            if real_size != size:
                raise CacheError(f"download of {sha256}: got {real_size} bytes, expected {size}")
            if digest != sha256:
                raise CacheError(f"download of {sha256}: content has sha256 {digest}")
            tmp.chmod(0o444)
            os.utime(tmp, ns=(PLACED_MTIME_NS, PLACED_MTIME_NS))
            os.replace(tmp, path)
            st = path.stat()  # after the rename, which may itself change ctime
        finally:
            tmp.unlink(missing_ok=True)
        self._entries[sha256] = _Entry(size, time.monotonic(), _fingerprint(st))

    def _drop(self, sha256: str) -> None:
        self._entries.pop(sha256, None)
        self.path(sha256).unlink(missing_ok=True)

    def _evict(self) -> None:
        """Delete least recently used unpinned files until the total fits ``max_bytes``."""
        total = self.total_bytes
        if total <= self.max_bytes:
            return
        candidates = sorted(
            (e.last_use, sha)
            for sha, e in self._entries.items()
            if sha not in self._pins and sha not in self._inflight
        )
        for _, sha in candidates:
            if total <= self.max_bytes:
                break
            total -= self._entries[sha].size
            logger.info("cache: evicting %s (%d bytes)", sha, self._entries[sha].size)
            self._drop(sha)
