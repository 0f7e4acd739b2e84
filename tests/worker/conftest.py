"""Fixtures for worker tests: a job-reachable work directory, both sandboxes, and a job runner."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from worker.execute import JobRun, JobSpec, Outcome
from worker.sandbox import Limits, Sandbox, detect

# /var/tmp, not /tmp: under bwrap the job's /tmp is its own, so paths there would prove nothing.
WORK_BASE = Path("/var/tmp")
NO_LIMITS = Limits(wallclock=20, cpu_seconds=None, address_space=None, file_size=None, processes=None)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A worker directory the job uid can traverse (0o711), holding jobs/ and cache/."""
    path = Path(tempfile.mkdtemp(prefix="xwtest-", dir=WORK_BASE))
    path.chmod(0o711)
    (path / "jobs").mkdir(mode=0o711)
    (path / "jobs").chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def bwrap_box() -> Sandbox:
    """The bubblewrap sandbox, or a skip saying why it is missing."""
    try:
        return detect("bwrap")
    except RuntimeError as exc:
        pytest.skip(f"bubblewrap not available: {exc}")


@pytest.fixture
def plain_box() -> Sandbox:
    """The rlimits-only fallback."""
    return detect("none")


@pytest.fixture(params=["bwrap", "rlimits"])
def box(request: pytest.FixtureRequest) -> Sandbox:
    """Each sandbox in turn (bwrap skipped with its reason when unavailable)."""
    name = "bwrap_box" if request.param == "bwrap" else "plain_box"
    result: Sandbox = request.getfixturevalue(name)
    return result


def _pid_ns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def _hold_pid_ns(job: JobRun) -> int:
    """An open fd on the job's pid namespace (-1 until bwrap has told its init): while it is open, no
    later namespace gets its inode number."""
    inner = job._procs.inner if job._procs is not None else None
    if inner is None:
        return -1
    try:
        fd = os.open(f"/proc/{inner.pid}/ns/pid", os.O_RDONLY)
    except OSError:
        return -1
    if not inner.is_running():  # the init was gone and its pid reused before the open
        os.close(fd)
        return -1
    return fd


@dataclass
class Watch:
    """What a test saw of a job's processes while it ran (close it: it holds the pid namespace open)."""

    job: JobRun
    pid_ns_fd: int = -1
    most: int = 0
    outcome: Outcome | None = None

    @property
    def pid_ns(self) -> int | None:
        """The inode number of the job's pid namespace, once seen."""
        return os.fstat(self.pid_ns_fd).st_ino if self.pid_ns_fd >= 0 else None

    def look(self) -> None:
        if self.pid_ns_fd < 0:
            self.pid_ns_fd = _hold_pid_ns(self.job)
        self.most = max(self.most, len(self.processes()))

    def processes(self) -> list[str]:
        """Processes of this job: in its pid namespace, running from its directory, with its XWJOBUID, or
        in its session.

        Only by what cannot name another process once the job has ended (other test runs on this machine
        run jobs too): not by uid; by the namespace's inode number only while we hold the namespace open
        (an ended namespace's number goes to the next one created); by session only while the top's pid
        names no process (once reaped, that pid, the session id, goes to a new process, often another
        job's bwrap; a process left in the session keeps it reserved).
        """
        ns, top = self.pid_ns, self.job.pid
        procs = self.job._procs
        reaped = procs is None or procs.reaped
        session = top is not None and not (reaped and psutil.pid_exists(top))
        found = []
        marker = str(self.job.dir)
        for p in psutil.process_iter(["name", "status", "cmdline"]):
            try:
                mine = (
                    (ns is not None and _pid_ns(p.pid) == ns)
                    or any(marker in arg for arg in p.info["cmdline"] or [])
                    or p.environ().get("XWJOBUID") == self.job.spec.job_uid
                    or (session and os.getsid(p.pid) == top)
                )
            except (OSError, psutil.Error):
                continue
            if mine:
                found.append(f"{p.pid} {p.info['name']} {p.info['status']}")
        if session and reaped and top is not None and psutil.pid_exists(top):
            return self.processes()  # the top's pid was given to a new process during the scan
        return found

    def close(self) -> None:
        if self.pid_ns_fd >= 0:
            os.close(self.pid_ns_fd)
            self.pid_ns_fd = -1


@dataclass
class Runner:
    """Builds JobSpecs for scripts and runs them in one sandbox."""

    root: Path
    sandbox: Sandbox
    count: int = 0
    watches: list[Watch] = field(default_factory=list)

    def spec(self, script: str, **kw: Any) -> JobSpec:
        self.count += 1
        uid = kw.pop("job_uid", f"job{self.count}-{uuid.uuid4().hex[:8]}")
        exe = self.cached(f"exe-{uid}", script)
        values: dict[str, Any] = {
            "job_uid": uid,
            "label": None,
            "executable": exe,
            "exe_name": "prog",
            "is_script": True,
            "args": [],
            "inputs": [],
            "stdin": None,
            "env": {},
            "limits": NO_LIMITS,
        }
        values.update(kw)
        return JobSpec(**values)

    def cached(self, name: str, content: str | bytes) -> Path:
        """A file as the cache holds it: plain, not executable."""
        path = self.root / "cache" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        path.chmod(0o644)
        return path

    def watcher(self, job: JobRun) -> Watch:
        watch = Watch(job)
        self.watches.append(watch)  # closed when the test ends
        return watch

    async def watch(self, job: JobRun, every: float = 0.02) -> Watch:
        """Run ``job`` while noting its pid namespace and peak process count (for containment checks)."""
        task = asyncio.create_task(job.run())
        watch = self.watcher(job)
        while not task.done():
            watch.look()
            await asyncio.sleep(every)
        watch.outcome = await task
        return watch

    def job(self, script: str, **kw: Any) -> JobRun:
        return JobRun(self.spec(script, **kw), self.root / "jobs", self.sandbox)

    async def run(self, script: str, **kw: Any) -> Outcome:
        return await self.job(script, **kw).run()


def _runner(workdir: Path, box: Sandbox) -> Iterator[Runner]:
    runner = Runner(workdir, box)
    try:
        yield runner
    finally:
        for watch in runner.watches:
            watch.close()


@pytest.fixture
def runner(workdir: Path, box: Sandbox) -> Iterator[Runner]:
    yield from _runner(workdir, box)


@pytest.fixture
def bwrap_runner(workdir: Path, bwrap_box: Sandbox) -> Iterator[Runner]:
    yield from _runner(workdir, bwrap_box)


@pytest.fixture
def plain_runner(workdir: Path, plain_box: Sandbox) -> Iterator[Runner]:
    yield from _runner(workdir, plain_box)
