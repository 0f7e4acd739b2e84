"""Comparators: whether two results of the same job agree.

``bitwise`` compares canonical digests; ``tolerance`` lets numbers differ by ``rel_tol``/``abs_tol``
(floating point on different CPUs, compilers and libms) while everything else must match. Operators add
their own through the entry-point group ``xwhep.comparators``; ``load`` finds one by name and
``compare`` calls it so that a faulty plug-in gives an inconclusive verdict, never an exception.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from enum import StrEnum
from importlib.metadata import EntryPoint, entry_points
from typing import Protocol, cast

from common.schemas import Validation
from server.validation.digest import ResultContent

logger = logging.getLogger(__name__)

GROUP = "xwhep.comparators"
MAX_TEXT_BYTES = 64 << 20  # a text file larger than this is not compared number by number
_CHUNK = 1 << 20

# A number in text: an int or a float with optional sign and exponent (1, -2.5, .5, 1e-9, -3.5E+02), or
# nan/inf/infinity as printf and Python print them (-nan from glibc), not inside a word.
_NUMBER = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?"
    r"|(?<![a-z0-9_])(?:nan|inf(?:inity)?)(?![a-z0-9_]))",
    re.IGNORECASE | re.ASCII,
)
_SPACE = re.compile(r"\s+")


class Verdict(StrEnum):
    """What a comparison says about two results."""

    VALID = "valid"  # they agree
    INVALID = "invalid"  # they differ
    INCONCLUSIVE = "inconclusive"  # the comparator could not decide


class Comparator(Protocol):
    """Decides whether two results agree under a job's validation options.

    Built-ins return a Verdict; a plug-in may also return "valid"/"invalid"/"inconclusive" or a bool,
    which ``compare`` maps.
    """

    def __call__(
        self, a: ResultContent, b: ResultContent, options: Validation, /
    ) -> Verdict | str | bool: ...


def bitwise(a: ResultContent, b: ResultContent, options: Validation) -> Verdict:
    """Valid iff both results have the same files, byte for byte, and the same return code."""
    return Verdict.VALID if a.digest == b.digest else Verdict.INVALID


# --- tolerance ---------------------------------------------------------------------------------------


def _close(x: float, y: float, options: Validation) -> bool:
    """Equal within ``abs_tol`` or ``rel_tol``; NaN matches only NaN, an infinity only itself."""
    if x == y:
        return True
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    if math.isinf(x) or math.isinf(y):
        return False
    diff = abs(x - y)
    return diff <= options.abs_tol or diff <= options.rel_tol * max(abs(x), abs(y))


def _close_numbers(x: int | float, y: int | float, options: Validation) -> bool:
    if x == y:  # also exact for ints too large for a float
        return True
    try:
        return _close(float(x), float(y), options)
    except OverflowError:
        return False


def _text_number(token: str) -> float | None:
    """The value of a number token; None for a finite literal too large for a float (not an infinity)."""
    value = float(token)
    if math.isinf(value) and not token.lstrip("+-")[:1].isalpha():
        return None
    return value


def _same_text(x: str, y: str, options: Validation) -> bool:
    """Numbers pairwise close, the text between them equal once runs of whitespace are collapsed."""
    pos_x = pos_y = 0
    for mx, my in itertools.zip_longest(_NUMBER.finditer(x), _NUMBER.finditer(y)):
        if mx is None or my is None:
            return False
        if _SPACE.sub(" ", x[pos_x : mx.start()]) != _SPACE.sub(" ", y[pos_y : my.start()]):
            return False
        tx, ty = mx.group(), my.group()
        if tx != ty:
            vx, vy = _text_number(tx), _text_number(ty)
            if vx is None or vy is None or not _close(vx, vy, options):
                return False
        pos_x, pos_y = mx.end(), my.end()
    return _SPACE.sub(" ", x[pos_x:]) == _SPACE.sub(" ", y[pos_y:])


def _json_float(token: str) -> float:
    value = float(token)
    if math.isinf(value):  # 1e400: keep the digits, the file is compared as text instead
        raise ValueError(f"{token} does not fit a float")
    return value


def _parse_json(text: str) -> tuple[bool, object]:
    try:
        return True, json.loads(text, parse_float=_json_float)
    except (ValueError, RecursionError):
        return False, None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_json(x: object, y: object, options: Validation) -> bool:
    """Same structure (keys in any order, lists of the same length), equal strings, close numbers."""
    stack = [(x, y)]  # iterative: nesting depth is the producer's choice
    while stack:
        u, v = stack.pop()
        if _is_number(u) and _is_number(v):
            if not _close_numbers(cast(int | float, u), cast(int | float, v), options):
                return False
        elif type(u) is not type(v):
            return False
        elif isinstance(u, dict):
            w = cast(dict[str, object], v)
            if u.keys() != w.keys():
                return False
            stack.extend((u[k], w[k]) for k in u)
        elif isinstance(u, list):
            w2 = cast(list[object], v)
            if len(u) != len(w2):
                return False
            stack.extend(zip(u, w2, strict=True))
        elif u != v:  # str, bool, None
            return False
    return True


def _compare_file(name: str, x: bytes, y: bytes, options: Validation) -> Verdict:
    if x == y:
        return Verdict.VALID
    if max(len(x), len(y)) > MAX_TEXT_BYTES:
        # too large to compare number by number, and not equal byte for byte: a result cannot escape
        # judgement (and its host the loss of trust) by padding a file past the limit
        return Verdict.INVALID
    try:
        tx, ty = x.decode(), y.decode()
    except UnicodeDecodeError:
        return Verdict.INVALID
    if name.lower().endswith(".json"):
        ok_x, jx = _parse_json(tx)
        ok_y, jy = _parse_json(ty) if ok_x else (False, None)
        if ok_x and ok_y:
            return Verdict.VALID if _same_json(jx, jy, options) else Verdict.INVALID
    return Verdict.VALID if _same_text(tx, ty, options) else Verdict.INVALID


def tolerance(a: ResultContent, b: ResultContent, options: Validation) -> Verdict:
    """Valid iff both results have the same return code and file names, and every file agrees: numbers
    within ``rel_tol``/``abs_tol``, all else equal (text up to whitespace runs, JSON up to key order,
    binary files byte for byte). A differing text file too large to compare is invalid."""
    if a.return_code != b.return_code or a.files.keys() != b.files.keys():
        return Verdict.INVALID
    verdict = Verdict.VALID
    for name in sorted(a.files):
        found = _compare_file(name, a.files[name], b.files[name], options)
        if found is Verdict.INVALID:
            return found
        if found is Verdict.INCONCLUSIVE:
            verdict = found
    return verdict


# --- plug-ins ----------------------------------------------------------------------------------------

BUILTIN: dict[str, Comparator] = {"bitwise": bitwise, "tolerance": tolerance}
_loaded: dict[str, Comparator] = {}


def _entry_points() -> dict[str, EntryPoint]:
    """The installed comparators by name; the first distribution on sys.path wins a name."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def available() -> list[str]:
    """The comparator names ``load`` accepts: the built-ins, then the installed ones in name order."""
    return [*BUILTIN, *sorted(set(_entry_points()) - set(BUILTIN))]


def load(name: str) -> Comparator:
    """The comparator called ``name``: a built-in or an entry point of group ``xwhep.comparators``
    (imported once, then cached). ValueError if there is none of that name or it cannot be used."""
    if name in BUILTIN:
        return BUILTIN[name]
    if name in _loaded:
        return _loaded[name]
    ep = _entry_points().get(name)
    if ep is None:
        raise ValueError(f"unknown comparator {name!r} (known: {', '.join(available())})")
    try:
        obj = ep.load()
    except Exception as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ValueError(f"comparator {name!r} ({ep.value}) cannot be loaded: {reason}") from exc
    if not callable(obj):
        raise ValueError(f"comparator {name!r} ({ep.value}) is not callable")
    comparator = cast(Comparator, obj)
    _loaded[name] = comparator
    return comparator


def clear_cache() -> None:
    """Forget the loaded plug-ins (tests install and remove entry points)."""
    _loaded.clear()


def _describe(obj: object) -> str:
    """A short description for a log line, whatever ``obj`` is."""
    try:
        text = getattr(obj, "__qualname__", None) or repr(obj)
        return text if len(text) <= 200 else text[:200] + "..."
    except Exception:
        return f"<{type(obj).__name__}>"


def _as_verdict(outcome: object) -> Verdict | None:
    """The verdict a plug-in's return value stands for, None if it stands for none."""
    if isinstance(outcome, bool):
        return Verdict.VALID if outcome else Verdict.INVALID
    if isinstance(outcome, str):
        try:
            return Verdict(str.__str__(outcome))  # a plain str, whatever subclass was returned
        except ValueError:
            return None
    return None


def compare(comparator: Comparator, a: ResultContent, b: ResultContent, options: Validation) -> Verdict:
    """``comparator``'s verdict on ``a`` and ``b``; inconclusive (and a warning) if it raises or returns
    anything but a Verdict, "valid"/"invalid"/"inconclusive" or a bool (True valid, False invalid)."""
    try:
        outcome: object = comparator(a, b, options)
    except Exception:
        logger.warning(
            "comparator %s failed: the verdict is inconclusive", _describe(comparator), exc_info=True
        )
        return Verdict.INCONCLUSIVE
    verdict = _as_verdict(outcome)
    if verdict is not None:
        return verdict
    logger.warning(
        "comparator %s returned %s, not a verdict: the verdict is inconclusive",
        _describe(comparator),
        _describe(outcome),
    )
    return Verdict.INCONCLUSIVE
