"""A real worker process with a busy threshold steps aside when a CPU burner outside it loads the
machine: it stops claiming, SIGSTOPs its running job, and resumes once the burner is gone.

The threshold is set between the load measured before the test and a fully loaded machine. A machine
already too busy to tell the burner from the rest (other test runs, CI neighbours) skips, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from common.enums import JobStatus
from common.schemas import JobIn
from worker.busy import CpuReading, owner_load, read_cpu

FINAL = {JobStatus.COMPLETED, JobStatus.ERROR}
MOST_AMBIENT = 50.0  # percent of all cores: above it, a burner cannot be told apart reliably
COUNT = 'i=0; while [ "$i" -lt 100 ]; do echo "$i"; i=$((i+1)); sleep 0.1; done\n'


async def machine_load(seconds: float = 3.0) -> float:
    """Percent of all cores busy over ``seconds`` (everything counted: nothing here is "ours")."""
    cores = psutil.cpu_count() or 1
    a = await asyncio.to_thread(read_cpu)
    await asyncio.sleep(seconds)
    b = await asyncio.to_thread(read_cpu)
    return owner_load(CpuReading(a.at, a.busy, 0.0), CpuReading(b.at, b.busy, 0.0), cores)


def job_states(pid: int) -> set[str]:
    """States of the worker's job processes (everything below the worker process)."""
    found = set()
    with contextlib.suppress(psutil.Error):
        for p in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if (st := p.status()) != psutil.STATUS_ZOMBIE:
                    found.add(str(st))
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_worker_pauses_for_a_cpu_burner_and_resumes(local_grid: Any) -> None:
    lg = local_grid
    ambient = await machine_load()
    if ambient > MOST_AMBIENT:
        pytest.skip(f"this machine is too busy to test with a burner: {ambient:.0f}% of all cores in use")
    threshold = ambient + (100 - ambient) / 2
    proc = await lg.add_worker(
        "owner-pc",
        *("--slots", "2", "--busy-threshold", f"{threshold:.0f}", "--busy-after", "2", "--calm-after", "3"),
    )
    alice = await lg.grid.add_user("alice")
    app = await lg.script_app(alice, "count", COUNT)
    first = await alice.submit(JobIn(app=app, expected_host="owner-pc"))
    await lg.wait_job(alice, first.uid, {JobStatus.RUNNING})

    async def check(what: Any) -> bool:
        return bool(what())

    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        for _ in range(psutil.cpu_count() or 1)
    ]
    try:
        await lg.wait_for(lambda: check(lambda: "pausing:" in lg.log("owner-pc")), 60, "the worker to pause")
        await lg.wait_for(
            lambda: check(lambda: job_states(proc.pid) == {psutil.STATUS_STOPPED}), 15, "the job to stop"
        )
        second = await alice.submit(JobIn(app=app, expected_host="owner-pc"))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert (await alice.get_job(second.uid)).status is JobStatus.PENDING, "claimed while paused"
            await asyncio.sleep(0.5)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    try:
        resumed = lambda: check(lambda: "resuming:" in lg.log("owner-pc"))  # noqa: E731
        await lg.wait_for(resumed, 90, "the worker to resume")
    except AssertionError:
        now = await machine_load()
        if now >= threshold:
            pytest.skip(f"the machine got busy meanwhile ({now:.0f}% >= {threshold:.0f}%): no resume to see")
        raise
    for job in (first, second):
        done = await lg.wait_job(alice, job.uid, FINAL, timeout=120)
        assert (done.status, done.return_code) == (JobStatus.COMPLETED, 0), done.status_reason
