"""The content of a result zip (its files by name) and a digest of it that ignores how it was zipped.

Two hosts running the same job produce zips that differ in timestamps, member order, compression and
permissions even when the outputs are identical, so results are compared on their files, never on the
zip bytes. ``read_result`` unpacks an untrusted result in memory with the limits of common.safezip
(member count, declared and real sizes, no absolute or '..' names, no links, devices or encryption).
"""

from __future__ import annotations

import hashlib
import io
import lzma
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

from common.safezip import check_member

READ_CHUNK = 1 << 20
DIGEST_TAG = b"xwhep-result-content-v1\n"  # changes whenever the encoding below does
# what zipfile raises on a corrupt archive: ValueError too ("negative seek value" and the like), OSError
# from the bzip2 decompressor, LZMAError from the lzma one
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    OSError,
)


def _check(info: zipfile.ZipInfo) -> str | None:
    """The normalised name of a file member, None for a directory; ValueError if the member is unsafe
    (common.safezip's rules: no absolute or '..' names, no links, devices or encryption)."""
    parts = check_member(info)
    return None if info.is_dir() else "/".join(parts)


def _unreadable(exc: BaseException) -> ValueError:
    return ValueError(f"not a valid result zip: {' '.join(str(exc).split()) or type(exc).__name__}")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> bytes:
    """One member's bytes, refused once they pass ``budget`` (whatever size the member declares)."""
    chunks: list[bytes] = []
    left = budget
    try:
        with zf.open(info) as src:
            while chunk := src.read(READ_CHUNK):
                left -= len(chunk)
                if left < 0:
                    break
                chunks.append(chunk)
    except _ZIP_ERRORS as exc:
        raise _unreadable(exc) from None
    if left < 0:
        raise ValueError(f"member {info.filename!r} unpacks past the size limit")
    return b"".join(chunks)


def read_result(raw: bytes, *, max_members: int = 10_000, max_bytes: int = 256 << 20) -> dict[str, bytes]:
    """The files of a result zip by member name (forward slashes, directories skipped).

    Raises ValueError (one line) for anything but a readable zip of at most ``max_members`` members and
    ``max_bytes`` unpacked bytes (declared sizes are checked first, real ones while reading), or with
    an unsafe or duplicate member name.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
    except _ZIP_ERRORS as exc:
        raise _unreadable(exc) from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise ValueError(f"too many members ({len(infos)}; at most {max_members})")
        declared = sum(info.file_size for info in infos)
        if declared > max_bytes:
            raise ValueError(f"unpacks to {declared} bytes (at most {max_bytes})")
        plan: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = _check(info)
            if name is None:
                continue
            if name in plan:
                raise ValueError(f"member {info.filename!r} appears twice")
            plan[name] = info
        files: dict[str, bytes] = {}
        budget = max_bytes
        for name, info in plan.items():
            files[name] = _read_member(zf, info, budget)
            budget -= len(files[name])
    return files


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def canonical_digest(files: Mapping[str, bytes], return_code: int | None) -> str:
    """The sha256 (hex) of a result's content: its return code, then every file sorted by name.

    Every field is length-prefixed, so no two different contents encode alike (an extra empty file, a
    byte moved from a name into the content, ...); nothing of the zip itself (order, timestamps,
    compression, permissions) is part of it.
    """
    h = hashlib.sha256(DIGEST_TAG)
    h.update(_field(b"none" if return_code is None else str(return_code).encode()))
    names = sorted((name.encode("utf-8", "surrogatepass"), name) for name in files)
    h.update(len(names).to_bytes(8, "big"))
    for encoded, name in names:
        h.update(_field(encoded))
        h.update(_field(files[name]))
    return h.hexdigest()


@dataclass(frozen=True)
class ResultContent:
    """What a run produced, as comparators see it: its files by name and its return code."""

    files: Mapping[str, bytes]
    return_code: int | None

    def __post_init__(self) -> None:
        # a read-only copy: the cached digest stays true to the files
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))

    @cached_property
    def digest(self) -> str:
        """The canonical digest of the content (computed once)."""
        return canonical_digest(self.files, self.return_code)
