"""One TLS receive buffer for all of a listener's connections, instead of 256 KiB each.

asyncio's ``SSLProtocol`` allocates a receive buffer of ``max_size`` (256 KiB) per connection when it is
created and keeps it for the connection's whole life, busy or idle: that buffer is most of what an idle
TLS connection costs. The bytes only stay in it from ``recv_into()`` to ``buffer_updated()``, which a
selector event loop calls back to back in one callback (``_SelectorSocketTransport._read_ready``), and
``buffer_updated`` copies them into the connection's incoming BIO before doing anything else. So on a
selector loop one buffer can serve every connection of the loop: the receive size (and throughput) stay
as they were and the per-connection buffer goes away.

Smaller per-connection buffers were measured first (bench.data, 1 GiB uploads): 64 KiB cost ~35% more
server CPU per MiB uploaded, 16 KiB twice as much — every receive is one more trip through TLS, aiohttp's
parser and the body reader — so sharing beats shrinking.

This relies on two private attributes of ``asyncio.sslproto.SSLProtocol`` (``_ssl_buffer`` and
``_ssl_buffer_view``, the buffer ``buffer_updated`` reads from); :func:`shared_buffer_protocol` checks
them and returns None (use asyncio's own protocol) when they are missing or when the loop is not a
selector loop (a proactor loop holds the buffer across an overlapped receive: it must not be shared).
The stdlib class itself is never modified: only this subclass, used only by ``server/listener.py``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from asyncio import sslproto
from typing import Any, ClassVar, cast

logger = logging.getLogger(__name__)

_PRIVATE = ("_ssl_buffer", "_ssl_buffer_view")


class SharedBufferSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol receiving into the buffer of its class (made per listener)."""

    shared: ClassVar[memoryview]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # drop the 256 KiB the base class just allocated for this connection
        self._ssl_buffer = self.shared.obj
        self._ssl_buffer_view = self.shared

    def get_buffer(self, n: int) -> memoryview:
        return self.shared


def shared_buffer_protocol(
    loop: asyncio.AbstractEventLoop, size: int, context: ssl.SSLContext
) -> type[SharedBufferSSLProtocol] | None:
    """A protocol class whose connections share one ``size``-byte receive buffer on ``loop``.

    None when sharing is not safe here (not a selector loop, or asyncio's internals changed): the
    caller then uses asyncio's ordinary per-connection buffer.
    """
    if size <= 0 or not isinstance(loop, asyncio.SelectorEventLoop):
        return None
    probe = sslproto.SSLProtocol(loop, asyncio.Protocol(), context, loop.create_future(), server_side=True)
    missing = [name for name in _PRIVATE if not hasattr(probe, name)]
    if missing:
        logger.warning(
            "asyncio's SSLProtocol has no %s: TLS connections keep a receive buffer each", ", ".join(missing)
        )
        return None
    attrs = {"max_size": size, "shared": memoryview(bytearray(size))}
    return cast(
        "type[SharedBufferSSLProtocol]", type("SharedBufferSSLProtocol", (SharedBufferSSLProtocol,), attrs)
    )
