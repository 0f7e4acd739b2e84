"""Trust in identity providers: discovery and keys fetched and cached, ID tokens verified.

An ID token is accepted only if all of these hold:

* its header names an asymmetric algorithm the provider publishes (``alg: none`` and HS* are refused
  whatever the provider says: a public key used as an HMAC secret would let anyone forge tokens);
* its ``kid`` is in the provider's JWKS; an unknown kid refetches the JWKS once (key rotation), and at
  most once per ``refetch_every`` seconds, so random kids cannot make us flood the provider;
* the signature verifies with that key (joserfc);
* ``iss`` is the provider, ``aud`` holds our client id (and ``azp`` is it when there are several),
  ``exp``, ``nbf`` and ``iat`` are right within the provider's leeway, ``sub`` is present;
* its ``nonce`` equals the one the client sent, when either has one.

A provider that is down, slow or answers garbage gives :class:`ProviderUnavailable` (503), never a hang:
every fetch is bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

import aiohttp
from joserfc import jwt
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError, MissingClaimError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact
from joserfc.jwt import JWTClaimsRegistry

from common.errors import Unauthorized, Unavailable
from server.oidc.config import ProviderConfig, check_url

ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"}
)
DISCOVERY_TTL = 3600.0  # seconds a discovery document is trusted before it is fetched again
REFETCH_EVERY = 10.0  # an unknown kid refetches the JWKS at most this often per provider
FETCH_TIMEOUT = 10.0
MAX_DOCUMENT = 1 << 20  # bytes of a discovery document or JWKS


class ProviderUnavailable(Unavailable):
    """The identity provider could not be reached, or answered something unusable."""


@dataclass
class _Known:
    """What we hold of one provider."""

    config: ProviderConfig
    metadata: dict[str, Any] | None = None
    fetched_at: float = 0.0
    keys: KeySet | None = None
    refetched_at: float = float("-inf")  # the last JWKS refetch for an unknown kid
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    fetches: int = 0  # documents fetched (discovery and JWKS), for tests and operators


class TrustedProviders:
    """The providers of the settings, their discovery documents and keys, and ID token checks."""

    def __init__(
        self,
        providers: tuple[ProviderConfig, ...],
        *,
        timeout: float = FETCH_TIMEOUT,
        refetch_every: float = REFETCH_EVERY,
    ) -> None:
        self._known = {p.issuer: _Known(p) for p in providers}
        self._names = {p.name: p.issuer for p in providers}
        self.timeout = timeout
        self.refetch_every = refetch_every
        self._http: aiohttp.ClientSession | None = None

    @property
    def configs(self) -> list[ProviderConfig]:
        return [k.config for k in self._known.values()]

    def find(self, ref: str) -> ProviderConfig:
        """A provider by name or issuer; an untrusted one is refused."""
        issuer = self._names.get(ref, ref.rstrip("/"))
        known = self._known.get(issuer)
        if known is None:
            names = ", ".join(sorted(self._names)) or "none configured"
            raise Unauthorized(f"identity provider {ref!r} is not trusted by this server (trusted: {names})")
        return known.config

    def fetches(self, issuer: str) -> int:
        return self._known[issuer].fetches

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def metadata(self, provider: ProviderConfig) -> dict[str, Any]:
        """The provider's discovery document (cached)."""
        return await self._metadata(self._known[provider.issuer])

    async def post_form(self, provider: ProviderConfig, url: str, form: dict[str, str]) -> dict[str, Any]:
        """POST ``form`` to one of the provider's endpoints (the token endpoint) and read its JSON answer.

        The confidential client authenticates with HTTP Basic (client_secret_basic) when the settings
        hold a secret. An OAuth error answer (400 with ``error``) is Unauthorized with its description.
        """
        check_url(url, "token endpoint")
        headers = {"Accept": "application/json"}
        if provider.client_secret:  # RFC 6749 2.3.1: both form-encoded, then HTTP Basic
            pair = f"{quote_plus(provider.web_client)}:{quote_plus(provider.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        bound = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with self._client().post(url, data=form, headers=headers, timeout=bound) as resp:
                body = await resp.content.read(MAX_DOCUMENT + 1)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise ProviderUnavailable(f"identity provider {provider.issuer} unreachable: {reason}") from None
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise ProviderUnavailable(f"{provider.issuer} answered {status} without a JSON object ({url})")
        if status != 200 or "error" in doc:
            why = doc.get("error_description") or doc.get("error") or f"HTTP {status}"
            raise Unauthorized(f"{provider.issuer} refused the sign-in: {why}")
        return doc

    # --- verification ---------------------------------------------------------------------------

    async def verify(
        self, provider: ProviderConfig, id_token: str, nonce: str | None, audience: str | None = None
    ) -> dict[str, Any]:
        """The claims of ``id_token`` if the provider really issued it for us (for ``audience``, by
        default xwlogin's ``client_id``); Unauthorized otherwise."""
        known = self._known[provider.issuer]
        try:
            header = extract_compact(id_token.encode("ascii")).protected
        except (JoseError, ValueError, UnicodeError):
            raise Unauthorized("malformed ID token (not a signed JWT)") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise Unauthorized("unsigned ID token (alg none) refused")
        if alg not in ASYMMETRIC:
            raise Unauthorized(
                f"ID token algorithm {alg} refused: only the provider's public-key signatures are accepted"
            )
        metadata = await self._metadata(known)
        published = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
        if alg not in published:
            raise Unauthorized(f"ID token algorithm {alg} is not one the provider publishes")
        key = await self._key(known, header.get("kid"))
        try:
            token = jwt.decode(id_token, key, algorithms=[alg])
        except JoseError as exc:
            raise Unauthorized(f"ID token signature does not verify ({exc.error})") from None
        claims = dict(token.claims)
        self._check_claims(provider, claims, nonce, audience or provider.client_id)
        return claims

    def _check_claims(
        self, provider: ProviderConfig, claims: dict[str, Any], nonce: str | None, audience: str
    ) -> None:
        registry = JWTClaimsRegistry(
            leeway=int(provider.leeway),
            iss={"essential": True, "value": provider.issuer},
            sub={"essential": True},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            iat={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise Unauthorized("ID token expired: sign in again") from None
        except MissingClaimError as exc:
            raise Unauthorized(f"ID token lacks required claim(s) {exc.claim}") from None
        except ClaimError as exc:
            raise Unauthorized(_claim_problem(provider, audience, exc.claim, claims)) from None
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != audience:
            raise Unauthorized(f"ID token has several audiences and its azp is not {audience}")
        theirs = claims.get("nonce")
        if (nonce or theirs) and theirs != nonce:
            raise Unauthorized("ID token nonce does not match this sign-in (replayed or mixed up)")

    # --- fetching -------------------------------------------------------------------------------

    async def _metadata(self, known: _Known) -> dict[str, Any]:
        async with known.lock:
            fresh = known.metadata is not None and time.monotonic() - known.fetched_at < DISCOVERY_TTL
            if not fresh:
                url = known.config.issuer + "/.well-known/openid-configuration"
                doc = await self._get_json(known, url, "discovery document")
                if doc.get("issuer") != known.config.issuer:
                    raise ProviderUnavailable(
                        f"{url} names issuer {doc.get('issuer')!r}, not {known.config.issuer}"
                    )
                jwks_uri = doc.get("jwks_uri")
                if not isinstance(jwks_uri, str):
                    raise ProviderUnavailable(f"{url} has no jwks_uri")
                try:
                    check_url(jwks_uri, "jwks_uri")
                except ValueError as exc:
                    raise ProviderUnavailable(str(exc)) from None
                known.metadata, known.fetched_at, known.keys = doc, time.monotonic(), None
            assert known.metadata is not None
            return known.metadata

    async def _key(self, known: _Known, kid: object) -> Any:
        async with known.lock:
            if known.keys is None:
                known.keys = await self._jwks(known)
            key = _pick(known.keys, kid)
            if key is None and time.monotonic() - known.refetched_at >= self.refetch_every:
                known.refetched_at = time.monotonic()  # the provider may have rotated its keys
                known.keys = await self._jwks(known)
                key = _pick(known.keys, kid)
        if key is None:
            raise Unauthorized(f"ID token signed with key {kid!r}, which the provider does not publish")
        return key

    async def _jwks(self, known: _Known) -> KeySet:
        assert known.metadata is not None
        doc = await self._get_json(known, str(known.metadata["jwks_uri"]), "JWKS")
        try:
            return KeySet.import_key_set(doc)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise ProviderUnavailable(f"{known.config.issuer} publishes an unusable JWKS: {exc}") from None

    async def _get_json(self, known: _Known, url: str, what: str) -> dict[str, Any]:
        known.fetches += 1
        bound = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with self._client().get(url, headers={"Accept": "application/json"}, timeout=bound) as resp:
                if resp.status != 200:
                    status = resp.status
                    raise ProviderUnavailable(f"identity provider answered {status} for its {what} ({url})")
                body = await resp.content.read(MAX_DOCUMENT + 1)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            issuer = known.config.issuer
            raise ProviderUnavailable(f"identity provider {issuer} unreachable: {reason}") from None
        if len(body) > MAX_DOCUMENT:
            raise ProviderUnavailable(f"the provider's {what} is larger than {MAX_DOCUMENT} bytes")
        try:
            doc = json.loads(body)
        except ValueError:
            raise ProviderUnavailable(f"the provider's {what} ({url}) is not JSON") from None
        if not isinstance(doc, dict):
            raise ProviderUnavailable(f"the provider's {what} ({url}) is not a JSON object")
        return doc


def _pick(keys: KeySet, kid: object) -> Any:
    """The published key ``kid`` names; with no kid, the only signing key there is."""
    if isinstance(kid, str):
        try:
            return keys.get_by_kid(kid)
        except (ValueError, KeyError, JoseError):
            return None
    if kid is None and len(keys.keys) == 1:
        return keys.keys[0]
    return None


def _claim_problem(provider: ProviderConfig, audience: str, claim: str, claims: dict[str, Any]) -> str:
    if claim == "iss":
        return f"ID token issued by {claims.get('iss')!r}, not by {provider.issuer}"
    if claim == "aud":
        return f"ID token is for audience {claims.get('aud')!r}, not for {audience}"
    if claim == "nbf":
        return "ID token is not valid yet (nbf in the future): check the clocks"
    if claim == "iat":
        return "ID token issued in the future: check the clocks"
    return f"ID token claim {claim!r} is invalid"
