"""The OpenAPI document is valid and describes exactly the routes the running server has."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate

from common.errors import PROBLEM_BASE

API = "/api/v1"
PROBLEM = "application/problem+json"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture
async def document(grid: Any) -> AsyncIterator[dict[str, Any]]:
    """The document as an anonymous client gets it (the route is public)."""
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.get(f"{grid.url}{API}/openapi.json") as resp:
            assert resp.status == 200, await resp.text()
            assert resp.content_type == "application/json"
            yield await resp.json()


def _operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    [server] = doc["servers"]
    return {
        (method.upper(), server["url"] + path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


def _router_routes(grid: Any) -> set[tuple[str, str]]:
    routes = set()
    for route in grid.server.runner.app.router.routes():
        if route.method == "HEAD":  # aiohttp's automatic twin of a GET
            continue
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith(API + "/"):
            routes.add((route.method, path))
    return routes


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        own = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return own.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


async def test_every_schema_reference_resolves(document: dict[str, Any]) -> None:
    defined = {f"#/components/schemas/{name}" for name in document["components"]["schemas"]}
    assert sorted(_refs(document) - defined) == []


async def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.")
    error = None
    try:
        validate(document)
    except Exception as exc:  # the validator's messages embed the whole document: keep the head
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
    assert error is None


async def test_document_and_router_agree(grid: Any, document: dict[str, Any]) -> None:
    documented = set(_operations(document))
    served = _router_routes(grid)
    assert len(served) > 20  # the router walk found the API
    assert served - documented == set(), "served but undocumented"
    assert documented - served == set(), "documented but not served"


async def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for op in _operations(document).values()]
    assert len(ids) == len(set(ids))


def _problem_statuses(op: dict[str, Any]) -> set[str]:
    statuses = set()
    for status, response in op["responses"].items():
        content = response.get("content", {})
        if PROBLEM in content:
            assert content[PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
            statuses.add(status)
    return statuses


def _covers(statuses: set[str], code: int) -> bool:
    return str(code) in statuses or f"{str(code)[0]}XX" in statuses or "default" in statuses


async def test_every_problem_response_is_documented(document: dict[str, Any]) -> None:
    """Every operation may answer problem+json: client errors (4xx) and internal errors (500)."""
    missing = []
    for (method, path), op in _operations(document).items():
        statuses = _problem_statuses(op)
        needed = [400, 404, 500] + ([] if op.get("security") == [] else [401, 403])
        if "requestBody" in op:
            needed += [413, 422]
        missing += [f"{method} {path}: {code}" for code in needed if not _covers(statuses, code)]
    assert missing == []


async def test_problem_schema_matches_what_the_server_sends(grid: Any, document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["Problem"]
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        async with session.get(f"{grid.url}{API}/ping") as resp:  # no credentials: 401
            assert resp.status == 401
            assert resp.content_type == PROBLEM
            sent = await resp.json(content_type=None)
    assert set(schema["required"]) <= set(sent)
    assert sent["type"].startswith(PROBLEM_BASE)
    for name, prop in schema["properties"].items():
        assert isinstance(sent[name], {"string": str, "integer": int}[prop["type"]])


async def test_success_statuses_are_documented(document: dict[str, Any]) -> None:
    for (method, path), op in _operations(document).items():
        ok = sorted(s for s in op["responses"] if s[0] == "2")
        if method == "POST" and path == f"{API}/apps":  # 200 when adding binaries to an existing app
            assert ok == ["200", "201"]
            continue
        if method == "POST" and path == f"{API}/hosts/{{uid}}/work":  # 204 when no job came in time
            assert ok == ["200", "204"]
            assert "content" not in op["responses"]["204"]
            continue
        assert len(ok) == 1, f"{method} {path}"
        if method == "POST" and path in (f"{API}/data", f"{API}/jobs", f"{API}/users"):
            assert ok == ["201"], f"{method} {path}"
        if method == "DELETE":
            assert ok == ["204"], f"{method} {path}"
