"""Surviving outages, with real worker processes: a worker started while its server is down joins when
the server comes up, and a server outage longer than the alive timeout loses no running job.

The server runs in-process on a fixed port, so it can be stopped (its runner cleaned up, as a stopped
process would leave it: nothing listens) and started again on the same port and home.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from common.enums import JobStatus, UserRights
from common.schemas import JobIn, UserIn
from server.app import start
from tests.grid.conftest import ALIVE_PERIOD, ALIVE_TIMEOUT, LocalGrid
from tests.ports import free_port
from worker.daemon import kill_leftovers

FINAL = {JobStatus.COMPLETED, JobStatus.ERROR}
# Longer than the alive timeout (3 s): when the server comes back, every host's last sign of life is
# older than the timeout. That is what a 60 s outage is to the default settings (10 s heartbeats, lost
# after 30 s); nothing in the worker or the server depends on the outage's length beyond that (the
# worker's retry delays are capped by the heartbeat period and by the backoff caps).
OUTAGE = 5.0


class OutageGrid(LocalGrid):
    """A local grid whose server can be stopped and started again on the same port and home."""

    async def stop_server(self) -> None:
        await self.grid.server.aclose()  # type: ignore[attr-defined]

    async def start_server(self) -> None:
        g: Any = self.grid
        g.server = await start(g.settings, migrate=False)


@pytest.fixture
async def outage_grid(tmp_path: Path, grid_factory: Any) -> AsyncIterator[OutageGrid]:
    """The server on a fixed port with fast heartbeats (0.5 s, lost after 3 s), a worker account and
    its config; no worker yet, no relay."""
    g = await grid_factory(
        port=free_port(), alive_period=ALIVE_PERIOD, alive_timeout=ALIVE_TIMEOUT, longpoll=5.0
    )
    await g.admin.create_user(
        UserIn(login="worker", password="worker-password", rights=UserRights.WORKER_USER)
    )
    conf = g.write_client_conf(tmp_path / "worker.conf", login="worker", password="worker-password")
    work_root = Path(tempfile.mkdtemp(prefix="xwgrid-"))
    work_root.chmod(0o711)
    og = OutageGrid(g, tmp_path, conf, work_root, relay=None, relay_port=0)  # type: ignore[arg-type]
    try:
        yield og
    finally:
        await og.stop_all()
        kill_leftovers(work_root)
        shutil.rmtree(work_root, ignore_errors=True)


async def _true(value: bool) -> bool:
    return value


async def test_a_worker_started_before_its_server_joins_when_the_server_comes_up(
    outage_grid: OutageGrid,
) -> None:
    og = outage_grid
    await og.stop_server()
    proc = await og.add_worker("early", "--slots", "1", wait=False)
    await og.wait_for(lambda: _true(og.log("early").count("cannot enrol (attempt") >= 3), 30, "retries")
    assert proc.returncode is None, og.log("early")
    assert "Traceback" not in og.log("early"), "one line per attempt, not a traceback"

    await og.start_server()
    await og.wait_for(lambda: og._enrolled("early"), 90, "the worker to enrol once the server is up")
    alice = await og.grid.add_user("alice")  # type: ignore[attr-defined]
    app = await og.script_app(alice, "hello", 'echo "hello $1"\n')
    job = await alice.submit(JobIn(app=app, args="late"))
    done = await og.wait_job(alice, job.uid, FINAL)
    assert done.status is JobStatus.COMPLETED
    assert (await og.results(alice, done))["stdout.txt"] == b"hello late\n"


async def test_a_worker_waiting_for_its_server_stops_promptly_on_sigterm(outage_grid: OutageGrid) -> None:
    og = outage_grid
    await og.stop_server()
    proc = await og.add_worker("patient", wait=False)
    await og.wait_for(lambda: _true("cannot enrol (attempt" in og.log("patient")), 30, "a first retry")
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0
    assert time.monotonic() - began < 5
    assert "stopped before it enrolled: signal SIGTERM" in og.log("patient")


async def test_a_refusal_is_not_an_outage(outage_grid: OutageGrid) -> None:
    """A wrong password is the server's answer: one line and a non-zero exit, no retrying."""
    og = outage_grid
    og.worker_conf = og.grid.write_client_conf(  # type: ignore[attr-defined]
        og.tmp / "wrong.conf", login="worker", password="not-the-password"
    )
    proc = await og.add_worker("refused", wait=False)
    assert await asyncio.wait_for(proc.wait(), 30) != 0
    log = og.log("refused")
    assert "cannot enrol" not in log and "Traceback" not in log, log
    assert "Error:" in log, log


async def test_a_server_outage_longer_than_the_alive_timeout_loses_no_job(outage_grid: OutageGrid) -> None:
    """Two jobs run when the server goes down: one ends during the outage (its upload waits for the
    server), one runs through it. Both complete on their first attempt; nobody is declared lost."""
    og = outage_grid
    # Jobs end when the test says so (a file appears): no sandbox, so they see the test's directory.
    signals = og.work_root / "signals"
    signals.mkdir()
    signals.chmod(0o1777)  # the jobs (another uid under a root worker) say there that they started
    await og.add_worker("steady", "--slots", "2", "--sandbox", "none", "--allow-unsandboxed-jobs")
    alice = await og.grid.add_user("alice")  # type: ignore[attr-defined]
    body = (
        f'touch {signals}/"started-$1"\nwhile [ ! -e {signals}/"$1" ]; do sleep 0.1; done\necho "done $1"\n'
    )
    app = await og.script_app(alice, "waits", body)
    during = await alice.submit(JobIn(app=app, args="during"))
    through = await alice.submit(JobIn(app=app, args="through"))
    # RUNNING on the server means claimed; the worker may still be fetching the job's files (and an
    # outage then is another story): wait until both jobs really run.
    for name in ("during", "through"):
        started = signals / f"started-{name}"
        await og.wait_for(lambda started=started: _true(started.exists()), 60, f"job {name} to start")
    host = (await alice.get_job(during.uid)).host
    assert host and (await alice.get_job(through.uid)).host == host

    await og.stop_server()
    down = time.monotonic()
    (signals / "during").touch()  # ends while the server is down: its results cannot go up yet
    await og.wait_for(lambda: _true("upload of" in og.log("steady")), 30, "the upload to fail")
    await asyncio.sleep(OUTAGE - (time.monotonic() - down))
    await og.start_server()

    done = await og.wait_job(alice, during.uid, FINAL, timeout=30)
    assert done.status is JobStatus.COMPLETED, done.status_reason
    await asyncio.sleep(ALIVE_TIMEOUT + 1.0)  # past the restarted server's grace: the reaper is on
    running = await alice.get_job(through.uid)
    assert (running.status, running.retry) == (JobStatus.RUNNING, 0), running.status_reason
    (signals / "through").touch()
    finished = await og.wait_job(alice, through.uid, FINAL, timeout=30)
    assert finished.status is JobStatus.COMPLETED, finished.status_reason

    for job, out in ((done, b"done during\n"), (finished, b"done through\n")):
        assert job.retry == 0 and job.host == host
        assert (await og.results(alice, job))["stdout.txt"] == out
        story = [e.action for e in await alice.events(object_uid=job.uid)]
        assert story == ["submit", "claim", "complete"], story
    assert "lost" not in [e.action for e in await og.admin.events(object_uid=host)]
    assert og.procs["steady"].returncode is None, "the worker rode out the outage"
    log = og.log("steady")
    assert "heartbeat failed" in log, "the outage was seen by the heartbeats"
    assert "killing job" not in log and "stopping" not in log, log[-3000:]


async def test_a_pilot_gives_up_waiting_after_its_max_idle(outage_grid: OutageGrid) -> None:
    """A pilot job must not hold its batch slot waiting for a server that stays down."""
    og = outage_grid
    await og.stop_server()
    began = time.monotonic()
    proc = await og.add_worker("pilot", "--max-idle", "2", wait=False)
    assert await asyncio.wait_for(proc.wait(), 30) != 0
    assert time.monotonic() - began >= 2
    assert "gave up after" in og.log("pilot") and "--max-idle 2" in og.log("pilot"), og.log("pilot")
