"""Batch submission (``POST /jobs/batch``) on a real server (SQLite, and PostgreSQL under `make test-pg`):
all jobs or none, each with its status, owner, rights and event; refusals name the job; the size limits;
and waiting workers woken for the PENDING ones."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from client.api import XWClient
from client.transport import ApiRequest
from common.enums import JobStatus, UserRights
from common.errors import Conflict, Forbidden, NotFound, PayloadTooLarge, ValidationFailed, XWError
from common.schemas import MAX_BATCH_JOBS, AppIn, DataIn, HostIn, JobIn, JobsOut
from server.db.models import Event, Job, JobRef
from server.scheduler import submission
from server.state import SERVICES

LINUX = {"os": "LINUX", "cpu": "AMD64"}


async def script_app(xw: XWClient, tmp_path: Path, name: str, mode: str | None = None) -> str:
    script = tmp_path / f"{name}.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    exe = await xw.send_file(script, name=f"{name}.sh", access_rights="1755")
    app = await xw.send_app(
        AppIn(
            name=name,
            type="script",
            binaries=[{"os": "ANY", "cpu": "ANY", "data": exe.uid}],
            access_rights=mode,
        )
    )
    return app.uid


def services(grid: Any) -> Any:
    return grid.server.runner.app[SERVICES]


async def counts(grid: Any) -> dict[str, int]:
    """Rows of the tables a submission writes."""
    async with services(grid).sessions() as session:
        return {
            model.__tablename__: int(
                (await session.execute(select(func.count()).select_from(model))).scalar_one()
            )
            for model in (Job, JobRef, Event)
        }


async def batch(xw: XWClient, body: Any) -> JobsOut:
    """``POST /jobs/batch`` with a raw JSON body (what the client library would never send)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await xw.open(
        ApiRequest("POST", "/jobs/batch", content=content, headers={"Content-Type": "application/json"})
    )
    try:
        assert resp.status == 201
        return JobsOut.model_validate(await resp.json())
    finally:
        await resp.aclose()


@pytest.mark.parametrize("few_rows", [1, 1000], ids=["driver-executemany", "sqlalchemy-executemany"])
async def test_a_batch_creates_every_job_in_order(
    grid: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, few_rows: int
) -> None:
    monkeypatch.setattr(submission, "FEW_ROWS", few_rows)  # both ways of inserting, same rows stored
    alice = await grid.add_user("alice")
    app = await script_app(alice, tmp_path, "s", mode="750")  # job rights are requested AND these
    ready_file = tmp_path / "ready.txt"
    ready_file.write_text("ready")
    ready = (await alice.send_file(ready_file)).uid
    later = (await alice.create_data(DataIn(name="later.txt"))).uid  # no content yet
    jobs = [
        JobIn(app=app, args="plain"),
        JobIn(app=app, args="with input", inputs=[ready], label="one"),
        JobIn(app=app, args="waits", inputs=[later, ready], env=[ready], stdin=later),  # refs once each
        JobIn(
            app=app,
            args="public",
            access_rights="755",
            max_retries=3,
            wallclock=60,
            listen_ports=[8080, 8081],
            forward_addresses=[{"address": "proxy-x", "port": 1234}],
            expected_host="h1",
            group="g",
            memory=1 << 30,
        ),
    ]
    before = await counts(grid)
    # two requests, one after the other: the queue's order is kept across them (batches in flight
    # together are queued in the order the server stores them)
    uids = await alice.submit_many(jobs, chunk=3, in_flight=1)
    assert len(uids) == 4 and len(set(uids)) == 4

    got = [await alice.get_job(uid) for uid in uids]
    [me] = await alice.users(login="alice")
    assert [j.args for j in got] == ["plain", "with input", "waits", "public"]
    assert [j.status for j in got] == [
        JobStatus.PENDING,
        JobStatus.PENDING,
        JobStatus.UNAVAILABLE,
        JobStatus.PENDING,
    ]
    assert {j.owner for j in got} == {me.uid}
    assert [j.access_rights for j in got] == ["0700", "0700", "0700", "0750"]  # 0700 & 0750, 0755 & 0750
    assert got[1].label == "one" and got[1].inputs == [ready]
    assert (got[2].inputs, got[2].env, got[2].stdin) == ([later, ready], [ready], later)
    assert (got[3].max_retries, got[3].wallclock, got[3].listen_ports) == (3, 60, [8080, 8081])
    assert [(f.address, f.port) for f in got[3].forward_addresses] == [("proxy-x", 1234)]
    assert (got[3].expected_host, got[3].job_group, got[3].memory) == ("h1", "g", 1 << 30)
    assert (got[0].env, got[0].inputs, got[0].listen_ports, got[0].forward_addresses) == ([], [], [], [])
    assert (got[0].max_retries, got[0].retry, got[0].wallclock, got[0].host) == (10, 0, None, None)
    assert [j.created for j in got] == sorted(j.created for j in got)  # the queue keeps the file's order
    assert len({j.created for j in got}) == 4
    after = await counts(grid)
    assert after["jobs"] - before["jobs"] == 4
    assert after["job_refs"] - before["job_refs"] == 1 + 2  # job 1: ready; job 2: later, ready
    assert after["events"] - before["events"] == 4
    for job in got:
        (submitted,) = await alice.events(object_uid=job.uid)
        assert (submitted.action, submitted.actor, submitted.to_status) == (
            "submit",
            me.uid,
            job.status.value,
        )
        assert submitted.reason == "app s"

    await alice.upload(later, ready_file)  # the last input arrives: the waiting job is queued
    assert (await alice.get_job(uids[2])).status is JobStatus.PENDING


async def test_one_bad_job_refuses_the_batch_and_stores_nothing(grid: Any, tmp_path: Path) -> None:
    alice = await grid.add_user("alice")
    bob = await grid.add_user("bob")
    app = await script_app(alice, tmp_path, "s")
    hidden = (await bob.create_data(DataIn(name="bobs.txt"))).uid  # 0700: alice cannot read it
    missing = "00000000-0000-4000-8000-000000000000"
    good = {"app": app, "args": "fine"}
    before = await counts(grid)

    cases: list[tuple[dict[str, Any], int, type[XWError], str]] = [
        ({"app": app, "args": "x" * 9000}, 2, ValidationFailed, "jobs.2.args"),
        ({"app": app, "args": "nul \u0000 here"}, 2, ValidationFailed, "jobs.2"),
        ({"app": app, "bogus": 1}, 2, ValidationFailed, "jobs.2.bogus"),
        ({"app": app, "inputs": [missing]}, 2, NotFound, f"jobs[2]: no data {missing}"),
        ({"app": app, "env": [hidden]}, 2, NotFound, f"jobs[2]: no data {hidden} visible to alice"),
        ({"app": missing}, 2, NotFound, f"jobs[2]: no application {missing}"),
    ]
    for bad, index, error, text in cases:
        with pytest.raises(error) as refused:
            await batch(alice, {"jobs": [good, good, bad, good]})
        assert text in refused.value.reason
        assert refused.value.extra["index"] == index
    assert await counts(grid) == before

    # through the client: a later batch's refusal names the job among all; the batch before it stays
    jobs = [JobIn(app=app, args=str(i)) for i in range(5)]
    jobs[3] = JobIn(app=app, inputs=[missing])
    with pytest.raises(NotFound) as refused:
        await alice.submit_many(jobs, chunk=2, in_flight=1)
    assert refused.value.extra["index"] == 3 and refused.value.reason.startswith("jobs[3]: no data")
    assert len(refused.value.extra["submitted"]) == 2  # the first request's two jobs
    assert (await counts(grid))["jobs"] == before["jobs"] + 2
    jobs[3] = JobIn.model_construct(app=app, args="x" * 9000)  # what a client that does not check sends
    with pytest.raises(ValidationFailed) as refused:
        await alice.submit_many(jobs, chunk=2, in_flight=1)
    assert refused.value.extra["index"] == 3 and refused.value.reason.startswith("jobs.3.args: String")
    assert (await counts(grid))["jobs"] == before["jobs"] + 4


async def test_no_execute_right_on_one_app_refuses_the_batch(grid: Any, tmp_path: Path) -> None:
    alice = await grid.add_user("alice")
    bob = await grid.add_user("bob")
    mine = await script_app(alice, tmp_path, "mine")
    readable = await script_app(bob, tmp_path, "readable", mode="744")  # alice may read, not execute
    private = await script_app(bob, tmp_path, "private", mode="700")
    before = await counts(grid)
    with pytest.raises(Forbidden) as refused:
        await alice.submit_many([JobIn(app=mine), JobIn(app=readable), JobIn(app=mine)])
    assert refused.value.extra["index"] == 1
    assert refused.value.reason.startswith(f"jobs[1]: alice may not execute application {readable}")
    with pytest.raises(NotFound, match=f"jobs\\[0\\]: no application {private} visible to alice"):
        await alice.submit_many([JobIn(app=private), JobIn(app=mine)])
    assert await counts(grid) == before

    worker = await grid.add_user("w", UserRights.WORKER_USER)
    with pytest.raises(Forbidden, match="worker users cannot create jobs"):
        await worker.submit_many([JobIn(app=mine)])
    await bob.chmod(readable, "755")
    assert len(await alice.submit_many([JobIn(app=mine), JobIn(app=readable)])) == 2


async def test_a_label_names_one_job_of_its_owner(
    grid: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await grid.add_user("alice")
    bob = await grid.add_user("bob")
    app = await script_app(alice, tmp_path, "s", mode="755")
    first = await alice.submit(JobIn(app=app, label="run1"))
    before = await counts(grid)

    # one job: 409 naming the label and the job that has it
    with pytest.raises(Conflict) as refused:
        await alice.submit(JobIn(app=app, label="run1"))
    assert refused.value.reason == (
        f"label 'run1' is taken by your job {first.uid}: labels are unique among your jobs "
        "(choose another, or remove that job first)"
    )
    assert (refused.value.extra["label"], refused.value.extra["job"]) == ("run1", first.uid)

    # a batch: against an existing job, or twice in the request; nothing stored either way
    with pytest.raises(Conflict) as refused:
        await batch(alice, {"jobs": [{"app": app, "label": "a"}, {"app": app, "label": "run1"}]})
    assert refused.value.extra["index"] == 1
    assert refused.value.reason.startswith(f"jobs[1]: label 'run1' is taken by your job {first.uid}")
    jobs = [JobIn(app=app, label="x"), JobIn(app=app, label="y"), JobIn(app=app, label="x")]
    with pytest.raises(Conflict) as refused:
        await alice.submit_many(jobs)
    assert refused.value.extra["index"] == 2
    assert (
        refused.value.reason
        == "jobs[2]: label 'x' is also given to jobs[0]: labels are unique among your jobs"
    )
    assert await counts(grid) == before

    # unlimited: no label; the same label for another owner; a label again once its job is gone
    assert len(await alice.submit_many([JobIn(app=app), JobIn(app=app)])) == 2
    assert (await bob.submit(JobIn(app=app, label="run1"))).label == "run1"
    await alice.remove(first.uid)
    again = await alice.submit(JobIn(app=app, label="run1"))
    assert [j.uid for j in await alice.jobs(label="run1", owner="alice")] == [again.uid]

    # the database is the backstop (two submissions racing on PostgreSQL): still a 409, nothing stored
    async def nothing_taken(*args: Any) -> dict[str, str]:
        return {}

    monkeypatch.setattr(submission, "_labels_taken", nothing_taken)
    before = await counts(grid)
    for few_rows in (64, 1):  # SQLAlchemy's executemany, the driver's own (insert_many)
        monkeypatch.setattr(submission, "FEW_ROWS", few_rows)
        with pytest.raises(Conflict, match="a label of these jobs was taken meanwhile"):
            await alice.submit_many([JobIn(app=app, label="new"), JobIn(app=app, label="run1")])
    assert await counts(grid) == before


async def test_size_limits(grid: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = await grid.add_user("alice")
    app = await script_app(alice, tmp_path, "s")
    with pytest.raises(ValidationFailed, match="jobs: List should have at most"):
        await batch(alice, {"jobs": [{"app": app}] * (MAX_BATCH_JOBS + 1)})
    with pytest.raises(ValidationFailed, match="jobs: List should have at least 1 item"):
        await batch(alice, {"jobs": []})
    assert (await counts(grid))["jobs"] == 0

    # a full batch is larger than the 1 MiB every other route takes, and is accepted
    body = json.dumps({"jobs": [{"app": app, "args": f"{i:0150d}"} for i in range(MAX_BATCH_JOBS)]}).encode()
    assert len(body) > 1 << 20
    assert (await batch(alice, body)).count == MAX_BATCH_JOBS
    assert (await counts(grid))["jobs"] == MAX_BATCH_JOBS
    with pytest.raises(PayloadTooLarge):  # the single-job route keeps its limit
        await post_single(alice, b'{"app": "' + b"a" * (1 << 20) + b'"}')

    monkeypatch.setattr(submission, "MAX_BATCH_BYTES", len(body) - 1)
    with pytest.raises(PayloadTooLarge):  # declared length over the limit
        await batch(alice, body)
    with pytest.raises(PayloadTooLarge):  # chunked: the server counts
        await batch_chunked(alice, body)
    assert (await counts(grid))["jobs"] == MAX_BATCH_JOBS


async def post_single(xw: XWClient, content: bytes) -> None:
    resp = await xw.open(
        ApiRequest("POST", "/jobs", content=content, headers={"Content-Type": "application/json"})
    )
    await resp.aclose()


async def batch_chunked(xw: XWClient, content: bytes) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(content), 1 << 16):
            yield content[start : start + (1 << 16)]

    resp = await xw.open(
        ApiRequest("POST", "/jobs/batch", content=chunks(), headers={"Content-Type": "application/json"})
    )
    await resp.aclose()


async def test_a_batch_wakes_as_many_waiting_workers_as_it_queues(grid: Any, tmp_path: Path) -> None:
    alice = await grid.add_user("alice")
    app = await script_app(alice, tmp_path, "s")
    later = (await alice.create_data(DataIn(name="later.txt"))).uid
    hosts = []
    for i in range(3):
        xw = grid.admin
        hosts.append((xw, (await xw.enrol(HostIn(name=f"h{i}", **LINUX))).host.uid))
    polls = [asyncio.create_task(xw.claim_work(h, 20, 1)) for xw, h in hosts]
    waiters = services(grid).wakeups.waiters
    for _ in range(100):
        if len(waiters) == 3:
            break
        await asyncio.sleep(0.05)
    assert len(waiters) == 3
    before = waiters.woken
    # two PENDING jobs, one waiting for its input: two workers are woken, each claims one
    await alice.submit_many([JobIn(app=app), JobIn(app=app, inputs=[later]), JobIn(app=app)])
    done: set[asyncio.Task[Any]] = set()
    pending: set[asyncio.Task[Any]] = set(polls)
    while len(done) < 2:
        woken, pending = await asyncio.wait(pending, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert woken, "no waiting worker got the new jobs"
        done |= woken
    await asyncio.sleep(0.3)
    assert sorted(len(p.result()) for p in done) == [1, 1] and len(pending) == 1
    assert waiters.woken - before == 2  # not the third: nothing for it to claim
    (left,) = pending
    left.cancel()
    with pytest.raises(asyncio.CancelledError):
        await left
