"""Inputs of unfinished jobs: they cannot be deleted, and their arrival releases jobs of any owner."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import Conflict
from common.schemas import AppIn, DataIn, JobIn


async def test_input_of_waiting_job_cannot_be_deleted(grid, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice = await grid.add_user("alice")
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\ncat in.txt\n")
    exe = await alice.send_file(script, access_rights="1700")
    app = await alice.send_app(
        AppIn(name="cat", type="script", binaries=[{"os": "ANY", "cpu": "ANY", "data": exe.uid}])
    )
    later = await alice.create_data(DataIn(name="in.txt"))
    job = await alice.submit(JobIn(app=app.uid, inputs=[later.uid]))
    assert job.status.value == "UNAVAILABLE"
    with pytest.raises(Conflict, match="unfinished job"):
        await alice.remove(later.uid)
    assert (await alice.get_data(later.uid)).status.value == "UNAVAILABLE"

    await alice.remove(job.uid)  # once the job is gone the data may go too
    await alice.remove(later.uid)
    assert await alice.datas(name="in.txt") == []
