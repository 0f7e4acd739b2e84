"""Real installs on this machine (root): the account, modes and owners, enrolment against a real server,
the service command running as the account, and uninstall taking every trace away again.

systemd is not running in the test environment, so the unit is verified and its command run by hand
as the account, the way systemd would start it (without the unit's sandboxing options).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import worker
from common.enums import AppType, JobStatus, UserRights
from common.schemas import AppIn, Binary, JobIn, UserIn
from worker import install as plan
from worker.identity import load as load_host

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0, reason="a real system-wide install needs root (test_install.py: --root)"
    ),
    pytest.mark.timeout(400),
    pytest.mark.slow,
]

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def shared_python() -> Iterator[Path]:
    """An interpreter with xwhep that every account may run, as a pipx install under /opt would be: a venv
    of the system's Python of our version that sees this checkout's packages."""
    base = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    purelib = Path(sysconfig.get_paths()["purelib"])
    if not base.exists():
        pytest.skip(f"{base} is missing: no system Python of our version to build a shared interpreter on")
    for needed in (purelib, Path(worker.__file__).parent):
        if (blocked := plan.blocked_for_others(needed)) is not None:
            pytest.skip(f"this checkout is not readable by other accounts: {blocked[0]} {blocked[1]}")
    top = Path(tempfile.mkdtemp(prefix="xwt-py-", dir="/var/tmp"))
    try:
        top.chmod(0o755)
        subprocess.run([str(base), "-m", "venv", "--without-pip", str(top / "venv")], check=True, timeout=120)
        site = Path(
            sysconfig.get_paths(vars={"base": str(top / "venv"), "platbase": str(top / "venv")})["purelib"]
        )
        (site / "xwhep-checkout.pth").write_text(f"import site; site.addsitedir({str(purelib)!r})\n")
        yield top / "venv" / "bin" / "python"
    finally:
        shutil.rmtree(top, ignore_errors=True)


def traces(service: str) -> list[str]:
    """What of an install named ``service`` exists on this machine."""
    found = [str(p) for p in (Path("/etc") / service, Path("/var/lib") / service) if p.exists()]
    found += [str(p) for p in [Path(f"/etc/systemd/system/{service}.service")] if p.exists()]
    with contextlib.suppress(KeyError):
        found.append(f"account {pwd.getpwnam(service).pw_name}")
    with contextlib.suppress(KeyError):
        found.append(f"group {grp.getgrnam(service).gr_name}")
    return found


@pytest.fixture
def service() -> Iterator[str]:
    """A unique service (and account) name; whatever a failed test left is removed."""
    name = f"xwt-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        subprocess.run([sys.executable, "-m", "worker", "uninstall", "--service", name], capture_output=True)
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            subprocess.run(["userdel", name], capture_output=True)
        for path in (Path("/etc") / name, Path("/var/lib") / name):
            shutil.rmtree(path, ignore_errors=True)
        Path(f"/etc/systemd/system/{name}.service").unlink(missing_ok=True)


async def xwworker(*args: str, python: Path | None = None, **kw: Any) -> tuple[int, str]:
    """Run ``python -m worker ARGS`` (by default with this interpreter, as root); (exit code, output)."""
    proc = await asyncio.create_subprocess_exec(
        str(python or sys.executable),
        "-m",
        "worker",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd="/",
        **kw,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def owner(path: Path) -> tuple[str, str, int]:
    st = path.lstat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


async def volunteer_conf(grid: Any, tmp: Path, password: str = PASSWORD) -> Path:
    await grid.admin.create_user(UserIn(login="volunteer", password=PASSWORD, rights=UserRights.WORKER_USER))
    return grid.write_client_conf(tmp / "volunteer.conf", login="volunteer", password=password)  # type: ignore[no-any-return]


async def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.3)


@pytest.fixture
async def running() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Processes a test starts; SIGTERMed (then killed) at the end."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def test_install_enrols_runs_as_the_account_and_uninstall_removes_everything(
    grid: Any, tmp_path: Path, shared_python: Path, service: str, running: list[Any]
) -> None:
    conf = await volunteer_conf(grid, tmp_path)
    rc, out = await xwworker(
        "install",
        *("--service", service, "--name", service, "--slots", "1", "--no-start"),
        *("--python", str(shared_python), "--xwconfig", str(conf)),
    )
    assert rc == 0, out
    assert "systemctl enable --now" in out  # systemd does not run here: told what to run

    account = pwd.getpwnam(service)
    assert account.pw_dir == f"/var/lib/{service}" and account.pw_shell.endswith(("nologin", "false"))
    assert account.pw_uid < 1000 and grp.getgrgid(account.pw_gid).gr_name == service
    etc, lib = Path("/etc") / service, Path("/var/lib") / service
    unit = Path(f"/etc/systemd/system/{service}.service")
    assert owner(etc) == ("root", "root", 0o755)
    assert owner(etc / "worker.toml") == ("root", "root", 0o644)
    assert owner(etc / "credentials.conf") == ("root", service, 0o640)
    assert owner(etc / "ca.crt") == ("root", "root", 0o644)
    assert owner(etc / "install.json") == ("root", "root", 0o644)
    assert owner(unit) == ("root", "root", 0o644)
    assert owner(lib) == (service, service, 0o700)
    assert owner(lib / "host.json") == (service, service, 0o600)
    assert {owner(p)[0] for p in lib.rglob("*")} == {service}
    tool = shutil.which("systemd-analyze")
    if tool is not None:
        done = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and unit.name not in done.stdout + done.stderr, done.stderr

    saved = load_host(lib)
    assert saved is not None
    hosts = [h for h in await grid.admin.hosts() if h.name == service]
    assert [h.uid for h in hosts] == [saved.host_uid]  # enrolled once, as the host the service will be
    manifest = json.loads((etc / "install.json").read_text())
    assert manifest["account"] == service

    # the unit's command, as the account: it must read its settings and credentials and run a job
    log = (tmp_path / "service.log").open("wb")
    running.append(
        await asyncio.create_subprocess_exec(
            str(shared_python),
            *("-m", "worker", "--settings", str(etc / "worker.toml")),
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=[],
            cwd=str(lib),
            env={"PATH": "/usr/bin:/bin", "HOME": str(lib), "LANG": "C.UTF-8"},
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    )
    log.close()
    alice = await grid.add_user("alice")
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from $(id -u)\n")
    data = await alice.send_file(script, access_rights="1700")
    app = await alice.send_app(
        AppIn(name="hello", type=AppType.SCRIPT, binaries=[Binary(os="ANY", cpu="ANY", data=data.uid)])
    )
    job = await alice.submit(JobIn(app=app.uid, expected_host=service))

    async def completed() -> bool:
        got = await alice.get_job(job.uid)
        assert got.status is not JobStatus.ERROR, got.status_reason
        return got.status is JobStatus.COMPLETED

    try:
        await until(completed, 180, "the installed worker to run a job")
    finally:
        print((tmp_path / "service.log").read_text(errors="replace")[-4000:])
    assert (await alice.get_job(job.uid)).host == saved.host_uid  # the service spoke as the enrolled host
    proc = running[0]
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 60) == 0

    rc, out = await xwworker("uninstall", "--service", service)
    assert rc == 0, out
    assert traces(service) == []
    assert not any(Path(p).exists() for p in manifest["files"] + manifest["dirs"][1:])


@pytest.mark.parametrize("failure", ["refused", "unreachable"])
async def test_a_failed_enrolment_leaves_nothing(
    grid: Any, tmp_path: Path, shared_python: Path, service: str, failure: str
) -> None:
    conf = await volunteer_conf(grid, tmp_path, password="wrong" if failure == "refused" else PASSWORD)
    if failure == "unreachable":
        with contextlib.closing(__import__("socket").socket()) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        conf.write_text(conf.read_text().replace(grid.url, f"https://127.0.0.1:{port}"))
    rc, out = await xwworker(
        "install", "--service", service, "--no-start", "--python", str(shared_python), "--xwconfig", str(conf)
    )
    lines = out.strip().splitlines()
    assert rc == 1 and len(lines) >= 1, out
    assert lines[-1].startswith("Error: cannot enrol: ") and lines[-1].endswith("(nothing was installed)")
    assert ("refused" if failure == "refused" else "cannot be reached") in lines[-1]
    assert "Traceback" not in out
    assert traces(service) == []
    assert not [h for h in await grid.admin.hosts() if h.name == service]


async def test_user_unit_install_by_an_ordinary_user(tmp_path: Path, shared_python: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="xwt-home-", dir="/var/tmp"))
    nobody = pwd.getpwnam("nobody")
    try:
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        (home / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
        (home / "client.conf").write_text('server = "https://grid.example.org"\nca = "ca.pem"\nlogin = "v"\n')
        before = sorted(p.name for p in home.iterdir())
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        as_nobody: dict[str, Any] = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        as_nobody["env"] = env
        args = [
            "--no-start",
            "--no-enrol",
            "--python",
            str(shared_python),
            "--xwconfig",
            str(home / "client.conf"),
        ]
        rc, out = await xwworker("install", *args, python=shared_python, **as_nobody)
        assert rc == 0, out
        assert "systemctl --user enable --now xwhep-worker.service" in out and "enable-linger nobody" in out
        config = home / ".config" / "xwhep-worker"
        group = grp.getgrgid(nobody.pw_gid).gr_name
        assert owner(config / "credentials.conf") == ("nobody", group, 0o600)
        assert owner(home / ".local" / "share" / "xwhep-worker")[::2] == ("nobody", 0o700)
        assert (home / ".config" / "systemd" / "user" / "xwhep-worker.service").exists()
        rc, out = await xwworker("status", python=shared_python, **as_nobody)
        assert rc == 0 and "user unit" in out, out
        rc, out = await xwworker("uninstall", python=shared_python, **as_nobody)
        assert rc == 0, out
        assert sorted(p.name for p in home.iterdir()) == before  # .config and .local were made by install
    finally:
        shutil.rmtree(home, ignore_errors=True)
