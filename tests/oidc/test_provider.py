"""The test OpenID provider itself, driven by authlib's requests client and the scripted browser."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import webbrowser
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from tests.oidc.browser import BrowserError, browser_login, device_approve, write_browser_command
from tests.oidc.browser import LoopbackListener as Listener
from tests.oidc.provider import TestProvider

SCOPE = "openid profile email groups"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture
def listener() -> Iterator[Listener]:
    with Listener() as lst:
        yield lst


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    def dec(part: str) -> dict[str, Any]:
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]

    h, p, s = token.split(".")
    return dec(h), dec(p), s


def verify(
    op: TestProvider, id_token: str, aud: str = "xwhep-cli", nonce: str | None = None
) -> dict[str, Any]:
    keys = KeySet.import_key_set(requests.get(op.issuer + "/jwks", timeout=5).json())
    tok = jwt.decode(id_token, keys, algorithms=["RS256", "ES256"])
    expected: dict[str, Any] = {
        "iss": {"value": op.issuer},
        "aud": {"value": aud},
        "sub": {"essential": True},
    }
    if nonce:
        expected["nonce"] = {"value": nonce, "essential": True}
    JWTClaimsRegistry(**expected).validate(tok.claims)
    return tok.claims


def code_flow(
    op: TestProvider, listener: Listener, nonce: str | None = "n-0S6"
) -> tuple[OAuth2Session, dict[str, Any]]:
    sess = OAuth2Session("xwhep-cli", redirect_uri=listener.url, scope=SCOPE, code_challenge_method="S256")
    verifier = generate_token(48)
    extra = {"nonce": nonce} if nonce else {}
    url, state = sess.create_authorization_url(op.issuer + "/authorize", code_verifier=verifier, **extra)
    r = browser_login(url, "alice", "alice-password")
    assert r.status_code == 200
    got = listener.queries[-1]
    assert got["state"] == state and "code" in got
    token = sess.fetch_token(
        op.issuer + "/token", code=got["code"], code_verifier=verifier, state=state, redirect_uri=listener.url
    )
    return sess, dict(token)


def test_discovery(oidc_provider: TestProvider) -> None:
    op = oidc_provider
    doc = requests.get(op.issuer + "/.well-known/openid-configuration", timeout=5).json()
    assert doc["issuer"] == op.issuer and not op.issuer.endswith("/")
    assert op.issuer.startswith("http://127.0.0.1:")
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["response_types_supported"] == ["code"]
    assert DEVICE_GRANT in doc["grant_types_supported"]
    for name in ("authorization", "token", "device_authorization", "userinfo"):
        assert doc[f"{name}_endpoint"].startswith(op.issuer + "/")
    assert requests.get(doc["jwks_uri"], timeout=5).json()["keys"][0]["kid"] == op.kid
    assert (op.discovery_fetches, op.jwks_fetches) == (1, 1)


def test_code_pkce_flow_gives_verified_id_token(oidc_provider: TestProvider, listener: Listener) -> None:
    op = oidc_provider
    _, token = code_flow(op, listener, nonce="n-0S6")
    assert token["token_type"].lower() == "bearer" and token["refresh_token"]
    header, _, _ = jwt_parts(token["id_token"])
    assert header["alg"] == "RS256" and header["kid"] == op.kid
    claims = verify(op, token["id_token"], nonce="n-0S6")
    alice = op.users["alice"]
    assert claims["sub"] == alice.sub != "alice"
    assert claims["preferred_username"] == "alice" and claims["groups"] == ["physics"]
    assert claims["email"] == "alice@example.org" and claims["name"] == "Alice Liddell"
    assert claims["iat"] <= claims["auth_time"] + 5 and claims["exp"] > time.time()
    info = requests.get(
        op.issuer + "/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=5
    )
    assert info.json()["sub"] == alice.sub
    # without nonce in the request, there is none in the token
    assert "nonce" not in verify(op, code_flow(op, listener, nonce=None)[1]["id_token"])


def test_code_is_single_use_and_needs_the_verifier(oidc_provider: TestProvider, listener: Listener) -> None:
    op = oidc_provider
    sess = OAuth2Session("xwhep-cli", redirect_uri=listener.url, scope=SCOPE, code_challenge_method="S256")
    url, _ = sess.create_authorization_url(op.issuer + "/authorize", code_verifier=generate_token(48))
    browser_login(url, "alice", "alice-password")
    form = {
        "grant_type": "authorization_code",
        "code": listener.queries[-1]["code"],
        "client_id": "xwhep-cli",
    }
    form["redirect_uri"] = listener.url
    r = requests.post(op.issuer + "/token", data={**form, "code_verifier": generate_token(48)}, timeout=5)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_authorization_without_code_challenge_is_refused(
    oidc_provider: TestProvider, listener: Listener
) -> None:
    op = oidc_provider
    params = {"response_type": "code", "client_id": "xwhep-cli", "redirect_uri": listener.url, "scope": SCOPE}
    r = requests.get(
        op.issuer + "/authorize", params={**params, "state": "s1"}, allow_redirects=False, timeout=5
    )
    assert r.status_code == 302
    back = parse_qs(urlsplit(r.headers["Location"]).query)
    assert back["error"] == ["invalid_request"] and back["state"] == ["s1"]
    plain = {**params, "code_challenge": generate_token(48), "code_challenge_method": "plain"}
    r = requests.get(op.issuer + "/authorize", params=plain, allow_redirects=False, timeout=5)
    assert "error=invalid_request" in r.headers["Location"]


@pytest.mark.parametrize(
    ("redirect_uri", "ok"),
    [
        ("http://127.0.0.1:1/cb", True),
        ("http://127.0.0.1:65535/any/path", True),
        ("http://[::1]:8080/", True),
        ("http://localhost:8080/cb", False),
        ("https://127.0.0.1:8080/cb", False),
        ("http://127.0.0.2:8080/cb", False),
        ("http://evil.example/cb", False),
        ("http://127.0.0.1.evil.example:80/cb", False),
    ],
)
def test_loopback_redirect_uris(oidc_provider: TestProvider, redirect_uri: str, ok: bool) -> None:
    params = {
        "response_type": "code",
        "client_id": "xwhep-cli",
        "redirect_uri": redirect_uri,
        "scope": SCOPE,
        "code_challenge": generate_token(48),
        "code_challenge_method": "S256",
    }
    r = requests.get(oidc_provider.issuer + "/authorize", params=params, allow_redirects=False, timeout=5)
    assert (r.status_code == 200 and "<form" in r.text) if ok else r.status_code == 400


def test_login_form_checks_password_and_csrf(oidc_provider: TestProvider, listener: Listener) -> None:
    op = oidc_provider
    sess = OAuth2Session("xwhep-cli", redirect_uri=listener.url, scope=SCOPE, code_challenge_method="S256")
    url, _ = sess.create_authorization_url(op.issuer + "/authorize", code_verifier=generate_token(48))
    with pytest.raises(BrowserError, match="401"):
        browser_login(url, "alice", "wrong")
    s = requests.Session()
    s.get(url, timeout=5)
    r = s.post(
        url, data={"username": "alice", "password": "alice-password"}, allow_redirects=False, timeout=5
    )
    assert r.status_code == 400 and not listener.queries


def test_refresh_gives_new_id_token_and_rotates(oidc_provider: TestProvider, listener: Listener) -> None:
    op = oidc_provider
    sess, first = code_flow(op, listener)
    old_claims = verify(op, first["id_token"])
    time.sleep(1)  # a later iat
    second = dict(sess.refresh_token(op.issuer + "/token", refresh_token=first["refresh_token"]))
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    claims = verify(op, second["id_token"])
    for name in ("iss", "sub", "aud", "auth_time"):
        assert claims[name] == old_claims[name]
    assert claims["iat"] > old_claims["iat"] and "nonce" not in claims
    r = requests.post(
        op.issuer + "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": "xwhep-cli",
        },
        timeout=5,
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_device_flow(oidc_provider: TestProvider) -> None:
    op = oidc_provider
    start = requests.post(
        op.issuer + "/device_authorization", data={"client_id": "xwhep-cli", "scope": SCOPE}, timeout=5
    ).json()
    assert start["verification_uri"] == op.issuer + "/device" and start["interval"] == 1
    poll = {"grant_type": DEVICE_GRANT, "device_code": start["device_code"], "client_id": "xwhep-cli"}

    def token() -> dict[str, Any]:
        return requests.post(op.issuer + "/token", data=poll, timeout=5).json()  # type: ignore[no-any-return]

    assert token()["error"] == "authorization_pending"
    assert token()["error"] == "slow_down"  # polled faster than the interval
    device_approve(start["verification_uri_complete"], start["user_code"], "alice", "alice-password")
    tok = token()
    assert verify(op, tok["id_token"])["sub"] == op.users["alice"].sub and tok["refresh_token"]
    assert token()["error"] == "invalid_request"  # a device code is used once


def test_device_flow_denied_and_expired(oidc_provider: TestProvider) -> None:
    op = oidc_provider

    def start() -> dict[str, Any]:
        url = op.issuer + "/device_authorization"
        return requests.post(url, data={"client_id": "xwhep-cli", "scope": SCOPE}, timeout=5).json()  # type: ignore[no-any-return]

    def token(device_code: str) -> dict[str, Any]:
        data = {"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": "xwhep-cli"}
        return requests.post(op.issuer + "/token", data=data, timeout=5).json()  # type: ignore[no-any-return]

    denied = start()
    device_approve(denied["verification_uri"], denied["user_code"], "alice", "alice-password", deny=True)
    assert token(denied["device_code"])["error"] == "access_denied"
    with pytest.raises(BrowserError, match="401"):
        device_approve(denied["verification_uri"], denied["user_code"], "alice", "nope")
    expired = start()
    op.expire_device_codes()
    assert token(expired["device_code"])["error"] == "expired_token"


def test_rotate_keys(oidc_provider: TestProvider, listener: Listener) -> None:
    op = oidc_provider
    old = op.kid
    new = op.rotate_keys()
    assert new != old and [k["kid"] for k in op.jwks()["keys"]] == [new]
    newer = op.rotate_keys(keep_old=True)
    assert [k["kid"] for k in op.jwks()["keys"]] == [newer, new]
    assert jwt_parts(code_flow(op, listener)[1]["id_token"])[0]["kid"] == newer


def test_es256_provider(listener: Listener) -> None:
    with TestProvider(signing_alg="ES256") as op:
        op.add_user("alice", "alice-password")
        token = code_flow(op, listener)[1]["id_token"]
        assert jwt_parts(token)[0]["alg"] == "ES256"
        verify(op, token)


def test_tamper_claims_in_flow(oidc_provider: TestProvider, listener: Listener) -> None:
    op = oidc_provider
    past = int(time.time()) - 600
    op.tamper(aud="other", iss="http://evil", exp=past, nonce="x")
    _, claims, _ = jwt_parts(code_flow(op, listener)[1]["id_token"])
    assert (claims["aud"], claims["iss"], claims["exp"], claims["nonce"]) == (
        "other",
        "http://evil",
        past,
        "x",
    )
    op.untamper()
    verify(op, code_flow(op, listener, nonce="n2")[1]["id_token"], nonce="n2")


def test_tamper_alg_none_in_flow(oidc_provider: TestProvider, listener: Listener) -> None:
    oidc_provider.tamper(alg="none")
    header, claims, sig = jwt_parts(code_flow(oidc_provider, listener)[1]["id_token"])
    assert header["alg"] == "none" and sig == "" and claims["sub"] == oidc_provider.users["alice"].sub


def test_mint_and_tamper_modes(oidc_provider: TestProvider) -> None:
    op = oidc_provider
    keys = KeySet.import_key_set(op.jwks())
    good = op.mint_id_token("xwhep-cli", nonce="abc")
    assert jwt.decode(good, keys).claims["nonce"] == "abc"

    future = int(time.time()) + 600
    _, claims, _ = jwt_parts(op.mint_id_token(claims={"nbf": future}, drop=["email"]))
    assert claims["nbf"] == future and "email" not in claims

    header, _, sig = jwt_parts(op.mint_id_token(alg="none"))
    assert header["alg"] == "none" and sig == ""

    hs = op.mint_id_token(alg="HS256")
    header, _, sig = jwt_parts(hs)
    assert header == {"alg": "HS256", "typ": "JWT", "kid": op.kid}
    pem = op._keys[0].as_pem(private=False)
    mac = hmac.new(pem, hs.rsplit(".", 1)[0].encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(mac).rstrip(b"=").decode() == sig

    bad = op.mint_id_token(bad_signature=True)
    assert jwt_parts(bad)[0]["kid"] == op.kid
    with pytest.raises(BadSignatureError):
        jwt.decode(bad, keys)

    unknown = op.mint_id_token(unknown_kid=True)
    assert jwt_parts(unknown)[0]["kid"] not in {k["kid"] for k in op.jwks()["keys"]}
    with pytest.raises((JoseError, ValueError)):
        jwt.decode(unknown, keys)


def test_down_up_and_hang(oidc_provider: TestProvider) -> None:
    op = oidc_provider
    issuer = op.issuer
    op.down()
    with pytest.raises(requests.ConnectionError):
        requests.get(issuer + "/jwks", timeout=2)
    op.up()
    assert op.issuer == issuer and requests.get(issuer + "/jwks", timeout=2).ok
    op.down(hang=True)
    with pytest.raises(requests.ReadTimeout):
        requests.get(issuer + "/jwks", timeout=0.5)
    op.up()
    assert requests.get(issuer + "/jwks", timeout=2).ok


def test_confidential_client(oidc_provider: TestProvider, listener: Listener) -> None:
    op = oidc_provider
    op.add_client("web-2", secret="s3cret", redirect_uris=[listener.url])
    sess = OAuth2Session(
        "web-2", "s3cret", redirect_uri=listener.url, scope=SCOPE, code_challenge_method="S256"
    )
    verifier = generate_token(48)
    url, _ = sess.create_authorization_url(op.issuer + "/authorize", code_verifier=verifier)
    browser_login(url, "alice", "alice-password")
    code = listener.queries[-1]["code"]
    tok = sess.fetch_token(op.issuer + "/token", code=code, code_verifier=verifier)
    verify(op, tok["id_token"], aud="web-2")
    sess = OAuth2Session("web-2", "wrong", redirect_uri=listener.url)
    r = requests.post(
        op.issuer + "/token",
        data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]},
        auth=("web-2", "wrong"),
        timeout=5,
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def test_webbrowser_uses_the_scripted_browser(
    oidc_provider: TestProvider, listener: Listener, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    op = oidc_provider
    sess = OAuth2Session("xwhep-cli", redirect_uri=listener.url, scope=SCOPE, code_challenge_method="S256")
    url, _ = sess.create_authorization_url(op.issuer + "/authorize", code_verifier=generate_token(48))
    monkeypatch.setenv("XW_TEST_BROWSER_LOGIN", "alice")
    monkeypatch.setenv("XW_TEST_BROWSER_PASSWORD", "alice-password")
    monkeypatch.setattr(webbrowser, "_tryorder", None)  # webbrowser reads BROWSER once per process
    monkeypatch.setattr(webbrowser, "_browsers", {})
    monkeypatch.setenv("BROWSER", write_browser_command(tmp_path))
    browser = webbrowser.get()
    assert isinstance(browser, webbrowser.GenericBrowser)
    assert browser.open(url) is True
    assert "code" in listener.queries[-1]


def test_webbrowser_does_not_split_browser_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Documents why write_browser_command exists: "python browser.py %s" is not a usable BROWSER."""
    monkeypatch.setattr(webbrowser, "_tryorder", None)
    monkeypatch.setattr(webbrowser, "_browsers", {})
    monkeypatch.setenv("BROWSER", f"{write_browser_command(tmp_path)} %s")
    assert webbrowser.get().open("http://127.0.0.1:9/authorize") is False
