"""Hostile input from an attack review: every case answers a 4xx problem+json and changes nothing.

Each finding once reached the database or the event loop as a 500 (or a request that never returned):
offsets past int64, integers past their column, NaN and infinities, JSON nested 50,000 deep, NUL
characters (PostgreSQL refuses them), ``wait=nan``. The suite runs on SQLite and, with
XW_TEST_DATABASE_URL (``make test-pg``), on PostgreSQL, where most of them used to break.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from client.api import XWClient
from common.enums import CPU, OS, AppType
from common.errors import PROBLEM_BASE
from common.schemas import INT32_MAX, INT32_MIN, MAX_BYTES, AppIn, HostIn, JobIn

API = "/api/v1"
CODES = {400: "bad-request", 422: "validation"}
INT64_OVERFLOW = 2**63
DEEP = 50_000


@dataclass
class World:
    """An app, a data object, a job running on an enrolled host, and raw access as admin and as that host."""

    grid: Any
    admin: XWClient
    session: aiohttp.ClientSession
    token: str
    app: str
    data: str
    job: str
    host: str
    credential: str
    attempt: str

    def request(self, method: str, path: str, *, as_host: bool = False, **kw: Any) -> Any:
        secret = self.credential if as_host else self.token
        headers = {"Authorization": f"Bearer {secret}", **kw.pop("headers", {})}
        url = URL(self.grid.url + API + self.fill(path), encoded=True)  # keep %00 exactly as written
        return self.session.request(method, url, headers=headers, **kw)

    def fill(self, text: str) -> str:
        return (
            text.replace("{app}", self.app)
            .replace("{data}", self.data)
            .replace("{job}", self.job)
            .replace("{host}", self.host)
            .replace("{attempt}", self.attempt)
        )

    def fill_body(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.fill(value)
        if isinstance(value, list):
            return [self.fill_body(v) for v in value]
        if isinstance(value, dict):
            return {k: self.fill_body(v) for k, v in value.items()}
        return value


@pytest.fixture
async def world(grid: Any, tmp_path: Path) -> AsyncIterator[World]:
    admin = grid.admin
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    data = await admin.send_file(script)
    app = await admin.send_app(
        AppIn(
            name="hostile_app", type=AppType.SCRIPT, binaries=[{"os": "ANY", "cpu": "ANY", "data": data.uid}]
        )
    )
    job = await admin.submit(JobIn(app=app.uid, listen_ports=[8080]))
    worker = grid.client(grid.admin_cfg)
    enrolment = await worker.enrol(HostIn(name="hostile_host", os=OS.LINUX, cpu=CPU.AMD64, memory=1 << 30))
    assert enrolment.credential is not None
    assignment = await worker.request_work(enrolment.host.uid, 0)
    assert assignment is not None and assignment.job.uid == job.uid
    token = (await admin.login("admin", grid.admin_cfg.password)).access_token
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        yield World(
            grid,
            admin,
            session,
            token,
            app.uid,
            data.uid,
            job.uid,
            enrolment.host.uid,
            enrolment.credential,
            assignment.attempt,
        )


def _store_files(store: Path) -> set[Path]:
    return {p.relative_to(store) for p in store.rglob("*") if p.is_file()}


async def state(w: World) -> dict[str, Any]:
    """Everything a refused request must leave as it was."""
    job = await w.admin.get_job(w.job)
    [host] = [h for h in await w.admin.hosts() if h.uid == w.host]
    return {
        "apps": len(await w.admin.apps()),
        "data": len(await w.admin.datas()),
        "jobs": len(await w.admin.jobs()),
        "users": len(await w.admin.users()),
        "usergroups": len(await w.admin.usergroups()),
        "hosts": len(await w.admin.hosts()),
        "events": len(await w.admin.events()),
        "job": job.model_dump(exclude={"modified"}),
        "host": host.model_dump(exclude={"modified", "last_alive", "alive"}),
        "store": _store_files(w.grid.settings.store_dir),
    }


async def expect_problem(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    body = await resp.text()
    assert resp.status == status, body[:2000]
    assert resp.content_type == "application/problem+json", body[:2000]
    doc: dict[str, Any] = json.loads(body)
    assert doc["type"] == PROBLEM_BASE + CODES[status], doc
    assert doc["status"] == status
    assert isinstance(doc["detail"], str) and len(doc["detail"]) > 5, doc
    return doc


async def refused(w: World, method: str, path: str, status: int = 422, **kw: Any) -> dict[str, Any]:
    """Send a request, expect a ``status`` problem, and check that nothing changed."""
    before = await state(w)
    async with w.request(method, path, timeout=aiohttp.ClientTimeout(total=20), **kw) as resp:
        doc = await expect_problem(resp, status)
    assert await state(w) == before
    return doc


def _names(doc: dict[str, Any]) -> str:
    """The detail and the named fields of a problem, to look for a parameter or field name in."""
    return doc["detail"] + " " + " ".join(e.get("field", "") for e in doc.get("errors", []))


# --- offsets and every other query parameter --------------------------------------------------------

BAD_INTEGERS = [
    str(INT64_OVERFLOW),
    str(2**64),
    "9" * 30,
    "9" * 5000,
    "-1",
    "1e3",
    "nan",
    "0x10",
    "1_0",
    "%201",  # a space: int() would strip it
    "%2B%2B1",
]


async def _list_routes(w: World) -> list[str]:
    async with w.request("GET", "/openapi.json") as resp:
        doc = await resp.json()
    return [
        path
        for path, item in doc["paths"].items()
        if "get" in item and any(p["name"] == "offset" for p in item["get"].get("parameters", []))
    ]


async def test_offset_past_int64_on_every_list_is_422(world: World) -> None:
    lists = await _list_routes(world)
    assert {"/apps", "/data", "/jobs", "/users", "/usergroups", "/hosts", "/events", "/proxies"} <= set(lists)
    before = await state(world)
    for path in lists:
        for value in BAD_INTEGERS:
            async with world.request("GET", f"{path}?offset={value}") as resp:
                doc = await expect_problem(resp, 422)
            assert "offset" in _names(doc), doc
        async with world.request("GET", f"{path}?offset={INT32_MAX}") as resp:  # the largest is fine
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["items"] == []
    assert await state(world) == before


@pytest.mark.parametrize("value", ["0", "1001", str(INT64_OVERFLOW), "ten", "1.5"])
async def test_bad_limit_is_422(world: World, value: str) -> None:
    doc = await refused(world, "GET", f"/apps?limit={value}")
    assert "limit" in _names(doc)


QUERY_CASES = [
    ("POST", "/hosts/{host}/work?wait=nan", "wait"),
    ("POST", "/hosts/{host}/work?wait=inf", "wait"),
    ("POST", "/hosts/{host}/work?wait=-inf", "wait"),
    ("POST", "/hosts/{host}/work?wait=Infinity", "wait"),
    ("POST", "/hosts/{host}/work?wait=1e999", "wait"),
    ("POST", "/hosts/{host}/work?wait=-1", "wait"),
    ("POST", "/hosts/{host}/work?wait=1e300", "wait"),
    ("POST", "/hosts/{host}/work?wait=soon", "wait"),
    ("POST", "/hosts/{host}/work?wait=", "wait"),
    ("GET", "/events?after=abc", "after"),
    ("GET", "/events?after=-1", "after"),
    ("GET", f"/events?after={INT64_OVERFLOW}", "after"),
    ("GET", "/events?object=not-a-uid", "object"),
    ("POST", "/jobs/{job}/tunnel", "port"),
    ("POST", "/jobs/{job}/tunnel?port=http", "port"),
    ("POST", "/jobs/{job}/tunnel?port=0", "port"),
    ("POST", "/jobs/{job}/tunnel?port=65536", "port"),
    ("POST", f"/jobs/{{job}}/tunnel?port={INT64_OVERFLOW}", "port"),
    ("GET", "/hosts?alive=maybe", "alive"),
    ("GET", "/jobs?app=not-a-uid", "app"),
    ("GET", "/jobs?status=RUNNING%20OR%201=1", "status"),
    ("GET", "/jobs?label=" + "x" * 200, "label"),
    ("GET", "/apps?name=a%2Fb", "name"),
    ("GET", "/apps?owner=" + "o" * 300, "owner"),
]


@pytest.mark.parametrize(("method", "path", "name"), QUERY_CASES)
async def test_bad_query_parameter_is_422_naming_it(world: World, method: str, path: str, name: str) -> None:
    as_host = path.startswith("/hosts/{host}/")
    doc = await refused(world, method, path, as_host=as_host)
    assert name in _names(doc), doc


async def test_wait_zero_returns_at_once(world: World) -> None:
    """The control for the wait cases: a finite wait in range is served (no work left: 204)."""
    async with world.request("POST", "/hosts/{host}/work?wait=0", as_host=True) as resp:
        assert resp.status == 204, await resp.text()


@pytest.mark.parametrize("value", ["1e30", str(INT32_MAX + 1), str(INT32_MIN - 1), "nan", "", "1.5", "x"])
async def test_bad_return_code_on_result_upload_is_422(world: World, value: str) -> None:
    doc = await refused(
        world,
        "PUT",
        f"/hosts/{{host}}/attempts/{{attempt}}/result?return_code={value}",
        as_host=True,
        data=b"PK\x05\x06" + b"\0" * 18,
        headers={"Content-Type": "application/zip"},
    )
    assert "return_code" in _names(doc)


async def test_missing_return_code_is_422(world: World) -> None:
    doc = await refused(
        world,
        "PUT",
        "/hosts/{host}/attempts/{attempt}/result",
        as_host=True,
        data=b"zip",
        headers={"Content-Type": "application/zip"},
    )
    assert "return_code" in _names(doc)


async def test_declared_sha256_header_must_be_hex(world: World) -> None:
    doc = await refused(
        world,
        "PUT",
        "/hosts/{host}/attempts/{attempt}/result?return_code=0",
        as_host=True,
        data=b"zip",
        headers={"Content-Type": "application/zip", "X-Content-SHA256": "z" * 64},
    )
    assert "X-Content-SHA256" in doc["detail"]


# --- integers past their column, floats that are not numbers ------------------------------------------

BODY_NUMBERS = [
    ("POST", "/apps", {"name": "big_app", "min_memory": INT64_OVERFLOW}, "min_memory"),
    ("POST", "/apps", {"name": "big_app", "min_memory": 1e30}, "min_memory"),
    ("POST", "/apps", {"name": "big_app", "wallclock": 1e30}, "wallclock"),
    ("POST", "/data", {"name": "big_data", "size": INT64_OVERFLOW}, "size"),
    ("POST", "/data", {"name": "big_data", "size": 10**30}, "size"),
    ("POST", "/jobs", {"app": "{app}", "memory": INT64_OVERFLOW}, "memory"),
    ("POST", "/jobs", {"app": "{app}", "memory": MAX_BYTES + 1}, "memory"),
    ("POST", "/jobs", {"app": "{app}", "memory": 1e30}, "memory"),
    ("POST", "/jobs", {"app": "{app}", "max_retries": INT32_MAX + 1}, "max_retries"),
    ("POST", "/jobs", {"app": "{app}", "wallclock": 2**40}, "wallclock"),
    ("POST", "/hosts", {"name": "big", "os": "LINUX", "cpu": "AMD64", "memory": INT64_OVERFLOW}, "memory"),
    ("POST", "/hosts", {"name": "big", "os": "LINUX", "cpu": "AMD64", "disk": 2**64}, "disk"),
    ("POST", "/hosts", {"name": "big", "os": "LINUX", "cpu": "AMD64", "cores": INT32_MAX + 1}, "cores"),
    (
        "POST",
        "/hosts/{host}/attempts/{attempt}/report",
        {"outcome": "failed", "return_code": 1e30},
        "return_code",
    ),
    (
        "POST",
        "/hosts/{host}/attempts/{attempt}/report",
        {"outcome": "failed", "return_code": INT32_MAX + 1},
        "return_code",
    ),
    (
        "POST",
        "/hosts/{host}/attempts/{attempt}/report",
        {"outcome": "abort", "return_code": INT32_MIN - 1},
        "return_code",
    ),
    (
        "POST",
        "/hosts/{host}/alive",
        {"running": [{"attempt": "{attempt}", "cpu_seconds": 1e300}]},
        "cpu_seconds",
    ),
    (
        "POST",
        "/hosts/{host}/alive",
        {"running": [{"attempt": "{attempt}", "cpu_seconds": -1}]},
        "cpu_seconds",
    ),
    (
        "POST",
        "/hosts/{host}/alive",
        {"running": [{"attempt": "{attempt}", "wall_seconds": 1e300}]},
        "wall_seconds",
    ),
    (
        "POST",
        "/hosts/{host}/alive",
        {"running": [{"attempt": "{attempt}", "max_rss": INT64_OVERFLOW}]},
        "max_rss",
    ),
    ("POST", "/hosts/{host}/alive", {"running": [{"attempt": "{attempt}", "max_rss": 1e30}]}, "max_rss"),
    (
        "POST",
        "/hosts/{host}/alive",
        {"running": [{"attempt": "{attempt}", "net_in": INT64_OVERFLOW}]},
        "net_in",
    ),
    ("POST", "/hosts/{host}/alive", {"running": [{"attempt": "{attempt}", "net_out": 2**64}]}, "net_out"),
    ("POST", "/hosts/{host}/alive", {"running": [{"attempt": "../etc/passwd"}]}, "attempt"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), BODY_NUMBERS)
async def test_numbers_out_of_range_are_422(
    world: World, method: str, path: str, body: Any, field: str
) -> None:
    as_host = path.startswith("/hosts/{host}/")
    doc = await refused(world, method, path, as_host=as_host, json=world.fill_body(body))
    assert field in _names(doc), doc


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]


@pytest.mark.parametrize("field", ["cpu_seconds", "wall_seconds"])
@pytest.mark.parametrize("value", NON_FINITE)
async def test_non_finite_heartbeat_numbers_are_422(world: World, field: str, value: str) -> None:
    body = f'{{"running": [{{"attempt": "{world.attempt}", "{field}": {value}}}]}}'.encode()
    doc = await refused(
        world,
        "POST",
        "/hosts/{host}/alive",
        as_host=True,
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert field in _names(doc), doc


@pytest.mark.parametrize("value", NON_FINITE)
async def test_non_finite_integers_are_422(world: World, value: str) -> None:
    body = f'{{"name": "nan_data", "size": {value}}}'.encode()
    await refused(world, "POST", "/data", data=body, headers={"Content-Type": "application/json"})


async def test_largest_values_are_accepted(world: World) -> None:
    """The control for the range cases: the bounds themselves are fine (and fit the columns)."""
    big = {"name": "max_data", "size": MAX_BYTES}
    async with world.request("POST", "/data", json=big) as resp:
        assert resp.status == 201, await resp.text()
    beat = {
        "running": [{"attempt": world.attempt, "cpu_seconds": 1e6, "max_rss": 1 << 20, "net_in": MAX_BYTES}]
    }
    async with world.request("POST", "/hosts/{host}/alive", as_host=True, json=beat) as resp:
        assert resp.status == 200, await resp.text()
    job = await world.admin.get_job(world.job)
    assert (job.cpu_seconds, job.max_rss, job.net_in) == (1e6, 1 << 20, MAX_BYTES)
    report = {"outcome": "result_pending", "return_code": INT32_MIN}
    async with world.request(
        "POST", "/hosts/{host}/attempts/{attempt}/report", as_host=True, json=report
    ) as resp:
        assert resp.status == 200, await resp.text()
    assert (await world.admin.get_job(world.job)).return_code == INT32_MIN


# --- nesting ------------------------------------------------------------------------------------------

NESTED = [
    ("POST", "/apps", b"[" * DEEP + b"]" * DEEP),
    ("POST", "/data", b'{"name": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
    ("POST", "/jobs", b'{"app": "x", "extra": ' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}"),
    ("POST", "/users", b"[" * DEEP),  # unterminated as well
    ("POST", "/hosts/{host}/alive", b'{"running": ' + b"[" * DEEP + b"]" * DEEP + b"}"),
]


@pytest.mark.parametrize(("method", "path", "body"), NESTED, ids=[f"{m} {p}" for m, p, _ in NESTED])
async def test_deeply_nested_json_is_400(world: World, method: str, path: str, body: bytes) -> None:
    as_host = path.startswith("/hosts/{host}/")
    doc = await refused(
        world, method, path, 400, as_host=as_host, data=body, headers={"Content-Type": "application/json"}
    )
    assert "malformed JSON" in doc["detail"]


async def test_moderate_nesting_is_a_field_error(world: World) -> None:
    """The control: 100 levels parse, and the wrong type is named (422)."""
    body = b'{"name": ' + b"[" * 100 + b"]" * 100 + b"}"
    doc = await refused(world, "POST", "/data", data=body, headers={"Content-Type": "application/json"})
    assert "name" in _names(doc)


# --- NUL characters ------------------------------------------------------------------------------------

NUL = "a\u0000b"
NUL_BODIES = [
    ("POST", "/auth/token", {"login": NUL, "password": "whatever it is"}, "login"),
    ("POST", "/auth/token", {"login": "admin", "password": NUL}, "password"),
    ("POST", "/users", {"login": "nul_user", "password": "long enough " + NUL}, "password"),
    ("POST", "/users", {"login": "nul_user", "password": "long enough", "email": NUL}, "email"),
    ("POST", "/users", {"login": "nul_user", "password": "long enough", "cert_subject": NUL}, "cert_subject"),
    ("POST", "/users", {"login": "nul_user", "password": "long enough", "usergroup": NUL}, "usergroup"),
    ("POST", "/apps", {"name": NUL}, "name"),
    ("POST", "/data", {"name": "nul_data", "type": NUL}, "type"),
    ("POST", "/jobs", {"app": "{app}", "args": NUL}, "args"),
    ("POST", "/jobs", {"app": "{app}", "expected_host": NUL}, "expected_host"),
    ("POST", "/jobs", {"app": "{app}", "label": NUL}, "label"),
    ("POST", "/jobs", {"app": "{app}", "forward_addresses": [{"address": NUL, "port": 80}]}, "address"),
    ("POST", "/jobs/{job}/hold", {"reason": NUL}, "reason"),
    ("POST", "/auth/csr", {"csr": "-----BEGIN CERTIFICATE REQUEST-----\u0000"}, "csr"),
    ("POST", "/hosts", {"name": "nul_host", "os": "LINUX", "cpu": "AMD64", "version": NUL}, "version"),
    ("POST", "/hosts", {"name": "nul_host", "os": "LINUX", "cpu": "AMD64", "sandbox": NUL}, "sandbox"),
    ("POST", "/hosts/{host}/attempts/{attempt}/report", {"outcome": "failed", "reason": NUL}, "reason"),
    ("POST", "/hosts/{host}/alive", {"running": [{"attempt": NUL}]}, "attempt"),
    ("POST", "/objects/{app}/chmod", {"mode": "755\u0000"}, "mode"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), NUL_BODIES)
async def test_nul_in_body_strings_is_422(
    world: World, method: str, path: str, body: Any, field: str
) -> None:
    as_host = path.startswith("/hosts/{host}/")
    doc = await refused(world, method, path, as_host=as_host, json=world.fill_body(body))
    assert field in _names(doc), doc


async def test_nul_in_own_email_is_422(world: World) -> None:
    [me] = await world.admin.users(login="admin")
    doc = await refused(world, "PATCH", f"/users/{me.uid}", json={"email": NUL})
    assert "email" in _names(doc)


NUL_QUERIES = [
    ("GET", "/apps?name=a%00b", "name"),
    ("GET", "/data?name=%00", "name"),
    ("GET", "/jobs?label=x%00", "label"),
    ("GET", "/jobs?group=%00", "group"),
    ("GET", "/jobs?status=PENDING%00", "status"),
    ("GET", "/jobs?owner=admin%00", "owner"),
    ("GET", "/users?login=admin%00", "login"),
    ("GET", "/events?object=%00", "object"),
    ("GET", "/apps?not_a_parameter=%00", "not_a_parameter"),  # read by nobody: refused all the same
    ("POST", "/hosts/{host}/work?wait=0%00", "wait"),
]


@pytest.mark.parametrize(("method", "path", "name"), NUL_QUERIES)
async def test_nul_in_query_is_422(world: World, method: str, path: str, name: str) -> None:
    doc = await refused(world, method, path, as_host=path.startswith("/hosts/{host}/"))
    assert name in _names(doc), doc


async def _raw_http(w: World, head: bytes) -> tuple[int, str, bytes]:
    """Send a hand-written request head over TLS (header bytes a client library would not send)."""
    ctx = ssl.create_default_context(cafile=str(w.grid.settings.ca_cert))
    url = URL(w.grid.url)
    reader, writer = await asyncio.open_connection(url.host, url.port, ssl=ctx)
    try:
        writer.write(head)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    content_type = next(
        (
            h.split(b":", 1)[1].strip().decode()
            for h in headers.split(b"\r\n")
            if h.lower().startswith(b"content-type:")
        ),
        "",
    )
    return int(status_line.split()[1]), content_type, body


@pytest.mark.parametrize(
    "header",
    [b"X-Content-SHA256: " + b"0" * 63 + b"\x00", b"X-Content-SHA256: " + b"\xff" * 64],
    ids=["nul", "not-utf8"],
)
async def test_unreadable_sha256_header_is_refused(world: World, header: bytes) -> None:
    before = await state(world)
    path = world.fill(f"{API}/hosts/{{host}}/attempts/{{attempt}}/result?return_code=0").encode()
    head = (
        b"PUT " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Authorization: Bearer " + world.credential.encode() + b"\r\n" + header + b"\r\n"
        b"Content-Type: application/zip\r\nContent-Length: 3\r\n\r\nzip"
    )
    status, _, _ = await _raw_http(world, head)
    assert 400 <= status < 500, status
    assert await state(world) == before


async def test_non_ascii_bearer_token_is_400(world: World) -> None:
    before = await state(world)
    head = (
        f"GET {API}/apps HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
        + b"Authorization: Bearer \xc3\xa9\xed\xa0\x80\r\n\r\n"
    )
    status, content_type, body = await _raw_http(world, head)
    assert status == 400, body
    assert content_type.startswith("application/problem+json"), body
    assert json.loads(body)["type"] == PROBLEM_BASE + "bad-request"
    assert await state(world) == before


# --- the document says all of this ---------------------------------------------------------------------


async def test_document_declares_the_bounds(world: World) -> None:
    async with world.request("GET", "/openapi.json") as resp:
        doc = await resp.json()
    params = {
        (path, method, p["name"]): p
        for path, item in doc["paths"].items()
        for method, op in item.items()
        for p in op.get("parameters", [])
    }
    offset = params[("/apps", "get", "offset")]["schema"]
    assert (offset["type"], offset["minimum"], offset["maximum"]) == ("integer", 0, INT32_MAX)
    limit = params[("/apps", "get", "limit")]["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 1000)
    wait = params[("/hosts/{uid}/work", "post", "wait")]["schema"]
    assert wait["type"] == "number" and wait["minimum"] == 0 and wait["maximum"] > 0
    code = params[("/hosts/{uid}/attempts/{attempt}/result", "put", "return_code")]
    assert code["required"] and (code["schema"]["minimum"], code["schema"]["maximum"]) == (
        INT32_MIN,
        INT32_MAX,
    )
    port = params[("/jobs/{uid}/tunnel", "post", "port")]
    assert port["required"] and (port["schema"]["minimum"], port["schema"]["maximum"]) == (1, 65535)
    assert params[("/hosts", "get", "alive")]["schema"]["type"] == "boolean"
    assert params[("/jobs/{uid}", "get", "uid")]["schema"]["pattern"].startswith("^[0-9a-f]{8}")
    assert "pattern" in params[("/apps", "get", "name")]["schema"]
    schemas = doc["components"]["schemas"]
    assert schemas["HostIn"]["properties"]["memory"]["maximum"] == MAX_BYTES
    usage = schemas["JobUsage"]["properties"]
    assert usage["cpu_seconds"]["maximum"] > 0 and usage["max_rss"]["maximum"] == MAX_BYTES
    report_code = schemas["JobReport"]["properties"]["return_code"]["anyOf"][0]
    assert (report_code["minimum"], report_code["maximum"]) == (INT32_MIN, INT32_MAX)
    assert "pattern" in schemas["AppIn"]["properties"]["name"]
