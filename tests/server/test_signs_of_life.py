"""What keeps a host alive, on a real server: every call of the worker protocol counts (claims, reports and
results as much as heartbeats), and a restarted server gives every host a whole alive timeout to be heard
from before it declares anyone lost (the hosts could not reach it while it was down)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

from client.api import XWClient
from common.enums import JobStatus
from common.schemas import AppIn, Heartbeat, HostIn, InlineResult, JobIn, JobReport, JobUsage
from server.app import start
from tests.ports import free_port

ALIVE_PERIOD = 0.5
ALIVE_TIMEOUT = 2.0  # the reaper's timeout: max(alive_timeout, 3 periods)
GAP = 1.2  # silence between two calls: shorter than the timeout, and five of them are far longer
LINUX = {"os": "LINUX", "cpu": "AMD64"}


def _zip(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("stdout.txt", text)
    return buf.getvalue()


async def _setup(grid: Any, tmp_path: Path, jobs: int) -> tuple[XWClient, list[str], XWClient, str]:
    """alice with ``jobs`` jobs, and a host (spoken for by the admin's client) that enrolled."""
    alice = await grid.add_user("alice")
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    exe = await alice.send_file(script, access_rights="1700")
    app = await alice.send_app(
        AppIn(name="s", type="script", binaries=[{"os": "ANY", "cpu": "ANY", "data": exe.uid}])
    )
    uids = [(await alice.submit(JobIn(app=app.uid, args=str(i)))).uid for i in range(jobs)]
    xw = grid.admin
    host = (await xw.enrol(HostIn(name="h", **LINUX))).host.uid
    return alice, uids, xw, host


async def _story(xw: XWClient, uid: str) -> list[str]:
    return [e.action for e in await xw.events(object_uid=uid)]


async def test_claims_reports_and_results_count_as_signs_of_life(grid_factory: Any, tmp_path: Path) -> None:
    grid = await grid_factory(alive_period=ALIVE_PERIOD, alive_timeout=ALIVE_TIMEOUT)
    alice, [j1, j2, j3, j4], xw, host = await _setup(grid, tmp_path, 4)
    claimed = await xw.claim_work(host, 0, 4)
    assert sorted(a.job.uid for a in claimed) == sorted([j1, j2, j3, j4])
    attempt = {a.job.uid: a.attempt for a in claimed}
    # No heartbeat from here on: only the calls below, each less than a timeout after the one before.
    await asyncio.sleep(GAP)
    await xw.report(host, attempt[j1], JobReport(outcome="result_pending", reason="upload failed"))
    await asyncio.sleep(GAP)
    raw = _zip("two")
    inline = InlineResult(
        attempt=attempt[j2],
        return_code=0,
        content=base64.b64encode(raw).decode(),
        sha256=hashlib.sha256(raw).hexdigest(),
    )
    assert (await xw.send_results(host, [inline])).accepted == [attempt[j2]]
    await asyncio.sleep(GAP)
    results = tmp_path / "one.zip"
    results.write_bytes(_zip("one"))
    assert (await xw.upload_result(host, attempt[j1], results, 0)).status is JobStatus.COMPLETED
    await asyncio.sleep(GAP)
    assert await xw.claim_work(host, 0, 1) == []  # a claim that finds nothing counts too
    await asyncio.sleep(GAP)
    await xw.report(host, attempt[j3], JobReport(outcome="failed", reason="crashed"))
    await asyncio.sleep(GAP)

    # 6 x 1.2 s without a heartbeat, three times the timeout: still alive, j4 still running as claimed
    job = await alice.get_job(j4)
    assert (job.status, job.retry) == (JobStatus.RUNNING, 0), job.status_reason
    assert "lost" not in await _story(grid.admin, host)
    assert [(await alice.get_job(j)).status for j in (j1, j2, j3)] == [
        JobStatus.COMPLETED,
        JobStatus.COMPLETED,
        JobStatus.ERROR,
    ]

    # control: silent past the timeout, the host is lost and its job goes back (the reaper does run)
    await asyncio.sleep(ALIVE_TIMEOUT + 1.5)
    assert "lost" in await _story(grid.admin, host)
    job = await alice.get_job(j4)
    assert (job.status, job.retry) == (JobStatus.PENDING, 1)


async def test_a_restarted_server_waits_a_whole_timeout_before_declaring_hosts_lost(
    grid_factory: Any, tmp_path: Path
) -> None:
    grid = await grid_factory(port=free_port(), alive_period=ALIVE_PERIOD, alive_timeout=ALIVE_TIMEOUT)
    alice, [job], xw, host = await _setup(grid, tmp_path, 1)
    [a] = await xw.claim_work(host, 0, 1)
    credential = xw.host_credential(host)
    assert credential is not None
    await xw.heartbeat(host, Heartbeat(running=[JobUsage(attempt=a.attempt)]))

    await grid.server.aclose()
    await asyncio.sleep(2 * ALIVE_TIMEOUT)  # down for longer than the timeout: the host is "silent"
    grid.server = await start(grid.settings, migrate=False)  # the same home and port
    worker = grid.client(grid.config())  # a fresh connection pool: the old one talked to a dead server
    worker.use_host(host, credential)

    # Not heard from since well before the restart, yet not lost within the grace
    await asyncio.sleep(ALIVE_TIMEOUT - 0.6)
    assert (await alice.get_job(job)).status is JobStatus.RUNNING
    assert "lost" not in await _story(grid.admin, host)

    # The host's first heartbeat after the restart comes within the grace: it goes on as before
    for _ in range(int(2 * ALIVE_TIMEOUT / ALIVE_PERIOD)):
        await worker.heartbeat(host, Heartbeat(running=[JobUsage(attempt=a.attempt)]))
        await asyncio.sleep(ALIVE_PERIOD)
    after = await alice.get_job(job)
    assert (after.status, after.retry, after.attempt) == (JobStatus.RUNNING, 0, a.attempt)
    assert "lose" not in await _story(grid.admin, job)
    assert "lost" not in await _story(grid.admin, host)

    # control: the restarted server's reaper does work once the grace is over
    await asyncio.sleep(ALIVE_TIMEOUT + 1.5)
    assert "lost" in await _story(grid.admin, host)
    assert (await alice.get_job(job)).status is JobStatus.PENDING
