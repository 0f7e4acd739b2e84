"""Accounts: nobody manages a user of a higher level, a password change needs the current password, and a
password, level or certificate change ends the user's existing tokens at once."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from client.api import XWClient
from common.enums import UserRights
from common.errors import Forbidden, NotFound, Unauthorized, ValidationFailed
from common.schemas import UserGroupIn, UserPatch
from tests.conftest import PASSWORD

API = "/api/v1"


@pytest.fixture
async def http(grid: Any) -> AsyncIterator[aiohttp.ClientSession]:
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    async with aiohttp.ClientSession(base_url=grid.url, connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        yield session


async def _token(http: aiohttp.ClientSession, login: str, password: str) -> str:
    async with http.post(f"{API}/auth/token", json={"login": login, "password": password}) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access_token"])


async def _ping(http: aiohttp.ClientSession, token: str) -> tuple[int, str]:
    async with http.get(f"{API}/ping", headers={"Authorization": f"Bearer {token}"}) as resp:
        doc = await resp.json(content_type=None)
        return resp.status, str(doc.get("detail", ""))


async def _uid(grid: Any, login: str) -> str:
    [user] = await grid.admin.users(login=login)
    return str(user.uid)


@pytest.fixture
async def group(grid: Any) -> dict[str, Any]:
    """Group g with its administrator ``gadmin``, a super user ``root2``, a peer ``gadmin2`` and ``std``."""
    await grid.admin.create_usergroup(UserGroupIn(label="g"))
    clients: dict[str, Any] = {}
    for login, level in (
        ("gadmin", UserRights.ADVANCED_USER),
        ("gadmin2", UserRights.ADVANCED_USER),
        ("root2", UserRights.SUPER_USER),
        ("std", UserRights.STANDARD_USER),
        ("wrk", UserRights.WORKER_USER),
    ):
        clients[login] = await grid.add_user(login, level, group="g")
    return clients


# --- a group administrator cannot take over its betters ------------------------------------------


@pytest.mark.parametrize("target", ["root2", "gadmin2"])
async def test_group_admin_cannot_take_over_a_higher_or_equal_user(
    grid: Any, group: dict[str, Any], http: aiohttp.ClientSession, target: str
) -> None:
    gadmin: XWClient = group["gadmin"]
    uid = await _uid(grid, target)
    with pytest.raises(Forbidden, match="may not manage"):
        await gadmin.patch_user(uid, UserPatch(password="taken over!"))
    with pytest.raises(Forbidden, match="may not manage"):
        await gadmin.patch_user(uid, UserPatch(rights=UserRights.STANDARD_USER))
    with pytest.raises(Forbidden, match="may not manage"):
        await gadmin.patch_user(uid, UserPatch(email="attacker@example.org"))
    with pytest.raises(Forbidden, match="may not manage"):
        await gadmin.remove(uid)
    with pytest.raises(Forbidden, match="may not manage"):
        await gadmin.chmod(uid, "777")
    # nothing changed: the target still logs in with its own password and keeps its level
    token = await _token(http, target, PASSWORD)
    assert (await _ping(http, token))[0] == 200
    [user] = await grid.admin.users(login=target)
    assert user.rights.value == ("SUPER_USER" if target == "root2" else "ADVANCED_USER")
    async with http.post(f"{API}/auth/token", json={"login": target, "password": "taken over!"}) as resp:
        assert resp.status == 401


async def test_group_admin_manages_lower_users_of_its_group(grid: Any, group: dict[str, Any]) -> None:
    gadmin: XWClient = group["gadmin"]
    std = await _uid(grid, "std")
    changed = await gadmin.patch_user(std, UserPatch(password="reset by gadmin", email="std@g.org"))
    assert changed.email == "std@g.org"
    assert (
        await gadmin.patch_user(std, UserPatch(rights=UserRights.WORKER_USER))
    ).rights.value == "WORKER_USER"
    with pytest.raises(Forbidden):  # promoting to its own level stays refused
        await gadmin.patch_user(std, UserPatch(rights=UserRights.ADVANCED_USER))
    await gadmin.remove(await _uid(grid, "wrk"))
    outsider = await grid.add_user("outsider")  # no group: not gadmin's to manage
    with pytest.raises((Forbidden, NotFound)):
        await gadmin.patch_user(await _uid(grid, "outsider"), UserPatch(password="not yours either"))
    assert (await outsider.ping()).login == "outsider"


async def test_nobody_promotes_itself(grid: Any, group: dict[str, Any]) -> None:
    for login in ("std", "gadmin"):
        me = group[login]
        with pytest.raises(Forbidden, match="its own rights"):
            await me.patch_user(await _uid(grid, login), UserPatch(rights=UserRights.SUPER_USER))
        with pytest.raises(Forbidden, match="its own rights"):
            await me.patch_user(await _uid(grid, login), UserPatch(cert_subject="CN=someone-else"))


async def test_super_user_manages_another_super_user(grid: Any, group: dict[str, Any]) -> None:
    root2 = await _uid(grid, "root2")
    assert (await grid.admin.patch_user(root2, UserPatch(email="r@x.org"))).email == "r@x.org"


# --- passwords and tokens ------------------------------------------------------------------------


async def test_changing_ones_own_password_needs_the_current_one(
    grid: Any, http: aiohttp.ClientSession
) -> None:
    alice = await grid.add_user("alice")
    uid = await _uid(grid, "alice")
    with pytest.raises(ValidationFailed, match="current_password"):
        await alice.patch_user(uid, UserPatch(password="stolen-token-pw"))
    with pytest.raises(Forbidden, match="current_password is wrong"):
        await alice.patch_user(uid, UserPatch(password="stolen-token-pw", current_password="guess"))
    async with http.post(f"{API}/auth/token", json={"login": "alice", "password": "stolen-token-pw"}) as resp:
        assert resp.status == 401
    await alice.patch_user(uid, UserPatch(password="new and long", current_password=PASSWORD))
    assert (await _ping(http, await _token(http, "alice", "new and long")))[0] == 200


async def test_a_password_change_ends_existing_tokens(grid: Any, http: aiohttp.ClientSession) -> None:
    await grid.add_user("alice")
    uid = await _uid(grid, "alice")
    stolen = await _token(http, "alice", PASSWORD)
    assert (await _ping(http, stolen))[0] == 200
    me = grid.client(grid.config(login="alice", password=PASSWORD))
    await me.patch_user(uid, UserPatch(password="rotated password", current_password=PASSWORD))
    status, detail = await _ping(http, stolen)
    assert status == 401 and "revoked" in detail
    fresh = await _token(http, "alice", "rotated password")
    assert (await _ping(http, fresh))[0] == 200


@pytest.mark.parametrize(
    "patch",
    [
        UserPatch(password="admin reset pw"),
        UserPatch(rights=UserRights.WORKER_USER),
        UserPatch(cert_subject=""),
    ],
    ids=["password", "level", "certificates"],
)
async def test_admin_changes_end_the_users_tokens(
    grid: Any, http: aiohttp.ClientSession, patch: UserPatch
) -> None:
    await grid.add_user("alice")
    token = await _token(http, "alice", PASSWORD)
    await grid.admin.patch_user(await _uid(grid, "alice"), patch)
    status, detail = await _ping(http, token)
    assert status == 401 and "log in again" in detail


async def test_an_unchanged_level_or_email_keeps_tokens(grid: Any, http: aiohttp.ClientSession) -> None:
    await grid.add_user("alice")
    token = await _token(http, "alice", PASSWORD)
    uid = await _uid(grid, "alice")
    await grid.admin.patch_user(uid, UserPatch(email="a@b.org", rights=UserRights.STANDARD_USER))
    assert (await _ping(http, token))[0] == 200


async def test_deleting_a_user_ends_its_tokens(grid: Any, http: aiohttp.ClientSession) -> None:
    await grid.add_user("alice")
    token = await _token(http, "alice", PASSWORD)
    await grid.admin.remove(await _uid(grid, "alice"))
    assert (await _ping(http, token))[0] == 401
    # the same login created again is someone else: the old token does not become theirs
    await grid.add_user("alice")
    assert (await _ping(http, token))[0] == 401


async def test_client_library_reports_a_revoked_token_in_one_line(grid: Any) -> None:
    alice = await grid.add_user("alice")
    await alice.ping()
    await grid.admin.patch_user(await _uid(grid, "alice"), UserPatch(password="changed by admin"))
    with pytest.raises(Unauthorized, match="wrong login or password"):
        await alice.ping()  # it re-logs in once with the configured (now old) password, which fails
