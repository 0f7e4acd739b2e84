"""A 200 MiB content through a real `xwserver run` process: bit-exact, bounded memory, stored once."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.api import XWClient
from client.config import ClientConfig
from common.enums import DataStatus

XWSERVER = Path(sys.executable).with_name("xwserver")
MIB = 1 << 20
BIG_MIB = 200
RSS_SLACK = 64 * MIB  # far below the file size: the server must stream, never hold the content
READY = re.compile(r"xwserver ready at (https://\S+)")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@dataclass
class ServerProcess:
    """A server started the way an operator does it, and an admin client for it."""

    proc: asyncio.subprocess.Process
    home: Path
    url: str
    xw: XWClient

    @property
    def store(self) -> Path:
        return self.home / "store"

    def status_kib(self, field: str) -> int:
        """A VmRSS/VmHWM-style line of /proc/<pid>/status, in KiB."""
        text = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB$", text, re.MULTILINE)
        assert match, f"no {field} in /proc/{self.proc.pid}/status"
        return int(match.group(1))

    def reset_peak(self) -> None:
        """Make VmHWM start again from the current RSS (Linux >= 4.0; harmless if refused)."""
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except OSError:
            pass


async def _run(*args: str | Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        XWSERVER, *map(str, args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, out.decode()
    return out.decode()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    home = tmp_path / "home"
    await _run("init", "--dir", home, "--port", "0")
    log = (tmp_path / "server.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        XWSERVER, "run", "--dir", str(home), stdout=asyncio.subprocess.PIPE, stderr=log
    )
    try:
        assert proc.stdout is not None
        url = None
        while url is None:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            assert line, f"xwserver exited before it was ready: {(tmp_path / 'server.log').read_text()}"
            if match := READY.search(line.decode()):
                url = match.group(1)
        admin = tomllib.loads((home / "admin.conf").read_text())
        cfg = ClientConfig(server=url, ca=home / "ca" / "ca.crt", login="admin", password=admin["password"])
        async with XWClient(cfg) as xw:
            yield ServerProcess(proc, home, url, xw)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


def _content_files(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*") if p.is_file() and p.parent != store / "tmp")


def _write_random(path: Path, mib: int) -> str:
    """Incompressible content, written one MiB at a time; returns its sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        for _ in range(mib):
            chunk = os.urandom(MIB)
            digest.update(chunk)
            fh.write(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


async def test_200_mib_round_trip_is_exact_bounded_and_stored_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    xw = server.xw
    # Warm up every code path (TLS, upload, download, delete) before taking the memory baseline.
    small = tmp_path / "small.bin"
    await asyncio.to_thread(_write_random, small, 2)
    warm = await xw.send_file(small)
    await xw.download(warm.uid, tmp_path / "small.out")
    await xw.remove(warm.uid)
    assert _content_files(server.store) == []

    big = tmp_path / "big.bin"
    sha = await asyncio.to_thread(_write_random, big, BIG_MIB)
    server.reset_peak()
    baseline = server.status_kib("VmRSS") * 1024

    first = await xw.send_file(big, name="big-1")
    assert (first.status, first.size, first.sha256) == (DataStatus.AVAILABLE, BIG_MIB * MIB, sha)
    out = tmp_path / "big.out"
    await xw.download(first.uid, out)
    assert out.stat().st_size == BIG_MIB * MIB
    assert await asyncio.to_thread(_sha256, out) == sha
    out.unlink()

    # The same content as a second data object is stored once.
    second = await xw.send_file(big, name="big-2")
    assert second.uid != first.uid and second.sha256 == sha
    [stored] = _content_files(server.store)
    assert stored.name == sha and stored.stat().st_size == BIG_MIB * MIB

    peak = server.status_kib("VmHWM") * 1024
    assert peak < baseline + RSS_SLACK, f"peak RSS {peak / MIB:.0f} MiB vs baseline {baseline / MIB:.0f} MiB"

    await xw.remove(first.uid)
    assert _content_files(server.store) == [stored]
    await xw.download(second.uid, out)
    assert await asyncio.to_thread(_sha256, out) == sha

    await xw.remove(second.uid)
    assert _content_files(server.store) == []
    assert list((server.store / "tmp").iterdir()) == []
    assert await xw.datas() == []

    server.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(server.proc.wait(), timeout=10) == 0


async def test_sigterm_stops_the_server_cleanly(server: ServerProcess) -> None:
    assert (await server.xw.ping()).login == "admin"
    server.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(server.proc.wait(), timeout=10) == 0
