"""Relay tickets: server-signed JWTs (ES256) whose ``scope`` claim says what a relay connection may do."""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError
from joserfc.jwk import ECKey
from joserfc.jwt import JWTClaimsRegistry

from common.errors import Unauthorized

ALG = "ES256"
ISSUER = "xwhep"
AUDIENCE = "relay"
LEEWAY = 5  # seconds of clock skew tolerated between the server and the relay

LINK = "link"
PUBLISH = "publish:"
CONNECT = "connect:"

# job-<job uid>-<port> / proxy-<proxy uid>-<port>; the uid part is lowercase words joined by dashes.
NAME = re.compile(r"^(?P<kind>job|proxy)-(?P<uid>[0-9a-z]+(?:-[0-9a-z]+)*)-(?P<port>[1-9][0-9]{0,4})$")
MAX_NAME = 120


class TicketError(Unauthorized):
    """A relay ticket that does not verify, or that the relay refused."""


@dataclass(frozen=True)
class Claims:
    """What a verified ticket says."""

    subject: str | None
    scopes: frozenset[str]
    expires: float
    jti: str | None


def port_of(name: str) -> int:
    """The port a virtual name leads to; ValueError if ``name`` is not a valid name."""
    match = NAME.match(name) if len(name) <= MAX_NAME else None
    port = int(match["port"]) if match else 0
    if not 0 < port <= 65535:
        raise ValueError(f"not a relay name: {name!r} (expected job-<uid>-<port> or proxy-<uid>-<port>)")
    return port


def is_name(name: str) -> bool:
    """Whether ``name`` is a valid virtual name."""
    try:
        port_of(name)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=8)
def import_verify_key(public_key_pem: bytes) -> ECKey:
    """The server's ticket key from PEM (TicketError if it is not an EC key)."""
    try:
        return ECKey.import_key(public_key_pem)
    except (JoseError, ValueError, TypeError) as exc:
        raise TicketError("relay misconfigured: the verify key is not an EC public key") from exc


def verify(token: str, public_key_pem: bytes, *, now: float | None = None) -> Claims:
    """The claims of a valid relay ticket; TicketError with a one-line reason otherwise."""
    key = import_verify_key(public_key_pem)
    try:
        decoded = jwt.decode(token, key, algorithms=[ALG])
    except (JoseError, ValueError, TypeError) as exc:
        raise TicketError("ticket signature or encoding does not verify") from exc
    if decoded.header.get("alg") != ALG:
        raise TicketError(f"ticket algorithm must be {ALG}")
    claims: dict[str, Any] = dict(decoded.claims)
    registry = JWTClaimsRegistry(
        now=int(time.time() if now is None else now),
        leeway=LEEWAY,
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
    )
    try:
        registry.validate(claims)
    except ExpiredTokenError as exc:
        raise TicketError("ticket expired") from exc
    except (MissingClaimError, InvalidClaimError) as exc:
        raise TicketError(f"ticket rejected: {exc.description}") from exc
    except JoseError as exc:
        raise TicketError(f"ticket rejected: {exc.description or exc.error}") from exc
    scope = claims.get("scope")
    if not isinstance(scope, list) or not all(isinstance(s, str) for s in scope):
        raise TicketError("ticket rejected: scope must be a list of strings")
    subject = claims.get("sub")
    jti = claims.get("jti")
    return Claims(
        subject=subject if isinstance(subject, str) else None,
        scopes=frozenset(scope),
        expires=float(claims["exp"]),
        jti=jti if isinstance(jti, str) else None,
    )
