"""``xwgrid up`` tells the truth: ready only once its workers enrolled, and a worker's exit on its console."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.grid.test_unsandboxed import _path_without_bwrap

XWGRID = str(Path(sys.executable).parent / "xwgrid")


@pytest.fixture
def traversable_dir() -> Iterator[Path]:
    """A directory jobs running as nobody can reach (pytest's tmp_path is 0700 under root)."""
    top = Path(tempfile.mkdtemp(prefix="xwgrid-up-"))
    top.chmod(0o711)
    yield top
    shutil.rmtree(top, ignore_errors=True)


async def _run_grid(home: Path, *args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        XWGRID,
        "up",
        "--dir",
        str(home),
        "--slots",
        "1",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )


async def _finish(proc: asyncio.subprocess.Process, timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = await proc.communicate()
        raise AssertionError(f"xwgrid did not exit\n{out.decode()}\n{err.decode()}") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ready_only_once_both_workers_enrolled(traversable_dir: Path) -> None:
    proc = await _run_grid(traversable_dir / "grid")
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
    assert "xwgrid ready" in line and "2 of 2 worker(s) enrolled" in line, line
    proc.send_signal(signal.SIGTERM)
    rc, _, err = await _finish(proc)
    assert rc == 0, err
    assert "exited" not in err, "a worker stopped by xwgrid itself is not reported as dying"


async def test_workers_that_cannot_start_are_reported_and_the_grid_is_not_ready(
    traversable_dir: Path,
) -> None:
    env = dict(os.environ, PATH=_path_without_bwrap(traversable_dir))
    rc, out, err = await _finish(await _run_grid(traversable_dir / "grid", env=env), timeout=120)
    assert rc == 1
    assert "xwgrid ready" not in out
    for name in ("grid-w1", "grid-w2"):
        assert f"xwgrid: worker {name} exited (1): Error: no working sandbox" in err, err
    assert "no worker is running" in err


async def test_a_home_the_job_uid_cannot_reach_names_the_chmod(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only a root worker runs jobs as another uid (nobody)")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    rc, out, err = await _finish(await _run_grid(closed / "grid"), timeout=120)
    assert rc == 1 and "xwgrid ready" not in out
    assert "not traversable by the job uid 65534" in err and "chmod o+x" in err, err
