"""HTTP plumbing: a route registry that also feeds the OpenAPI document, typed bodies, problem+json."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel
from pydantic import ValidationError as PydanticError

from common.errors import BadRequest, NotFound, PayloadTooLarge, ValidationFailed, XWError
from common.schemas import NUL_FREE
from server.bodytimeout import read_all
from server.query import PAGE, QueryParam, refuse_nul

logger = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"
API_PREFIX = "/api/v1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class RouteSpec:
    """One API route with what the OpenAPI document needs to describe it."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    public: bool = False
    query: tuple[QueryParam, ...] = ()  # typed and bounded: the document shows the real constraints
    raw_body: str | None = None  # media type of a streamed request body
    raw_response: str | None = None  # media type of a streamed response
    also: tuple[int, ...] = ()  # other success statuses


class Routes:
    """A resource module's routes; ``install`` adds them under /api/v1."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.specs: list[RouteSpec] = []

    def add(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        body: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        public: bool = False,
        query: Mapping[str, str] | Sequence[QueryParam] | None = None,
        raw_body: str | None = None,
        raw_response: str | None = None,
        also: tuple[int, ...] = (),
    ) -> Callable[[Handler], Handler]:
        def deco(handler: Handler) -> Handler:
            self.specs.append(
                RouteSpec(
                    method,
                    API_PREFIX + path,
                    handler,
                    summary,
                    self.tag,
                    body,
                    response,
                    status,
                    public,
                    _query_specs(query, response),
                    raw_body,
                    raw_response,
                    also,
                )
            )
            if public:
                handler.xw_public = True  # type: ignore[attr-defined]
            handler.xw_query = self.specs[-1].query  # type: ignore[attr-defined]
            return handler

        return deco

    def install(self, app: web.Application) -> None:
        for spec in self.specs:
            app.router.add_route(spec.method, spec.path, spec.handler)


def _query_specs(
    query: Mapping[str, str] | Sequence[QueryParam] | None, response: type[BaseModel] | None
) -> tuple[QueryParam, ...]:
    """A route's query parameters: specs as given (a plain ``{name: description}`` means free text),
    plus ``offset`` and ``limit`` on every list."""
    if query is None:
        specs: list[QueryParam] = []
    elif isinstance(query, Mapping):
        specs = [QueryParam(name, description=desc) for name, desc in query.items()]
    else:
        specs = list(query)
    if response is not None and response.__name__.startswith("Page["):
        specs += [p for p in PAGE if p.name not in {s.name for s in specs}]
    return tuple(specs)


# Set on a sub-application that checks its own credentials (the dashboard's sessions, server/ui): the
# API's bearer-token middleware leaves its routes alone, static files included.
OWN_AUTH = web.AppKey("own_auth", bool)


def is_public(request: web.Request) -> bool:
    """Whether the matched route needs no API credentials (public, or in an app with its own)."""
    handler = request.match_info.route.handler
    if getattr(handler, "xw_public", False):
        return True
    apps = request.match_info.apps
    return bool(apps) and apps[-1].get(OWN_AUTH, False)


def check_query(request: web.Request) -> None:
    """Validate every declared query parameter of the matched route (422 naming the first wrong one).

    Handlers parse their parameters with the same specs; checking here as well bounds the ones a handler
    still reads by hand, so the document's constraints hold for every route.
    """
    refuse_nul(request)
    if request.query:
        for spec in getattr(request.match_info.route.handler, "xw_query", ()):
            spec.check(request)


async def read_body(request: web.Request, model: type[M], max_bytes: int) -> M:
    """Parse and validate a JSON body; malformed JSON is 400, invalid fields 422 naming them."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"JSON body over {max_bytes} bytes")
    raw = await read_all(request)  # all of it; 413 past client_max_size; 408 if it stalls
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"JSON body over {max_bytes} bytes")
    try:
        # pydantic's own parser (jiter): faster than json.loads + model_validate, UTF-8 only, refuses
        # lone surrogates and nesting past 200 levels (json.loads recursed until RecursionError: a 500).
        # Without a \u0000 escape in the bytes no string can hold a NUL: skip the models' walk for one.
        return model.model_validate_json(raw, context=None if b"\\u0000" in raw else NUL_FREE)
    except PydanticError as exc:
        malformed = [e for e in exc.errors() if e["type"] == "json_invalid"]
        if malformed:
            raise BadRequest(f"malformed JSON body: {_msg(malformed[0]['msg'])}") from None
        raise ValidationFailed(_describe(exc), errors=_errors(exc)) from None


def _describe(exc: PydanticError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {_msg(err['msg'])}")
    return "; ".join(parts)


def _msg(text: str) -> str:
    return text.removeprefix("Value error, ")


def _errors(exc: PydanticError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]), "message": _msg(e["msg"])} for e in exc.errors()[:20]
    ]


def reply(model: BaseModel, status: int = 200) -> web.Response:
    """A JSON response from a schema object."""
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")


def page_params(request: web.Request) -> tuple[int, int]:
    """``offset`` and ``limit`` from the query string, validated (422 naming the parameter)."""
    offset, limit = PAGE
    return offset.integer(request), limit.integer(request)


def problem_response(err: XWError) -> web.Response:
    headers = {"Retry-After": str(err.extra["retry_after"])} if "retry_after" in err.extra else None
    return web.Response(
        text=json.dumps(err.problem()), status=err.status, content_type=PROBLEM_TYPE, headers=headers
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into problem+json: ours by code, aiohttp's by status, the rest as 500."""
    try:
        check_query(request)  # once for every parameter and read header, before any reaches SQL
        return await handler(request)
    except XWError as err:
        if err.status >= 500:
            logger.error("%s %s: %s", request.method, request.path, err.reason)
        return problem_response(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_problem(request, exc)
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(XWError("internal server error (see the server log)"))


def _http_problem(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (unknown route, wrong method, body too large) as problem+json."""
    mapped: XWError
    if exc.status == 404:
        mapped = NotFound(f"no route {request.method} {request.path}")
    elif exc.status == 413:
        mapped = PayloadTooLarge(exc.reason)
    else:
        mapped = BadRequest(exc.reason)
    doc = {**mapped.problem(), "status": exc.status}
    return web.Response(text=json.dumps(doc), status=exc.status, content_type=PROBLEM_TYPE)
