"""The installed console scripts as real processes: one error line on stderr, no traceback, exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import socket
import sys
import threading
from pathlib import Path

BIN = Path(sys.executable).parent


async def run_cli(name: str, *args: str, home: Path) -> tuple[int, str, str]:
    """Run an installed xw* script while the server keeps serving in this event loop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XW_")}
    env["HOME"] = str(home)  # no ~/.xwhep/client.conf of the machine running the tests
    proc = await asyncio.create_subprocess_exec(
        str(BIN / name), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_user_errors_are_one_line_without_traceback(grid, tmp_path, user_conf) -> None:  # type: ignore[no-untyped-def]
    alice, _ = await user_conf("alice")
    bob, _ = await user_conf("bob")
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello\n")

    code, out, err = await run_cli(
        "xwsendapp", "--xwconfig", str(alice), "hello", "script", "any", "any", str(script), home=tmp_path
    )
    assert (code, err) == (0, "")
    assert re.fullmatch(r"xw://127\.0\.0\.1/[0-9a-f-]{36}\n", out)
    app_uri = out.strip()

    code, out, err = await run_cli("xwsubmit", "--xwconfig", str(bob), "hello", "arg", home=tmp_path)
    assert (code, out) == (1, "")
    assert err == "xwsubmit: error: no app named 'hello' visible to you\n"

    code, out, err = await run_cli("xwsubmit", "--xwconfig", str(bob), app_uri, home=tmp_path)
    assert code == 1 and err.count("\n") == 1 and err.startswith("xwsubmit: error: ")
    assert app_uri.rsplit("/", 1)[1] in err and "Traceback" not in err

    code, out, err = await run_cli(
        "xwsubmit", "--xwconfig", str(bob), "hello", "--xwforwardaddresses", "bad", home=tmp_path
    )
    assert code == 1 and err.count("\n") == 1 and err.startswith("xwsubmit: error: bad --xwforwardaddresses")


async def test_config_and_network_errors(grid, tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nowhere.conf"
    code, out, err = await run_cli("xwapps", "--xwconfig", str(missing), home=tmp_path)
    assert (code, out, err) == (1, "", f"xwapps: error: config file {missing} does not exist\n")

    code, out, err = await run_cli("xwping", home=tmp_path)  # no config at all
    assert code == 1 and err.startswith("xwping: error: no server configured") and err.count("\n") == 1

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = grid.write_client_conf(tmp_path / "dead.conf", login="alice", password="whatever")
    dead.write_text(dead.read_text().replace(grid.url, f"https://127.0.0.1:{port}"))
    code, out, err = await run_cli("xwworks", "--xwconfig", str(dead), home=tmp_path)
    assert code == 1 and err.startswith("xwworks: error: cannot reach") and err.count("\n") == 1

    code, out, err = await run_cli("xwdownload", "--xwconfig", str(dead), home=tmp_path)
    assert code == 2 and "Traceback" not in err and "Missing argument" in err  # click's usage error


async def test_progress_bars_go_to_a_terminal_stderr_only(grid, tmp_path, user_conf) -> None:  # type: ignore[no-untyped-def]
    alice, _ = await user_conf("alice")
    payload = os.urandom(3_000_000)
    (tmp_path / "big.bin").write_bytes(payload)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XW_")} | {"HOME": str(tmp_path)}
    main, tty = pty.openpty()
    seen: list[bytes] = []

    def drain() -> None:  # keep the terminal's buffer from filling up and blocking the command
        with contextlib.suppress(OSError):
            while chunk := os.read(main, 65536):
                seen.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        for args in (
            ("xwsenddata", "big", str(tmp_path / "big.bin")),
            ("xwdownload", "big", "--xwout", "copy"),
        ):
            proc = await asyncio.create_subprocess_exec(
                str(BIN / args[0]),
                "--xwconfig",
                str(alice),
                *args[1:],
                cwd=tmp_path,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=tty,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
            assert proc.returncode == 0
            assert "\x1b" not in out.decode()  # the bar never reaches stdout
    finally:
        os.close(tty)
        await asyncio.to_thread(reader.join, 5)
        os.close(main)
    assert (tmp_path / "copy").read_bytes() == payload
    assert b"big" in b"".join(seen)  # the bar was drawn on the terminal
