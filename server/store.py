"""Content-addressed data store: each content is stored once under its sha256, written atomically.

Uploads stream to a temporary file in the store while being hashed (bounded memory: one chunk at a
time); only a complete, verified file is renamed into place, so no reader ever sees half a file. The
database's ``blobs`` table counts references; the store deletes a file when its count drops to zero.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import PayloadTooLarge, ValidationFailed
from server.bodytimeout import IdleLimited

CHUNK = 1 << 20


@dataclass(frozen=True)
class Ingested:
    """A fully received upload, not yet in place."""

    tmp: Path
    sha256: str
    size: int


class DataStore:
    """Files under ``root/ab/cd/<sha256>``; temporary files under ``root/tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def lock(self, sha256: str) -> asyncio.Lock:
        """Serialises placing and deleting one content within this process."""
        return self._locks.setdefault(sha256, asyncio.Lock())

    async def ingest(
        self,
        chunks: AsyncIterator[bytes],
        *,
        max_size: int,
        expect_size: int | None = None,
        expect_sha256: str | None = None,
    ) -> Ingested:
        """Receive a stream into a temporary file; check size and hash against what the client declared."""
        fd, name = _mkstemp(self.tmp_dir)
        tmp = Path(name)
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                buf = bytearray()
                async for chunk in IdleLimited(chunks):  # 408 if the client stops sending
                    size += len(chunk)
                    if size > max_size or (expect_size is not None and size > expect_size):
                        raise PayloadTooLarge(
                            f"content over {expect_size if expect_size is not None else max_size} bytes"
                        )
                    buf += chunk
                    if len(buf) >= CHUNK:
                        await asyncio.to_thread(_write_hash, fh, digest, bytes(buf))
                        buf.clear()
                if buf:
                    await asyncio.to_thread(_write_hash, fh, digest, bytes(buf))
                await asyncio.to_thread(_sync, fh)
            sha = digest.hexdigest()
            if expect_size is not None and size != expect_size:
                raise ValidationFailed(f"received {size} bytes, {expect_size} were declared")
            if expect_sha256 is not None and sha != expect_sha256:
                raise ValidationFailed(f"content sha256 {sha} differs from the declared {expect_sha256}")
            return Ingested(tmp, sha, size)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def place(self, item: Ingested) -> Path:
        """Move a verified upload into place (replacing an identical copy keeps readers whole)."""
        dest = self.path(item.sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(item.tmp, dest)
        return dest

    def discard(self, item: Ingested) -> None:
        item.tmp.unlink(missing_ok=True)

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


def _mkstemp(directory: Path) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(prefix="up-", dir=directory)


def _write_hash(fh: object, digest: hashlib._Hash, data: bytes) -> None:
    digest.update(data)
    fh.write(data)  # type: ignore[attr-defined]


def _sync(fh: object) -> None:
    fh.flush()  # type: ignore[attr-defined]
    os.fsync(fh.fileno())  # type: ignore[attr-defined]
