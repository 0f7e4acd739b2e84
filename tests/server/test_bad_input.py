"""Bad input answers problem+json with a stable type and a human detail, and changes nothing."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from client.api import XWClient
from common.enums import AppType, DataStatus
from common.errors import PROBLEM_BASE
from common.schemas import AppIn, DataIn

API = "/api/v1"
RANDOM = str(uuid.uuid4())
CODES = {400: "bad-request", 404: "not-found", 413: "too-large", 422: "validation"}


@dataclass
class Raw:
    """Raw HTTPS requests as the administrator (bearer token), to send what the client library never would."""

    session: aiohttp.ClientSession
    base: str
    token: str

    def request(self, method: str, path: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        url = URL(self.base + path, encoded=True)  # encoded: keep '..' and '%2F' exactly as written
        return self.session.request(method, url, headers=headers, **kw)


@dataclass
class World:
    """Objects that exist before each bad request, and the administrator's view of everything."""

    admin: XWClient
    app: str
    data: str
    admin_uid: str


@pytest.fixture
async def world(grid: Any, tmp_path: Path) -> World:
    admin = grid.admin
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    data = await admin.send_file(script)
    app = await admin.send_app(
        AppIn(
            name="bad_input_app",
            type=AppType.SCRIPT,
            binaries=[{"os": "ANY", "cpu": "ANY", "data": data.uid}],
        )
    )
    [me] = await admin.users(login="admin")
    return World(admin, app.uid, data.uid, me.uid)


@pytest.fixture
async def raw(grid: Any) -> AsyncIterator[Raw]:
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    token = (await grid.admin.login("admin", grid.admin_cfg.password)).access_token
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        yield Raw(session, grid.url, token)


async def snapshot(admin: XWClient) -> dict[str, int]:
    """How many objects of each kind exist, and how long the event log is."""
    return {
        "apps": len(await admin.apps()),
        "data": len(await admin.datas()),
        "jobs": len(await admin.jobs()),
        "users": len(await admin.users()),
        "usergroups": len(await admin.usergroups()),
        "events": len(await admin.events()),
    }


async def expect_problem(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    body = await resp.text()
    assert resp.status == status, body
    assert resp.content_type == "application/problem+json", body
    doc: dict[str, Any] = await resp.json(content_type=None)
    assert doc["type"] == PROBLEM_BASE + CODES[status], doc
    assert doc["status"] == status
    assert isinstance(doc["detail"], str) and len(doc["detail"]) > 5, doc
    return doc


def _fill(value: Any, w: World) -> Any:
    """Put the world's uids into a case's path or JSON body."""
    if isinstance(value, str):
        return value.format(app=w.app, data=w.data, me=w.admin_uid, rand=RANDOM)
    if isinstance(value, list):
        return [_fill(v, w) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, w) for k, v in value.items()}
    return value


async def _unchanged_after(
    world: World, raw: Raw, method: str, path: str, status: int, **kw: Any
) -> dict[str, Any]:
    before = await snapshot(world.admin)
    async with raw.request(method, API + _fill(path, world), **kw) as resp:
        doc = await expect_problem(resp, status)
    assert await snapshot(world.admin) == before
    return doc


# --- malformed bodies, wrong types, unknown fields -----------------------------------------------

MALFORMED = [
    ("POST", "/apps", b'{"name":'),
    ("POST", "/data", b"not json"),
    ("POST", "/jobs", b"[1, 2"),
    ("POST", "/users", b"\xff\xfe{}"),
    ("POST", "/objects/{app}/chmod", b"{'mode': '755'}"),
]


@pytest.mark.parametrize(("method", "path", "body"), MALFORMED)
async def test_malformed_json_is_400(world: World, raw: Raw, method: str, path: str, body: bytes) -> None:
    await _unchanged_after(
        world, raw, method, path, 400, data=body, headers={"Content-Type": "application/json"}
    )


INVALID = [
    ("POST", "/apps", {"name": 5}),
    ("POST", "/apps", {"name": "ok_name", "colour": "red"}),
    ("POST", "/apps", {"name": "ok_name", "type": "exe"}),
    ("POST", "/apps", []),
    ("POST", "/data", {"name": "d", "size": "big"}),
    ("POST", "/data", {"name": "d", "size": -1}),
    ("POST", "/data", {"name": "d", "sha256": "xyz"}),
    ("POST", "/jobs", {"app": "{app}", "max_retries": "many"}),
    ("POST", "/jobs", {"app": "{app}", "inputs": "{data}"}),
    ("POST", "/jobs", {"app": "not-a-uid"}),
    ("POST", "/usergroups", {"label": "g", "extra": 1}),
    ("POST", "/users", {"login": "carol", "password": "short"}),
    ("POST", "/users", {"login": "carol", "password": "long enough", "rights": "GOD"}),
    ("PATCH", "/users/{me}", {"nickname": "x"}),
    ("POST", "/objects/{app}/chmod", {"mode": 755}),
    ("POST", "/objects/{app}/chmod", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), INVALID)
async def test_wrong_types_and_unknown_fields_are_422(
    world: World, raw: Raw, method: str, path: str, body: Any
) -> None:
    await _unchanged_after(world, raw, method, path, 422, json=_fill(body, world))


# --- unknown objects ------------------------------------------------------------------------------

UNKNOWN = [
    ("GET", "/apps/{rand}", None),
    ("GET", "/data/{rand}", None),
    ("GET", "/jobs/{rand}", None),
    ("GET", "/users/{rand}", None),
    ("GET", "/usergroups/{rand}", None),
    ("GET", "/objects/{rand}", None),
    ("GET", "/data/{rand}/content", None),
    ("DELETE", "/apps/{rand}", None),
    ("DELETE", "/data/{rand}", None),
    ("DELETE", "/jobs/{rand}", None),
    ("DELETE", "/users/{rand}", None),
    ("DELETE", "/usergroups/{rand}", None),
    ("DELETE", "/objects/{rand}", None),
    ("POST", "/objects/{rand}/chmod", {"mode": "755"}),
    ("PATCH", "/users/{rand}", {"email": "x@example.org"}),
    ("GET", "/apps/not-a-uid", None),
    ("GET", "/jobs/../../etc", None),
    ("GET", "/jobs/..%2F..%2Fetc", None),
    ("DELETE", "/objects/..%2Fdata", None),
    ("GET", "/data/%00", None),
    ("GET", "/nowhere", None),
    ("POST", "/jobs", {"app": "{rand}"}),
    ("POST", "/jobs", {"app": "{app}", "inputs": ["{rand}"]}),
    ("POST", "/jobs", {"app": "{app}", "stdin": "{rand}"}),
    ("POST", "/jobs", {"app": "{app}", "env": ["{rand}"]}),
    ("POST", "/apps", {"name": "ghost_bin", "binaries": [{"os": "ANY", "cpu": "ANY", "data": "{rand}"}]}),
]


@pytest.mark.parametrize(("method", "path", "body"), UNKNOWN)
async def test_unknown_objects_are_404(world: World, raw: Raw, method: str, path: str, body: Any) -> None:
    kw = {"json": _fill(body, world)} if body is not None else {}
    await _unchanged_after(world, raw, method, path, 404, **kw)


async def test_put_content_of_unknown_data_is_404(world: World, raw: Raw) -> None:
    await _unchanged_after(
        world,
        raw,
        "PUT",
        "/data/{rand}/content",
        404,
        data=b"hello",
        headers={"Content-Type": "application/octet-stream"},
    )


# --- names -----------------------------------------------------------------------------------------

BAD_NAMES = ["x" * 129, "../x", "a/b", "a\\b", "..", ".hidden", "a\x00b", "a\nb", "name\n", "", " x", "a b"]
NAME_BODIES = {
    "apps": lambda n: {"name": n},
    "data": lambda n: {"name": n},
    "usergroups": lambda n: {"label": n},
    "users": lambda n: {"login": n, "password": "long enough password"},
}


@pytest.mark.parametrize("kind", sorted(NAME_BODIES))
@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
async def test_bad_names_are_422(world: World, raw: Raw, kind: str, name: str) -> None:
    doc = await _unchanged_after(world, raw, "POST", f"/{kind}", 422, json=NAME_BODIES[kind](name))
    assert doc["errors"], doc  # the offending field is named


@pytest.mark.parametrize("kind", sorted(NAME_BODIES))
async def test_longest_name_is_accepted(world: World, raw: Raw, kind: str) -> None:
    """The control for the 129-character case: 128 is fine."""
    async with raw.request("POST", f"{API}/{kind}", json=NAME_BODIES[kind]("y" * 128)) as resp:
        assert resp.status == 201, await resp.text()


# --- sizes, modes, filters, pages ------------------------------------------------------------------


async def test_oversize_json_body_is_413(world: World, raw: Raw) -> None:
    body = b'{"name": "' + b"a" * (1 << 20) + b'"}'
    await _unchanged_after(
        world, raw, "POST", "/apps", 413, data=body, headers={"Content-Type": "application/json"}
    )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_large_valid_json_body_is_read_whole(world: World, raw: Raw, chunked: bool) -> None:
    """The control for the 413 cases: 900 KiB of valid JSON (mostly whitespace) is accepted."""
    body = b'{"name": "padded",' + b" " * (900 << 10) + b'"type": "RAW"}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1 << 16):
            yield body[start : start + (1 << 16)]

    headers = {"Content-Type": "application/json"}
    async with raw.request(
        "POST", f"{API}/data", data=chunks() if chunked else body, headers=headers
    ) as resp:
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["type"] == "RAW"


async def test_oversize_chunked_json_body_is_413(world: World, raw: Raw) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the server must count
        yield b'{"name": "'
        for _ in range(17):
            yield b"a" * (1 << 16)
        yield b'"}'

    await _unchanged_after(
        world, raw, "POST", "/data", 413, data=chunks(), headers={"Content-Type": "application/json"}
    )


@pytest.mark.parametrize("mode", ["999", "0x758", "4755", "", "u+q", "0o20000", "rwxr-xr-x"])
async def test_bad_chmod_mode_is_422(world: World, raw: Raw, mode: str) -> None:
    await _unchanged_after(world, raw, "POST", "/objects/{app}/chmod", 422, json={"mode": mode})
    assert (await world.admin.get_app(world.app)).access_rights == "0755"


@pytest.mark.parametrize(
    "query", ["status=BOGUS", "status=", "limit=0", "limit=100000", "limit=-1", "limit=ten", "offset=-1"]
)
async def test_bad_list_parameters_are_422(world: World, raw: Raw, query: str) -> None:
    await _unchanged_after(world, raw, "GET", f"/jobs?{query}", 422)


# --- content uploads that do not match their declaration --------------------------------------------


def _store_files(store: Path) -> set[Path]:
    """Content files in the store, outside its tmp/ directory."""
    return {p.relative_to(store) for p in store.rglob("*") if p.is_file() and p.parent != store / "tmp"}


@pytest.mark.parametrize(
    ("declared", "sent", "status"),
    [
        ({"size": 5, "sha256": "0" * 64}, b"hello", 422),  # wrong sha256
        ({"size": 10}, b"hello", 422),  # fewer bytes than declared
        ({"size": 3}, b"hello", 413),  # more bytes than declared: refused as too large
        ({"size": 5}, b"", 422),
    ],
)
async def test_upload_not_matching_declaration_is_refused(
    grid: Any, world: World, raw: Raw, declared: dict[str, Any], sent: bytes, status: int
) -> None:
    data = await world.admin.create_data(DataIn(name="declared", **declared))
    store = grid.settings.store_dir
    files = _store_files(store)
    before = await snapshot(world.admin)
    async with raw.request(
        "PUT",
        f"{API}/data/{data.uid}/content",
        data=sent,
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:
        await expect_problem(resp, status)
    assert await snapshot(world.admin) == before
    assert (await world.admin.get_data(data.uid)).status is DataStatus.UNAVAILABLE
    assert _store_files(store) == files
    assert list((store / "tmp").iterdir()) == []
