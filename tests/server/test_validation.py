"""Result validation on a real server (SQLite, and PostgreSQL under `make test-pg`): replicas on distinct
hosts of distinct owners, quorums, ties, the attempt cap, comparators, host trust, quarantine and
re-checks. Hosts here speak the worker protocol by hand, each enrolled by its own worker account, and
return the results each test chooses (honest or not)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from client.api import XWClient
from common.enums import JobStatus, UserRights
from common.errors import NotFound, ValidationFailed, XWError
from common.schemas import AppIn, DataIn, Heartbeat, HostIn, InlineResult, JobIn, JobOut, JobUsage, Validation
from server.db.models import Event, HostReliability
from server.state import SERVICES
from tests.conftest import PASSWORD

LINUX = {"os": "LINUX", "cpu": "AMD64"}


def result_zip(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("stdout.txt", text)
    return buf.getvalue()


class Host:
    """A worker host of its own owner, answering what it is told to."""

    def __init__(self, xw: XWClient, uid: str, name: str) -> None:
        self.xw, self.uid, self.name = xw, uid, name

    async def run(self, answer: str | Callable[[str], str], rc: int = 0) -> str | None:
        """Claim one job (waiting up to 5 s for one, as workers do: the validator starts replicas after
        the commit of the result that asked for them) and complete it with ``answer`` (or
        ``answer(args)``); the job claimed."""
        got = await self.xw.claim_work(self.uid, 5, 1)
        if not got:
            return None
        a = got[0]
        text = answer if isinstance(answer, str) else answer(a.job.args)
        raw = result_zip(text)
        res = InlineResult(
            attempt=a.attempt,
            return_code=rc,
            content=base64.b64encode(raw).decode(),
            sha256=hashlib.sha256(raw).hexdigest(),
        )
        reply = await self.xw.send_results(self.uid, [res])
        assert reply.accepted == [a.attempt], reply
        return a.job.uid

    async def claimable(self) -> int:
        """How many jobs one claim of up to 8 gives it (claimed for real: they run on it)."""
        return len(await self.xw.claim_work(self.uid, 0, 8))


class Setup:
    def __init__(self, grid: Any, user: XWClient, app: str, tmp: Path) -> None:
        self.grid, self.user, self.app, self.tmp = grid, user, app, tmp
        self.owners = 0
        self.accounts: set[str] = set()

    @property
    def services(self) -> Any:
        return self.grid.server.runner.app[SERVICES]

    async def host(self, name: str, owner: str | None = None, platform: dict[str, str] = LINUX) -> Host:
        """A host enrolled by a new worker account (or by the account ``owner``, made on first use)."""
        if owner is None:
            self.owners += 1
            owner = f"worker{self.owners}"
        if owner not in self.accounts:
            await self.grid.add_user(owner, rights=UserRights.WORKER_USER)
            self.accounts.add(owner)
        xw = self.grid.client(self.grid.config(login=owner, password=PASSWORD))  # one client per host
        enrolment = await xw.enrol(HostIn(name=name, **platform))
        return Host(xw, enrolment.host.uid, name)

    async def content(self, xw: XWClient, uid: str) -> bytes:
        dest = self.tmp / f"{uid}.zip"
        await xw.download(uid, dest)
        return dest.read_bytes()

    async def submit(self, policy: Validation | None = None, args: str = "x") -> str:
        return (await self.user.submit(JobIn(app=self.app, args=args, validation=policy))).uid

    async def settled(self, uid: str, until: Callable[[JobOut], bool], timeout: float = 10.0) -> JobOut:
        """The job once ``until`` holds (the validator works after the result's commit)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            job = await self.user.get_job(uid)
            if until(job):
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"job {uid} stayed {job.status}: {job.status_reason}; {job.replicas}")
            await asyncio.sleep(0.05)

    async def status(self, uid: str, status: JobStatus) -> JobOut:
        return await self.settled(uid, lambda j: j.status is status)

    async def events(self, uid: str, action: str) -> list[str]:
        async with self.services.sessions() as session:
            rows = await session.execute(
                select(Event.reason).where(Event.object_uid == uid, Event.action == action).order_by(Event.id)
            )
            return [r or "" for r in rows.scalars()]


@pytest.fixture
async def setup(grid: Any, tmp_path: Path) -> Setup:
    user = await grid.add_user("alice")
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    exe = await user.send_file(script, access_rights="1700")
    app = await user.send_app(
        AppIn(name="s", type="script", binaries=[{"os": "ANY", "cpu": "ANY", "data": exe.uid}])
    )
    return Setup(grid, user, app.uid, tmp_path)


QUORUM_2_OF_3 = Validation(policy="quorum", quorum=2, replicas=3)


async def test_two_of_three_with_one_liar_accepts_the_truth(setup: Setup) -> None:
    job = await setup.submit(QUORUM_2_OF_3)
    queued = await setup.user.get_job(job)
    assert queued.status is JobStatus.REPLICATING and len(queued.replicas) == 3
    liar, honest1, honest2 = [await setup.host(f"h{i}") for i in range(3)]
    assert await liar.run("41\n")
    assert await honest1.run("42\n")
    mid = await setup.status(job, JobStatus.INCONCLUSIVE)  # 1 against 1: the third decides
    assert {r.verdict for r in mid.replicas if r.status is JobStatus.COMPLETED} == {"pending"}
    assert await honest2.run("42\n")
    done = await setup.status(job, JobStatus.COMPLETED)
    by_host = {r.host: r for r in done.replicas}
    assert by_host[liar.uid].verdict == "invalid"
    assert by_host[honest1.uid].verdict == by_host[honest2.uid].verdict == "valid"
    assert done.result == by_host[honest1.uid].result  # the first agreeing result is the job's
    assert by_host[liar.uid].digest != by_host[honest1.uid].digest == by_host[honest2.uid].digest
    # the rejected result is kept for the owner, and every verdict is in the job's events
    kept = await setup.content(setup.user, by_host[liar.uid].result or "")
    assert zipfile.ZipFile(io.BytesIO(kept)).read("stdout.txt") == b"41\n"
    verdicts = await setup.events(job, "verdict")
    assert sum(": invalid" in v for v in verdicts) == 1 and sum(": valid" in v for v in verdicts) == 2
    assert all(by_host[liar.uid].digest or "" in v for v in verdicts if ": invalid" in v)


async def test_a_tie_is_inconclusive_and_gets_another_replica(setup: Setup) -> None:
    job = await setup.submit(Validation(policy="quorum", quorum=2))
    a, b, c = [await setup.host(f"h{i}") for i in range(3)]
    assert await a.run("one\n") and await b.run("two\n")
    tied = await setup.settled(job, lambda j: j.status is JobStatus.INCONCLUSIVE and len(j.replicas) == 3)
    assert "disagree" in (tied.status_reason or "")
    assert await c.run("two\n")
    done = await setup.status(job, JobStatus.COMPLETED)
    assert {r.host: r.verdict for r in done.replicas} == {a.uid: "invalid", b.uid: "valid", c.uid: "valid"}


async def test_max_attempts_reached_is_an_error_with_the_reason(setup: Setup) -> None:
    job = await setup.submit(Validation(policy="quorum", quorum=2, max_attempts=3))
    hosts = [await setup.host(f"h{i}") for i in range(4)]
    for i, h in enumerate(hosts[:3]):
        assert await h.run(f"answer {i}\n")
    failed = await setup.status(job, JobStatus.ERROR)
    assert "no 2 agreeing results after 3 attempt(s)" in (failed.status_reason or "")
    assert [r.verdict for r in failed.replicas] == ["inconclusive"] * 3
    assert await hosts[3].claimable() == 0  # nothing more was started


async def test_replicas_never_share_a_host_or_an_owner(setup: Setup) -> None:
    job = await setup.submit(Validation(policy="quorum", quorum=3))
    first = await setup.host("first", "volunteer")
    assert await first.claimable() == 1  # one of the three, not all of them
    assert await first.claimable() == 0  # the same host: none of the others
    sibling = await setup.host("sibling", "volunteer")  # another host of the same owner
    assert await sibling.claimable() == 0
    other = await setup.host("other")
    assert await other.claimable() == 1
    running = await setup.user.get_job(job)
    hosts = [r.host for r in running.replicas if r.host]
    assert sorted(hosts) == sorted([first.uid, other.uid])


async def test_a_trusted_liar_loses_trust_and_its_unreplicated_results_are_rechecked(setup: Setup) -> None:
    trusting = Validation(policy="adaptive", trust_after=2, spot_check=0.0)
    liar, honest, third = [await setup.host(n) for n in ("liar", "honest", "third")]
    for i in range(2):  # the liar behaves until it is trusted: twice confirmed by another host
        job = await setup.submit(trusting, args=f"warm {i}")
        assert await liar.run(lambda args: f"ok {args}\n")
        await setup.status(job, JobStatus.VALIDATING)
        assert await honest.run(lambda args: f"ok {args}\n")
        await setup.status(job, JobStatus.COMPLETED)
    cheated = await setup.submit(trusting, args="cheat")
    assert await liar.run("forged\n")
    accepted = await setup.status(cheated, JobStatus.COMPLETED)  # on its word alone
    assert [r.verdict for r in accepted.replicas] == ["trusted"]
    caught = await setup.submit(Validation(policy="adaptive", trust_after=2, spot_check=1.0), args="spot")
    assert await liar.run("forged again\n")
    await setup.status(caught, JobStatus.VALIDATING)  # a spot check even of a trusted host
    assert await honest.run(lambda args: f"ok {args}\n")
    assert await third.run(lambda args: f"ok {args}\n")
    caught_job = await setup.status(caught, JobStatus.COMPLETED)
    assert {r.host: r.verdict for r in caught_job.replicas}[liar.uid] == "invalid"
    # the job it alone vouched for is checked again, and ends with the truth
    rechecked = await setup.settled(cheated, lambda j: len(j.replicas) >= 2)
    assert "lost the trust" in (rechecked.status_reason or "")
    assert await honest.run(lambda args: f"ok {args}\n")
    assert await third.run(lambda args: f"ok {args}\n")
    final = await setup.status(cheated, JobStatus.COMPLETED)
    verdicts = {r.host: r.verdict for r in final.replicas}
    assert verdicts[liar.uid] == "invalid" and verdicts[honest.uid] == verdicts[third.uid] == "valid"
    assert final.result != accepted.result
    async with setup.services.sessions() as session:
        standing = await session.get(HostReliability, (liar.uid, setup.app))
        assert standing is not None and standing.trusted_since is None and standing.valid_streak == 0


async def test_a_host_past_the_error_threshold_is_quarantined_with_the_reason(setup: Setup) -> None:
    liar, a, b = [await setup.host(n) for n in ("liar", "a", "b")]
    for i in range(3):
        job = await setup.submit(Validation(policy="quorum", quorum=2, replicas=3), args=str(i))
        assert await liar.run("wrong\n")
        assert await a.run("right\n") and await b.run("right\n")
        await setup.status(job, JobStatus.COMPLETED)
    hosts = await setup.grid.admin.hosts()
    record = next(h for h in hosts if h.uid == liar.uid)
    [standing] = record.reliability
    assert standing.quarantined_until is not None and not standing.trusted
    assert "quarantined for s" in (standing.reason or "") and "3 invalid" in (standing.reason or "")
    await setup.submit(Validation(policy="quorum", quorum=2))
    await asyncio.sleep(0.2)  # the host cache notices the host record's change
    setup.services.auth.forget_host(liar.uid)
    assert await liar.claimable() == 0  # no work of that app while quarantined
    assert await a.claimable() == 1


async def test_tolerance_comparator_accepts_1e9_noise_and_refuses_1e3(setup: Setup) -> None:
    tolerant = Validation(policy="quorum", quorum=2, comparator="tolerance")
    near = await setup.submit(tolerant, args="near")
    far = await setup.submit(tolerant, args="far")
    a, b = await setup.host("a"), await setup.host("b")
    answers = {"near": ("energy 1.0\n", "energy 1.000000001\n"), "far": ("energy 1.0\n", "energy 1.001\n")}
    for h, i in ((a, 0), (a, 0), (b, 1), (b, 1)):
        assert await h.run(lambda args, i=i: answers[args][i])
    assert (await setup.status(near, JobStatus.COMPLETED)).result is not None
    await setup.status(far, JobStatus.INCONCLUSIVE)


async def test_an_entry_point_comparator_is_loaded(setup: Setup) -> None:
    """``sorted-lines`` is an entry point of the installed package (group xwhep.comparators)."""
    job = await setup.submit(Validation(policy="quorum", quorum=2, comparator="sorted-lines"))
    a, b = await setup.host("a"), await setup.host("b")
    assert await a.run("x\ny\n") and await b.run("y\nx\n")
    await setup.status(job, JobStatus.COMPLETED)
    with pytest.raises(ValidationFailed, match="bitwise"):
        await setup.submit(Validation(policy="quorum", comparator="no-such-comparator"))


async def test_the_app_policy_applies_and_a_job_may_override_it(setup: Setup, tmp_path: Path) -> None:
    app = await setup.user.send_app(
        AppIn(name="s", type="script", validation=Validation(policy="quorum", quorum=2))
    )
    assert app.validation is not None and app.validation.quorum == 2
    validated = await setup.submit()
    plain = await setup.submit(Validation(policy="none"))
    assert (await setup.user.get_job(validated)).status is JobStatus.REPLICATING
    assert (await setup.user.get_job(plain)).status is JobStatus.PENDING
    listed = await setup.user.jobs()
    assert sorted(j.uid for j in listed) == sorted([validated, plain])  # replicas are not listed


async def test_hold_release_and_delete_carry_the_replicas(setup: Setup) -> None:
    job = await setup.submit(Validation(policy="quorum", quorum=2))
    a, b = await setup.host("a"), await setup.host("b")
    assert await a.run("r\n")
    await setup.status(job, JobStatus.VALIDATING)
    await setup.user.hold(job)
    held = await setup.user.get_job(job)
    assert held.status is JobStatus.WAITING
    assert sorted(r.verdict or "" for r in held.replicas) == ["cancelled", "pending"]
    assert await b.claimable() == 0
    await setup.user.release(job)
    assert await b.run("r\n")
    done = await setup.status(job, JobStatus.COMPLETED)
    assert sorted(r.verdict or "" for r in done.replicas) == ["cancelled", "valid", "valid"]
    replica = done.replicas[0].uid
    with pytest.raises(XWError, match="replica of job"):
        await setup.user.remove(replica)
    await setup.user.remove(job)
    with pytest.raises(NotFound):
        await setup.user.get_job(replica)


async def test_a_host_cannot_read_its_siblings(setup: Setup) -> None:
    job = await setup.submit(Validation(policy="quorum", quorum=2))
    a, b = await setup.host("a"), await setup.host("b")
    assert await a.run("mine\n")
    await setup.status(job, JobStatus.VALIDATING)
    sibling = next(r for r in (await setup.user.get_job(job)).replicas if r.host == a.uid)
    for look in (lambda: b.xw.get_job(sibling.uid), lambda: b.xw.get_job(job)):
        with pytest.raises(NotFound):
            await look()
    with pytest.raises(NotFound):
        await setup.content(b.xw, sibling.result or "")


async def test_homogeneous_redundancy_keeps_replicas_on_the_first_ones_platform(setup: Setup) -> None:
    job = await setup.submit(Validation(policy="quorum", quorum=2, homogeneous=True))
    first = await setup.host("first")
    mac = await setup.host("mac", platform={"os": "MACOSX", "cpu": "ARM64"})
    linux = await setup.host("linux")
    assert await first.claimable() == 1
    assert await mac.claimable() == 0  # another OS/CPU class than the first replica's
    assert await linux.claimable() == 1
    plain = await setup.submit(Validation(policy="quorum", quorum=2))
    assert await mac.claimable() == 1  # without homogeneous redundancy any platform will do
    assert len((await setup.user.get_job(plain)).replicas) == 2 and job


async def test_a_batch_of_validated_jobs_and_one_waiting_for_its_input(setup: Setup) -> None:
    policy = Validation(policy="quorum", quorum=2)
    uids = await setup.user.submit_many(
        [JobIn(app=setup.app, args=str(i), validation=policy) for i in range(100)]
    )
    jobs = await setup.user.jobs()
    assert len(jobs) == 100 and {j.status for j in jobs} == {JobStatus.REPLICATING}
    assert all(len(j.replicas) == 2 for j in jobs) and {j.uid for j in jobs} == set(uids)
    data = await setup.user.create_data(DataIn(name="later"))
    waiting = (await setup.user.submit(JobIn(app=setup.app, inputs=[data.uid], validation=policy))).uid
    assert (await setup.user.get_job(waiting)).status is JobStatus.UNAVAILABLE
    path = setup.tmp / "later"
    path.write_text("input")
    await setup.user.upload(data.uid, path)
    started = await setup.user.get_job(waiting)
    assert started.status is JobStatus.REPLICATING and len(started.replicas) == 2


async def test_two_hosts_of_one_owner_claiming_at_once_never_share_a_job(setup: Setup) -> None:
    """On PostgreSQL two claims run in parallel transactions, neither seeing the other's attempt: the
    claim locks the replicas' jobs and looks again (on SQLite the single writer serialises them)."""
    jobs = [await setup.submit(Validation(policy="quorum", quorum=3), args=str(i)) for i in range(24)]
    one, two = await setup.host("one", "same-owner"), await setup.host("two", "same-owner")
    for _ in range(4):
        await asyncio.gather(one.xw.claim_work(one.uid, 0, 8), two.xw.claim_work(two.uid, 0, 8))
    claimed = 0
    for job in jobs:
        hosts = [r.host for r in (await setup.user.get_job(job)).replicas if r.host]
        assert len(hosts) <= 1, f"job {job}: replicas on {hosts}, two hosts of one owner"
        claimed += len(hosts)
    assert claimed == 24  # between them they took one replica of every job


async def test_deleting_a_host_does_not_make_its_owner_new(setup: Setup) -> None:
    """Sibling runs are kept apart by the owner their attempts recorded, not by a join to the host row."""
    job = await setup.submit(Validation(policy="quorum", quorum=2))
    first = await setup.host("first", "volunteer")
    assert await first.run("forged\n")
    await setup.status(job, JobStatus.VALIDATING)
    await setup.grid.admin.remove(first.uid)  # the host is gone, its attempt stays
    again = await setup.host("again", "volunteer")
    assert await again.claimable() == 0
    assert await (await setup.host("other")).claimable() == 1


async def test_who_may_see_a_validated_jobs_replicas(setup: Setup) -> None:
    """A job others may read (0755) shows its copies, their hosts and digests to its owner only: a worker
    account that reads the job must not learn where its siblings run."""
    await setup.user.chmod(setup.app, "755")
    job = (
        await setup.user.submit(
            JobIn(app=setup.app, validation=Validation(policy="quorum", quorum=2), access_rights="755")
        )
    ).uid
    a = await setup.host("a")
    assert await a.run("mine\n")
    mine = await setup.status(job, JobStatus.VALIDATING)
    assert len(mine.replicas) == 2
    seen = await a.xw.get_job(job)
    assert seen.uid == job and seen.replicas == []
    for replica in mine.replicas:
        with pytest.raises(NotFound):
            await a.xw.get_job(replica.uid)


async def test_a_replica_over_its_limits_fails_and_another_is_started(setup: Setup) -> None:
    """The heartbeat holds an ordinary job over its memory; a replica (nobody may release one) fails
    instead, and the validator replaces it."""
    job = (
        await setup.user.submit(
            JobIn(app=setup.app, memory=1 << 20, validation=Validation(policy="quorum", quorum=2))
        )
    ).uid
    a = await setup.host("a")
    [claimed] = await a.xw.claim_work(a.uid, 0, 1)
    beat = await a.xw.heartbeat(
        a.uid, Heartbeat(running=[JobUsage(attempt=claimed.attempt, max_rss=1 << 30)])
    )
    assert claimed.attempt in beat.kill
    replaced = await setup.settled(job, lambda j: len(j.replicas) == 3)
    assert {r.verdict for r in replaced.replicas if r.status is JobStatus.ERROR} == {"failed"}
