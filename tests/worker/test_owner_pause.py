"""The daemon steps aside for the machine's owner: with the owner's load scripted, a worker stops
claiming, SIGSTOPs its running job, keeps heartbeating, and resumes; the pause is not wallclock.

(tests/grid/test_busy_grid.py does the same with a real CPU burner and the real meter.)
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from common.enums import AppType, JobStatus, UserRights
from common.schemas import AppIn, Binary, JobIn, UserIn
from worker.busy import BusyPolicy, Sample, load_status
from worker.daemon import Worker, WorkerOptions
from worker.sandbox import detect

PASSWORD = "correct horse battery"
COUNT = '#!/bin/sh\ni=0; while [ "$i" -lt 30 ]; do echo "$i"; i=$((i+1)); sleep 0.1; done\n'


class ScriptedLoad:
    """The owner's load as the test sets it."""

    def __init__(self) -> None:
        self.load = 0.0
        self.last = time.monotonic()

    def __call__(self) -> Sample:
        now = time.monotonic()
        sample = Sample(self.last, now, self.load)
        self.last = now
        return sample


def processes(worker: Worker) -> list[psutil.Process]:
    """Every live process of the worker's running jobs."""
    found = []
    for held in worker.held.values():
        if held.run is None or held.run.pid is None:
            continue
        try:
            top = psutil.Process(held.run.pid)
            found += [top, *top.children(recursive=True)]
        except psutil.Error:
            continue
    return [p for p in found if _status(p) not in (None, psutil.STATUS_ZOMBIE)]


def _status(p: psutil.Process) -> str | None:
    try:
        return str(p.status())
    except psutil.Error:
        return None


async def until(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_busy_owner_pauses_the_worker_and_its_jobs(
    grid: Any, workdir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker.daemon")
    await grid.admin.create_user(UserIn(login="volunteer", password=PASSWORD, rights=UserRights.WORKER_USER))
    client = grid.client(grid.config(login="volunteer", password=PASSWORD))
    load = ScriptedLoad()
    policy = BusyPolicy(threshold=50, busy_after=0.5, calm_after=0.5, sample_every=0.2)
    opts = WorkerOptions(
        name="owner-pc", work_dir=workdir, slots=2, cache_bytes=1 << 30, sandbox=detect("auto"), longpoll=5
    )
    opts.busy = policy
    worker = Worker(client, opts, meter=load)
    serving = asyncio.create_task(worker.run())
    try:
        alice = await grid.add_user("alice")
        script = tmp_path / "count.sh"
        script.write_text(COUNT)
        data = await alice.send_file(script, access_rights="1700")
        app = await alice.send_app(
            AppIn(name="count", type=AppType.SCRIPT, binaries=[Binary(os="ANY", cpu="ANY", data=data.uid)])
        )
        # 3 s of running at most (30 x 0.1 s), in a wallclock of 8 s that the pause below outlasts
        first = await alice.submit(JobIn(app=app.uid, expected_host="owner-pc", wallclock=8))
        await until(lambda: len(processes(worker)) >= 2, 60, "the first job to run")

        load.load = 90.0  # the owner starts working
        await until(lambda: worker.owner is not None and worker.owner.paused, 20, "the worker to pause")
        paused_at = time.monotonic()
        await until(
            lambda: {_status(p) for p in processes(worker)} == {psutil.STATUS_STOPPED},
            10,
            "every process of the job to be stopped",
        )
        status = load_status(workdir)
        assert status is not None and status.paused and 50 < status.load <= 90
        second = await alice.submit(JobIn(app=app.uid, expected_host="owner-pc"))
        while time.monotonic() - paused_at < 10:  # longer than the first job's wallclock
            await asyncio.sleep(0.5)
            assert (await alice.get_job(second.uid)).status is JobStatus.PENDING, "claimed while paused"
            assert (await alice.get_job(first.uid)).status is JobStatus.RUNNING
        host = next(h for h in await grid.admin.hosts() if h.name == "owner-pc")
        assert host.alive  # heartbeats went on

        load.load = 5.0  # the owner is done
        await until(lambda: worker.owner is not None and not worker.owner.paused, 20, "the worker to resume")
        done = {JobStatus.COMPLETED, JobStatus.ERROR}
        for job in (first, second):

            async def ended(uid: str = job.uid) -> bool:
                return (await alice.get_job(uid)).status in done

            await until(ended, 120, f"job {job.uid} to end")
            got = await alice.get_job(job.uid)
            assert (got.status, got.return_code) == (JobStatus.COMPLETED, 0), got.status_reason
        status = load_status(workdir)
        assert status is not None and not status.paused
        text = caplog.text
        assert re.search(
            r"pausing: the owner's load averaged \d+% of all cores over 0.5 s \(threshold 50%\); "
            r"1 job\(s\) suspended, no new work",
            text,
        ), text
        assert re.search(r"resuming: the owner's load averaged \d+% .* 1 job\(s\) resumed", text), text
    finally:
        worker.stop("test over")
        await asyncio.wait_for(serving, 60)
