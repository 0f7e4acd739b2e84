"""Rights through the real API: private apps, chmod, submit needs execute, job rights = requested AND app."""

from __future__ import annotations

import pytest

from common.enums import AppType
from common.errors import Forbidden, NotFound
from common.schemas import AppIn, JobIn


async def _script_app(xw, name: str, tmp_path, rights: str | None = None):  # type: ignore[no-untyped-def]
    script = tmp_path / f"{name}.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    data = await xw.send_file(script, access_rights="1700")
    return await xw.send_app(
        AppIn(
            name=name,
            type=AppType.SCRIPT,
            binaries=[{"os": "ANY", "cpu": "ANY", "data": data.uid}],
            access_rights=rights,
        )
    )


async def test_private_app_invisible_until_chmod_755(grid, tmp_path) -> None:  # type: ignore[no-untyped-def]
    alice = await grid.add_user("alice")
    bob = await grid.add_user("bob")
    app = await _script_app(alice, "alice_app", tmp_path)
    assert app.access_rights == "0700"
    assert [a.name for a in await bob.apps()] == []
    with pytest.raises(NotFound):
        await bob.get_app(app.uid)
    with pytest.raises(NotFound):
        await bob.submit(JobIn(app=app.uid))
    assert await bob.jobs() == []

    await alice.chmod(app.uid, "755")
    assert [a.name for a in await bob.apps()] == ["alice_app"]
    job = await bob.submit(JobIn(app=app.uid, args="x", access_rights="0755"))
    assert job.status.value == "PENDING"
    assert job.access_rights == "0755"


async def test_readable_but_not_executable_app_is_forbidden(grid, tmp_path) -> None:  # type: ignore[no-untyped-def]
    alice = await grid.add_user("alice")
    bob = await grid.add_user("bob")
    app = await _script_app(alice, "ro_app", tmp_path, rights="0744")
    with pytest.raises(Forbidden, match="execute"):
        await bob.submit(JobIn(app=app.uid))


async def test_job_rights_are_requested_and_app_rights(grid, tmp_path) -> None:  # type: ignore[no-untyped-def]
    alice = await grid.add_user("alice")
    app = await _script_app(alice, "mask_app", tmp_path, rights="0751")
    job = await alice.submit(JobIn(app=app.uid, access_rights="0777"))
    assert job.access_rights == "0751"


async def test_only_owner_or_admin_can_chmod(grid, tmp_path) -> None:  # type: ignore[no-untyped-def]
    alice = await grid.add_user("alice")
    bob = await grid.add_user("bob")
    app = await _script_app(alice, "pub_app", tmp_path, rights="0755")
    with pytest.raises(Forbidden):
        await bob.chmod(app.uid, "777")
    assert (await grid.admin.chmod(app.uid, "0x700")).access_rights == "0700"
