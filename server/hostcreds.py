"""Per-host credentials: each enrolled worker host speaks with a secret of its own (as BOINC hosts do).

A credential is ``xwh1.<host uid>.<secret>``: the uid says which row to look at (a primary-key read), the
secret is 256 random bits of which the server keeps only the SHA-256. A high-entropy secret needs no slow
hash, so checking one costs about what checking a JWT does. Revoking a host clears its hash: the
credential stops working on the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from common.uri import is_uid

PREFIX = "xwh1."
_SECRET_BYTES = 32


def new_credential(host_uid: str) -> tuple[str, str]:
    """A fresh credential for ``host_uid`` and the hash to store for it."""
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return f"{PREFIX}{host_uid}.{secret}", digest(secret)


def digest(secret: str) -> str:
    """What the server stores for ``secret``."""
    return hashlib.sha256(secret.encode()).hexdigest()


def is_host_credential(token: str) -> bool:
    """Whether a bearer token is a host credential rather than a user token (a JWT)."""
    return token.startswith(PREFIX)


def parse(token: str) -> tuple[str, str] | None:
    """``(host uid, secret)`` of a well-formed credential, None otherwise."""
    body = token[len(PREFIX) :] if token.startswith(PREFIX) else ""
    uid, dot, secret = body.partition(".")
    if not dot or not is_uid(uid) or not 16 <= len(secret) <= 128:
        return None
    return uid.lower(), secret


def matches(secret: str, stored: str | None) -> bool:
    """Constant-time check of ``secret`` against a stored hash (a revoked host has none)."""
    return stored is not None and hmac.compare_digest(digest(secret), stored)
