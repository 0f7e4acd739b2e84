"""What goes in and out of a job's scratch directory: safe input staging, snapshots, the results zip."""

from __future__ import annotations

import os
import shutil
import stat
import time
import zipfile
from pathlib import Path
from typing import IO

from common.errors import XWError
from common.safezip import safe_extract

COPY_CHUNK = 1 << 20
MAX_ZIP_MEMBERS = 100_000
ZIP_FIRST = (1980, 1, 1, 0, 0, 0)  # the range of dates a zip entry can carry
ZIP_LAST = (2107, 12, 31, 23, 59, 58)

# relative path -> (size, mtime_ns) of every regular file under scratch
Snapshot = dict[str, tuple[int, int]]


class InputError(XWError):
    """A job input is unsafe or too large to stage (the job fails, the worker is fine)."""

    code = "bad-input"
    status = 422
    title = "Unusable job input"


def safe_name(name: str) -> str:
    """``name`` if it is a plain file name (no separators, not '.', '..' or hidden control bytes)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise InputError(f"unsafe file name {name!r}")
    if any(ord(c) < 32 for c in name) or len(name.encode()) > 255:
        raise InputError(f"unsafe file name {name!r}")
    return name


def _copy_capped(src: IO[bytes], dst_fd: int, budget: int, what: str) -> int:
    """Copy ``src`` into ``dst_fd``, refusing to write more than ``budget`` bytes."""
    written = 0
    with os.fdopen(dst_fd, "wb") as out:
        while chunk := src.read(COPY_CHUNK):
            written += len(chunk)
            if written > budget:
                raise InputError(f"{what}: inputs exceed the size cap")
            out.write(chunk)
    return written


def _create(path: Path, mode: int) -> int:
    """A new regular file: never through a symlink, never over an existing file."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise InputError(f"two inputs provide {path.name!r}") from None


def extract_zip(source: Path, dest: Path, budget: int) -> int:
    """Extract ``source`` under ``dest`` with the shared safe unpacker; returns the bytes written."""
    try:
        files = safe_extract(source, dest, max_bytes=budget, max_members=MAX_ZIP_MEMBERS)
    except FileExistsError as exc:
        raise InputError(f"{source.name}: two inputs provide {Path(exc.filename or '?').name!r}") from None
    except ValueError as exc:
        raise InputError(f"{source.name}: {exc}") from None
    return sum(f.stat().st_size for f in files)


def stage_input(scratch: Path, name: str, source: Path, budget: int) -> int:
    """Put one input into ``scratch``: a zip is extracted, anything else copied as ``name``."""
    if zipfile.is_zipfile(source):
        try:
            return extract_zip(source, scratch, budget)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError) as exc:
            raise InputError(f"{name}: unreadable zip: {exc}") from exc
    fd = _create(scratch / safe_name(name), 0o644)
    with source.open("rb") as src:
        return _copy_capped(src, fd, budget, name)


def snapshot(scratch: Path) -> Snapshot:
    """(size, mtime_ns) of every regular file under ``scratch``, symlinks not followed."""
    found: Snapshot = {}
    for dirpath, _dirs, files, dirfd in os.fwalk(scratch, follow_symlinks=False):
        rel = os.path.relpath(dirpath, scratch)
        for name in files:
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[os.path.normpath(os.path.join(rel, name))] = (st.st_size, st.st_mtime_ns)
    return found


def _zip_info(arcname: str, st: os.stat_result) -> zipfile.ZipInfo:
    t = time.localtime(st.st_mtime)
    stamp = (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)
    info = zipfile.ZipInfo(arcname, date_time=min(max(stamp, ZIP_FIRST), ZIP_LAST))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | (st.st_mode & 0o777)) << 16
    return info


def _add_fd(zf: zipfile.ZipFile, arcname: str, fd: int) -> None:
    st = os.fstat(fd)
    with os.fdopen(fd, "rb") as src, zf.open(_zip_info(arcname, st), "w", force_zip64=True) as dst:
        shutil.copyfileobj(src, dst, COPY_CHUNK)


def build_results(target: Path, scratch: Path | None, before: Snapshot, extra: list[tuple[str, Path]]) -> int:
    """Zip ``extra`` (name, path) plus new or changed regular files of ``scratch``; files stored."""
    reserved = {name for name, _ in extra}
    count = 0
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, path in extra:
            _add_fd(zf, name, os.open(path, os.O_RDONLY | os.O_NOFOLLOW))
            count += 1
        if scratch is None:
            return count
        # fwalk with dir fds: a job swapping a directory for a symlink cannot lead us out of scratch.
        for dirpath, _dirs, files, dirfd in os.fwalk(scratch, follow_symlinks=False):
            rel = os.path.relpath(dirpath, scratch)
            for name in sorted(files):
                arcname = os.path.normpath(os.path.join(rel, name))
                if arcname in reserved:
                    continue
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
                except OSError:
                    continue  # symlinks (ELOOP), vanished files
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or before.get(arcname) == (st.st_size, st.st_mtime_ns):
                    os.close(fd)
                    continue
                _add_fd(zf, arcname, fd)
                count += 1
    return count
