"""worker.cache: verified content-addressed files, refetch of corrupt copies, LRU eviction with pins."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import worker.cache
from worker.cache import CacheError, FileCache


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Origin:
    """A fake server: serves blobs by sha256 and counts downloads."""

    def __init__(self, *blobs: bytes, delay: float = 0.0) -> None:
        self.blobs = {sha(b): b for b in blobs}
        self.downloads: list[str] = []
        self.delay = delay

    def download(self, digest: str) -> Callable[[Path], Awaitable[None]]:
        async def write(tmp: Path) -> None:
            self.downloads.append(digest)
            await asyncio.sleep(self.delay)
            tmp.write_bytes(self.blobs[digest])

        return write

    async def fetch(self, cache: FileCache, data: bytes) -> Path:
        return await cache.fetch(sha(data), len(data), self.download(sha(data)))


A, B, C = b"a" * 100, b"b" * 100, b"c" * 100


async def test_miss_then_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    origin = Origin(A)
    cache = FileCache(tmp_path / "cache", 10_000)
    first = await origin.fetch(cache, A)
    hashed: list[Path] = []
    real_hash = worker.cache._hash_file
    monkeypatch.setattr(worker.cache, "_hash_file", lambda p: hashed.append(p) or real_hash(p))
    second = await origin.fetch(cache, A)
    assert hashed == []  # a hit on an unchanged file does not rehash it
    assert first == second == tmp_path / "cache" / sha(A)
    assert first.read_bytes() == A
    assert origin.downloads == [sha(A)]
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.refetches) == (1, 1, 0)
    assert first.stat().st_mode & 0o777 == 0o444  # jobs get copies, never this file
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


async def test_corrupt_file_is_downloaded_again(tmp_path: Path) -> None:
    origin = Origin(A)
    cache = FileCache(tmp_path / "cache", 10_000)
    path = await origin.fetch(cache, A)
    with open(path, "r+b") as fh:  # same size, same inode, written right after placing it
        fh.write(b"EVIL")
    again = await origin.fetch(cache, A)
    assert again.read_bytes() == A
    assert origin.downloads == [sha(A), sha(A)]
    stats = cache.stats
    assert (stats.hits, stats.misses, stats.refetches) == (0, 1, 1)


async def test_truncated_or_replaced_file_is_downloaded_again(tmp_path: Path) -> None:
    origin = Origin(A)
    cache = FileCache(tmp_path / "cache", 10_000)
    path = await origin.fetch(cache, A)
    path.unlink()
    path.write_bytes(A[:10])
    assert (await origin.fetch(cache, A)).read_bytes() == A
    path.unlink()
    assert (await origin.fetch(cache, A)).read_bytes() == A
    assert cache.stats.refetches == 2


async def test_a_new_process_rehashes_once_then_trusts(tmp_path: Path) -> None:
    origin = Origin(A, B)
    await origin.fetch(FileCache(tmp_path / "cache", 10_000), A)
    bad = tmp_path / "cache" / sha(B)
    bad.write_bytes(b"not B")  # a stray file under B's name
    cache = FileCache(tmp_path / "cache", 10_000)  # a restart
    assert (await origin.fetch(cache, A)).read_bytes() == A
    assert (await origin.fetch(cache, B)).read_bytes() == B
    assert origin.downloads == [sha(A), sha(B)]
    assert (cache.stats.hits, cache.stats.refetches) == (1, 1)


async def test_wrong_content_is_refused_and_not_placed(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "cache", 10_000)

    async def liar(tmp: Path) -> None:
        tmp.write_bytes(B)

    with pytest.raises(CacheError, match="sha256"):
        await cache.fetch(sha(A), len(A), liar)
    with pytest.raises(CacheError, match="expected 100"):
        await cache.fetch(sha(A), len(A), lambda tmp: _write(tmp, A[:50]))
    with pytest.raises(CacheError, match="no file"):
        await cache.fetch(sha(A), len(A), lambda tmp: _write(None, b""))
    assert not (tmp_path / "cache" / sha(A)).exists()
    assert sha(A) not in cache
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


async def _write(path: Path | None, data: bytes) -> None:
    if path is not None:
        path.write_bytes(data)


async def test_failed_download_leaves_nothing(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "cache", 10_000)

    async def broken(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise ConnectionError("server went away")

    with pytest.raises(ConnectionError):
        await cache.fetch(sha(A), len(A), broken)
    assert sorted(os.listdir(tmp_path / "cache")) == ["tmp"]
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


async def test_concurrent_fetches_download_once(tmp_path: Path) -> None:
    origin = Origin(A, delay=0.1)
    cache = FileCache(tmp_path / "cache", 10_000)
    paths = await asyncio.gather(*(origin.fetch(cache, A) for _ in range(5)))
    assert len(set(paths)) == 1 and paths[0].read_bytes() == A
    assert origin.downloads == [sha(A)]


async def test_lru_eviction_stays_under_budget(tmp_path: Path) -> None:
    origin = Origin(A, B, C)
    cache = FileCache(tmp_path / "cache", 250)
    await origin.fetch(cache, A)
    await origin.fetch(cache, B)
    await origin.fetch(cache, A)  # A is now more recently used than B
    await origin.fetch(cache, C)
    assert cache.total_bytes <= 250
    assert sha(A) in cache and sha(C) in cache and sha(B) not in cache
    assert not (tmp_path / "cache" / sha(B)).exists()


async def test_pinned_files_are_never_evicted(tmp_path: Path) -> None:
    origin = Origin(A, B, C)
    cache = FileCache(tmp_path / "cache", 150)
    cache.pin(sha(A))
    cache.pin(sha(B))
    await origin.fetch(cache, A)
    await origin.fetch(cache, B)  # over budget, but both are pinned
    assert sha(A) in cache and sha(B) in cache
    cache.pin(sha(C))
    await origin.fetch(cache, C)
    assert all(d in cache for d in (sha(A), sha(B), sha(C)))
    cache.unpin(sha(A))  # now A may go, and does: it is the only unpinned one
    assert sha(A) not in cache and not (tmp_path / "cache" / sha(A)).exists()
    assert sha(B) in cache and sha(C) in cache
    cache.unpin(sha(C))  # C goes too: still over budget, and B is pinned
    assert sha(B) in cache and sha(C) not in cache
    assert cache.total_bytes <= 150
    with pytest.raises(ValueError):
        cache.unpin(sha(A))


async def test_file_larger_than_the_cache_is_used_then_evicted(tmp_path: Path) -> None:
    big = b"x" * 500
    origin = Origin(big)
    cache = FileCache(tmp_path / "cache", 100)
    async with cache.use(sha(big), len(big), origin.download(sha(big))) as path:
        assert path.read_bytes() == big
        assert sha(big) in cache
    assert sha(big) not in cache and not path.exists()


async def test_not_a_sha256_is_refused(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "cache", 100)
    with pytest.raises(ValueError):
        await cache.fetch("../../etc/passwd", 1, Origin().download("x"))
    with pytest.raises(ValueError):
        cache.pin("ABC")
    with pytest.raises(ValueError):
        cache.pin(sha(A) + "\n")
