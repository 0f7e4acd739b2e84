"""Unpacking an untrusted zip safely: used for results on clients and for job inputs on workers.

Every member is checked before anything is written (no absolute path, drive letter, '..' component,
link or device, no encryption, a bounded member count and declared size), and while writing (the real
byte count is capped too, every directory on the way is a real directory inside the target, no existing
file is overwritten). On any refusal ValueError carries a one-line reason and whatever was written is
removed again.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
import zlib
from pathlib import Path
from typing import IO

COPY_CHUNK = 1 << 20

_DRIVE = re.compile(r"^[A-Za-z]:")
_SEPARATORS = re.compile(r"[/\\]")


def member_parts(name: str) -> tuple[str, ...]:
    """The path components of a zip member name; ValueError if it could land outside the target."""
    if not name or "\x00" in name:
        raise ValueError(f"member name {name!r} is empty or holds a NUL")
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise ValueError(f"member {name!r} has an absolute path")
    parts = tuple(p for p in _SEPARATORS.split(name) if p not in ("", "."))
    if ".." in parts:
        raise ValueError(f"member {name!r} has a '..' component")
    if any(_DRIVE.match(p) for p in parts):
        raise ValueError(f"member {name!r} has a drive letter in its path")
    return parts


def check_member(info: zipfile.ZipInfo) -> tuple[str, ...]:
    parts = member_parts(info.filename)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ValueError(f"member {info.filename!r} is a symbolic link")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise ValueError(f"member {info.filename!r} is not a regular file or directory")
    if info.flag_bits & 0x1:
        raise ValueError(f"member {info.filename!r} is encrypted")
    if not parts and not info.is_dir():
        raise ValueError(f"member {info.filename!r} has no file name")
    return parts


def _plan(
    zf: zipfile.ZipFile, max_bytes: int, max_members: int
) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """Every member with its path components, once all of them passed the checks."""
    infos = zf.infolist()
    if len(infos) > max_members:
        raise ValueError(f"too many members ({len(infos)}; at most {max_members})")
    declared = sum(info.file_size for info in infos)
    if declared > max_bytes:
        raise ValueError(f"unpacks to {declared} bytes (at most {max_bytes})")
    plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    for info in infos:
        parts = check_member(info)
        dirs.update(parts[:i] for i in range(1, len(parts)))
        if info.is_dir():
            dirs.add(parts)
        elif parts in files:
            raise ValueError(f"member {info.filename!r} appears twice")
        else:
            files.add(parts)
        plan.append((info, parts))
    clash = files & dirs
    if clash:
        raise ValueError(f"{'/'.join(min(clash))!r} is both a file and a directory")
    return plan


class _Writer:
    """Creates directories and files under ``root``, remembering them to undo a failed extraction."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.created: list[Path] = []

    def directory(self, parts: tuple[str, ...]) -> Path:
        path = self.root
        for part in parts:
            path = path / part
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                raise ValueError(f"{'/'.join(parts)!r} would go through an existing non-directory")
            if not path.exists():
                path.mkdir()
                self.created.append(path)
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"{'/'.join(parts)!r} resolves outside the target directory")
        return path

    def file(self, parts: tuple[str, ...], executable: bool) -> int:
        path = self.directory(parts[:-1]) / parts[-1]
        flags = (
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        )
        try:
            fd = os.open(path, flags, 0o755 if executable else 0o644)
        except FileExistsError:
            raise ValueError(f"{'/'.join(parts)!r} already exists in the target directory") from None
        self.created.append(path)
        return fd

    def undo(self) -> None:
        for path in reversed(self.created):
            try:
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
            except OSError:
                continue


def _copy(src: IO[bytes], fd: int, budget: int, name: str) -> int:
    """Copy one member, refusing to write past ``budget`` bytes; returns the bytes written."""
    written = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(COPY_CHUNK):
            written += len(chunk)
            if written > budget:
                raise ValueError(f"member {name!r} unpacks past the size limit")
            out.write(chunk)
    return written


def safe_extract(zip_path: Path, dest: Path, *, max_bytes: int, max_members: int) -> list[Path]:
    """Unpack an untrusted zip into ``dest`` (created if missing); returns the files written, in order.

    Raises ValueError (one line) if any member is unsafe or the archive is corrupt; nothing is then left
    of what this call wrote, and nothing is ever written outside ``dest``.
    """
    try:
        with zipfile.ZipFile(zip_path) as zf:
            plan = _plan(zf, max_bytes, max_members)
            made_dest = not dest.exists()
            dest.mkdir(parents=True, exist_ok=True)
            writer = _Writer(dest.resolve())
            if made_dest:
                writer.created.append(writer.root)
            written, budget = [], max_bytes
            try:
                for info, parts in plan:
                    if info.is_dir():
                        writer.directory(parts)
                        continue
                    fd = writer.file(parts, executable=bool((info.external_attr >> 16) & stat.S_IXUSR))
                    with zf.open(info) as src:
                        budget -= _copy(src, fd, budget, info.filename)
                    written.append(dest.joinpath(*parts))
            except BaseException:
                writer.undo()
                raise
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ValueError(f"{zip_path.name} is not a valid zip: {' '.join(str(exc).split())}") from None
    return written


def read_head(zf: zipfile.ZipFile, name: str, limit: int) -> bytes | None:
    """The first ``limit`` bytes of top-level member ``name`` of an untrusted zip, or None if it has no
    such plain file or the member is unsafe or corrupt (only ``limit`` bytes are ever decompressed)."""
    for info in zf.infolist():
        try:
            parts = check_member(info)
        except ValueError:
            continue
        if parts != (name,) or info.is_dir():
            continue
        try:
            with zf.open(info) as src:
                return src.read(limit)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError):
            return None
    return None
