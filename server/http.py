"""HTTP plumbing: a route registry that also feeds the OpenAPI document, typed bodies, problem+json."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel
from pydantic import ValidationError as PydanticError

from common.errors import BadRequest, NotFound, PayloadTooLarge, ValidationFailed, XWError
from server.settings import DEFAULT_PAGE, MAX_PAGE

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
    query: dict[str, str] = field(default_factory=dict)
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
        query: dict[str, str] | None = None,
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
                    query or {},
                    raw_body,
                    raw_response,
                    also,
                )
            )
            if public:
                handler.xw_public = True  # type: ignore[attr-defined]
            return handler

        return deco

    def install(self, app: web.Application) -> None:
        for spec in self.specs:
            app.router.add_route(spec.method, spec.path, spec.handler)


def is_public(request: web.Request) -> bool:
    """Whether the matched route needs no credentials."""
    handler = request.match_info.route.handler
    return bool(getattr(handler, "xw_public", False))


async def read_body(request: web.Request, model: type[M], max_bytes: int) -> M:
    """Parse and validate a JSON body; malformed JSON is 400, invalid fields 422 naming them."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"JSON body over {max_bytes} bytes")
    raw = await request.read()  # all of it (content.read(n) stops at a chunk); 413 past client_max_size
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"JSON body over {max_bytes} bytes")
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None
    try:
        return model.model_validate(doc)
    except PydanticError as exc:
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
    """``offset`` and ``limit`` from the query string, validated."""
    try:
        offset = int(request.query.get("offset", "0"))
        limit = int(request.query.get("limit", str(DEFAULT_PAGE)))
    except ValueError:
        raise ValidationFailed("offset and limit must be integers") from None
    if offset < 0 or not 1 <= limit <= MAX_PAGE:
        raise ValidationFailed(f"offset must be >= 0 and limit within 1..{MAX_PAGE}")
    return offset, limit


def problem_response(err: XWError) -> web.Response:
    return web.Response(text=json.dumps(err.problem()), status=err.status, content_type=PROBLEM_TYPE)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into problem+json: ours by code, aiohttp's by status, the rest as 500."""
    try:
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
