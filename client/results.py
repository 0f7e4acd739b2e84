"""Job results on the client side: file names, and unpacking a results zip that a worker made.

A results zip comes from a worker, a machine we do not control: it is unpacked with
:func:`common.safezip.safe_extract`, which refuses anything that could land outside the target.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from pathlib import Path

from common.safezip import safe_extract

MAX_RESULT_BYTES = 4 << 30  # total uncompressed size of a results zip we agree to unpack
MAX_RESULT_MEMBERS = 100_000

_DRIVE = re.compile(r"^[A-Za-z]:")
_SEPARATORS = re.compile(r"[/\\]")
_PLAIN_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+@=:-]*")


def label_or_uid(uid: str, label: str | None) -> str:
    """The job's label when it is a plain file name (as the server requires), else its uid."""
    if label and _PLAIN_LABEL.fullmatch(label) and ".." not in label and not _DRIVE.match(label):
        return label
    return uid


def zip_name(uid: str, label: str | None) -> str:
    """``<jobuid>_ResultsOf_<label|uid>.zip``: where xwresults downloads a job's results."""
    return f"{uid}_ResultsOf_{label_or_uid(uid, label)}.zip"


def unpack_target(out: Path, uid: str, label: str | None) -> Path:
    """Where a job's results are unpacked: ``out/<label|uid>``, or ``out/<label>_<uid>`` if another job
    with that label took the first (a label is unique only among one owner's existing jobs: another
    owner's job, or an erased one of ours, may have had it); FileExistsError if both are taken."""
    name = label_or_uid(uid, label)
    for candidate in dict.fromkeys((name, f"{name}_{uid}" if name != uid else name)):
        path = out / candidate
        if not (path.exists() or path.is_symlink()):
            return path
    raise FileExistsError(errno.EEXIST, "exists (remove it or choose another --xwout)", str(out / name))


def unpack_into(zip_path: Path, target: Path, *, max_bytes: int, max_members: int) -> list[Path]:
    """Unpack into a fresh temporary directory next to ``target``, then rename it to ``target``."""
    if target.exists() or target.is_symlink():
        raise FileExistsError(errno.EEXIST, "exists (remove it or choose another --xwout)", str(target))
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.unpacking")
    tmp.mkdir()  # a fresh name: fails rather than reuse anything, and honours the umask
    try:
        files = safe_extract(zip_path, tmp, max_bytes=max_bytes, max_members=max_members)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [target / f.relative_to(tmp) for f in files]
