"""A real worker process keeps its own host credential: a restart is the same host, a revocation stops it."""

from __future__ import annotations

import asyncio
import json
import signal
import stat

from common.enums import JobStatus
from common.schemas import JobIn


async def test_worker_restart_is_the_same_host_and_revocation_stops_it(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    w = await lg.add_worker("ident", "--slots", "1")
    saved = lg.work_root / "ident" / "host.json"
    doc = json.loads(saved.read_text())
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert doc["credential"].startswith(f"xwh1.{doc['host']}.")
    assert "password" not in saved.read_text()

    w.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(w.wait(), 30) == 0
    await lg.add_worker("ident", "--slots", "1", wait=False)  # same work dir: the saved credential

    async def re_enrolled() -> bool:
        return "re-enrol" in [e.action for e in await lg.admin.events(object_uid=doc["host"])]

    await lg.wait_for(re_enrolled, 30, "the restarted worker to re-enrol")
    mine = [h for h in await lg.admin.hosts() if h.name == "ident"]
    assert [h.uid for h in mine] == [doc["host"]], "a restart must not create a second host"

    alice = await lg.grid.add_user("alice")
    app = await lg.script_app(alice, "long", "sleep 60\n", rights="0755")
    job = await alice.submit(JobIn(app=app, expected_host="ident"))
    await lg.wait_job(alice, job.uid, {JobStatus.RUNNING})
    await lg.admin.revoke_host(doc["host"], "compromised")
    proc = lg.procs["ident"]
    assert await asyncio.wait_for(proc.wait(), 30) == 1  # a supervisor sees it cannot go on
    assert "no longer accepts this host's credential" in lg.log("ident")
    back = await lg.wait_job(alice, job.uid, {JobStatus.PENDING, JobStatus.RUNNING})
    assert back.host != doc["host"]

    # started again, it refuses to come back silently as a new identity
    again = await lg.add_worker("ident", "--slots", "1", wait=False)
    rc = await asyncio.wait_for(again.wait(), 30)
    assert rc != 0
    assert "revoked" in lg.log("ident") and "host.json" in lg.log("ident")
