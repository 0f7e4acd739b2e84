"""The xwhep error tree. Every error carries a stable code, an HTTP status and a human reason.

    XWError                       (code "error", 500)
    +-- BadRequest                (code "bad-request", 400)
    |   +-- ValidationFailed      (code "validation", 422)
    +-- Unauthorized              (code "unauthorized", 401)
    +-- Forbidden                 (code "forbidden", 403)
    +-- NotFound                  (code "not-found", 404)
    +-- Conflict                  (code "conflict", 409)
    |   +-- IllegalTransition     (code "illegal-transition", 409)
    +-- RequestTimeout            (code "request-timeout", 408: a request body stopped arriving)
    +-- PayloadTooLarge           (code "too-large", 413)
    +-- TooManyRequests           (code "too-many-requests", 429; ``retry_after`` seconds)
    +-- TransportError            (code "transport", no HTTP status: client side, server unreachable)

The server renders these as RFC 9457 problem+json whose ``type`` is ``PROBLEM_BASE + code``; the client
turns a problem document back into the same class, so both sides raise and catch one tree.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

PROBLEM_BASE = "urn:xwhep:problem:"


class XWError(Exception):
    """Base of every xwhep error."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        """This error as a problem+json document."""
        doc: dict[str, Any] = {
            "type": PROBLEM_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.reason,
        }
        doc.update({k: v for k, v in self.extra.items() if k not in doc})
        return doc


class BadRequest(XWError):
    """The request is malformed."""

    code = "bad-request"
    status = 400
    title = "Bad request"


class ValidationFailed(BadRequest):
    """The request is well-formed but a field is invalid."""

    code = "validation"
    status = 422
    title = "Invalid input"


class Unauthorized(XWError):
    """No valid credentials."""

    code = "unauthorized"
    status = 401
    title = "Unauthorized"


class Forbidden(XWError):
    """Valid credentials, but not allowed."""

    code = "forbidden"
    status = 403
    title = "Forbidden"


class NotFound(XWError):
    """No such object, or not visible to the requester."""

    code = "not-found"
    status = 404
    title = "Not found"


class Conflict(XWError):
    """The request conflicts with the current state."""

    code = "conflict"
    status = 409
    title = "Conflict"


class IllegalTransition(Conflict):
    """A job state change that the state machine forbids."""

    code = "illegal-transition"
    title = "Illegal state transition"


class RequestTimeout(XWError):
    """The client stopped sending the request (its body) for too long."""

    code = "request-timeout"
    status = 408
    title = "Request timeout"


class PayloadTooLarge(XWError):
    """The request body is larger than allowed."""

    code = "too-large"
    status = 413
    title = "Payload too large"


class TooManyRequests(XWError):
    """Slow down: too many attempts (e.g. failed logins) or the server is saturated; retry later."""

    code = "too-many-requests"
    status = 429
    title = "Too many requests"

    def __init__(self, reason: str, retry_after: Any = 1.0, **extra: Any) -> None:
        try:
            seconds = max(1, math.ceil(float(retry_after)))
        except (TypeError, ValueError, OverflowError):
            seconds = 1  # a problem document from elsewhere may hold anything
        super().__init__(reason, retry_after=seconds, **extra)

    @property
    def retry_after(self) -> int:
        return int(self.extra.get("retry_after", 1))


class Unavailable(XWError):
    """Something the server depends on (e.g. an identity provider) cannot answer now; retry later."""

    code = "unavailable"
    status = 503
    title = "Service unavailable"


class TransportError(XWError):
    """The server could not be reached, or the TLS handshake failed (client side only)."""

    code = "transport"
    status = 0
    title = "Transport error"


_BY_CODE: dict[str, type[XWError]] = {
    cls.code: cls
    for cls in (
        XWError,
        BadRequest,
        ValidationFailed,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        IllegalTransition,
        RequestTimeout,
        PayloadTooLarge,
        TooManyRequests,
        Unavailable,
        TransportError,
    )
}


def from_problem(doc: dict[str, Any], status: int) -> XWError:
    """Rebuild an error from a problem+json document (unknown types map by HTTP status)."""
    typ = str(doc.get("type", ""))
    code = typ[len(PROBLEM_BASE) :] if typ.startswith(PROBLEM_BASE) else ""
    cls = _BY_CODE.get(code)
    if cls is None:
        # a bare 5xx (a proxy's page, a crash) is not one of our problems: a plain error saying what came
        cls = next((c for c in _BY_CODE.values() if c.status == status and status < 500), XWError)
    reason = str(doc.get("detail") or doc.get("title") or f"HTTP {status}")
    extra = {k: v for k, v in doc.items() if k not in ("type", "title", "status", "detail")}
    return cls(reason, **extra)
