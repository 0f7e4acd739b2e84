"""A worker never runs strangers' jobs unconfined by accident: no sandbox, no work, unless opted out."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from common.enums import JobStatus
from common.schemas import JobIn

FINAL = {JobStatus.COMPLETED, JobStatus.ERROR}


def _path_without_bwrap(tmp: Path) -> str:
    """A PATH like ours with every bwrap left out (a machine where bubblewrap is not installed)."""
    dirs = [d for d in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if d]
    keep = [d for d in dirs if not (Path(d) / "bwrap").exists()]
    empty = tmp / "no-bwrap"
    empty.mkdir(exist_ok=True)
    return os.pathsep.join([*keep, str(empty)])


async def _hosts_named(lg, name: str) -> list[object]:  # type: ignore[no-untyped-def]
    return [h for h in await lg.admin.hosts() if h.name == name]


async def test_worker_without_bubblewrap_refuses_to_start(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    env = dict(os.environ, PATH=_path_without_bwrap(lg.tmp))
    proc = await lg.add_worker("nobox", wait=False, env=env)
    rc = await asyncio.wait_for(proc.wait(), 30)
    log = lg.log("nobox")
    assert rc == 1, log
    assert "no working sandbox" in log and "bwrap is not installed" in log, log
    assert "--allow-unsandboxed-jobs" in log and "apt-get install bubblewrap" in log, log
    assert "Traceback" not in log
    assert await _hosts_named(lg, "nobox") == [], "a refusing worker must not enrol"


async def test_sandbox_none_also_needs_the_explicit_flag(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    proc = await lg.add_worker("plain", "--sandbox", "none", wait=False)
    assert await asyncio.wait_for(proc.wait(), 30) == 1
    assert "--allow-unsandboxed-jobs" in lg.log("plain")


async def test_opted_out_worker_runs_jobs_and_says_so(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    env = dict(os.environ, PATH=_path_without_bwrap(lg.tmp))
    await lg.add_worker("optout", "--slots", "1", "--allow-unsandboxed-jobs", env=env)
    assert "WARNING: rlimits only, no namespaces" in lg.log("optout")
    host = (await _hosts_named(lg, "optout"))[0]
    assert host.sandbox == "rlimits"  # type: ignore[attr-defined]
    alice = await lg.grid.add_user("alice")
    app = await lg.script_app(alice, "hello", "echo unconfined\n")
    job = await alice.submit(JobIn(app=app, expected_host="optout"))
    done = await lg.wait_job(alice, job.uid, FINAL)
    assert done.status is JobStatus.COMPLETED, done.status_reason


async def test_work_dir_check_names_the_chmod_or_fixes_its_own(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    if os.geteuid() != 0:
        pytest.skip("jobs run as the worker's own uid when it is not root: no directory to open")
    private = lg.work_root / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    proc = await lg.add_worker("hidden", "--work-dir", str(private / "new" / "w"), wait=False)
    assert await asyncio.wait_for(proc.wait(), 30) == 1
    assert f"run 'chmod o+x {private}'" in lg.log("hidden"), lg.log("hidden")

    private.chmod(0o711)  # the volunteer ran it; the directories the worker creates it opens itself
    old = os.umask(0o077)  # the worker inherits it: what it creates starts closed to others
    try:
        await lg.add_worker("hidden2", "--work-dir", str(private / "new2" / "deeper" / "w"))
    finally:
        os.umask(old)
    for d in (private / "new2", private / "new2" / "deeper"):
        assert d.stat().st_mode & stat.S_IXOTH, oct(d.stat().st_mode)
