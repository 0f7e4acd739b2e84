"""The cached OIDC sign-in in XWClient and xwlogin/xwlogout, with MockTransport as the xwhep server and the
real test provider (tests/oidc/provider.py)."""

from __future__ import annotations

import itertools
import re
import time
import webbrowser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from client import oidc
from client.api import XWClient
from client.commands import xwping
from client.commands_login import xwlogin, xwlogout
from client.config import ClientConfig
from client.tokencache import CachedLogin, TokenCache
from client.transport import ApiRequest, ApiResponse, MockTransport
from common.errors import Unauthorized
from tests.client.conftest import CLEAN_ENV
from tests.oidc.browser import device_approve, write_browser_command

SERVER = "https://grid.test"
CFG = ClientConfig(server=SERVER)
SCOPES = ("openid", "profile", "email", "offline_access")


def problem(status: int, code: str, detail: str) -> ApiResponse:
    doc = {"type": f"urn:xwhep:problem:{code}", "title": "t", "status": status, "detail": detail}
    return ApiResponse(status, {"Content-Type": "application/problem+json"}, json=doc)


class FakeServer:
    """The xwhep server's side of OIDC sign-in, in memory: exchanges each ID token once."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.valid: set[str] = set()
        self.exchanged: list[dict[str, Any]] = []
        self.seen: list[str | None] = []  # the Authorization of each /ping
        self.counter = itertools.count(1)

    def handle(self, req: ApiRequest) -> ApiResponse:
        if req.path == "/auth/oidc/providers":
            doc = {
                "name": "test-idp",
                "issuer": self.issuer,
                "client_id": "xwhep-cli",
                "scopes": list(SCOPES),
            }
            return ApiResponse(json={"providers": [doc]})
        if req.path == "/auth/oidc/token":
            body = req.body_json()
            if any(e["id_token"] == body["id_token"] for e in self.exchanged):
                return problem(401, "unauthorized", "ID token already used")
            claims = oidc.id_token_claims(body["id_token"])
            if claims["iss"] != self.issuer or claims.get("nonce") != body["nonce"]:
                return problem(401, "unauthorized", "bad ID token")
            self.exchanged.append(body)
            token = f"xw-{next(self.counter)}"
            self.valid.add(token)
            return ApiResponse(json={"access_token": token, "token_type": "Bearer", "expires_in": 3600})
        if req.path == "/ping":
            auth = req.headers.get("Authorization")
            self.seen.append(auth)
            if auth is None:
                return problem(401, "unauthorized", "authentication required")
            if auth.removeprefix("Bearer ") not in self.valid:
                return problem(401, "unauthorized", "token revoked: log in again")
            return ApiResponse(
                json={"login": "alice", "rights": "STANDARD_USER", "auth": "token", "via": self.issuer}
            )
        return problem(404, "not-found", req.path)


def signed_in_entry(op: Any, **changes: Any) -> CachedLogin:
    """A cache entry holding a real refresh token of alice's (from an approved device sign-in)."""
    provider = oidc.discover("test-idp", op.issuer, "xwhep-cli", SCOPES)

    def say(line: str) -> None:
        found = re.match(r"To sign in, visit (\S+) and enter the code (\S+)", line)
        if found:
            device_approve(found[1], found[2], "alice", "alice-password")

    tokens = oidc.login_device(provider, timeout=30, say=say)
    values: dict[str, Any] = dict(
        provider="test-idp",
        issuer=op.issuer,
        client_id="xwhep-cli",
        scopes=SCOPES,
        login="alice",
        refresh_token=tokens.refresh_token,
        access_token="xw-cached",
        expires_at=time.time() + 3600,
    )
    return CachedLogin(**{**values, **changes})


@pytest.fixture
def cache(tmp_path: Path) -> TokenCache:
    return TokenCache(tmp_path / "xwhep" / "tokens.json")


async def test_a_fresh_cached_token_is_sent_without_asking_the_provider(cache: TokenCache) -> None:
    server = FakeServer("http://127.0.0.1:9")  # a provider that does not exist: it must not be needed
    server.valid.add("xw-cached")
    entry = CachedLogin(
        "test-idp", server.issuer, "xwhep-cli", SCOPES, "alice", "rt", "xw-cached", time.time() + 600
    )
    cache.put(SERVER, entry)
    async with XWClient(CFG, MockTransport(server.handle), tokens=cache) as xw:
        assert (await xw.ping()).login == "alice"
    assert server.seen == ["Bearer xw-cached"] and server.exchanged == []
    assert cache.get(SERVER) == entry


async def test_an_expiring_token_is_renewed_at_the_provider_and_stored(
    oidc_provider: Any, cache: TokenCache
) -> None:
    server = FakeServer(oidc_provider.issuer)
    old = signed_in_entry(oidc_provider, expires_at=time.time() + 20)  # under the 30 s margin
    cache.put(SERVER, old)
    async with XWClient(CFG, MockTransport(server.handle), tokens=cache) as xw:
        await xw.ping()
        await xw.ping()  # the renewed token is used as is
    assert server.seen == ["Bearer xw-1", "Bearer xw-1"]
    assert len(server.exchanged) == 1 and server.exchanged[0]["nonce"] is None
    assert server.exchanged[0]["provider"] == "test-idp"
    new = cache.get(SERVER)
    assert new is not None and new.access_token == "xw-1" and new.expires_at > time.time() + 3000
    assert new.refresh_token and new.refresh_token != old.refresh_token  # the rotated one is kept
    assert new.login == "alice" and new.issuer == oidc_provider.issuer


async def test_a_refused_cached_token_is_renewed_once_and_retried(
    oidc_provider: Any, cache: TokenCache
) -> None:
    server = FakeServer(oidc_provider.issuer)
    cache.put(SERVER, signed_in_entry(oidc_provider))  # xw-cached: fresh, but the server does not take it
    async with XWClient(CFG, MockTransport(server.handle), tokens=cache) as xw:
        assert (await xw.ping()).via == oidc_provider.issuer
    assert server.seen == ["Bearer xw-cached", "Bearer xw-1"]


async def test_without_a_sign_in_the_error_says_run_xwlogin(cache: TokenCache) -> None:
    server = FakeServer("http://127.0.0.1:9")
    async with XWClient(CFG, MockTransport(server.handle), tokens=cache) as xw:
        with pytest.raises(Unauthorized) as caught:
            await xw.ping()
    assert caught.value.reason == f"not signed in to {SERVER}: run xwlogin"
    assert server.seen == [None]


async def test_a_sign_in_the_provider_ended_says_run_xwlogin_again(
    oidc_provider: Any, cache: TokenCache
) -> None:
    server = FakeServer(oidc_provider.issuer)
    entry = signed_in_entry(oidc_provider, expires_at=time.time() - 1)
    oidc.refresh(oidc.discover("x", oidc_provider.issuer, "xwhep-cli", SCOPES), entry.refresh_token or "")
    cache.put(SERVER, entry)  # its refresh token was just rotated away
    async with XWClient(CFG, MockTransport(server.handle), tokens=cache) as xw:
        with pytest.raises(Unauthorized) as caught:
            await xw.ping()
    assert (
        caught.value.reason == f"your sign-in through {oidc_provider.issuer} has expired: run xwlogin again"
    )
    assert server.seen == [] and cache.get(SERVER) == entry


async def test_a_password_config_never_reads_the_cache(tmp_path: Path) -> None:
    bad = tmp_path / "tokens.json"
    bad.write_text("{corrupt")  # would be refused if read
    cfg = ClientConfig(server=SERVER, login="alice", password="pw")

    def handler(req: ApiRequest) -> ApiResponse:
        if req.path == "/auth/token":
            return ApiResponse(json={"access_token": "pw-token", "expires_in": 3600})
        return ApiResponse(json={"login": "alice", "rights": "STANDARD_USER", "auth": "token"})

    async with XWClient(cfg, MockTransport(handler), tokens=TokenCache(bad)) as xw:
        assert (await xw.ping()).via is None


# --- the commands ---------------------------------------------------------------------------------


def invoke(
    cmd: Any, server: FakeServer, cache: TokenCache, *args: str, env: dict[str, str] | None = None
) -> Any:
    conf = cache.path.parent.parent / "client.conf"
    conf.write_text(f'server = "{SERVER}"\n')
    full_env = {**CLEAN_ENV, "XW_TOKEN_CACHE": str(cache.path), **(env or {})}
    return CliRunner().invoke(
        cmd, ["--xwconfig", str(conf), *args], obj=MockTransport(server.handle), env=full_env
    )


def test_xwlogin_through_a_browser_then_xwping_then_xwlogout(
    oidc_provider: Any, cache: TokenCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webbrowser, "_tryorder", None)
    server = FakeServer(oidc_provider.issuer)
    env = {
        "BROWSER": write_browser_command(tmp_path),
        "XW_TEST_BROWSER_LOGIN": "alice",
        "XW_TEST_BROWSER_PASSWORD": "alice-password",
    }
    result = invoke(xwlogin, server, cache, "--timeout", "30", env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stdout == f"Signed in to {SERVER} as alice via oidc: {oidc_provider.issuer}\n"
    assert "If no browser opened, visit: " in result.stderr
    assert server.exchanged[0]["nonce"]  # the browser flow's nonce went along
    entry = cache.get(SERVER)
    assert entry is not None and entry.access_token == "xw-1" and entry.refresh_token

    result = invoke(xwping, server, cache)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"pong: alice (STANDARD_USER, via token)\nvia oidc: {oidc_provider.issuer}\n"

    result = invoke(xwlogout, server, cache)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"Signed out of {SERVER} (alice via oidc: {oidc_provider.issuer})\n"
    assert cache.get(SERVER) is None
    result = invoke(xwlogout, server, cache)
    assert (result.exit_code, result.stdout) == (0, f"Not signed in to {SERVER}\n")


def test_a_failed_xwlogin_is_one_line_and_writes_nothing(
    oidc_provider: Any, cache: TokenCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webbrowser, "_tryorder", None)
    server = FakeServer(oidc_provider.issuer)
    oidc_provider.tamper(nonce="replayed")
    env = {
        "BROWSER": write_browser_command(tmp_path),
        "XW_TEST_BROWSER_LOGIN": "alice",
        "XW_TEST_BROWSER_PASSWORD": "alice-password",
    }
    result = invoke(xwlogin, server, cache, "--timeout", "30", env=env)
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"xwlogin: error: the ID token from \S+ lacks this sign-in's nonce: refused", last)
    assert server.exchanged == [] and not cache.path.exists()


def test_xwlogin_needs_provider_when_the_server_has_several(cache: TokenCache) -> None:
    server = FakeServer("http://127.0.0.1:9")
    several = {
        "providers": [
            {"name": n, "issuer": f"https://{n}.test", "client_id": "c", "scopes": ["openid"]}
            for n in ("a", "b")
        ]
    }
    original = server.handle
    server.handle = lambda req: (
        ApiResponse(json=several) if req.path == "/auth/oidc/providers" else original(req)
    )  # type: ignore[method-assign]
    result = invoke(xwlogin, server, cache)
    assert result.exit_code == 1
    assert (
        result.stderr
        == f"xwlogin: error: {SERVER} trusts several providers: choose one with --provider (a, b)\n"
    )
    result = invoke(xwlogin, server, cache, "--provider", "c")
    assert result.stderr == f"xwlogin: error: {SERVER} has no provider 'c' (it has: a, b)\n"
    assert not cache.path.exists()
