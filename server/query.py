"""Typed, bounded query parameters: one spec per parameter feeds both its parser and the OpenAPI document.

Hand-rolled ``int()``/``float()`` parsing let through what the database or the event loop cannot take
(offsets past int64, ``wait=nan``, 4,000-digit integers, NUL characters): every query parameter a handler
reads goes through a :class:`QueryParam`, and a wrong value is a 422 naming the parameter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from common.errors import BadRequest, ValidationFailed
from common.schemas import INT32_MAX, INT32_MIN, NAME_PATTERN, UID_PATTERN
from server.settings import DEFAULT_PAGE, MAX_PAGE

Kind = Literal["integer", "number", "string", "boolean"]

# Longest string parameter by default: every filter compares with a shorter column, and even in 4-byte
# UTF-8 (12 bytes percent-encoded) a few of them stay under aiohttp's 8190-byte request line.
MAX_TEXT = 256
# Plain decimal integers and numbers only: int()/float() would also take "1_000", " 5", "nan", "inf".
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,19}(?:\.[0-9]{0,19})?|\.[0-9]{1,19})(?:[eE][+-]?[0-9]{1,3})?")
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})
# Headers the server reads: they reach SQL or the store, so they obey the same text rules as a query.
READ_HEADERS = ("Authorization", "X-Content-SHA256")


@dataclass(frozen=True)
class QueryParam:
    """One query parameter: its type and bounds, checked on input and described in the OpenAPI document.

    ``pattern`` is anchored (``^...$``) and must match the whole value; with ``casefold`` the value is
    lowercased first (uids are accepted in either case, as in paths).
    """

    name: str
    kind: Kind = "string"
    description: str = ""
    required: bool = False
    minimum: int | float | None = None
    maximum: int | float | None = None
    pattern: str | None = None
    max_length: int = MAX_TEXT
    enum: tuple[str, ...] = ()
    casefold: bool = False
    default: int | float | str | bool | None = None
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.pattern is not None:
            object.__setattr__(self, "_regex", re.compile(self.pattern))

    # --- the document --------------------------------------------------------------------------------

    def schema(self) -> dict[str, Any]:
        """This parameter's JSON Schema."""
        out: dict[str, Any] = {"type": self.kind}
        if self.kind in ("integer", "number"):
            out.update(
                {k: v for k, v in (("minimum", self.minimum), ("maximum", self.maximum)) if v is not None}
            )
        if self.kind == "string":
            out["maxLength"] = self.max_length
            if self.pattern is not None:
                out["pattern"] = self.pattern
            if self.enum:
                out["enum"] = list(self.enum)
        if self.default is not None:
            out["default"] = self.default
        return out

    def openapi(self) -> dict[str, Any]:
        """This parameter as an OpenAPI parameter object."""
        doc: dict[str, Any] = {"name": self.name, "in": "query", "required": self.required}
        if self.description:
            doc["description"] = self.description
        doc["schema"] = self.schema()
        return doc

    # --- parsing ---------------------------------------------------------------------------------------

    def bad(self, why: str, value: str | None = None) -> ValidationFailed:
        """A 422 naming this parameter (and the offending value, shortened)."""
        got = "" if value is None else f", got {value[:64]!r}"
        message = f"{why}{got}"
        what = f"{self.name} ({self.description})" if self.description else self.name
        return ValidationFailed(
            f"query parameter {what}: {message}",
            errors=[{"field": f"query.{self.name}", "message": message}],
        )

    def raw(self, request: web.Request) -> str | None:
        """The value as sent (None when absent); a required parameter must be there."""
        value = request.query.get(self.name)
        if value is None and self.required:
            raise self.bad("is required")
        return value

    def text(self, request: web.Request) -> str | None:
        """A string value within its length, pattern and enumeration (None when absent)."""
        value = self.raw(request)
        if value is None:
            return None
        if len(value) > self.max_length:
            raise self.bad(f"longer than {self.max_length} characters", value)
        if "\x00" in value:
            raise self.bad("NUL characters are not allowed", value)
        if self.casefold:
            value = value.lower()
        if self.enum and value not in self.enum:
            raise self.bad("must be one of " + ", ".join(self.enum), value)
        if self._regex is not None and not self._regex.search(value):
            raise self.bad(f"must match {self.pattern}", value)
        return value

    def optional_integer(self, request: web.Request) -> int | None:
        """A decimal integer within bounds (None when absent and there is no default)."""
        value = self.raw(request)
        if value is None:
            return None if self.default is None else int(self.default)
        if not _INTEGER.fullmatch(value):
            raise self.bad(f"must be an integer{self._range()}", value)
        number = int(value)
        self._check_range(number, value)
        return number

    def integer(self, request: web.Request) -> int:
        """A decimal integer within bounds; absent means the default (or 'is required')."""
        number = self.optional_integer(request)
        if number is None:
            raise self.bad("is required")
        return number

    def optional_number(self, request: web.Request) -> float | None:
        """A finite decimal number within bounds (None when absent and there is no default)."""
        value = self.raw(request)
        if value is None:
            return None if self.default is None else float(self.default)
        if not _NUMBER.fullmatch(value):  # refuses nan, inf, infinity, hex floats
            raise self.bad(f"must be a finite number{self._range()}", value)
        number = float(value)
        if not math.isfinite(number):  # 1e999 overflows to inf
            raise self.bad(f"must be a finite number{self._range()}", value)
        self._check_range(number, value)
        return number

    def check(self, request: web.Request) -> None:
        """Validate the value, whatever the handler later reads (the middleware runs this for every route)."""
        if self.kind == "integer":
            self.optional_integer(request)
        elif self.kind == "number":
            self.optional_number(request)
        elif self.kind == "boolean":
            self.flag(request)
        elif self.enum:  # enumerations are matched in any case (status=pending)
            value = self.raw(request)
            if value is not None and value.upper() not in self.enum and value not in self.enum:
                raise self.bad("must be one of " + ", ".join(self.enum), value)
        else:
            self.text(request)

    def flag(self, request: web.Request) -> bool:
        """A boolean: true/false, 1/0 or yes/no in any case; absent means the default (else false)."""
        value = self.raw(request)
        if value is None:
            return bool(self.default)
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise self.bad("must be true or false", value)

    def _range(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f" within {self.minimum}..{self.maximum}"
        if self.minimum is not None:
            return f" >= {self.minimum}"
        if self.maximum is not None:
            return f" <= {self.maximum}"
        return ""

    def _check_range(self, number: float, value: str) -> None:
        if (self.minimum is not None and number < self.minimum) or (
            self.maximum is not None and number > self.maximum
        ):
            raise self.bad(f"must be{self._range()}", value)


# --- parameters shared by several routes -------------------------------------------------------------

# Offsets past int32 select nothing in any real table, and past int64 they overflow the SQL parameter.
OFFSET = QueryParam("offset", "integer", "items to skip", minimum=0, maximum=INT32_MAX, default=0)
LIMIT = QueryParam("limit", "integer", "items per page", minimum=1, maximum=MAX_PAGE, default=DEFAULT_PAGE)
PAGE = (OFFSET, LIMIT)
OWNER = QueryParam("owner", description="owner's login or uid", max_length=128, pattern=NAME_PATTERN)


def name_filter(name: str, description: str) -> QueryParam:
    """An exact-name filter: the name rules of the objects it matches (no valid name is refused)."""
    return QueryParam(name, description=description, max_length=128, pattern=NAME_PATTERN)


def uid_filter(name: str, description: str) -> QueryParam:
    """An object-uid filter (either case)."""
    return QueryParam(name, description=description, max_length=36, pattern=UID_PATTERN, casefold=True)


def integer_range(
    name: str, description: str, low: int = INT32_MIN, high: int = INT32_MAX, *, required: bool = False
) -> QueryParam:
    """An integer parameter; the default range is an Integer (int32) column's."""
    return QueryParam(name, "integer", description, required, minimum=low, maximum=high)


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def header_sha256(request: web.Request, header: str = "X-Content-SHA256") -> str | None:
    """A declared sha256 (hex, either case) from a header, lowercased; refused before any byte is stored."""
    value = request.headers.get(header)
    if value is None:
        return None
    if not _SHA256.fullmatch(value):
        raise ValidationFailed(
            f"header {header}: must be 64 hexadecimal digits, got {value[:80]!r}",
            errors=[{"field": f"header.{header}", "message": "must be 64 hexadecimal digits"}],
        )
    return value.lower()


def refuse_nul(request: web.Request) -> None:
    """Refuse NUL characters anywhere in the query string and in the headers the server reads.

    PostgreSQL cannot store or compare text holding U+0000 (asyncpg raises), so such a value must never
    reach SQL; checking here once covers every parameter, including ones a handler reads by hand.
    """
    if "%00" in request.rel_url.raw_query_string:  # a NUL can only arrive percent-encoded
        for name, value in request.query.items():
            if "\x00" in name or "\x00" in value:
                raise QueryParam(name.replace("\x00", "\\x00")).bad("NUL characters are not allowed", value)
    for header in READ_HEADERS:
        text = request.headers.get(header)
        # aiohttp decodes header bytes as UTF-8 with surrogateescape: a lone surrogate is a byte that was
        # not UTF-8, which the database driver would refuse to encode.
        if text is not None and ("\x00" in text or not text.isascii()):
            raise BadRequest(f"header {header}: only ASCII without NUL is allowed", header=header)
