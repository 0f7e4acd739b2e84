"""The OpenAPI 3.1 document, built from the route registry and the wire schemas (never by hand)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from common import __version__
from common.schemas import UID_PATTERN
from server.http import API_PREFIX, PROBLEM_TYPE, Routes, RouteSpec

PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}


def build(tables: list[Routes]) -> dict[str, Any]:
    """Describe every registered route."""
    specs = [s for t in tables for s in t.specs]
    models: set[type[BaseModel]] = {m for s in specs for m in (s.body, s.response) if m is not None}
    ordered = sorted(models, key=lambda m: m.__name__)
    refs, defs = models_json_schema(
        [(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}"
    )
    schemas = dict(defs.get("$defs", {}))
    schemas["Problem"] = PROBLEM_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        paths.setdefault(spec.path, {})[spec.method.lower()] = _operation(spec, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "xwhep", "version": __version__},
        "servers": [{"url": API_PREFIX}],
        "paths": {p[len(API_PREFIX) :] or "/": ops for p, ops in sorted(paths.items())},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "mtls": {"type": "mutualTLS"},
            },
        },
        "security": [{"bearer": []}, {"mtls": []}],
    }


Refs = Mapping[tuple[Any, Any], Any]


def _operation(spec: RouteSpec, refs: Refs) -> dict[str, Any]:
    def _ref(model: type[BaseModel]) -> dict[str, str]:
        return {"$ref": str(refs[(model, "validation")]["$ref"])}

    op: dict[str, Any] = {
        "summary": spec.summary,
        "tags": [spec.tag],
        "operationId": f"{spec.handler.__name__}",
    }
    params = [
        {"name": name, "in": "path", "required": True, "schema": _path_schema(name)}
        for name in _path_params(spec.path)
    ]
    params += [q.openapi() for q in spec.query]
    if params:
        op["parameters"] = params
    if spec.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(spec.body)}}}
    elif spec.raw_body:
        op["requestBody"] = {
            "required": True,
            "content": {spec.raw_body: {"schema": {"type": "string", "format": "binary"}}},
        }
    ok: dict[str, Any] = {"description": "success"}
    if spec.response is not None:
        ok["content"] = {"application/json": {"schema": _ref(spec.response)}}
    elif spec.raw_response:
        ok["content"] = {spec.raw_response: {"schema": {"type": "string", "format": "binary"}}}
    problem = {
        "description": "error",
        "content": {PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    op["responses"] = {str(spec.status): ok, "4XX": problem, "5XX": problem}
    for extra in spec.also:
        op["responses"][str(extra)] = {"description": "no content"} if extra == 204 else ok
    if spec.public:
        op["security"] = []
    return op


# Path parameters read with routes/base.py's path_uid, which answers 404 to anything but a uid.
UID_PATH_PARAMS = frozenset({"uid", "job", "data", "attempt"})
SERIAL_PATTERN = "^[0-9a-fA-F:]{1,59}$"


def _path_schema(name: str) -> dict[str, Any]:
    if name in UID_PATH_PARAMS:
        return {"type": "string", "pattern": UID_PATTERN}
    if name == "serial":  # server/certificates.normalise_serial: hex, colons allowed
        return {"type": "string", "pattern": SERIAL_PATTERN}
    return {"type": "string", "minLength": 1, "maxLength": 256}


def _path_params(path: str) -> list[str]:
    return [seg[1:-1] for seg in path.split("/") if seg.startswith("{") and seg.endswith("}")]


def openapi_routes(tables: list[Routes]) -> Routes:
    """A route table serving the document of ``tables`` (itself included)."""
    routes = Routes("meta")

    @routes.add("GET", "/openapi.json", summary="This API's OpenAPI document", public=True)
    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document)

    document = build([*tables, routes])
    return routes
