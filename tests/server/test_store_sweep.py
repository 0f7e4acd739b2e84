"""Partial uploads left in store/tmp by a killed server are swept when a store opens; those of a server
process still receiving them (several processes may share one store) are not."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from client.api import XWClient
from client.config import ClientConfig
from common.config import read_toml
from common.schemas import DataIn
from server.app import start
from server.settings import load_settings
from server.store import STALE_SECONDS, DataStore

XWSERVER = Path(sys.executable).with_name("xwserver")
MIB = 1 << 20

# A server process's upload in progress: a DataStore receiving a body that stops after 2 MiB (past the
# first write) and never ends, as a stalled client would leave it.
RECEIVER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from server.store import DataStore

    async def body():
        yield b"x" * (2 << 20)
        print("receiving", flush=True)
        await asyncio.Event().wait()

    async def main():
        await DataStore(Path(sys.argv[1])).ingest(body(), max_size=1 << 30)

    asyncio.run(main())
    """
)


async def _receiver(root: Path) -> asyncio.subprocess.Process:
    """Another server process of the same store, in the middle of receiving an upload."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RECEIVER, str(root), stdout=asyncio.subprocess.PIPE, cwd=Path.cwd()
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line == b"receiving\n", line
    return proc


def _parts(root: Path) -> list[Path]:
    return sorted((root / "tmp").iterdir())


async def test_the_partial_upload_of_a_killed_process_is_swept_when_a_store_opens(tmp_path: Path) -> None:
    root = tmp_path / "store"
    proc = await _receiver(root)
    [part] = _parts(root)
    assert part.name.startswith("part-") and part.stat().st_size >= 2 * MIB
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    DataStore(root)
    assert _parts(root) == []


async def test_an_upload_another_live_process_receives_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "store"
    proc = await _receiver(root)
    try:
        [part] = _parts(root)
        DataStore(root)  # a second server process of the same store starts
        assert _parts(root) == [part], "a live process's upload must survive another's start"
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    DataStore(root)  # once that process is gone, the next start sweeps its leftover
    assert _parts(root) == []


async def test_an_upload_this_process_receives_is_kept(tmp_path: Path) -> None:
    """The lock is per open file, not per process: a store opened twice in one process is safe too."""
    root = tmp_path / "store"
    store = DataStore(root)
    gate = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"y" * (2 * MIB)
        await gate.wait()
        yield b"z"

    task = asyncio.create_task(store.ingest(body(), max_size=1 << 30))
    while not _parts(root):
        await asyncio.sleep(0.01)
    DataStore(root)
    assert len(_parts(root)) == 1
    gate.set()
    item = await task
    assert _parts(root) == [item.tmp]
    store.place(item)
    assert _parts(root) == [] and store.path(item.sha256).stat().st_size == 2 * MIB + 1


def test_files_no_lock_vouches_for_are_swept_only_when_stale(tmp_path: Path) -> None:
    """Files named before their lock is taken, ``up-`` files of older servers, strays: by age."""
    root = tmp_path / "store"
    tmp = root / "tmp"
    tmp.mkdir(parents=True)
    old = time.time() - STALE_SECONDS - 60
    names = [".part-fresh", ".part-old", "up-fresh", "up-old", "stray-old"]
    for name in names:
        (tmp / name).write_bytes(b"partial")
    (tmp / "dir-old").mkdir()
    (tmp / "dir-old" / "inside").write_bytes(b"partial")
    for name in [n for n in names if n.endswith("-old")] + ["dir-old"]:
        os.utime(tmp / name, (old, old))
    DataStore(root)
    assert sorted(p.name for p in _parts(root)) == [".part-fresh", "up-fresh"]


@pytest.mark.slow
async def test_a_server_started_after_a_killed_one_sweeps_its_partial_upload(
    tmp_path: Path, template_home: Path
) -> None:
    """End to end: a real `xwserver run` receiving an upload is SIGKILLed; the next start sweeps."""
    home = tmp_path / "home"
    shutil.copytree(template_home, home)
    log = (tmp_path / "server.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        XWSERVER, "run", "--dir", str(home), stdout=asyncio.subprocess.PIPE, stderr=log
    )
    try:
        assert proc.stdout is not None
        url = ""
        while not url:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, f"xwserver exited: {(tmp_path / 'server.log').read_text()}"
            if "xwserver ready at " in line:
                url = line.split("xwserver ready at ", 1)[1].split()[0]
        password = str(read_toml(home / "admin.conf")["password"])
        cfg = ClientConfig(server=url, ca=home / "ca" / "ca.crt", login="admin", password=password)
        async with XWClient(cfg) as xw:
            data = await xw.create_data(DataIn(name="big.bin", size=64 * MIB))
            token = (await xw.login("admin", password)).access_token
        started = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield bytes(MIB)
            started.set()
            await asyncio.Event().wait()  # the rest never comes: the server dies first

        ctx = ssl.create_default_context(cafile=str(home / "ca" / "ca.crt"))
        async with aiohttp.ClientSession() as http:
            upload = asyncio.create_task(
                http.put(
                    f"{url}/api/v1/data/{data.uid}/content",
                    data=body(),
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
                    ssl=ctx,
                )
            )
            await asyncio.wait_for(started.wait(), 30)
            store = home / "store"
            deadline = time.monotonic() + 30
            while not any(p.stat().st_size >= MIB for p in _parts(store)):
                assert time.monotonic() < deadline, "the upload never reached the store"
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            upload.cancel()
            with pytest.raises((asyncio.CancelledError, aiohttp.ClientError)):
                await upload
        assert [p.name[:5] for p in _parts(store)] == ["part-"], "the killed server left its partial upload"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()

    server = await start(load_settings(home), migrate=False)
    try:
        assert _parts(home / "store") == []
    finally:
        await server.aclose()
