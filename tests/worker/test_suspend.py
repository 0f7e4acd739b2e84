"""Suspending a job while the machine's owner is busy (worker.execute): every process stops, resumes,
the paused time is not wallclock, and a suspended job can still be killed. Both sandboxes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psutil

from worker.execute import JobRun

SH = "#!/bin/sh\n"
# Counts through a pipe, so that the job always has several processes (the shell, the counting subshell,
# cat), whenever it is stopped: its short-lived sleeps come and go.
COUNT = '(i=0; while [ "$i" -lt 40 ]; do echo "$i"; i=$((i+1)); sleep 0.05; done) | cat\n'


def tree(job: JobRun) -> list[psutil.Process]:
    """The job's live processes (the top one and everything below it)."""
    if job.pid is None:
        return []
    try:
        top = psutil.Process(job.pid)
        procs = [top, *top.children(recursive=True)]
    except psutil.Error:
        return []
    alive = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.Error:
            continue
    return alive


def states(job: JobRun) -> set[str]:
    found: set[str] = set()
    for p in tree(job):
        try:
            found.add(p.status())
        except psutil.Error:
            continue
    return found


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.05)


def lines(job: JobRun) -> int:
    return len(job.stdout_path.read_text().split()) if job.stdout_path.exists() else 0


async def test_suspend_stops_every_process_and_resume_goes_on(runner: Any) -> None:
    job = runner.job(SH + COUNT)
    task = asyncio.create_task(job.run())
    await until(lambda: lines(job) >= 2, 60, "the job to start counting")
    job.suspend()
    await until(lambda: states(job) == {psutil.STATUS_STOPPED}, 10, f"every process stopped: {states(job)}")
    assert len(tree(job)) >= 3  # the shell, the subshell and cat (and bwrap's processes): all stopped
    counted = lines(job)
    await asyncio.sleep(1.0)  # time for 20 more lines, were it running
    assert lines(job) == counted and not task.done()
    job.resume()
    out = await asyncio.wait_for(task, 60)
    assert (out.status, out.return_code) == ("exited", 0), out.reason
    assert lines(job) == 40


async def test_time_suspended_does_not_count_against_the_wallclock(runner: Any) -> None:
    limits = replace(runner.spec("").limits, wallclock=4)
    # The job runs until the test says so (a file in its scratch): on a loaded machine a fixed sleep
    # could be over before it is suspended.
    job = runner.job(SH + "while [ ! -e go ]; do sleep 0.1; done\necho done\n", limits=limits)
    task = asyncio.create_task(job.run())
    await until(lambda: len(tree(job)) >= 2, 60, "the job to start")
    job.suspend()
    await until(lambda: states(job) == {psutil.STATUS_STOPPED}, 10, "the job to stop")
    await asyncio.sleep(5.0)  # longer than the wallclock: a stopped job must not be killed for it
    assert not task.done()
    _, _, wall = job.usage()
    assert wall < 4, f"reported wall time {wall:.1f} s includes the pause"
    (job.scratch / "go").touch()
    job.resume()
    out = await asyncio.wait_for(task, 60)
    assert (out.status, out.return_code) == ("exited", 0), out.reason
    assert out.wall_seconds < 4  # the server's hold policy sees this figure too


async def test_a_suspended_job_can_be_killed(runner: Any) -> None:
    job = runner.job(SH + "sleep 30 &\nexec sleep 30\n")
    task = asyncio.create_task(job.run())
    await until(lambda: len(tree(job)) >= 2, 60, "the job to start")
    job.suspend()
    await until(lambda: states(job) == {psutil.STATUS_STOPPED}, 10, "the job to stop")
    job.kill("the owner came back for good")
    out = await asyncio.wait_for(task, 20)  # well before the 2 s kill grace would matter twice over
    assert (out.status, out.reason) == ("killed", "the owner came back for good")
    await until(lambda: tree(job) == [], 10, "every process of the job to be gone")


async def test_a_job_suspended_before_it_starts_starts_stopped(runner: Any) -> None:
    job = runner.job(SH + COUNT)
    job.suspend()
    task = asyncio.create_task(job.run())
    await until(lambda: job.pid is not None, 60, "the job to be spawned")
    await until(lambda: psutil.STATUS_STOPPED in states(job), 10, "the job to be stopped")
    await asyncio.sleep(0.5)
    assert lines(job) <= 1  # at most what it wrote before the stop reached it
    job.resume()
    out = await asyncio.wait_for(task, 60)
    assert (out.status, out.return_code) == ("exited", 0), out.reason
    assert lines(job) == 40
