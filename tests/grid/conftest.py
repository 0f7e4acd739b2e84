"""A real local grid: the server in-process on 127.0.0.1:0 and worker processes talking TLS to it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import shutil
import signal
import sys
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client.api import XWClient
from common.enums import AppType, JobStatus, UserRights
from common.schemas import AppIn, Binary, JobOut, UserIn
from proxy.relay import Relay, load_or_create_host_key
from tests.ports import free_port
from worker.daemon import kill_leftovers

ALIVE_PERIOD = 0.5
ALIVE_TIMEOUT = 3.0
FINAL = {JobStatus.COMPLETED, JobStatus.ERROR}


@dataclass
class LocalGrid:
    """The server (``grid``), the worker processes, and helpers to drive them."""

    grid: object  # tests.conftest.Grid
    tmp: Path
    worker_conf: Path
    work_root: Path  # worker directories: traversable (0711) so jobs running as nobody reach their scratch
    relay: Relay
    relay_port: int
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    async def restart_relay(self) -> None:
        """Kill the relay and start a new one on the same port (links must heal by themselves)."""
        await self.relay.aclose()
        key = load_or_create_host_key(self.tmp / "relay_key")
        self.relay = Relay((self.grid.settings.home / "jwt.pub").read_bytes(), key)  # type: ignore[attr-defined]
        await self.relay.start("127.0.0.1", self.relay_port)

    async def add_worker(
        self, name: str, *args: str, wait: bool = True, env: dict[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        """Start ``python -m worker`` as a separate process and wait until its host is enrolled."""
        log = (self.tmp / f"{name}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            "--xwconfig",
            str(self.worker_conf),
            "--name",
            name,
            "--work-dir",
            str(self.work_root / name),
            "--longpoll",
            "5",
            *args,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        log.close()
        self.procs[name] = proc
        if wait:
            await self.wait_for(lambda: self._enrolled(name), 30, f"worker {name} to enrol")
        return proc

    async def _enrolled(self, name: str) -> bool:
        return any(h.name == name and h.alive for h in await self.admin.hosts())

    @property
    def admin(self) -> XWClient:
        return self.grid.admin  # type: ignore[attr-defined,no-any-return]

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def wait_for(self, check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await check():
                return
            await asyncio.sleep(0.2)
        logs = "\n".join(f"--- {n}\n{collapsed(self.log(n))[-6000:]}" for n in self.procs)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")

    async def wait_job(self, xw: XWClient, uid: str, statuses: set[JobStatus], timeout: float = 60) -> JobOut:
        """Poll a job until its status is one of ``statuses``."""
        box: list[JobOut] = []

        async def check() -> bool:
            box[:] = [await xw.get_job(uid)]
            return box[0].status in statuses

        await self.wait_for(check, timeout, f"job {uid} to reach {sorted(s.value for s in statuses)}")
        return box[0]

    async def script_app(self, xw: XWClient, name: str, body: str, rights: str = "0700") -> str:
        """Register a script application and return its uid."""
        path = self.tmp / f"{name}.sh"
        path.write_text(body if body.startswith("#!") else "#!/bin/sh\n" + body)
        data = await xw.send_file(path, access_rights="1700")
        app = await xw.send_app(
            AppIn(
                name=name,
                type=AppType.SCRIPT,
                binaries=[Binary(os="ANY", cpu="ANY", data=data.uid)],
                access_rights=rights,
            )
        )
        return app.uid

    async def results(self, xw: XWClient, job: JobOut) -> dict[str, bytes]:
        """The files of a completed job's results zip."""
        assert job.result, f"job {job.uid} has no result ({job.status}: {job.status_reason})"
        dest = self.tmp / f"{job.uid}.zip"
        await xw.download(job.result, dest)
        with zipfile.ZipFile(io.BytesIO(dest.read_bytes())) as zf:
            return {n: zf.read(n) for n in zf.namelist()}

    async def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


@pytest.fixture
async def local_grid(tmp_path: Path, grid_factory) -> AsyncIterator[LocalGrid]:  # type: ignore[no-untyped-def]
    """Server with fast heartbeats (0.5 s, lost after 3 s), a relay, and two workers of two slots each."""
    relay_port = free_port()
    relay_key = tmp_path / "relay_key"
    host_key = load_or_create_host_key(relay_key)
    g = await grid_factory(
        alive_period=ALIVE_PERIOD,
        alive_timeout=ALIVE_TIMEOUT,
        longpoll=5.0,
        relays=f"127.0.0.1:{relay_port}",
        relay_host_key=f"{relay_key}.pub",
    )
    relay = Relay((g.settings.home / "jwt.pub").read_bytes(), host_key)
    await relay.start("127.0.0.1", relay_port)
    await g.admin.create_user(
        UserIn(login="worker", password="worker-password", rights=UserRights.WORKER_USER)
    )
    conf = g.write_client_conf(tmp_path / "worker.conf", login="worker", password="worker-password")
    work_root = Path(tempfile.mkdtemp(prefix="xwgrid-"))
    work_root.chmod(0o711)
    lg = LocalGrid(g, tmp_path, conf, work_root, relay=relay, relay_port=relay_port)
    try:
        for name in ("w1", "w2"):
            await lg.add_worker(name, "--slots", "2", wait=False)
        await lg.wait_for(lambda: _all_enrolled(lg, {"w1", "w2"}), 30, "workers to enrol")
        yield lg
    finally:
        await lg.stop_all()
        await lg.relay.aclose()
        kill_leftovers(work_root)  # jobs of workers a test SIGKILLed
        shutil.rmtree(work_root, ignore_errors=True)


def collapsed(log: str) -> str:
    """A worker log with runs of the same message (bar timestamps and delays) shown once, counted: so
    that a failure's excerpt is not all "heartbeat failed ... retrying" lines."""
    out: list[str] = []
    last, count = "", 0
    for line in log.splitlines():
        key = re.sub(r"^\S+ \S+ |\d+(\.\d+)? s\b", "", line)
        if key == last:
            count += 1
            continue
        if count:
            out.append(f"    ... and {count} more like it")
        out.append(line)
        last, count = key, 0
    if count:
        out.append(f"    ... and {count} more like it")
    return "\n".join(out)


async def _all_enrolled(lg: LocalGrid, names: set[str]) -> bool:
    return names <= {h.name for h in await lg.admin.hosts() if h.alive}
