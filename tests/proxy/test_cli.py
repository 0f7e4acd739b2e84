"""``xwrelay`` as a process: ready line, host key files, a working link, clean shutdown, one-line errors."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from proxy.endpoints import RelayLink, Ticket

pytestmark = pytest.mark.timeout(30)


async def _xwrelay(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )


async def test_xwrelay_serves_until_sigterm(signer, tmp_path) -> None:
    verify_key = tmp_path / "jwt.pub"
    verify_key.write_bytes(signer.public_pem)
    host_key = tmp_path / "relay" / "host_key"
    proc = await _xwrelay("--port", "0", "--host-key", str(host_key), "--verify-key", str(verify_key))
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        match = re.fullmatch(r"xwrelay ready at 127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        port = int(match[1])
        assert port > 0
        assert host_key.stat().st_mode & 0o777 == 0o600
        pinned = (host_key.parent / "host_key.pub").read_text().strip()
        assert pinned.startswith("ssh-ed25519 ")

        async def tickets() -> Ticket:
            return Ticket(f"127.0.0.1:{port}", pinned, signer.token([]))

        link = RelayLink(tickets)
        await link.start()
        assert link.connected
        await link.aclose()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()


async def test_xwrelay_keeps_its_host_key(signer, tmp_path) -> None:
    verify_key = tmp_path / "jwt.pub"
    verify_key.write_bytes(signer.public_pem)
    host_key = tmp_path / "host_key"
    keys = []
    for _ in range(2):
        proc = await _xwrelay("--port", "0", "--host-key", str(host_key), "--verify-key", str(verify_key))
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 15)
        keys.append(Path(f"{host_key}.pub").read_text())
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0
    assert keys[0] == keys[1]


@pytest.mark.parametrize(
    ("verify_key", "host_key", "message"),
    [
        (None, None, "cannot read the verify key"),
        (b"hello", None, "is not an EC public key"),
        (b"", "junk", "host_key is not an SSH private key"),
    ],
    ids=["missing-verify-key", "bad-verify-key", "bad-host-key"],
)
async def test_xwrelay_errors_are_one_line(signer, tmp_path, verify_key, host_key, message) -> None:
    if verify_key is not None:
        (tmp_path / "jwt.pub").write_bytes(verify_key or signer.public_pem)
    if host_key is not None:
        (tmp_path / "host_key").write_text(host_key)
    proc = await _xwrelay(
        "--port", "0", "--host-key", str(tmp_path / "host_key"), "--verify-key", str(tmp_path / "jwt.pub")
    )
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 1
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines


async def test_xwrelay_reports_a_busy_port(signer, tmp_path) -> None:
    verify_key = tmp_path / "jwt.pub"
    verify_key.write_bytes(signer.public_pem)
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        proc = await _xwrelay(
            "--port", str(port), "--host-key", str(tmp_path / "k"), "--verify-key", str(verify_key)
        )
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        blocker.close()
        await blocker.wait_closed()
    assert proc.returncode == 1
    assert f"Error: cannot listen on 127.0.0.1:{port}" in err.decode()
    assert os.path.exists(tmp_path / "k")
