"""The one seam between the client library and the network: ``handle(ApiRequest) -> ApiResponse``."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from client.config import ClientConfig
from common.errors import TransportError, XWError, from_problem

CHUNK = 256 * 1024


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
    """HTTPS transport over one aiohttp session (keep-alive, connection pool)."""

    def __init__(self, cfg: ClientConfig, *, limit: int = 32) -> None:
        self.base = cfg.server + "/api/v1"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client_ssl_context(cfg), limit=limit),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300),
        )

    async def handle(self, req: ApiRequest) -> ApiResponse:
        try:
            raw = await self._session.request(
                req.method,
                self.base + req.path,
                params=req.params or None,
                json=req.json,
                data=req.content,
                headers=req.headers,
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TransportError(f"cannot verify the server's certificate: {exc.certificate_error}") from None
        except aiohttp.ClientSSLError as exc:
            raise TransportError(f"TLS handshake with {self.base} failed: {_ssl_reason(exc)}") from None
        except aiohttp.ServerDisconnectedError:
            raise TransportError(
                f"{self.base} closed the connection (was the client certificate refused?)"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise TransportError(f"cannot reach {self.base}: {exc.os_error.strerror or exc}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"request to {self.base} failed: {_ssl_reason(exc)}") from None
        return ApiResponse(raw)

    async def aclose(self) -> None:
        await self._session.close()


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
