"""Fixtures for worker tests: a job-reachable work directory, both sandboxes, and a job runner."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass
class Watch:
    """What a test saw of a job's processes while it ran."""

    job: JobRun
    pid_ns: int | None = None
    most: int = 0
    outcome: Outcome | None = None

    def look(self) -> None:
        inner = self.job._procs.inner if self.job._procs is not None else None
        if self.pid_ns is None and inner is not None:
            self.pid_ns = _pid_ns(inner.pid)
        self.most = max(self.most, len(self.processes()))

    def processes(self) -> list[str]:
        """Processes of this job: in its session, its pid namespace, or running from its directory.

        Not by uid: other test runs on this machine run jobs as the same uid.
        """
        found = []
        marker = str(self.job.dir)
        for p in psutil.process_iter(["name", "status", "cmdline"]):
            try:
                mine = (
                    (self.job.pid is not None and os.getsid(p.pid) == self.job.pid)
                    or (self.pid_ns is not None and _pid_ns(p.pid) == self.pid_ns)
                    or any(marker in arg for arg in p.info["cmdline"] or [])
                    or p.environ().get("XWJOBUID") == self.job.spec.job_uid
                )
            except (OSError, psutil.Error):
                continue
            if mine:
                found.append(f"{p.pid} {p.info['name']} {p.info['status']}")
        return found


@dataclass
class Runner:
    """Builds JobSpecs for scripts and runs them in one sandbox."""

    root: Path
    sandbox: Sandbox
    count: int = 0

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
        return Watch(job)

    async def watch(self, job: JobRun, every: float = 0.02) -> Watch:
        """Run ``job`` while noting its pid namespace and peak process count (for containment checks)."""
        task = asyncio.create_task(job.run())
        watch = Watch(job)
        while not task.done():
            watch.look()
            await asyncio.sleep(every)
        watch.outcome = await task
        return watch

    def job(self, script: str, **kw: Any) -> JobRun:
        return JobRun(self.spec(script, **kw), self.root / "jobs", self.sandbox)

    async def run(self, script: str, **kw: Any) -> Outcome:
        return await self.job(script, **kw).run()


@pytest.fixture
def runner(workdir: Path, box: Sandbox) -> Runner:
    return Runner(workdir, box)


@pytest.fixture
def bwrap_runner(workdir: Path, bwrap_box: Sandbox) -> Runner:
    return Runner(workdir, bwrap_box)


@pytest.fixture
def plain_runner(workdir: Path, plain_box: Sandbox) -> Runner:
    return Runner(workdir, plain_box)
