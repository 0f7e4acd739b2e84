"""Private workers and pilot-job mode on a real local grid."""

from __future__ import annotations

import asyncio

from common.enums import JobStatus
from common.schemas import JobIn

FINAL = {JobStatus.COMPLETED, JobStatus.ERROR}


async def test_private_worker_runs_only_its_owners_jobs(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    alice = await lg.grid.add_user("alice")
    bob = await lg.grid.add_user("bob")
    conf = lg.grid.write_client_conf(
        lg.tmp / "alice-worker.conf", login="alice", password="correct horse battery"
    )
    saved = lg.worker_conf
    lg.worker_conf = conf
    try:
        await lg.add_worker("alice-pc")
    finally:
        lg.worker_conf = saved
    host = next(h for h in await alice.hosts() if h.name == "alice-pc")
    assert host.access_rights == "0700", "a standard user's worker is private"
    assert all(h.name != "alice-pc" for h in await bob.hosts())

    app_a = await lg.script_app(alice, "mine", "echo alice\n")
    app_b = await lg.script_app(bob, "theirs", "echo bob\n")
    bobs = await bob.submit(JobIn(app=app_b, expected_host="alice-pc"))
    alices = await alice.submit(JobIn(app=app_a, expected_host="alice-pc"))
    done = await lg.wait_job(alice, alices.uid, FINAL)
    assert done.status is JobStatus.COMPLETED and done.host == host.uid
    await asyncio.sleep(2)  # several long-poll rounds of alice's worker
    assert (await bob.get_job(bobs.uid)).status is JobStatus.PENDING, "bob's job never goes to alice's worker"


async def test_pilot_worker_exits_after_max_jobs_and_max_idle(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    alice = await lg.grid.add_user("alice")
    app = await lg.script_app(alice, "once", 'echo "$1"\n')
    pilot = await lg.add_worker("pilot", "--slots", "1", "--max-jobs", "2")
    jobs = [await alice.submit(JobIn(app=app, args=str(i), expected_host="pilot")) for i in range(3)]
    rc = await asyncio.wait_for(pilot.wait(), 60)
    assert rc == 0, lg.log("pilot")
    assert "--max-jobs 2" in lg.log("pilot")
    statuses = sorted([(await alice.get_job(j.uid)).status.value for j in jobs])
    assert statuses == ["COMPLETED", "COMPLETED", "PENDING"], statuses

    idle = await lg.add_worker("idler", "--max-idle", "1")
    rc = await asyncio.wait_for(idle.wait(), 60)
    assert rc == 0 and "--max-idle 1" in lg.log("idler")
