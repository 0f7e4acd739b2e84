"""Content-addressed data store: each content is stored once under its sha256, written atomically.

Uploads stream to a temporary file in the store while being hashed (bounded memory: one chunk at a
time); only a complete, verified file is renamed into place, so no reader ever sees half a file. The
database's ``blobs`` table counts references; the store deletes a file when its count drops to zero.

Partial uploads of a killed server process stay in ``root/tmp``; each process sweeps them when it opens
the store. Several processes may share one store, so the sweep must tell a dead process's file from a
live one's: every upload file (``part-*``) is ``flock``-ed by the process writing it until it is placed
or discarded, and the kernel drops that lock when the process dies. The sweep deletes the ``part-*``
files it can lock, keeps those it cannot, and deletes anything else (files named before their lock was
taken, ``up-*`` files of older servers, strays) only once untouched for an hour (``STALE_SECONDS``: an
upload in progress writes its file at least every MiB). A store shared between machines needs a
filesystem whose locks all of them see (NFSv4 without ``local_lock``).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from common.errors import PayloadTooLarge, ValidationFailed
from server.bodytimeout import IdleLimited

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
PART = "part-"  # an upload being received, locked by the process receiving it
NEW = ".part-"  # the same before its lock is taken (renamed to PART once it is)
STALE_SECONDS = 3600.0  # files that no lock vouches for are left alone until untouched this long
_no_locks: set[str] = set()  # directories found without file locks (each warned about once)


@dataclass(frozen=True)
class Ingested:
    """A fully received upload, not yet in place."""

    tmp: Path
    sha256: str
    size: int
    # the open temporary file: its lock tells other processes' sweeps that it is not a leftover
    file: IO[bytes] | None = field(default=None, compare=False, repr=False)

    def release(self) -> None:
        """Close the temporary file (and so drop its lock); the file is placed or deleted by then."""
        if self.file is not None:
            self.file.close()


class DataStore:
    """Files under ``root/ab/cd/<sha256>``; temporary files under ``root/tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, asyncio.Lock] = {}
        swept = sweep(self.tmp_dir)
        if swept:
            logger.info("store: removed %d partial upload(s) left by stopped server processes", swept)

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
        fh, tmp = _open_part(self.tmp_dir)
        digest = hashlib.sha256()
        size = 0
        try:
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
            return Ingested(tmp, sha, size, fh)  # still open: locked until placed or discarded
        except BaseException:
            tmp.unlink(missing_ok=True)
            fh.close()
            raise

    def place(self, item: Ingested) -> Path:
        """Move a verified upload into place (replacing an identical copy keeps readers whole)."""
        dest = self.path(item.sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(item.tmp, dest)
        item.release()  # nothing left in tmp for the lock to vouch for
        return dest

    def discard(self, item: Ingested) -> None:
        item.tmp.unlink(missing_ok=True)
        item.release()

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


def _open_part(directory: Path) -> tuple[IO[bytes], Path]:
    """A new upload file, open and locked. It is created under a name sweeps leave alone while it is
    fresh, and renamed once locked: a sweep never sees a ``part-`` file that is not yet locked."""
    fd, name = tempfile.mkstemp(prefix=NEW, dir=directory)
    new = Path(name)
    fh = os.fdopen(fd, "w+b")
    try:
        try:
            _try_lock(fh.fileno())
        except OSError as exc:  # no locks here: sweeps go by age (uploads must not fail for it)
            if str(directory) not in _no_locks:
                _no_locks.add(str(directory))
                logger.warning(
                    "store: no file locks in %s (%s): leftovers are swept by age only", directory, exc
                )
        part = new.with_name(PART + new.name[len(NEW) :])
        os.rename(new, part)
    except BaseException:
        fh.close()
        new.unlink(missing_ok=True)
        raise
    return fh, part


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock of an open file without waiting; False if another process holds it.

    Raises OSError if the filesystem has no locks (then no file of this store can vouch for itself).
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def sweep(tmp_dir: Path, *, now: float | None = None) -> int:
    """Delete the partial uploads of dead processes from ``tmp_dir`` (see the module's docstring)."""
    now = time.time() if now is None else now
    removed = 0
    for path in list(tmp_dir.iterdir()):
        try:
            if path.name.startswith(PART) and path.is_file() and not path.is_symlink():
                dead = _unlocked(path, now)
            else:
                dead = now - path.lstat().st_mtime > STALE_SECONDS
            if not dead:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
        except FileNotFoundError:
            continue  # another process's sweep, or the upload ended meanwhile
        except OSError as exc:
            logger.warning("store: cannot sweep %s: %s", path, exc)
    return removed


def _unlocked(path: Path, now: float) -> bool:
    """Whether no process holds the lock of upload file ``path`` (it is then a dead one's leftover)."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)  # writable: NFS locks need it
    try:
        return _try_lock(fd)
    except OSError:  # no locks on this filesystem: fall back on the file's age
        return now - os.fstat(fd).st_mtime > STALE_SECONDS
    finally:
        os.close(fd)  # releases the lock we may have taken


def _write_hash(fh: object, digest: hashlib._Hash, data: bytes) -> None:
    digest.update(data)
    fh.write(data)  # type: ignore[attr-defined]


def _sync(fh: object) -> None:
    fh.flush()  # type: ignore[attr-defined]
    os.fsync(fh.fileno())  # type: ignore[attr-defined]
