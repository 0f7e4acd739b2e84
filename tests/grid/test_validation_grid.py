"""Validation with real workers: replicas of one job run on worker processes of different owners, in
their sandboxes, and honest results agree by their canonical digest (nothing a worker adds to a result
may differ from host to host)."""

from __future__ import annotations

from common.enums import JobStatus, UserRights
from common.schemas import JobIn, UserIn, Validation

FINAL = {JobStatus.COMPLETED, JobStatus.ERROR}


async def test_three_copies_on_three_owners_agree(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid  # w1 and w2 belong to one owner: at most one of them runs a copy of a job
    for owner in ("vol1", "vol2"):
        await lg.admin.create_user(
            UserIn(login=owner, password="volunteer-pw", rights=UserRights.WORKER_USER)
        )
        conf = lg.grid.write_client_conf(lg.tmp / f"{owner}.conf", login=owner, password="volunteer-pw")
        await lg.add_worker(owner, "--xwconfig", str(conf))
    alice = await lg.grid.add_user("alice")
    app = await lg.script_app(alice, "square", 'echo "$(( $1 * $1 ))"; echo "on stderr" >&2\n')
    jobs = [
        await alice.submit(JobIn(app=app, args=str(i), validation=Validation.copies(3))) for i in range(4)
    ]
    for job in jobs:
        done = await lg.wait_job(alice, job.uid, FINAL, timeout=120)
        assert done.status is JobStatus.COMPLETED, (done.status_reason, done.replicas)
        assert (await lg.results(alice, done))["stdout.txt"].decode().strip() == str(int(job.args) ** 2)
        ran = [r for r in done.replicas if r.verdict in ("valid", "invalid", "inconclusive")]
        assert len(ran) >= 2 and {r.verdict for r in ran} == {"valid"}, done.replicas
        assert len({r.digest for r in ran}) == 1  # honest runs on different hosts: one digest

        # a copy that finished while the job was being accepted gets its verdict (cancelled) on the
        # validator's next pass: wait for it
        async def judged(uid: str = job.uid) -> bool:
            return all(r.verdict is not None for r in (await alice.get_job(uid)).replicas)

        await lg.wait_for(judged, 30, f"every copy of {job.uid} to have a verdict")
        done = await alice.get_job(job.uid)
        assert {r.verdict for r in done.replicas} <= {"valid", "cancelled"}
        owners = {h.uid: h.owner for h in await lg.admin.hosts()}
        hosts = [r.host for r in done.replicas if r.host]
        assert len({owners[h] for h in hosts}) == len(hosts), "two copies on hosts of one owner"
        verdicts = [e for e in await alice.events(object_uid=job.uid) if e.action == "verdict"]
        [digest] = {r.digest for r in ran}
        assert len(verdicts) >= 2 and all(f"digest {digest}" in (e.reason or "") for e in verdicts)
