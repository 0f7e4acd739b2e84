"""Short-lived signed bearer tokens (JWT, ES256) for password logins; the key lives in the server home."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import ECKey
from joserfc.jwt import JWTClaimsRegistry

from common.config import write_private
from common.errors import Unauthorized

ALG = "ES256"
ISSUER = "xwhep"


def create_key(path: Path) -> None:
    """Write a fresh signing key (PEM, private to its owner)."""
    key = ECKey.generate_key("P-256")
    write_private(path, key.as_pem(private=True).decode())


class TokenSigner:
    """Issues and verifies tokens; audience separates user tokens from later ticket kinds."""

    def __init__(self, key_pem: bytes, ttl: int) -> None:
        self._key = ECKey.import_key(key_pem)
        self.ttl = ttl
        self._registry = JWTClaimsRegistry(
            iss={"essential": True, "value": ISSUER},
            exp={"essential": True},
            sub={"essential": True},
        )

    @classmethod
    def from_file(cls, path: Path, ttl: int) -> TokenSigner:
        return cls(path.read_bytes(), ttl)

    def public_pem(self) -> bytes:
        return self._key.as_pem(private=False)

    def write_public(self, path: Path) -> None:
        """Write the verification key (PEM, world-readable: relays verify tickets with it)."""
        pem = self.public_pem().decode()
        if not path.exists() or path.read_text() != pem:
            write_private(path, pem, 0o644)

    def issue(self, subject: str, audience: str = "api", ttl: float | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now - 5,
            "exp": now + int(ttl if ttl is not None else self.ttl),
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode({"alg": ALG}, body, self._key)

    def verify(self, token: str, audience: str = "api") -> dict[str, Any]:
        """The claims of a valid token; Unauthorized with a clear reason otherwise."""
        try:
            decoded = jwt.decode(token, self._key, algorithms=[ALG])
        except JoseError as exc:
            raise Unauthorized("invalid token: signature or encoding does not verify") from exc
        claims = dict(decoded.claims)
        try:
            self._registry.validate(claims)
        except ExpiredTokenError as exc:
            raise Unauthorized("token expired: log in again") from exc
        except JoseError as exc:
            raise Unauthorized(f"invalid token: {exc.description or exc.error}") from exc
        if claims.get("aud") != audience:
            raise Unauthorized("invalid token: wrong audience")
        return claims
