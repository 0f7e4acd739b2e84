"""The event log: every state change is recorded, users see their own objects' events only."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from client.api import XWClient
from common.enums import AppType, DataStatus, JobStatus
from common.schemas import AppIn, DataIn, EventOut, JobIn


def _one(events: list[EventOut], **match: Any) -> EventOut:
    """The single event with these field values."""
    found = [e for e in events if all(getattr(e, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, events)
    return found[0]


async def _uid(grid: Any, login: str) -> str:
    [user] = await grid.admin.users(login=login)
    return str(user.uid)


async def _script_app(xw: XWClient, name: str, tmp_path: Path, rights: str | None = None) -> tuple[str, str]:
    """(data uid, app uid) of a script application whose file is uploaded."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/sh\necho {name}\n")
    data = await xw.send_file(script)
    app = await xw.send_app(
        AppIn(
            name=name,
            type=AppType.SCRIPT,
            access_rights=rights,
            binaries=[{"os": "ANY", "cpu": "ANY", "data": data.uid}],
        )
    )
    return data.uid, app.uid


def _declared(path: Path, content: bytes) -> DataIn:
    path.write_bytes(content)
    return DataIn(name=path.name, size=len(content), sha256=hashlib.sha256(content).hexdigest())


async def test_every_state_change_writes_an_event(grid: Any, tmp_path: Path) -> None:
    alice = await grid.add_user("alice")
    me = await _uid(grid, "alice")
    data_uid, app_uid = await _script_app(alice, "ev_app", tmp_path)

    data_events = await alice.events(object_uid=data_uid)
    assert [e.action for e in data_events] == ["create", "upload"]
    _one(data_events, action="create", kind="data", actor=me, to_status=DataStatus.UNAVAILABLE.value)
    upload = _one(data_events, action="upload", from_status="UNAVAILABLE", to_status="AVAILABLE")
    assert (
        upload.reason is not None and hashlib.sha256(b"#!/bin/sh\necho ev_app\n").hexdigest() in upload.reason
    )

    _one(await alice.events(object_uid=app_uid), action="create", kind="app", actor=me, reason="ev_app")

    await alice.chmod(app_uid, "755")
    _one(await alice.events(object_uid=app_uid), action="chmod", actor=me, reason="0700 -> 0755")

    job = await alice.submit(JobIn(app=app_uid, args="x"))
    assert job.status is JobStatus.PENDING
    _one(
        await alice.events(object_uid=job.uid),
        action="submit",
        kind="work",
        actor=me,
        from_status=None,
        to_status="PENDING",
    )

    await alice.remove(job.uid)
    job_events = await alice.events(object_uid=job.uid)
    assert [e.action for e in job_events] == ["submit", "delete"]
    _one(job_events, action="delete", actor=me, from_status="PENDING")

    ids = [e.id for e in await grid.admin.events()]
    assert ids == sorted(ids) and len(ids) == len(set(ids))


async def test_events_after_returns_only_newer_events(grid: Any, tmp_path: Path) -> None:
    alice = await grid.add_user("alice")
    _, app_uid = await _script_app(alice, "after_app", tmp_path)
    last = (await alice.events())[-1].id
    await alice.chmod(app_uid, "750")
    newer = await alice.events(after=last)
    assert [(e.action, e.object, e.reason) for e in newer] == [("chmod", app_uid, "0700 -> 0750")]


async def test_standard_user_sees_only_events_of_his_objects(grid: Any, tmp_path: Path) -> None:
    alice = await grid.add_user("alice")
    bob = await grid.add_user("bob")
    alice_uid, bob_uid = await _uid(grid, "alice"), await _uid(grid, "bob")
    alice_objs = {alice_uid, *await _script_app(alice, "alice_app", tmp_path / "a", rights="0755")}
    bob_data, bob_app = await _script_app(bob, "bob_app", tmp_path / "b", rights="0755")
    bob_objs = {bob_uid, bob_data, bob_app}
    # alice may run bob's public application: the job is hers, bob's app stays his.
    job = await alice.submit(JobIn(app=bob_app))
    alice_objs.add(job.uid)
    bob_job = await bob.submit(JobIn(app=bob_app))
    bob_objs.add(bob_job.uid)

    for xw, mine, theirs, uid in (
        (alice, alice_objs, bob_objs, alice_uid),
        (bob, bob_objs, alice_objs, bob_uid),
    ):
        seen = await xw.events()
        assert {e.object for e in seen} >= mine - {uid}  # every object of one's own has its events
        for e in seen:
            assert e.object in mine or e.actor == uid, e
            assert e.object not in theirs, e
        for other in theirs:
            assert await xw.events(object_uid=other) == []

    everything = {e.object for e in await grid.admin.events()}
    assert everything >= alice_objs | bob_objs


async def test_job_waits_for_input_content_then_becomes_pending(grid: Any, tmp_path: Path) -> None:
    alice = await grid.add_user("alice")
    _, app_uid = await _script_app(alice, "wait_app", tmp_path)
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    d1 = await alice.create_data(_declared(one, b"first input\n"))
    d2 = await alice.create_data(_declared(two, b"second input\n"))
    job = await alice.submit(JobIn(app=app_uid, inputs=[d1.uid, d2.uid]))
    assert job.status is JobStatus.UNAVAILABLE
    _one(await alice.events(object_uid=job.uid), action="submit", to_status="UNAVAILABLE")

    await alice.upload(d1.uid, one)
    assert (await alice.get_job(job.uid)).status is JobStatus.UNAVAILABLE  # d2 still missing
    assert [e.action for e in await alice.events(object_uid=job.uid)] == ["submit"]

    await alice.upload(d2.uid, two)
    assert (await alice.get_job(job.uid)).status is JobStatus.PENDING
    ready = _one(await alice.events(object_uid=job.uid), action="inputs_ready")
    assert (ready.from_status, ready.to_status) == ("UNAVAILABLE", "PENDING")
    assert ready.reason is not None and d2.uid in ready.reason


async def test_job_waiting_for_another_users_data_is_released(grid: Any, tmp_path: Path) -> None:
    """Shared inputs: bob's job needs alice's public data; her upload must release his job."""
    alice = await grid.add_user("alice")
    bob = await grid.add_user("bob")
    _, app_uid = await _script_app(bob, "shared_app", tmp_path)
    shared = tmp_path / "shared.txt"
    data = await alice.create_data(
        _declared(shared, b"shared input\n").model_copy(update={"access_rights": "0755"})
    )
    job = await bob.submit(JobIn(app=app_uid, inputs=[data.uid]))
    assert job.status is JobStatus.UNAVAILABLE

    await alice.upload(data.uid, shared)
    assert (await bob.get_job(job.uid)).status is JobStatus.PENDING
    _one(await bob.events(object_uid=job.uid), action="inputs_ready", to_status="PENDING")
