"""Interoperability smoke tests against pytest-iam (Canaille), a second, independent OpenID provider.

Findings are in the module docstrings of the tests; see also /tmp/pytest-iam-notes.md. The
``iam_server`` fixture is session-scoped: its users and clients live for the whole test session,
so every test here makes uniquely named ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from tests.oidc.browser import LoopbackListener, browser_login
from tests.oidc.iam import discovery, make_public_client, make_user

SCOPE = "openid profile email"
ALGS = ["RS256", "RS384", "RS512", "PS256", "ES256"]


@pytest.fixture
def listener() -> Iterator[LoopbackListener]:
    with LoopbackListener() as lst:
        yield lst


def verify(doc: dict[str, Any], id_token: str, client_id: str, nonce: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(requests.get(doc["jwks_uri"], timeout=5).json())
    tok = jwt.decode(id_token, keys, algorithms=ALGS)
    JWTClaimsRegistry(
        iss={"value": doc["issuer"], "essential": True},
        aud={"value": client_id, "essential": True},
        nonce={"value": nonce, "essential": True},
        sub={"essential": True},
    ).validate(tok.claims)
    return {"header": tok.header, **tok.claims}


def test_code_pkce_flow_through_the_login_form(iam: Any, listener: LoopbackListener) -> None:
    doc = discovery(iam)
    assert doc["issuer"] == iam.url.rstrip("/") and doc["issuer"].startswith("http://localhost:")
    user = make_user(iam, "alice-password")
    client = make_public_client(iam, listener.url)
    sess = OAuth2Session(
        client.client_id, redirect_uri=listener.url, scope=SCOPE, code_challenge_method="S256"
    )
    verifier = generate_token(48)
    url, state = sess.create_authorization_url(
        doc["authorization_endpoint"], code_verifier=verifier, nonce="n-1"
    )
    # the real multi-step UI: /login (login) -> /auth/password -> consent page (answer=accept)
    r = browser_login(url, user.user_name, "alice-password")
    assert r.status_code == 200
    got = listener.queries[-1]
    assert got["state"] == state and got["iss"] == doc["issuer"]  # RFC 9207 iss parameter
    token = sess.fetch_token(doc["token_endpoint"], code=got["code"], code_verifier=verifier, state=state)
    claims = verify(doc, token["id_token"], client.client_id, "n-1")
    assert claims["sub"] == user.user_name  # sub is the login, not an opaque id
    assert claims["aud"] == [client.client_id]
    assert claims["header"]["alg"] in ALGS and claims["header"]["kid"]

    # refresh: the refresh token rotates, the old one is refused, and no new id_token comes back
    again = sess.refresh_token(doc["token_endpoint"], refresh_token=token["refresh_token"])
    assert again["refresh_token"] != token["refresh_token"] and "id_token" not in again
    old = {
        "grant_type": "refresh_token",
        "refresh_token": token["refresh_token"],
        "client_id": client.client_id,
    }
    r = requests.post(doc["token_endpoint"], data=old, timeout=5)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_preauthenticated_user_and_quirks(iam: Any, listener: LoopbackListener) -> None:
    doc = discovery(iam)
    user = make_user(iam)
    client = make_public_client(iam, listener.url)
    iam.login(user)  # every request to the IAM is now from this user (until iam.logout())
    iam.consent(user, client)  # no consent page
    base = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": listener.url,
        "scope": SCOPE,
    }
    verifier = generate_token(48)
    sess = OAuth2Session(
        client.client_id, redirect_uri=listener.url, scope=SCOPE, code_challenge_method="S256"
    )
    url, _ = sess.create_authorization_url(doc["authorization_endpoint"], code_verifier=verifier, nonce="n-2")
    r = requests.get(url, allow_redirects=False, timeout=5)
    assert r.status_code == 302 and r.headers["Location"].startswith(listener.url + "?code=")
    token = sess.fetch_token(
        doc["token_endpoint"], authorization_response=r.headers["Location"], code_verifier=verifier
    )
    verify(doc, token["id_token"], client.client_id, "n-2")

    # nonce is required (CANAILLE_OIDC.REQUIRE_NONCE defaults to True)
    pkce = {"code_challenge": generate_token(48), "code_challenge_method": "S256"}
    r = requests.get(doc["authorization_endpoint"], params={**base, **pkce}, allow_redirects=False, timeout=5)
    assert "error=invalid_request" in r.headers["Location"]
    # PKCE is NOT required at the authorization endpoint (only code_verifier at the token endpoint)
    r = requests.get(
        doc["authorization_endpoint"], params={**base, "nonce": "n"}, allow_redirects=False, timeout=5
    )
    assert "code=" in r.headers["Location"]
    # the redirect URI must match exactly: another loopback port is refused
    other = {**base, **pkce, "nonce": "n", "redirect_uri": "http://127.0.0.1:1/callback"}
    r = requests.get(doc["authorization_endpoint"], params=other, allow_redirects=False, timeout=5)
    assert r.status_code == 400
    # no device flow in this Canaille version
    assert "device_authorization_endpoint" not in doc
