"""``xw://<server>/<uid>`` URIs, as XWHEP printed for created objects."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

SCHEME = "xw://"


@dataclass(frozen=True)
class XWUri:
    """A reference to one object on one server."""

    server: str
    uid: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.server}/{self.uid}"


def is_uid(text: str) -> bool:
    """Whether ``text`` is a canonical UUID string."""
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


def parse_uri(text: str) -> XWUri | None:
    """Parse ``xw://server/uid``; None if ``text`` is not such a URI."""
    if not text.startswith(SCHEME):
        return None
    rest = text[len(SCHEME) :]
    server, sep, uid = rest.rpartition("/")
    if not sep or not server or not is_uid(uid):
        raise ValueError(f"malformed xw:// URI {text!r} (expected xw://<server>/<uid>)")
    return XWUri(server, uid.lower())


def new_uid() -> str:
    """A fresh random object uid."""
    return str(uuid.uuid4())
