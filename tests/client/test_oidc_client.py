"""client/oidc.py against the project's real test provider (tests/oidc/provider.py), without an xwhep server.

Browsers are tests/oidc/browser.py: as ``$BROWSER`` (webbrowser runs it and waits) or called on the URL.
"""

from __future__ import annotations

import re
import threading
import time
import webbrowser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from client import oidc
from common.errors import TransportError, Unauthorized
from tests.oidc.browser import browser_login, device_approve, write_browser_command

SCOPES = ("openid", "profile", "email", "offline_access")
LOGIN, PASSWORD = "alice", "alice-password"


def discover(op: Any, timeout: float = oidc.HTTP_TIMEOUT) -> oidc.Provider:
    return oidc.discover("test-idp", op.issuer, "xwhep-cli", SCOPES, timeout=timeout)


def redirect_of(url: str) -> tuple[str, dict[str, str]]:
    """The loopback redirect URI and the query of an authorization URL."""
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    return query["redirect_uri"], query


def device_login(provider: oidc.Provider, *, deny: bool = False) -> oidc.Tokens:
    """A device sign-in approved (or denied) by alice as soon as the code is shown."""

    def say(line: str) -> None:
        found = re.match(r"To sign in, visit (\S+) and enter the code (\S+)", line)
        if found:
            device_approve(found[1], found[2], LOGIN, PASSWORD, deny=deny)

    return oidc.login_device(provider, timeout=30, say=say)


# --- discovery ------------------------------------------------------------------------------------


def test_discovery_reads_the_endpoints(oidc_provider: Any) -> None:
    provider = discover(oidc_provider)
    assert provider.endpoint("token_endpoint") == f"{oidc_provider.issuer}/token"
    assert provider.scopes == SCOPES


def test_discovery_refuses_another_issuer(oidc_provider: Any) -> None:
    with pytest.raises(Unauthorized, match="names the issuer"):
        oidc.discover("x", oidc_provider.issuer + "/", "xwhep-cli", SCOPES)


@pytest.mark.parametrize(
    "url",
    ["http://idp.example.org", "http://10.0.0.1:8080", "ftp://127.0.0.1", "https://", "http://127.0.0.2"],
)
def test_plain_http_is_only_for_this_machine(url: str) -> None:
    with pytest.raises(Unauthorized, match="must be https"):
        oidc.check_url(url, "issuer")


@pytest.mark.parametrize(
    "url", ["https://idp.example.org", "http://127.0.0.1:9", "http://[::1]:9", "http://localhost"]
)
def test_https_anywhere_and_http_on_loopback_are_accepted(url: str) -> None:
    assert oidc.check_url(url, "issuer") == url


def test_a_provider_that_is_down_is_one_quick_clear_error(oidc_provider: Any) -> None:
    oidc_provider.down()
    started = time.monotonic()
    with pytest.raises(TransportError) as caught:
        discover(oidc_provider)
    assert time.monotonic() - started < 5
    assert caught.value.reason.startswith(f"cannot reach the identity provider {oidc_provider.issuer}: ")
    assert "refused" in caught.value.reason.lower() and "\n" not in caught.value.reason


def test_a_hanging_provider_is_bounded_by_the_timeout(oidc_provider: Any) -> None:
    oidc_provider.down(hang=True)
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"did not answer within 0\.5 s"):
        discover(oidc_provider, timeout=0.5)
    assert time.monotonic() - started < 5
    oidc_provider.up()


# --- the browser flow -----------------------------------------------------------------------------


def test_browser_sign_in_through_the_browser_command(
    oidc_provider: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROWSER", write_browser_command(tmp_path))
    monkeypatch.setenv("XW_TEST_BROWSER_LOGIN", LOGIN)
    monkeypatch.setenv("XW_TEST_BROWSER_PASSWORD", PASSWORD)
    monkeypatch.setattr(webbrowser, "_tryorder", None)  # read BROWSER again
    assert oidc.choose_flow(device=False) == "browser"
    said: list[str] = []
    tokens = oidc.login_browser(discover(oidc_provider), timeout=30, say=said.append)
    claims = oidc.id_token_claims(tokens.id_token)
    assert claims["iss"] == oidc_provider.issuer and claims["aud"] == "xwhep-cli"
    assert claims["nonce"] == tokens.nonce and tokens.nonce
    assert claims["sub"] == oidc_provider.users[LOGIN].sub
    assert tokens.refresh_token
    assert len(said) == 1 and said[0].startswith("If no browser opened, visit: http://127.0.0.1:")
    redirect, query = redirect_of(said[0].split(": ", 1)[1])
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/callback", redirect)
    assert query["code_challenge_method"] == "S256" and query["state"] and query["nonce"] == tokens.nonce


def test_the_device_flow_is_chosen_without_a_browser(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_browser(using: str | None = None) -> webbrowser.BaseBrowser:
        raise webbrowser.Error("could not locate runnable browser")

    monkeypatch.setattr(webbrowser, "get", no_browser)
    assert oidc.choose_flow(device=False) == "device"
    assert oidc.choose_flow(device=True) == "device"


def test_browser_sign_in_with_the_browser_called_on_the_printed_url(oidc_provider: Any) -> None:
    pages: list[str] = []

    def open_url(url: str) -> bool:
        pages.append(browser_login(url, LOGIN, PASSWORD).text)
        return True

    tokens = oidc.login_browser(discover(oidc_provider), timeout=30, say=lambda line: None, open_url=open_url)
    assert oidc.id_token_claims(tokens.id_token)["nonce"] == tokens.nonce
    assert "You may close this window" in pages[0]


def test_a_callback_with_another_state_is_refused(oidc_provider: Any) -> None:
    def forged(url: str) -> bool:
        redirect, _ = redirect_of(url)
        requests.get(f"{redirect}?{urlencode({'code': 'stolen', 'state': 'not-ours'})}", timeout=5)
        return True

    with pytest.raises(Unauthorized, match=r"^state mismatch: "):
        oidc.login_browser(discover(oidc_provider), timeout=10, say=lambda line: None, open_url=forged)
    assert "POST /token" not in oidc_provider.requests  # the forged code was never spent


def test_a_refusal_at_the_provider_is_reported_with_its_description(oidc_provider: Any) -> None:
    def deny(url: str) -> bool:
        redirect, query = redirect_of(url)
        answer = {"error": "access_denied", "error_description": "Alice said no", "state": query["state"]}
        requests.get(f"{redirect}?{urlencode(answer)}", timeout=5)
        return True

    with pytest.raises(Unauthorized) as caught:
        oidc.login_browser(discover(oidc_provider), timeout=10, say=lambda line: None, open_url=deny)
    assert caught.value.reason == f"{oidc_provider.issuer} refused the sign-in: access_denied: Alice said no"


def test_an_id_token_without_our_nonce_is_refused(oidc_provider: Any) -> None:
    oidc_provider.tamper(nonce="someone-elses")
    with pytest.raises(Unauthorized, match="lacks this sign-in's nonce"):
        oidc.login_browser(
            discover(oidc_provider),
            timeout=30,
            say=lambda line: None,
            open_url=lambda url: browser_login(url, LOGIN, PASSWORD),
        )


def test_a_browser_that_never_comes_back_is_bounded_by_the_timeout(oidc_provider: Any) -> None:
    started = time.monotonic()
    with pytest.raises(Unauthorized, match=r"not completed within 0\.5 s"):
        oidc.login_browser(
            discover(oidc_provider), timeout=0.5, say=lambda line: None, open_url=lambda u: True
        )
    assert time.monotonic() - started < 3


def test_a_stopped_sign_in_ends_promptly(oidc_provider: Any) -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Unauthorized, match="interrupted"):
        oidc.login_browser(
            discover(oidc_provider), timeout=60, say=lambda line: None, open_url=lambda u: True, stop=stop
        )
    assert time.monotonic() - started < 3


# --- the device flow ------------------------------------------------------------------------------


def test_device_sign_in_approved(oidc_provider: Any) -> None:
    tokens = device_login(discover(oidc_provider))
    claims = oidc.id_token_claims(tokens.id_token)
    assert claims["sub"] == oidc_provider.users[LOGIN].sub and claims["iss"] == oidc_provider.issuer
    assert tokens.nonce is None and tokens.refresh_token


def test_device_sign_in_denied(oidc_provider: Any) -> None:
    with pytest.raises(
        Unauthorized, match=f"^the sign-in was refused at {re.escape(oidc_provider.issuer)}: "
    ):
        device_login(discover(oidc_provider), deny=True)


def test_device_sign_in_expired(oidc_provider: Any) -> None:
    def expire(line: str) -> None:
        oidc_provider.expire_device_codes()

    with pytest.raises(Unauthorized, match="expired unapproved: run xwlogin again"):
        oidc.login_device(discover(oidc_provider), timeout=30, say=expire)


def test_device_polling_slows_down_when_told(oidc_provider: Any) -> None:
    stop = threading.Event()
    waits: list[float] = []

    def impatient(seconds: float) -> None:  # polls at once, which the provider answers with slow_down
        waits.append(seconds)
        if len(waits) == 3:
            stop.set()

    with pytest.raises(Unauthorized, match="interrupted"):
        oidc.login_device(
            discover(oidc_provider), timeout=30, say=lambda line: None, sleep=impatient, stop=stop
        )
    assert waits == [1.0, 1.0, 6.0]  # the provider's interval, then 5 s more after slow_down


def test_device_sign_in_bounded_by_the_timeout(oidc_provider: Any) -> None:
    started = time.monotonic()
    with pytest.raises(Unauthorized, match=r"not approved within 2 s"):
        oidc.login_device(discover(oidc_provider), timeout=2, say=lambda line: None)
    assert time.monotonic() - started < 4


# --- refresh and revocation -----------------------------------------------------------------------


def test_refresh_gives_a_new_id_token_and_rotates_the_refresh_token(oidc_provider: Any) -> None:
    provider = discover(oidc_provider)
    first = device_login(provider)
    assert first.refresh_token
    again = oidc.refresh(provider, first.refresh_token)
    assert again.id_token != first.id_token
    assert oidc.id_token_claims(again.id_token)["sub"] == oidc.id_token_claims(first.id_token)["sub"]
    assert again.refresh_token and again.refresh_token != first.refresh_token
    with pytest.raises(Unauthorized, match="invalid_grant"):
        oidc.refresh(provider, first.refresh_token)  # the rotated-out one is spent


def test_revoke_without_a_revocation_endpoint_is_a_quiet_no(oidc_provider: Any) -> None:
    assert oidc.revoke(discover(oidc_provider), "whatever") is False


def test_id_token_claims_refuses_garbage() -> None:
    for token in ("", "abc", "a.!!!.c", "a.WzFd.c"):  # WzFd = [1]
        with pytest.raises(Unauthorized, match="malformed"):
            oidc.id_token_claims(token)
