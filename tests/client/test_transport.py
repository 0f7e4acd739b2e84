"""XWClient and the xw* commands over MockTransport: the client's behaviour without a server, in milliseconds.

The same paths against a real server are the integration tests (test_commands_*.py, test_failover.py).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from client.api import XWClient
from client.commands import xwdownload, xwping
from client.config import ClientConfig
from client.transport import ApiRequest, ApiResponse, Headers, MockTransport, Transport
from common.errors import (
    Forbidden,
    IllegalTransition,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    TransportError,
    Unauthorized,
    ValidationFailed,
    XWError,
)
from common.schemas import JobIn
from tests.client.conftest import CLEAN_ENV

CFG = ClientConfig(server="https://grid.test")
NOW = "2024-05-01T12:00:00Z"
PROBLEM = {"Content-Type": "application/problem+json"}


def data_doc(uid: str, content: bytes, name: str = "blob") -> dict[str, Any]:
    """A data object as the server describes it."""
    return {
        "uid": uid,
        "owner": None,
        "access_rights": "0700",
        "created": NOW,
        "modified": NOW,
        "name": name,
        "type": "BINARY",
        "os": "ANY",
        "cpu": "ANY",
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "status": "AVAILABLE",
    }


def problem(
    code: str, status: int, detail: str, *, on_close: Callable[[], None] | None = None, **extra: Any
) -> ApiResponse:
    """A refusal as the server writes it (the document by hand, not through XWError.problem)."""
    doc = {"type": f"urn:xwhep:problem:{code}", "title": "t", "status": status, "detail": detail, **extra}
    return ApiResponse(status, PROBLEM, content=json.dumps(doc).encode(), on_close=on_close)


def test_the_mock_is_a_transport() -> None:
    assert isinstance(MockTransport(lambda req: ApiResponse()), Transport)


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "extra", "cls"),
    [
        ("not-found", 404, {}, NotFound),
        ("forbidden", 403, {}, Forbidden),
        ("illegal-transition", 409, {}, IllegalTransition),
        ("validation", 422, {"index": 3}, ValidationFailed),
        ("too-many-requests", 429, {"retry_after": 7}, TooManyRequests),
        ("", 404, {}, NotFound),  # a type we do not know: by status
    ],
)
async def test_a_problem_document_becomes_its_error(
    code: str, status: int, extra: dict[str, Any], cls: type[XWError]
) -> None:
    closed: list[bool] = []
    answer = problem(code, status, "no job 42 visible to you", on_close=lambda: closed.append(True), **extra)
    async with XWClient(CFG, MockTransport(lambda req: answer)) as xw:
        with pytest.raises(cls) as caught:
            await xw.get_job("job-42")
    assert type(caught.value) is cls
    assert caught.value.reason == "no job 42 visible to you"
    assert caught.value.extra == extra
    assert closed == [True]  # the connection goes back


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (ApiResponse(502, {"Content-Type": "text/html"}, content=b"<h1>502 Bad Gateway</h1>"), "Bad Gateway"),
        (ApiResponse(500, content=b"500 Internal Server Error\n\nServer got itself in trouble"), "500 Int"),
        (ApiResponse(503), "HTTP 503"),
        (ApiResponse(500, content=b"\xff\xfe not utf-8"), "not utf-8"),
        (ApiResponse(500, json=["not", "a", "problem"]), "HTTP 500"),
    ],
)
async def test_a_5xx_that_is_not_a_problem_is_a_plain_error_saying_what_came(
    answer: ApiResponse, reason: str
) -> None:
    async with XWClient(CFG, MockTransport(lambda req: answer)) as xw:
        with pytest.raises(XWError) as caught:
            await xw.ping()
    assert type(caught.value) is XWError and reason in caught.value.reason


async def test_problem_helper_round_trips_every_error() -> None:
    for err in (NotFound("gone"), ValidationFailed("bad", index=2), TooManyRequests("slow", retry_after=3)):
        with pytest.raises(type(err)) as caught:
            await ApiResponse.problem(err).raise_for_problem()
        assert (caught.value.reason, caught.value.extra) == (err.reason, err.extra)


async def test_an_unreachable_server_raises_what_the_transport_raised() -> None:
    def handler(req: ApiRequest) -> ApiResponse:
        raise TransportError("cannot reach https://grid.test/api/v1: Connection refused")

    async with XWClient(CFG, MockTransport(handler)) as xw:
        with pytest.raises(TransportError, match="Connection refused"):
            await xw.ping()


async def test_an_expired_token_is_renewed_once_then_the_refusal_stands() -> None:
    cfg = ClientConfig(server="https://grid.test", login="alice", password="secret")
    tokens = iter(["t1", "t2", "t3"])
    seen: list[tuple[str, str]] = []
    good = {"t2"}

    async def handler(req: ApiRequest) -> ApiResponse:  # a coroutine handler
        seen.append((req.path, req.headers.get("Authorization", "")))
        if req.path == "/auth/token":
            assert req.body_json() == {"login": "alice", "password": "secret"}
            return ApiResponse(json={"access_token": next(tokens), "expires_in": 60})
        if req.headers["Authorization"].removeprefix("Bearer ") in good:
            return ApiResponse(json={"login": "alice", "rights": "STANDARD_USER", "auth": "token"})
        return problem("unauthorized", 401, "token expired: log in again")

    async with XWClient(cfg, MockTransport(handler)) as xw:
        assert (await xw.ping()).login == "alice"
        assert seen == [
            ("/auth/token", ""),
            ("/ping", "Bearer t1"),
            ("/auth/token", ""),
            ("/ping", "Bearer t2"),
        ]
        good.clear()  # t3 is refused as well: no third login
        seen.clear()
        with pytest.raises(Unauthorized, match="log in again"):
            await xw.ping()
        assert [path for path, _ in seen] == ["/ping", "/auth/token", "/ping"]


# --- streaming ------------------------------------------------------------------------------------


async def test_a_download_streams_chunk_by_chunk_to_the_file(tmp_path: Path) -> None:
    uid = str(uuid.uuid4())
    chunks = [bytes([i]) * 65536 for i in range(8)]
    content = b"".join(chunks)
    events: list[str] = []
    dest = tmp_path / "out.bin"

    async def body() -> AsyncIterator[bytes]:
        for i, chunk in enumerate(chunks):
            if i:  # the chunk before was written before this one exists
                assert (tmp_path / ".out.bin.part").stat().st_size >= i * 65536 - 8192
            events.append(f"sent {i}")
            yield chunk

    def handler(req: ApiRequest) -> ApiResponse:
        if req.path == f"/data/{uid}":
            return ApiResponse(json=data_doc(uid, content))
        assert (req.method, req.path) == ("GET", f"/data/{uid}/content")
        return ApiResponse(200, {"Content-Type": "application/octet-stream"}, content=body())

    async with XWClient(CFG, MockTransport(handler)) as xw:
        meta = await xw.download(uid, dest, progress=lambda n: events.append(f"got {n}"))
    assert meta.uid == uid
    assert events == [e for i in range(8) for e in (f"sent {i}", "got 65536")]  # interleaved: streamed
    assert dest.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


async def test_a_download_that_does_not_match_its_sha256_leaves_nothing(tmp_path: Path) -> None:
    uid = str(uuid.uuid4())

    def handler(req: ApiRequest) -> ApiResponse:
        if req.path == f"/data/{uid}":
            return ApiResponse(json=data_doc(uid, b"expected"))
        return ApiResponse(content=b"tampered")

    async with XWClient(CFG, MockTransport(handler)) as xw:
        with pytest.raises(ValidationFailed, match="sha256"):
            await xw.download(uid, tmp_path / "out.bin")
    assert list(tmp_path.iterdir()) == []


async def test_an_upload_streams_the_file_as_the_body(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    payload = bytes(range(256)) * 8192  # 2 MiB: two chunks of the client's reads
    src.write_bytes(payload)
    uid = str(uuid.uuid4())
    got: dict[str, Any] = {}

    def handler(req: ApiRequest) -> ApiResponse:
        if (req.method, req.path) == ("POST", "/data"):
            got["declared"] = req.body_json()
            return ApiResponse(201, json={**data_doc(uid, payload, "in.bin"), "status": "UNAVAILABLE"})
        assert (req.method, req.path) == ("PUT", f"/data/{uid}/content")
        got["headers"], got["content"] = req.headers, req.content
        return ApiResponse(json=data_doc(uid, payload, "in.bin"))

    moved: list[int] = []
    async with XWClient(CFG, MockTransport(handler)) as xw:
        meta = await xw.send_file(src, progress=moved.append)
    assert meta.status.value == "AVAILABLE"
    assert got["declared"] == {
        "name": "in.bin",
        "type": "BINARY",
        "os": "ANY",
        "cpu": "ANY",
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    assert got["headers"]["Content-Type"] == "application/octet-stream"
    assert got["content"] == payload
    assert sum(moved) == len(payload) and len(moved) == 2


async def test_a_refused_upload_deletes_the_data_it_created(tmp_path: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(b"x" * 1000)
    uid = str(uuid.uuid4())
    calls: list[tuple[str, str]] = []

    def handler(req: ApiRequest) -> ApiResponse:
        calls.append((req.method, req.path))
        if req.method == "POST":
            return ApiResponse(201, json={**data_doc(uid, b"x" * 1000), "status": "UNAVAILABLE"})
        if req.method == "PUT":
            return ApiResponse.problem(PayloadTooLarge("content larger than 10 bytes"))
        return ApiResponse(204)

    async with XWClient(CFG, MockTransport(handler)) as xw:
        with pytest.raises(PayloadTooLarge, match="larger than"):
            await xw.send_file(src)
    assert calls == [("POST", "/data"), ("PUT", f"/data/{uid}/content"), ("DELETE", f"/data/{uid}")]


async def test_a_response_closed_early_stops_its_stream() -> None:
    stopped: list[str] = []

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b"a"
            yield b"b"
        finally:
            stopped.append("stream")

    resp = ApiResponse(content=body(), on_close=lambda: stopped.append("connection"))
    async for chunk in resp.iter_chunks():
        assert chunk == b"a"
        break
    await resp.aclose()
    await resp.aclose()
    assert stopped == ["stream", "connection"]
    with pytest.raises(RuntimeError, match="already streamed"):
        await resp.read()


async def test_a_body_read_whole_can_be_streamed_after() -> None:
    resp = ApiResponse(content=b"x" * 600_000)
    assert len(await resp.read()) == 600_000
    assert [len(c) async for c in resp.iter_chunks()] == [262144, 262144, 75712]


def test_headers_are_case_insensitive() -> None:
    headers = Headers([("Content-Type", "a/b"), ("Vary", "x"), ("vary", "y")])
    assert headers["content-type"] == headers.get("CONTENT-TYPE") == "a/b"
    assert headers["Vary"] == "x, y" and "VARY" in headers and "Age" not in headers
    assert dict(headers) == {"Content-Type": "a/b", "Vary": "x, y"}


# --- the client's own logic, now testable alone ---------------------------------------------------


async def test_batches_and_the_index_of_a_refused_job_in_the_whole_submission() -> None:
    app = str(uuid.uuid4())
    jobs = [JobIn(app=app, args=str(i)) for i in range(5)]

    def handler(req: ApiRequest) -> ApiResponse:
        sent = req.body_json()["jobs"]
        if sent[0]["args"] == "2":  # the second batch: its job 1 (job 3 of all) is refused
            return problem("forbidden", 403, "jobs[1]: not allowed", index=1)
        uids = [f"uid-{job['args']}" for job in sent]
        return ApiResponse(201, json={"uids": uids, "count": len(uids), "pending": len(uids)})

    async with XWClient(CFG, MockTransport(handler)) as xw:
        with pytest.raises(Forbidden) as caught:
            await xw.submit_many(jobs, chunk=2, in_flight=1)
    assert caught.value.reason == "jobs[3]: not allowed"
    assert caught.value.extra == {"index": 3, "submitted": ["uid-0", "uid-1"]}


async def test_no_work_is_an_empty_list() -> None:
    def handler(req: ApiRequest) -> ApiResponse:
        assert req.params == {"wait": "2.5", "max": "4"}
        return ApiResponse(204)

    async with XWClient(CFG, MockTransport(handler)) as xw:
        assert await xw.claim_work("host-1", 2.5, 4) == []


# --- commands -------------------------------------------------------------------------------------


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "client.conf"
    path.write_text('server = "https://grid.test"\nlogin = "alice"\npassword = "secret"\n')
    return path


def login_or(answer: Any) -> MockTransport:
    """A transport that hands out a token, and answers every other request with ``answer(req)``."""

    def handler(req: ApiRequest) -> ApiResponse:
        if req.path == "/auth/token":
            return ApiResponse(json={"access_token": "tok", "expires_in": 60})
        assert req.headers["Authorization"] == "Bearer tok"
        result: ApiResponse = answer(req)
        return result

    return MockTransport(handler)


def test_xwping_prints_who_we_are(conf: Path) -> None:
    pong = {"login": "alice", "rights": "STANDARD_USER", "auth": "token"}
    transport = login_or(lambda req: ApiResponse(json=pong))
    result = CliRunner().invoke(xwping, ["--xwconfig", str(conf)], obj=transport, env=CLEAN_ENV)
    assert (result.exit_code, result.stdout, result.stderr) == (
        0,
        "pong: alice (STANDARD_USER, via token)\n",
        "",
    )
    assert transport.closed


@pytest.mark.parametrize(
    ("answer", "line"),
    [
        (lambda req: problem("forbidden", 403, "account disabled"), "xwping: error: account disabled\n"),
        (
            lambda req: ApiResponse(502, content=b"<h1>502   Bad\nGateway</h1>"),
            "xwping: error: <h1>502 Bad Gateway</h1>\n",
        ),
    ],
)
def test_a_refusal_is_one_line_and_exit_1(conf: Path, answer: Any, line: str) -> None:
    result = CliRunner().invoke(xwping, ["--xwconfig", str(conf)], obj=login_or(answer), env=CLEAN_ENV)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", line)


def test_xwdownload_writes_the_file(conf: Path, tmp_path: Path) -> None:
    uid = str(uuid.uuid4())
    content = b"hello\x00world" * 50_000

    def answer(req: ApiRequest) -> ApiResponse:
        if req.path == f"/data/{uid}":
            return ApiResponse(json=data_doc(uid, content, "../evil name"))
        return ApiResponse(content=content)

    out = tmp_path / "dl"
    out.mkdir()
    argv = ["--xwconfig", str(conf), f"xw://grid.test/{uid}", "--xwout", str(out)]
    result = CliRunner().invoke(xwdownload, argv, obj=login_or(answer), env=CLEAN_ENV)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == f"{out / '_._evil_name'}\n"
    assert (out / "_._evil_name").read_bytes() == content


async def test_a_body_cut_short_is_a_transport_error(tmp_path: Path) -> None:
    """The real HttpTransport against a server that closes halfway through a download's body."""
    from aiohttp import web

    uid = str(uuid.uuid4())
    content = b"x" * 100_000

    async def token(_: web.Request) -> web.Response:
        return web.json_response({"access_token": "tok", "expires_in": 60})

    async def meta(_: web.Request) -> web.Response:
        return web.json_response(data_doc(uid, content))

    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = len(content)
        await resp.prepare(request)
        await resp.write(content[:1000])
        assert request.transport is not None
        request.transport.close()
        return resp

    app = web.Application()
    app.router.add_post("/api/v1/auth/token", token)
    app.router.add_get(f"/api/v1/data/{uid}", meta)
    app.router.add_get(f"/api/v1/data/{uid}/content", cut)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with XWClient(ClientConfig(server=f"http://127.0.0.1:{port}", login="a", password="p")) as xw:
            with pytest.raises(TransportError, match="broke while the answer was read"):
                await xw.download(uid, tmp_path / "got")
        assert not (tmp_path / "got").exists()
    finally:
        await runner.cleanup()
