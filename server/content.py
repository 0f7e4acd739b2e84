"""Reading a data object's content under rights: the API's download, the dashboard's download and its
stdout/stderr preview all come through here."""

from __future__ import annotations

import asyncio
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from sqlalchemy import select

from common.enums import DataStatus
from common.errors import Conflict, NotFound, ValidationFailed
from common.rights import Perm
from common.safezip import read_head
from server.authz import Actor, require
from server.db.models import Blob, Data
from server.state import Services

OCTET = "application/octet-stream"
PREVIEW_BYTES = 1024


@dataclass(frozen=True)
class Content:
    """Where a data object's bytes are: in its blob row (small ones) or in the store."""

    data: Data
    inline: bytes | None
    path: Path | None


async def readable_content(svc: Services, actor: Actor, uid: str) -> Content:
    """The content of data ``uid`` if ``actor`` may read it (NotFound / Conflict otherwise)."""
    async with svc.sessions() as session:
        data = await session.get(Data, uid)
        if data is None:
            raise NotFound(f"no data {uid}")
        require(actor, data, Perm.READ, "data")
        if data.status != DataStatus.AVAILABLE.value or data.sha256 is None:
            raise Conflict(f"data {data.uid} has no content yet (status {data.status})")
        inline = (await session.execute(select(Blob.inline).where(Blob.sha256 == data.sha256))).scalar()
    if inline is not None:
        return Content(data, inline, None)
    path = svc.store.path(data.sha256)
    if not path.exists():
        raise ValidationFailed(f"content of data {data.uid} is missing from the store")
    return Content(data, None, path)


def response(content: Content) -> web.StreamResponse:
    """The content as a download (streamed from the store, or from memory for an inline one)."""
    data = content.data
    headers = {
        "Content-Type": OCTET,
        "X-Content-SHA256": data.sha256 or "",
        "Content-Disposition": f'attachment; filename="{data.name}"',
    }
    if content.inline is not None:
        return web.Response(body=content.inline, headers=headers)
    assert content.path is not None
    return web.FileResponse(content.path, chunk_size=256 * 1024, headers=headers)


async def zip_heads(content: Content, names: tuple[str, ...], limit: int = PREVIEW_BYTES) -> dict[str, bytes]:
    """The first ``limit`` bytes of each of ``names`` found in a zip content (never trusting the zip: a
    member that is not a plain file, or a content that is no zip, previews as nothing)."""

    def read() -> dict[str, bytes]:
        source = io.BytesIO(content.inline) if content.inline is not None else content.path
        assert source is not None
        try:
            with zipfile.ZipFile(source) as zf:
                return {name: head for name in names if (head := read_head(zf, name, limit)) is not None}
        except (zipfile.BadZipFile, OSError, ValueError):
            return {}

    return await asyncio.to_thread(read)
