"""The scheduler core on a real server (SQLite, and PostgreSQL under `make test-pg`): the compare-and-set
status writer, attempts, batched claims and results, and wake-ups that wake only as many as needed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from client.api import XWClient
from common.enums import JobStatus
from common.errors import Conflict
from common.jobstates import Trigger
from common.schemas import AppIn, Heartbeat, HostIn, InlineResult, JobIn, JobReport, JobUsage
from server.db.models import Attempt, Event, Job
from server.scheduler.writer import Seen, transition
from server.state import SERVICES

LINUX = {"os": "LINUX", "cpu": "AMD64"}


def _zip(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("stdout.txt", text)
    return buf.getvalue()


def inline(attempt: str, text: str, rc: int = 0) -> InlineResult:
    raw = _zip(text)
    return InlineResult(
        attempt=attempt,
        return_code=rc,
        content=base64.b64encode(raw).decode(),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


class Bench:
    """A user with a script app, and hosts that speak the worker protocol by hand."""

    def __init__(self, grid: Any, user: XWClient, app: str) -> None:
        self.grid, self.user, self.app = grid, user, app

    @classmethod
    async def make(cls, grid: Any, tmp_path: Path) -> Bench:
        user = await grid.add_user("alice")
        script = tmp_path / "s.sh"
        script.write_text("#!/bin/sh\necho hi\n")
        exe = await user.send_file(script, access_rights="1700")
        app = await user.send_app(
            AppIn(name="s", type="script", binaries=[{"os": "ANY", "cpu": "ANY", "data": exe.uid}])
        )
        return cls(grid, user, app.uid)

    async def host(self, name: str) -> tuple[XWClient, str]:
        xw = self.grid.admin
        return xw, (await xw.enrol(HostIn(name=name, **LINUX))).host.uid

    async def submit(self, n: int = 1) -> list[str]:
        return [(await self.user.submit(JobIn(app=self.app, args=str(i)))).uid for i in range(n)]

    @property
    def services(self) -> Any:
        return self.grid.server.runner.app[SERVICES]


@pytest.fixture
async def bench(grid: Any, tmp_path: Path) -> Bench:
    return await Bench.make(grid, tmp_path)


# --- the one status writer --------------------------------------------------------------------------


async def test_a_stale_transition_changes_nothing(bench: Bench) -> None:
    """The reaper read a job RUNNING; meanwhile its result came in: the reaper's LOSE must not win."""
    [job] = await bench.submit()
    xw, host = await bench.host("h")
    a = await xw.request_work(host, 0)
    assert a is not None
    sessions = bench.services.sessions
    async with sessions() as session:
        stale = Seen.of(await session.get(Job, job))  # what the reaper read
    assert stale.status is JobStatus.RUNNING and stale.attempt == a.attempt
    reply = await xw.send_results(host, [inline(a.attempt, "done")])
    assert reply.accepted == [a.attempt]
    async with sessions() as session, session.begin():
        moved = await transition(session, stale, Trigger.LOSE, actor=None, reason="reaper, late")
    assert moved is None
    after = await bench.user.get_job(job)
    assert after.status is JobStatus.COMPLETED and after.retry == 0
    async with sessions() as session:
        actions = (await session.execute(select(Event.action).where(Event.object_uid == job))).scalars().all()
    assert "lose" not in actions and actions.count("complete") == 1


async def test_interleaved_transactions_one_wins(bench: Bench) -> None:
    """Two transactions read the same RUNNING job; the first to commit wins, the other writes nothing."""
    [job] = await bench.submit()
    xw, host = await bench.host("h")
    assert await xw.request_work(host, 0) is not None
    sessions = bench.services.sessions
    async with sessions() as s1:
        seen = Seen.of(await s1.get(Job, job))
    async with sessions() as s2, s2.begin():
        assert await transition(s2, seen, Trigger.HOLD, actor=None, reason="first") is JobStatus.WAITING
    async with sessions() as s3, s3.begin():
        assert await transition(s3, seen, Trigger.ABORT, actor=None, reason="second") is None
    assert (await bench.user.get_job(job)).status is JobStatus.WAITING


# --- attempts ---------------------------------------------------------------------------------------


async def test_hold_and_release_within_a_heartbeat_gives_one_run(bench: Bench) -> None:
    [job] = await bench.submit()
    xw, host = await bench.host("h")
    first = await xw.request_work(host, 0)
    assert first is not None
    await bench.user.hold(job)
    await bench.user.release(job)
    second = await xw.request_work(host, 0)  # the same host claims it again at once
    assert second is not None and second.job.uid == job and second.attempt != first.attempt
    beat = await xw.heartbeat(
        host, Heartbeat(running=[JobUsage(attempt=first.attempt), JobUsage(attempt=second.attempt)])
    )
    assert list(beat.kill) == [first.attempt]  # the old run is killed, the new one goes on
    with pytest.raises(Conflict, match="not a current attempt"):
        await xw.report(host, first.attempt, JobReport(outcome="failed", reason="late"))
    reply = await xw.send_results(host, [inline(first.attempt, "old"), inline(second.attempt, "new")])
    assert reply.accepted == [second.attempt] and first.attempt in reply.refused
    done = await bench.user.get_job(job)
    assert done.status is JobStatus.COMPLETED and done.result
    out = Path(bench.grid.home) / "result.zip"
    await bench.user.download(done.result, out)
    with zipfile.ZipFile(out) as zf:
        assert zf.read("stdout.txt") == b"new"
    async with bench.services.sessions() as session:
        states = dict(
            (await session.execute(select(Attempt.uid, Attempt.state).where(Attempt.job_uid == job))).all()
        )
    assert states == {first.attempt: "CANCELLED", second.attempt: "COMPLETED"}


async def test_attempts_show_on_the_job_and_a_retry_is_a_new_attempt(bench: Bench) -> None:
    [job] = await bench.submit()
    xw, host = await bench.host("h")
    first = await xw.request_work(host, 0)
    assert first is not None
    assert (await bench.user.get_job(job)).attempt == first.attempt
    await xw.report(host, first.attempt, JobReport(outcome="abort", reason="shutting down"))
    back = await bench.user.get_job(job)
    assert back.status is JobStatus.PENDING and back.attempt is None and back.retry == 1
    second = await xw.request_work(host, 0)
    assert second is not None and second.attempt not in (None, first.attempt)


# --- batches ------------------------------------------------------------------------------------------


async def test_one_request_claims_several_and_one_completes_several(bench: Bench) -> None:
    jobs = await bench.submit(7)
    xw, host = await bench.host("h")
    got = await xw.claim_work(host, 0, 5)
    assert len(got) == 5 and len({a.job.uid for a in got}) == 5 and len({a.attempt for a in got}) == 5
    assert [a.job.uid for a in got] == jobs[:5]  # oldest first
    rest = await xw.claim_work(host, 0, 5)
    assert [a.job.uid for a in rest] == jobs[5:]
    assert await xw.claim_work(host, 0, 5) == []
    every = got + rest
    reply = await xw.send_results(host, [inline(a.attempt, f"out {a.job.args}") for a in every])
    assert sorted(reply.accepted) == sorted(a.attempt for a in every) and reply.refused == {}
    finished = {j.uid: j for j in await bench.user.jobs()}
    assert {finished[u].status for u in jobs} == {JobStatus.COMPLETED}


async def test_bad_inline_results_are_refused_one_by_one(bench: Bench) -> None:
    await bench.submit(2)
    xw, host = await bench.host("h")
    a, b = await xw.claim_work(host, 0, 2)
    good = inline(a.attempt, "fine")
    forged = inline(b.attempt, "x").model_copy(update={"sha256": "0" * 64})
    reply = await xw.send_results(host, [good, forged])
    assert reply.accepted == [a.attempt] and "sha256" in reply.refused[b.attempt]
    assert (await bench.user.get_job(b.job.uid)).status is JobStatus.RUNNING


# --- wake-ups -----------------------------------------------------------------------------------------


async def test_a_new_job_wakes_one_waiter_not_all(bench: Bench) -> None:
    hosts = [await bench.host(f"h{i}") for i in range(5)]
    polls = [asyncio.create_task(xw.claim_work(h, 10, 1)) for xw, h in hosts]
    waiters = bench.services.wakeups.waiters
    for _ in range(50):
        if len(waiters) == 5:
            break
        await asyncio.sleep(0.05)
    assert len(waiters) == 5
    before = waiters.woken
    await bench.submit(1)
    done, pending = await asyncio.wait(polls, timeout=2, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1 and len(done.pop().result()) == 1
    await asyncio.sleep(0.3)
    assert waiters.woken - before == 1  # nobody else was woken to find nothing
    assert len(waiters) == 4 and all(not p.done() for p in pending)
    await bench.submit(4)
    results = await asyncio.wait_for(asyncio.gather(*pending), 5)
    assert all(len(r) == 1 for r in results)


async def test_a_host_that_found_nothing_skips_its_next_query_until_a_job_comes(bench: Bench) -> None:
    wakeups = bench.services.wakeups
    xw, host = await bench.host("h")
    assert await xw.request_work(host, 0) is None  # looked: nothing
    before = wakeups.skipped
    assert await xw.request_work(host, 0) is None
    assert wakeups.skipped == before + 1  # nothing became claimable since: no query
    [job] = await bench.submit()
    got = await xw.request_work(host, 0)  # a new job: the next request looks, and claims it at once
    assert got is not None and got.job.uid == job
    assert wakeups.skipped == before + 1


async def test_a_job_nobody_announced_is_found_after_the_fallback_period(bench: Bench) -> None:
    """A job that became PENDING without a word to this process (another process's notification lost)
    is found once the host's last look is older than the fallback period, as a parked request would."""
    svc = bench.services
    svc.wakeups.recheck = 0.5
    [job] = await bench.submit()
    await bench.user.hold(job)
    xw, host = await bench.host("h")
    assert await xw.request_work(host, 0) is None
    async with svc.sessions() as session, session.begin():  # released behind the server's back
        await session.execute(update(Job).where(Job.uid == job).values(status=JobStatus.PENDING.value))
    assert await xw.request_work(host, 0) is None  # its look is fresh: not looked again
    await asyncio.sleep(0.7)
    got = await xw.request_work(host, 0)
    assert got is not None and got.job.uid == job


async def test_a_wake_reaches_the_host_that_can_run_the_job(bench: Bench, tmp_path: Path) -> None:
    """The oldest waiter cannot run the new job (it is expected elsewhere): the wake is passed on."""
    first_xw, first = await bench.host("cannot")
    second_xw, second = await bench.host("can")
    blocked = asyncio.create_task(first_xw.claim_work(first, 10, 1))
    await asyncio.sleep(0.2)
    able = asyncio.create_task(second_xw.claim_work(second, 10, 1))
    await asyncio.sleep(0.2)
    await bench.user.submit(JobIn(app=bench.app, expected_host="can"))
    got = await asyncio.wait_for(able, 3)
    assert len(got) == 1 and not blocked.done()
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked


async def test_results_sent_twice_are_refused_one_by_one_not_409(bench: Bench) -> None:
    """A worker whose results request was committed but never answered (a server killed mid-request)
    sends them again: each is refused as not current, and nothing changes."""
    await bench.submit(3)
    xw, host = await bench.host("h")
    got = await xw.claim_work(host, 0, 3)
    results = [inline(a.attempt, "once") for a in got]
    first = await xw.send_results(host, results)
    assert sorted(first.accepted) == sorted(a.attempt for a in got)
    again = await xw.send_results(host, results)
    assert again.accepted == [] and set(again.refused) == {a.attempt for a in got}
    async with bench.services.sessions() as session:
        completes = (
            (await session.execute(select(Event.action).where(Event.action == "complete"))).scalars().all()
        )
    assert len(completes) == 3
