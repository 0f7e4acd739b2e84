"""Sign-in to the web dashboard through a trusted provider: the server is the OAuth client.

Authorization code with PKCE (S256) to ``/ui/oidc/callback``, as the provider's ``web_client_id`` (by
default xwlogin's ``client_id``): a confidential client when the settings hold its ``client_secret``
(HTTP Basic at the token endpoint), a public one otherwise. What
the callback needs to check the answer (state, nonce, PKCE verifier, provider) travels in a short-lived
cookie signed with the server's token key (:func:`begin` / :func:`pending`), so any server process can
finish a sign-in another one began. The ID token then goes through the same checks and the same
sign-in rules as ``xwlogin``'s (``trust.verify``, ``signin.spend`` and ``signin.sign_in``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2.rfc7636 import create_s256_code_challenge

from common.errors import Unauthorized
from server.oidc.config import ProviderConfig
from server.oidc.trust import ProviderUnavailable, TrustedProviders
from server.tokens import TokenSigner

PENDING_AUDIENCE = "ui-oidc"  # the signed cookie's audience: it is good for nothing else
PENDING_TTL = 600  # seconds a person has to sign in at the provider


@dataclass(frozen=True)
class Pending:
    """A sign-in begun here: what its callback must see again."""

    provider: str  # issuer
    state: str
    nonce: str
    verifier: str
    then: str  # the dashboard page to go back to


async def begin(
    providers: TrustedProviders, signer: TokenSigner, provider: ProviderConfig, redirect_uri: str, then: str
) -> tuple[str, str]:
    """The provider URL to send the browser to, and the signed cookie value that remembers the sign-in."""
    metadata = await providers.metadata(provider)
    endpoint = metadata.get("authorization_endpoint")
    if not isinstance(endpoint, str):
        raise ProviderUnavailable(f"{provider.issuer} publishes no authorization_endpoint")
    state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
    query = {
        "response_type": "code",
        "client_id": provider.web_client,
        "redirect_uri": redirect_uri,
        "scope": " ".join(s for s in provider.scopes if s != "offline_access"),  # a session, no refresh
        "state": state,
        "nonce": nonce,
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
    }
    cookie = signer.issue(
        provider.issuer,
        audience=PENDING_AUDIENCE,
        ttl=PENDING_TTL,
        state=state,
        nonce=nonce,
        verifier=verifier,
        then=then,
    )
    separator = "&" if "?" in endpoint else "?"
    return f"{endpoint}{separator}{urlencode(query)}", cookie


def pending(signer: TokenSigner, cookie: str | None) -> Pending:
    """The sign-in the browser's cookie remembers; Unauthorized if it has none, or a forged or old one."""
    if not cookie:
        raise Unauthorized("no sign-in in progress in this browser (cookies off, or it took too long)")
    claims = signer.verify(cookie, audience=PENDING_AUDIENCE)
    return Pending(
        provider=str(claims["sub"]),
        state=str(claims["state"]),
        nonce=str(claims["nonce"]),
        verifier=str(claims["verifier"]),
        then=str(claims.get("then") or "/ui/"),
    )


async def finish(
    providers: TrustedProviders, begun: Pending, params: dict[str, str], redirect_uri: str
) -> tuple[ProviderConfig, str, dict[str, Any]]:
    """Check the provider's answer against the sign-in begun, redeem the code, verify the ID token.

    Answers the provider, the ID token (to be spent) and its verified claims."""
    if not secrets.compare_digest(params.get("state", ""), begun.state):
        raise Unauthorized("state mismatch: this answer does not belong to the sign-in begun here")
    provider = providers.find(begun.provider)
    if "error" in params:
        why = params.get("error_description") or params["error"]
        raise Unauthorized(f"{provider.issuer} refused the sign-in: {why}")
    code = params.get("code", "")
    if not code:
        raise Unauthorized(f"{provider.issuer} sent the browser back without a code")
    metadata = await providers.metadata(provider)
    token_endpoint = metadata.get("token_endpoint")
    if not isinstance(token_endpoint, str):
        raise ProviderUnavailable(f"{provider.issuer} publishes no token_endpoint")
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": begun.verifier,
    }
    if not provider.client_secret:
        form["client_id"] = provider.web_client  # a public client names itself in the form
    answer = await providers.post_form(provider, token_endpoint, form)
    id_token = answer.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise Unauthorized(f"{provider.issuer} answered without an ID token (is 'openid' among the scopes?)")
    claims = await providers.verify(provider, id_token, begun.nonce, audience=provider.web_client)
    return provider, id_token, claims
