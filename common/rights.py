"""Unix-style access-rights arithmetic: parsing and formatting modes (no policy here).

Bits are octal as in Unix: owner 0o400/0o200/0o100, group 0o040/0o020/0o010, other 0o004/0o002/0o001,
and a sticky bit 0o1000 that lets worker users read the object for the jobs they run. XWHEP wrote the
same bits as hex nibbles (0x755); that spelling is accepted and means the same octal digits.
"""

from __future__ import annotations

import re
from enum import IntFlag

PRIVATE = 0o700
GROUP = 0o750
PUBLIC = 0o755
STICKY = 0o1000
MAX_MODE = 0o1777


class Perm(IntFlag):
    """One access kind, as its 'other' bit (shift by 3 for group, 6 for owner)."""

    READ = 4
    WRITE = 2
    EXECUTE = 1


class Scope(IntFlag):
    """Which triplet of a mode applies; the value is the shift."""

    OTHER = 0
    GROUP = 3
    OWNER = 6


def has(mode: int, scope: Scope, perm: Perm) -> bool:
    """Whether ``mode`` grants ``perm`` to ``scope``."""
    return bool(mode & (int(perm) << int(scope)))


_NUMERIC = re.compile(r"^(0x|0o|0)?([0-7]{1,4})$", re.IGNORECASE)
_SYMBOLIC = re.compile(r"^([ugoa]*)([+=-])([rwxt]*)$")


def parse_mode(text: str, current: int = 0) -> int:
    """Parse a mode: ``755``, ``0755``, ``0o755``, XWHEP's ``0x755``, or symbolic ``go+rx,u=rwx``.

    Symbolic clauses apply to ``current``. Decimal readings of digits (XWHEP's bug) are never made.
    """
    text = text.strip()
    m = _NUMERIC.match(text)
    if m:
        mode = int(m.group(2), 8)
        if mode > MAX_MODE:
            raise ValueError(f"invalid mode {text!r}: only rwx bits and the sticky bit (1000) exist")
        return mode
    if not text:
        raise ValueError("empty mode")
    mode = current
    for clause in text.split(","):
        sm = _SYMBOLIC.match(clause)
        if not sm:
            raise ValueError(f"invalid mode {text!r} (use e.g. 755, 0x755 or go+rx)")
        who, op, what = sm.groups()
        shifts = _shifts(who or "a")
        mask = 0
        for ch in what:
            if ch == "t":
                mask |= STICKY
                continue
            bit = {"r": 4, "w": 2, "x": 1}[ch]
            for s in shifts:
                mask |= bit << s
        if op == "+":
            mode |= mask
        elif op == "-":
            mode &= ~mask
        else:
            clear = 0
            for s in shifts:
                clear |= 0o7 << s
            mode = (mode & ~clear) | mask
    return mode & MAX_MODE


def _shifts(who: str) -> set[int]:
    out: set[int] = set()
    for ch in who:
        if ch in "ua":
            out.add(6)
        if ch in "ga":
            out.add(3)
        if ch in "oa":
            out.add(0)
    return out


def format_mode(mode: int) -> str:
    """Format a mode as four octal digits, e.g. ``0755`` or ``1755``."""
    return f"{mode & MAX_MODE:04o}"
