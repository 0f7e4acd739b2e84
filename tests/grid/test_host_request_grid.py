"""``xwworker request`` as a real process: an administrator approves it with ``xwapprove``, and the machine
then works as its own host without ever having had an account."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

from common.enums import JobStatus
from common.schemas import JobIn

BIN = Path(sys.executable).parent
APPROVE_LINE = re.compile(r"^    xwapprove (\S+) --code (\S+)$", re.MULTILINE)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XW_")}
    env["HOME"] = str(home)  # no ~/.xwhep/client.conf of the machine running the tests
    return env


async def start_request(grid: Any, work: Path, home: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "worker", "request", "--server", grid.url, "--ca", str(grid.settings.ca_cert)),
        *("--name", work.name, "--work-dir", str(work), *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(home),
    )


async def read_until_approve_line(proc: asyncio.subprocess.Process) -> tuple[str, str, str]:
    """What the requester printed up to the command for the administrator: (text, request, code)."""
    assert proc.stdout is not None
    text = ""
    while not (found := APPROVE_LINE.search(text)):
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, f"xwworker request ended without asking: {text!r}"
        text += line.decode()
    return text, found.group(1), found.group(2)


async def run_cli(home: Path, name: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / name),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(home),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def admin_conf(grid: Any, tmp_path: Path) -> Path:
    return grid.write_client_conf(tmp_path / "admin.conf", login="admin", password=grid.admin_cfg.password)


async def test_requested_credential_is_approved_and_runs_a_job(local_grid: Any, tmp_path: Path) -> None:
    lg = local_grid
    work = lg.work_root / "asker"
    admin = admin_conf(lg.grid, tmp_path)

    # the volunteer gives up waiting; the request stays pending and the same command resumes it
    first = await start_request(lg.grid, work, tmp_path, "--timeout", "1")
    text, uid, code = await read_until_approve_line(first)
    assert f"Request {uid} sent (code {code}). Ask your grid administrator to run:" in text
    _, err = await asyncio.wait_for(first.communicate(), 30)
    assert first.returncode == 1
    assert f"request {uid} (code {code}) waits for a decision" in err.decode()
    assert "run the same command again" in err.decode() and "Traceback" not in err.decode()
    assert stat.S_IMODE((work / "request.json").stat().st_mode) == 0o600

    again = await start_request(lg.grid, work, tmp_path, "--timeout", "60")
    text, resumed, same_code = await read_until_approve_line(again)
    assert (resumed, same_code) == (uid, code) and "resumed" in text

    rc, out, err = await run_cli(tmp_path, "xwhostrequests", "--xwconfig", str(admin), "--xwformat", "table")
    assert rc == 0 and uid in out and "asker" in out and code not in out, (out, err)
    rc, out, err = await run_cli(tmp_path, "xwapprove", uid, "--code", "0000-0000", "--xwconfig", str(admin))
    assert (rc, out) == (1, "") and err.startswith("xwapprove: error: wrong code") and err.count("\n") == 1
    rc, out, err = await run_cli(tmp_path, "xwapprove", uid, "--code", code.lower(), "--xwconfig", str(admin))
    assert (rc, err) == (0, "") and f"UID='{uid}'" in out and "STATUS='approved'" in out, err

    out_b, err_b = await asyncio.wait_for(again.communicate(), 60)
    assert again.returncode == 0, err_b.decode()
    saved = json.loads((work / "host.json").read_text())
    host = saved["host"]
    assert f"this machine is host {host} (owner worker)" in out_b.decode()
    assert f"xwworker --xwconfig {work / 'client.conf'} --name asker --work-dir {work}" in out_b.decode()
    assert stat.S_IMODE((work / "host.json").stat().st_mode) == 0o600
    assert saved["credential"].startswith(f"xwh1.{host}.") and not (work / "request.json").exists()
    assert "login" not in (work / "client.conf").read_text()

    # the worker runs with the credential alone (its config has no login) and takes a job
    await lg.add_worker("asker", "--slots", "1", "--xwconfig", str(work / "client.conf"))
    alice = await lg.grid.add_user("alice")
    app = await lg.script_app(alice, "hello", "echo hello from $(hostname)\n", rights="0755")
    job = await alice.submit(JobIn(app=app, expected_host=host))
    done = await lg.wait_job(alice, job.uid, {JobStatus.COMPLETED, JobStatus.ERROR})
    assert (done.status, done.host) == (JobStatus.COMPLETED, host), done.status_reason
    files = await lg.results(alice, done)
    assert any(b"hello from" in content for content in files.values()), files
    assert [h.uid for h in await lg.admin.hosts() if h.name == "asker"] == [host]
    actions = [e.action for e in await lg.admin.events(object_uid=host)]
    assert actions[:2] == ["enrol", "re-enrol"]


async def test_denied_request_ends_with_the_reason(grid: Any, tmp_path: Path) -> None:
    work = tmp_path / "work" / "stranger"
    proc = await start_request(grid, work, tmp_path)
    _, uid, _ = await read_until_approve_line(proc)
    admin = admin_conf(grid, tmp_path)
    rc, out, err = await run_cli(
        tmp_path, "xwdeny", uid, "--reason", "unknown machine", "--xwconfig", str(admin)
    )
    assert (rc, err) == (0, "") and "STATUS='denied'" in out
    _, err_b = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert err_b.decode().splitlines()[-1] == f"Error: request {uid} was denied: unknown machine"
    assert not (work / "host.json").exists() and not (work / "request.json").exists()
    rc, out, err = await run_cli(tmp_path, "xwdeny", "nonsense", "--xwconfig", str(admin))
    assert (rc, out) == (
        1,
        "",
    ) and err == "xwdeny: error: 'nonsense' is not a host request uid (xwhostrequests lists them)\n"
