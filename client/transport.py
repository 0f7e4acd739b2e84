"""The one seam between the client library and the network: ``handle(ApiRequest) -> ApiResponse``."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from client.config import ClientConfig
from common.errors import TransportError, XWError, from_problem

CHUNK = 256 * 1024
CONNECT_TIMEOUT = 30.0
FAILOVER_CONNECT_TIMEOUT = 10.0  # with other servers to try

logger = logging.getLogger(__name__)


@dataclass
class ApiRequest:
    """One HTTP request to the API (path relative to /api/v1)."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    content: bytes | AsyncIterable[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


class ApiResponse:
    """A response whose body is read (JSON) or streamed; always closed with ``aclose``."""

    def __init__(self, raw: aiohttp.ClientResponse) -> None:
        self._raw = raw
        self.status = raw.status
        self.headers = raw.headers

    async def json(self) -> Any:
        return json.loads(await self._raw.read())

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._raw.content.iter_chunked(CHUNK):
            yield chunk

    async def aclose(self) -> None:
        self._raw.release()

    async def raise_for_problem(self) -> None:
        """Raise the xwhep error a 4xx/5xx problem document describes."""
        if self.status < 400:
            return
        body = await self._raw.read()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {"detail": body.decode(errors="replace")[:200] or f"HTTP {self.status}"}
        await self.aclose()
        raise from_problem(doc if isinstance(doc, dict) else {}, self.status)


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
            return ApiResponse(raw)
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


__all__ = ["ApiRequest", "ApiResponse", "HttpTransport", "XWError"]
