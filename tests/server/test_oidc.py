"""OpenID Connect on the server, against a real provider on 127.0.0.1 (tests/oidc/provider.py).

ID tokens are minted by the provider itself (its real keys, or deliberately wrong ones) and exchanged at
POST /api/v1/auth/oidc/token through a real TLS server; every refusal must leave nothing behind.
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from common.enums import UserRights
from common.schemas import UserGroupIn, UserPatch
from server.oidc.config import ProviderConfig, parse_providers
from server.oidc.signin import NO_PASSWORD
from server.passwords import verify_password
from server.state import SERVICES

API = "/api/v1"
Exchange = Callable[..., Awaitable[tuple[int, dict[str, Any]]]]


def mint(provider: Any, **kw: Any) -> str:
    """A fresh ID token from the provider (a unique jti: two tokens minted in one second differ)."""
    kw["claims"] = {"jti": uuid.uuid4().hex, **kw.get("claims", {})}
    return str(provider.mint_id_token(**kw))


def _config(provider: Any, **kw: Any) -> ProviderConfig:
    base: dict[str, Any] = {"name": "test", "issuer": provider.issuer, "client_id": "xwhep-cli"}
    return ProviderConfig(**{**base, **kw})


@pytest.fixture
async def oidc_grid(grid_factory: Any, oidc_provider: Any) -> Any:
    """A server trusting the test provider; unknown people become users."""
    return await grid_factory(oidc=(_config(oidc_provider, create_users=True),))


@pytest.fixture
async def http(oidc_grid: Any) -> AsyncIterator[aiohttp.ClientSession]:
    ctx = ssl.create_default_context(cafile=str(oidc_grid.settings.ca_cert))
    async with aiohttp.ClientSession(base_url=oidc_grid.url, connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        yield s


@pytest.fixture
def exchange(http: aiohttp.ClientSession) -> Exchange:
    async def post(
        id_token: str, nonce: str | None = None, provider: str = "test"
    ) -> tuple[int, dict[str, Any]]:
        body = {"provider": provider, "id_token": id_token, "nonce": nonce}
        async with http.post(f"{API}/auth/oidc/token", json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    return post


async def _logins(grid: Any) -> set[str]:
    return {u.login for u in await grid.admin.users()}


async def _ping(http: aiohttp.ClientSession, token: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{API}/ping", headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_the_trusted_providers_are_public(http: aiohttp.ClientSession, oidc_provider: Any) -> None:
    async with http.get(f"{API}/auth/oidc/providers") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["providers"] == [
        {
            "name": "test",
            "issuer": oidc_provider.issuer,
            "client_id": "xwhep-cli",
            "scopes": ["openid", "profile", "email", "offline_access"],
        }
    ]
    assert "client_secret" not in str(body)


async def test_a_new_person_becomes_a_standard_user_signed_in_via_oidc(
    oidc_grid: Any, http: aiohttp.ClientSession, exchange: Exchange, oidc_provider: Any
) -> None:
    status, body = await exchange(mint(oidc_provider, nonce="n-1"), nonce="n-1")
    assert status == 200, body
    status, ping = await _ping(http, body["access_token"])
    assert status == 200
    assert ping["login"] == "alice"
    assert ping["rights"] == UserRights.STANDARD_USER.value
    assert (ping["auth"], ping["via"]) == ("oidc", oidc_provider.issuer)
    users = {u.login: u for u in await oidc_grid.admin.users()}
    assert users["alice"].email == "alice@example.org"
    # such a user has no password: no guess, not even the empty one, logs in
    async with oidc_grid.server.runner.app[SERVICES].sessions() as session:
        from sqlalchemy import select

        from server.db.models import User

        stored = (await session.execute(select(User.password_hash).where(User.login == "alice"))).scalar_one()
    assert stored == NO_PASSWORD and not verify_password("", stored)
    # the same person again is the same user (by issuer and subject), not a second one
    status, again = await exchange(mint(oidc_provider))
    assert status == 200
    assert (await _ping(http, again["access_token"]))[1]["login"] == "alice"
    assert sorted(await _logins(oidc_grid)) == ["admin", "alice"]


def _past() -> int:
    return int(time.time()) - 3600


REFUSALS: dict[str, tuple[dict[str, Any], str | None, str]] = {
    "wrong audience": ({"claims": {"aud": "someone-else"}}, None, "audience"),
    "wrong issuer": ({"claims": {"iss": "https://evil.example.org"}}, None, "issued by"),
    "expired": ({"claims": {"exp": _past(), "iat": _past() - 60}}, None, "expired"),
    "not yet valid": ({"claims": {"nbf": int(time.time()) + 3600}}, None, "not valid yet"),
    "issued in the future": ({"claims": {"iat": int(time.time()) + 3600}}, None, "future"),
    "no subject": ({"drop": ["sub"]}, None, "sub"),
    "bad signature": ({"bad_signature": True}, None, "signature"),
    "alg none": ({"alg": "none"}, None, "alg none"),
    "HS256 keyed with the public key": ({"alg": "HS256"}, None, "HS256"),
    "unknown kid after refetch": ({"unknown_kid": True}, None, "does not publish"),
    "nonce mismatch": ({"nonce": "theirs"}, "mine", "nonce"),
    "nonce missing": ({}, "mine", "nonce"),
    "unexpected nonce": ({"nonce": "theirs"}, None, "nonce"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_a_wrong_id_token_is_refused_and_creates_nothing(
    case: str, oidc_grid: Any, exchange: Exchange, oidc_provider: Any
) -> None:
    how, sent_nonce, words = REFUSALS[case]
    before = await _logins(oidc_grid)
    status, body = await exchange(mint(oidc_provider, **how), nonce=sent_nonce)
    assert status == 401, body
    assert words in body["detail"], body["detail"]
    assert "\n" not in body["detail"]
    assert await _logins(oidc_grid) == before


async def test_a_replayed_id_token_is_refused(exchange: Exchange, oidc_provider: Any) -> None:
    token = mint(oidc_provider, nonce="once")
    assert (await exchange(token, nonce="once"))[0] == 200
    status, body = await exchange(token, nonce="once")
    assert status == 401
    assert "already used" in body["detail"]


async def test_a_provider_the_server_does_not_trust_is_refused(
    exchange: Exchange, oidc_provider: Any
) -> None:
    status, body = await exchange(mint(oidc_provider), provider="https://other.example.org")
    assert status == 401
    assert "not trusted" in body["detail"] and "test" in body["detail"]


async def test_a_rotated_key_is_fetched_once_and_random_kids_do_not_flood_the_provider(
    oidc_grid: Any, exchange: Exchange, oidc_provider: Any
) -> None:
    assert (await exchange(mint(oidc_provider)))[0] == 200
    fetched = oidc_provider.jwks_fetches
    oidc_provider.rotate_keys()
    assert (await exchange(mint(oidc_provider)))[0] == 200  # unknown kid: one refetch
    assert oidc_provider.jwks_fetches == fetched + 1
    assert (await exchange(mint(oidc_provider)))[0] == 200  # the new key is cached now
    assert oidc_provider.jwks_fetches == fetched + 1
    for _ in range(3):  # kids nobody publishes, right after a refetch: refused without fetching
        status, _body = await exchange(mint(oidc_provider, unknown_kid=True))
        assert status == 401
    assert oidc_provider.jwks_fetches == fetched + 1


async def test_a_provider_that_is_down_or_hangs_gives_a_clear_503_quickly(
    oidc_grid: Any, exchange: Exchange, oidc_provider: Any
) -> None:
    token = mint(oidc_provider)
    oidc_grid.server.runner.app[SERVICES].oidc.timeout = 1.0
    oidc_provider.down(hang=True)
    started = time.monotonic()
    status, body = await exchange(token)
    assert status == 503, body
    assert "unreachable" in body["detail"] and "timed out" in body["detail"]
    assert time.monotonic() - started < 5
    oidc_provider.up()
    oidc_provider.down()
    status, body = await exchange(token)
    assert status == 503
    assert oidc_provider.issuer in body["detail"]
    assert await _logins(oidc_grid) == {"admin"}


async def test_unknown_people_are_refused_when_creation_is_off_until_an_admin_links_them(
    grid_factory: Any, oidc_provider: Any
) -> None:
    grid = await grid_factory(oidc=(_config(oidc_provider, create_users=False),))
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    async with aiohttp.ClientSession(base_url=grid.url, connector=aiohttp.TCPConnector(ssl=ctx)) as http:

        async def exchange(token: str) -> tuple[int, dict[str, Any]]:
            async with http.post(f"{API}/auth/oidc/token", json={"provider": "test", "id_token": token}) as r:
                return r.status, await r.json(content_type=None)

        alice = oidc_provider.users["alice"]
        status, body = await exchange(mint(oidc_provider))
        assert status == 401
        assert "no xwhep account is linked" in body["detail"] and alice.sub in body["detail"]
        assert await _logins(grid) == {"admin"}

        # a password user with the same email is not taken for her: people are (issuer, subject)
        bob = await grid.add_user("bob")
        bob_uid = next(u.uid for u in await grid.admin.users() if u.login == "bob")
        await grid.admin.patch_user(bob_uid, UserPatch(email="alice@example.org"))
        assert (await exchange(mint(oidc_provider)))[0] == 401

        # only an administrator links; then the identity signs bob in
        async with http.post(
            f"{API}/identities",
            json={"user": "bob", "issuer": oidc_provider.issuer, "subject": alice.sub},
            headers=await _bearer(bob),
        ) as r:
            assert r.status == 403
        linked = await _admin_json(
            grid, http, "POST", "/identities", user="bob", issuer=oidc_provider.issuer, subject=alice.sub
        )
        assert linked["login"] == "bob" and linked["subject"] == alice.sub
        status, body = await exchange(mint(oidc_provider))
        assert status == 200
        token = body["access_token"]
        assert (await _ping(http, token))[1]["login"] == "bob"
        listed = await _admin_json(grid, http, "GET", "/identities?user=bob")
        assert [i["subject"] for i in listed["identities"]] == [alice.sub]
        assert listed["identities"][0]["last_login"] is not None
        # the same identity cannot be linked twice; an issuer we do not trust cannot be linked at all
        dup = await _admin_call(
            grid, http, "POST", "/identities", user="admin", issuer=oidc_provider.issuer, subject=alice.sub
        )
        assert dup[0] == 409 and "bob" in dup[1]["detail"]
        foreign = await _admin_call(
            grid, http, "POST", "/identities", user="bob", issuer="https://x.example.org", subject="1"
        )
        assert foreign[0] == 422
        # unlinking ends bob's tokens and the identity's sign-in
        status, _ = await _admin_call(grid, http, "DELETE", f"/identities/{linked['uid']}")
        assert status == 204
        assert (await _ping(http, token))[0] == 401
        assert (await exchange(mint(oidc_provider)))[0] == 401


async def _bearer(client: Any) -> dict[str, str]:
    return await client._auth_headers()


async def _admin_call(
    grid: Any, http: aiohttp.ClientSession, method: str, path: str, **body: Any
) -> tuple[int, Any]:
    headers = await _bearer(grid.admin)
    async with http.request(method, API + path, json=body or None, headers=headers) as r:
        return r.status, await r.json(content_type=None) if r.status != 204 else None


async def _admin_json(grid: Any, http: aiohttp.ClientSession, method: str, path: str, **body: Any) -> Any:
    status, doc = await _admin_call(grid, http, method, path, **body)
    assert status in (200, 201), (status, doc)
    return doc


async def test_groups_map_to_usergroups_and_a_taken_login_is_never_taken_over(
    grid_factory: Any, oidc_provider: Any
) -> None:
    config = _config(oidc_provider, create_users=True, groups=(("physics", "phys"),), default_group="guests")
    grid = await grid_factory(oidc=(config,))
    for label in ("phys", "guests"):
        await grid.admin.create_usergroup(UserGroupIn(label=label))
    oidc_provider.add_user("carol", "pw", groups=["chemistry"])
    await grid.add_user("dave")
    oidc_provider.add_user("dave", "pw")
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    async with aiohttp.ClientSession(base_url=grid.url, connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        for login in ("alice", "carol", "dave"):
            async with http.post(
                f"{API}/auth/oidc/token",
                json={"provider": oidc_provider.issuer, "id_token": mint(oidc_provider, login=login)},
            ) as r:
                body = await r.json()
                if login == "dave":
                    assert r.status == 409, body
                    assert "already belongs to another account" in body["detail"]
                else:
                    assert r.status == 200, body
    groups = {g.uid: g.label for g in await grid.admin.usergroups()}
    users = {u.login: u for u in await grid.admin.users()}
    assert groups[users["alice"].usergroup] == "phys"
    assert groups[users["carol"].usergroup] == "guests"


def test_provider_settings_are_checked() -> None:
    ok = parse_providers(
        {
            "kc": {
                "issuer": "https://sso.example.org/realms/science/",
                "client_id": "xwhep-cli",
                "create_users": True,
                "groups": {"/physics": "phys"},
            }
        }
    )
    assert ok[0].issuer == "https://sso.example.org/realms/science"
    assert ok[0].usergroup_for(["/physics", "x"]) == "phys"
    for bad, words in [
        ({"kc": {"issuer": "http://sso.example.org", "client_id": "c"}}, "https"),
        ({"kc": {"client_id": "c"}}, "issuer is required"),
        ({"kc": {"issuer": "https://a.org", "client_id": "c", "scopes": ["profile"]}}, "openid"),
        ({"kc": {"issuer": "https://a.org", "client_id": "c", "create_users": "yes"}}, "true or false"),
        ({"kc": {"issuer": "https://a.org", "client_id": "c", "colour": 1}}, "unknown key"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_providers(bad)
    assert parse_providers({"kc": {"issuer": "http://127.0.0.1:9", "client_id": "c"}})[0].issuer
