"""Issue acceptance on a real local grid: the server in-process, worker processes over TLS on loopback."""

from __future__ import annotations

import asyncio
import collections
import os
import signal

import psutil
import pytest

from common.enums import JobStatus
from common.errors import NotFound
from common.schemas import JobIn

FINAL = {JobStatus.COMPLETED, JobStatus.ERROR}


async def test_200_jobs_complete_exactly_once_with_correct_outputs(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    alice = await lg.grid.add_user("alice")
    app = await lg.script_app(alice, "double", 'echo "$(( $1 * 2 ))"\n')
    sem = asyncio.Semaphore(16)

    async def submit(i: int):  # type: ignore[no-untyped-def]
        async with sem:
            return await alice.submit(JobIn(app=app, args=str(i), group="two-hundred"))

    jobs = await asyncio.gather(*(submit(i) for i in range(200)))

    async def all_final() -> bool:
        return all(j.status in FINAL for j in await alice.jobs(group="two-hundred"))

    await lg.wait_for(all_final, 240, "200 jobs to end")
    final = {j.uid: j for j in await alice.jobs(group="two-hundred")}
    odd = [(j.status.value, j.status_reason) for j in final.values() if j.status is not JobStatus.COMPLETED]
    assert odd == [], odd[:5]
    for job in jobs[::10]:  # every 10th result, downloaded and checked
        files = await lg.results(alice, final[job.uid])
        assert files["stdout.txt"].decode().strip() == str(int(job.args) * 2)
    assert all(j.return_code == 0 and j.retry == 0 for j in final.values())
    events = await lg.admin.events()
    claims = collections.Counter(e.object for e in events if e.action == "claim")
    completes = collections.Counter(e.object for e in events if e.action == "complete")
    assert set(claims) == set(final) and set(claims.values()) == {1}, "each job claimed exactly once"
    assert set(completes) == set(final) and set(completes.values()) == {1}, "each job completed exactly once"
    assert {h.name for h in await lg.admin.hosts()} >= {"w1", "w2"}


async def test_sigkilled_worker_job_is_rescheduled_elsewhere(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    alice = await lg.grid.add_user("alice")
    app = await lg.script_app(alice, "slow", 'sleep 3\necho "done $1"\n')
    job = await alice.submit(JobIn(app=app, args="x", max_retries=3))
    running = await lg.wait_job(alice, job.uid, {JobStatus.RUNNING})
    host = next(h for h in await lg.admin.hosts() if h.uid == running.host)
    lg.procs[host.name].send_signal(signal.SIGKILL)
    done = await lg.wait_job(alice, job.uid, FINAL, timeout=60)
    assert done.status is JobStatus.COMPLETED and done.retry == 1
    assert done.host != host.uid, "completed on the other worker"
    files = await lg.results(alice, done)
    assert files["stdout.txt"] == b"done x\n"
    story = [(e.action, e.to_status) for e in await alice.events(object_uid=job.uid)]
    assert story[:3] == [("submit", "PENDING"), ("claim", "RUNNING"), ("lose", "PENDING")]
    assert story[3:] == [("claim", "RUNNING"), ("complete", "COMPLETED")]
    lost = next(e for e in await alice.events(object_uid=job.uid) if e.action == "lose")
    assert f"worker {host.name} lost" in (lost.reason or "")


def _processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if marker in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


async def test_deleted_job_is_killed_on_its_worker(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    alice = await lg.grid.add_user("alice")
    app = await lg.script_app(alice, "long", "exec sleep 61.7\n")
    job = await alice.submit(JobIn(app=app))
    await lg.wait_job(alice, job.uid, {JobStatus.RUNNING})
    await lg.wait_for(lambda: _async(bool(_processes_with("sleep 61.7"))), 30, "the job's process to start")
    await alice.remove(job.uid)
    await lg.wait_for(lambda: _async(not _processes_with("sleep 61.7")), 30, "the job's process to be killed")
    with pytest.raises(NotFound):
        await alice.get_job(job.uid)


async def test_held_job_is_killed_and_release_runs_it_again(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    alice = await lg.grid.add_user("alice")
    app = await lg.script_app(alice, "holdme", 'sleep "$1"\necho ok\n')
    job = await alice.submit(JobIn(app=app, args="62.3"))
    await lg.wait_job(alice, job.uid, {JobStatus.RUNNING})
    await lg.wait_for(lambda: _async(bool(_processes_with("62.3"))), 30, "the job's process to start")
    held = await alice.hold(job.uid, "checking inputs")
    assert held.status is JobStatus.WAITING and "held by alice: checking inputs" in (held.status_reason or "")
    await lg.wait_for(lambda: _async(not _processes_with("62.3")), 30, "the held job's process to be killed")
    assert (await alice.release(job.uid)).status in (JobStatus.PENDING, JobStatus.RUNNING)
    await lg.wait_job(alice, job.uid, {JobStatus.RUNNING})
    await alice.remove(job.uid)


async def test_wallclock_exceeded_job_errors_with_reason(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    alice = await lg.grid.add_user("alice")
    app = await lg.script_app(alice, "sleepy", "exec sleep 30.9\n")
    job = await alice.submit(JobIn(app=app, wallclock=1))
    done = await lg.wait_job(alice, job.uid, FINAL, timeout=30)
    assert done.status is JobStatus.ERROR
    assert "wallclock" in (done.status_reason or ""), done.status_reason
    assert not _processes_with("sleep 30.9")


async def test_memory_over_request_is_held_with_reason(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    alice = await lg.grid.add_user("alice")
    hog = "#!/usr/bin/python3\nimport time\nb = bytearray(300 * 1024 * 1024)\ntime.sleep(60)\n"
    app = await lg.script_app(alice, "hog", hog)
    job = await alice.submit(JobIn(app=app, memory=100 * 1024 * 1024))
    held = await lg.wait_job(
        alice, job.uid, {JobStatus.WAITING, JobStatus.ERROR, JobStatus.COMPLETED}, timeout=30
    )
    if held.status is JobStatus.COMPLETED:
        raise AssertionError(f"completed instead of held: {(await lg.results(alice, held))['stderr.txt']!r}")
    assert held.status is JobStatus.WAITING, held.status_reason
    assert (held.status_reason or "").startswith("held: memory ")
    assert "> 100.0 MiB requested" in (held.status_reason or "")


async def test_corrupted_cached_file_is_refetched(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    alice = await lg.grid.add_user("alice")
    app = await lg.script_app(alice, "hello", 'echo "hello $1"\n')
    first = await alice.submit(JobIn(app=app, args="one", expected_host="w1"))
    done = await lg.wait_job(alice, first.uid, FINAL)
    assert done.status is JobStatus.COMPLETED
    cache = lg.work_root / "w1" / "cache"
    cached = [p for p in cache.iterdir() if p.is_file() and len(p.name) == 64]
    assert cached, f"nothing cached in {cache}"
    for path in cached:
        path.write_bytes(b"#!/bin/sh\necho corrupted\n")
    second = await alice.submit(JobIn(app=app, args="two", expected_host="w1"))
    done = await lg.wait_job(alice, second.uid, FINAL)
    assert done.status is JobStatus.COMPLETED
    assert (await lg.results(alice, done))["stdout.txt"] == b"hello two\n"


async def _async(value: bool) -> bool:
    return value


def test_marker_helper_finds_this_process() -> None:
    assert any(p.pid == os.getpid() for p in _processes_with("pytest"))
