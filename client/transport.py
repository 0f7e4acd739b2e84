"""The one seam between the client library and the network: a ``Transport`` answers an ``ApiRequest`` with an
``ApiResponse`` (httpx's ``handle_async_request``, in our own small types).

``HttpTransport`` is the real one (aiohttp over TLS, failover between several server URLs); ``MockTransport``
answers in memory through a function, for tests: ``XWClient(cfg, transport=MockTransport(handler))``. Only
``HttpTransport`` knows aiohttp.
"""

from __future__ import annotations

import json as jsonlib
import logging
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import aiohttp

from client.config import ClientConfig
from common.errors import TransportError, XWError, from_problem

CHUNK = 256 * 1024
CONNECT_TIMEOUT = 30.0
FAILOVER_CONNECT_TIMEOUT = 10.0  # with other servers to try

logger = logging.getLogger(__name__)

Body = bytes | AsyncIterable[bytes]  # in memory, or a stream of chunks read once (uploads, downloads)
HeaderItems = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass
class ApiRequest:
    """One HTTP request to the API (path relative to /api/v1).

    The body is ``json`` (any JSON value), or ``content``: bytes, or an async iterable of chunks that the
    transport streams (an upload: read once, so a request with one is never sent twice).
    """

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    content: Body | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body_json(self) -> Any:
        """The JSON body: ``json``, else ``content`` (bytes) parsed; None without one."""
        if self.json is not None or self.content is None:
            return self.json
        if not isinstance(self.content, bytes):
            raise TypeError("a streamed body has not been read (MockTransport reads it)")
        return jsonlib.loads(self.content)


class Headers(Mapping[str, str]):
    """Response headers, looked up case-insensitively (a repeated header's values joined with ", ")."""

    def __init__(self, items: HeaderItems = ()) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        for name, value in items.items() if isinstance(items, Mapping) else items:
            key = name.lower()
            if key in self._items:
                value = f"{self._items[key][1]}, {value}"
                name = self._items[key][0]
            self._items[key] = (name, value)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({dict(self.items())!r})"


_NO_JSON: Any = object()


class ApiResponse:
    """An answer: ``status``, ``headers``, and a body read whole (``read``, ``json``) or streamed
    (``iter_chunks``: a download goes to disk chunk by chunk, never whole in memory). Always closed with
    ``aclose`` (``on_close`` then gives the connection back).

    ``content`` is bytes, or an async iterable of chunks read once; ``json=`` makes a JSON body instead
    (``application/json`` unless ``headers`` say otherwise). ``ApiResponse.problem(err)`` is a server's
    refusal.
    """

    def __init__(
        self,
        status: int = 200,
        headers: HeaderItems | None = None,
        *,
        content: Body = b"",
        json: Any = _NO_JSON,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.status = status
        self.headers = Headers(headers or ())
        if json is not _NO_JSON:
            content = jsonlib.dumps(json).encode()
            if "Content-Type" not in self.headers:
                self.headers = Headers([*self.headers.items(), ("Content-Type", "application/json")])
        self._body: bytes | None = content if isinstance(content, bytes) else None
        self._stream: AsyncIterable[bytes] | None = None if isinstance(content, bytes) else content
        self._streamed = False
        self._on_close = on_close
        self._closed = False

    @classmethod
    def problem(cls, err: XWError, status: int | None = None) -> ApiResponse:
        """The problem+json document the server answers ``err`` with (its status unless ``status``)."""
        return cls(status or err.status, {"Content-Type": "application/problem+json"}, json=err.problem())

    def _take_stream(self) -> AsyncIterable[bytes]:
        if self._stream is None or self._streamed:
            raise RuntimeError("the response body was already streamed")
        self._streamed = True
        return self._stream

    async def read(self) -> bytes:
        """The whole body (kept: read it again, or stream it, afterwards)."""
        if self._body is None:
            self._body = b"".join([chunk async for chunk in self._take_stream()])
        return self._body

    async def json(self) -> Any:
        return jsonlib.loads(await self.read())

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (a body already in memory: in slices of ``CHUNK`` bytes)."""
        if self._body is not None:
            for start in range(0, len(self._body), CHUNK):
                yield self._body[start : start + CHUNK]
            return
        async for chunk in self._take_stream():
            yield chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        stop: Callable[[], Awaitable[None]] | None = getattr(self._stream, "aclose", None)
        if stop is not None:  # a generator stopped halfway: run its cleanup now
            await stop()
        if self._on_close is not None:
            self._on_close()

    async def raise_for_problem(self) -> None:
        """Raise the xwhep error a 4xx/5xx problem document describes (any other body: its start)."""
        if self.status < 400:
            return
        try:
            body = await self.read()
        finally:
            await self.aclose()
        try:
            doc = jsonlib.loads(body)
        except ValueError:
            doc = {"detail": body.decode(errors="replace")[:200] or f"HTTP {self.status}"}
        raise from_problem(doc if isinstance(doc, dict) else {}, self.status)


@runtime_checkable
class Transport(Protocol):
    """What XWClient needs from the network: one request in, one open response out (or an XWError,
    ``TransportError`` when no server could be reached)."""

    async def handle(self, req: ApiRequest) -> ApiResponse: ...

    async def aclose(self) -> None: ...


Handler = Callable[[ApiRequest], ApiResponse | Awaitable[ApiResponse]]


class MockTransport:
    """A transport that answers in memory: ``handler(request)``, a function or a coroutine function, returns
    the ``ApiResponse`` (or raises, e.g. ``TransportError`` as for an unreachable server).

    The handler sees a copy of the request as the wire would carry it: a streamed body read whole into
    ``content`` (so upload progress callbacks run), ``json`` through JSON and back (``body_json()`` reads
    either).
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.closed = False

    async def handle(self, req: ApiRequest) -> ApiResponse:
        content = req.content
        if content is not None and not isinstance(content, bytes):
            content = b"".join([chunk async for chunk in content])
        body = None if req.json is None else jsonlib.loads(jsonlib.dumps(req.json))
        sent = replace(req, params=dict(req.params), headers=dict(req.headers), json=body, content=content)
        answer = self.handler(sent)
        if isinstance(answer, ApiResponse):
            return answer
        return await answer

    async def aclose(self) -> None:
        self.closed = True


def client_ssl_context(cfg: ClientConfig) -> ssl.SSLContext:
    """Trust the grid CA (or the system store) and present our certificate if configured."""
    try:
        ctx = ssl.create_default_context(cafile=str(cfg.ca) if cfg.ca else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cfg.cert:
            ctx.load_cert_chain(str(cfg.cert), str(cfg.key) if cfg.key else None)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(f"cannot load TLS files: {exc}") from None
    return ctx


class HttpTransport:
    """HTTPS transport over one aiohttp session (keep-alive, connection pool).

    With several server URLs (``ClientConfig.servers``: processes or machines on one database, all
    equivalent) it sticks to the one that last answered. A request that cannot even connect — refused,
    unreachable, connect timeout: it never reached a server — is sent to the next URL, and so on around
    the list; the first that answers becomes the current one. A connection that breaks after the request
    went out is not replayed (the server may have acted on it): it raises as with one URL, and the next
    request starts from the next URL. HTTP errors are answers, never a reason to move.
    """

    def __init__(
        self, cfg: ClientConfig, *, limit: int = 32, local_addr: tuple[str, int] | None = None
    ) -> None:
        self.bases = [url + "/api/v1" for url in cfg.servers] or [cfg.server + "/api/v1"]
        self._current = 0
        # a dead machine may swallow the SYN: with somewhere else to go, give up on it sooner
        connect = CONNECT_TIMEOUT if len(self.bases) == 1 else FAILOVER_CONNECT_TIMEOUT
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ssl_context(cfg), limit=limit, local_addr=local_addr),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=300),
        )

    @property
    def base(self) -> str:
        """The API root of the server in use."""
        return self.bases[self._current]

    async def handle(self, req: ApiRequest) -> ApiResponse:
        first = self._current
        unreached: list[str] = []
        for step in range(len(self.bases)):
            index = (first + step) % len(self.bases)
            try:
                raw = await self._send(self.bases[index], req)
            except _Unreached as exc:
                unreached.append(exc.reason)
                if step + 1 < len(self.bases):
                    logger.info("%s; trying %s", exc.reason, self.bases[(index + 1) % len(self.bases)])
                continue
            except TransportError:
                self._move_from(index)
                raise
            self._current = index
            return _response(raw)
        self._move_from(first)
        if len(unreached) == 1:
            raise TransportError(unreached[0])
        raise TransportError(f"no server answers: {'; '.join(unreached)}")

    def _move_from(self, index: int) -> None:
        """The server at ``index`` failed: the next request starts from the next one (unless a concurrent
        request moved already)."""
        if self._current == index:
            self._current = (index + 1) % len(self.bases)

    async def _send(self, base: str, req: ApiRequest) -> aiohttp.ClientResponse:
        try:
            return await self._session.request(
                req.method,
                base + req.path,
                params=req.params or None,
                json=req.json,
                data=req.content,
                headers=req.headers,
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TransportError(f"cannot verify the server's certificate: {exc.certificate_error}") from None
        except aiohttp.ClientSSLError as exc:
            raise TransportError(f"TLS handshake with {base} failed: {_ssl_reason(exc)}") from None
        except aiohttp.ServerDisconnectedError:
            raise TransportError(
                f"{base} closed the connection (was the client certificate refused?)"
            ) from None
        except aiohttp.ClientConnectorError as exc:  # the connection never opened: nothing was sent
            raise _Unreached(f"cannot reach {base}: {exc.os_error.strerror or exc}") from None
        except aiohttp.ConnectionTimeoutError:
            raise _Unreached(f"cannot reach {base}: connection timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"request to {base} failed: {_ssl_reason(exc)}") from None

    async def aclose(self) -> None:
        await self._session.close()


def _response(raw: aiohttp.ClientResponse) -> ApiResponse:
    """An aiohttp response as ours: its body streamed as it arrives, its connection released on close."""
    return ApiResponse(raw.status, raw.headers.items(), content=_body(raw), on_close=raw.release)


async def _body(raw: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body as it arrives; a connection that breaks halfway is a TransportError, not aiohttp's."""
    try:
        async for chunk in raw.content.iter_chunked(CHUNK):
            yield chunk
    except (aiohttp.ClientError, TimeoutError) as exc:
        why = str(exc) or type(exc).__name__
        raise TransportError(f"the connection broke while the answer was read: {why}") from exc


class _Unreached(TransportError):
    """The request never reached the server (it may go to another)."""


def _ssl_reason(exc: BaseException) -> str:
    text = str(exc)
    for marker, reason in (
        ("unknown ca", "the server does not trust our client certificate (unknown CA)"),
        ("certificate expired", "a certificate has expired"),
        ("bad certificate", "the server refused our client certificate"),
        ("certificate required", "the server requires a client certificate"),
    ):
        if marker in text.lower():
            return reason
    return text or type(exc).__name__


__all__ = [
    "ApiRequest",
    "ApiResponse",
    "Headers",
    "HttpTransport",
    "MockTransport",
    "Transport",
    "XWError",
]
