"""Relay tickets: server-signed JWTs (ES256) whose ``scope`` claim says what a relay connection may do."""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, cast

from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError
from joserfc.jwk import ECKey
from joserfc.jwt import JWTClaimsRegistry

from common.errors import Unauthorized

ALG = "ES256"
ISSUER = "xwhep"
AUDIENCE = "relay"
LEEWAY = 5  # seconds of clock skew tolerated between the server and the relay
MAX_JTI = 128  # the server's are 32 hex digits; the relay remembers each one, so bound them

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
    jti: str


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


def verify(token: str, public_key_pem: bytes, *, now: float | None = None, leeway: int = LEEWAY) -> Claims:
    """The claims of a valid relay ticket; TicketError with a one-line reason otherwise.

    A ticket is valid while ``now < exp + leeway``; it must carry a ``jti`` (the relay accepts each
    ticket once, see proxy.replay).
    """
    key = import_verify_key(public_key_pem)
    now = time.time() if now is None else now
    try:
        decoded = jwt.decode(token, key, algorithms=[ALG])
    except (JoseError, ValueError, TypeError) as exc:
        raise TicketError("ticket signature or encoding does not verify") from exc
    if decoded.header.get("alg") != ALG:
        raise TicketError(f"ticket algorithm must be {ALG}")
    claims: dict[str, Any] = dict(decoded.claims)
    registry = JWTClaimsRegistry(
        # joserfc types ``now`` as whole seconds but only compares with it: the exact time keeps tickets
        # with fractional times (iat just issued, exp) exact instead of off by up to a second.
        now=cast(int, now),
        leeway=leeway,
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
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise TicketError("ticket rejected: no jti (tickets are single-use)")
    if len(jti) > MAX_JTI:
        raise TicketError(f"ticket rejected: jti longer than {MAX_JTI} characters")
    subject = claims.get("sub")
    return Claims(
        subject=subject if isinstance(subject, str) else None,
        scopes=frozenset(scope),
        expires=float(claims["exp"]),
        jti=jti,
    )


def lifetime(token: str) -> float | None:
    """Seconds ``token`` is meant to last from when it was issued, from its payload *without verifying it*.

    Only for timing renewals (the relay verifies for real): ``exp - iat`` when both are there, so the
    local clock's skew against the server's does not matter for a freshly fetched ticket; ``exp - now``
    otherwise. None if the payload does not decode or has no numeric ``exp``.
    """
    claims = unverified_claims(token)
    exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
    if exp is None:
        return None
    if iat is not None and exp > iat:
        return exp - iat
    return exp - time.time()


def unverified_claims(token: str) -> dict[str, Any]:
    """The JWT payload of ``token``, not verified ({} if it does not decode): never trust it for access."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):  # bad base64, bad UTF-8, bad JSON
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _number(value: object) -> float | None:
    """A finite JSON number as a float; None for anything else (renewal timing must never be NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None
