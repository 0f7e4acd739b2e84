"""A restarted worker kills what a killed predecessor left running in its jobs directory, and nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

from worker.daemon import kill_leftovers


def test_kill_leftovers_kills_only_processes_of_the_jobs_directory(tmp_path: Path) -> None:
    jobs = tmp_path / "w1" / "jobs"
    (jobs / "j1").mkdir(parents=True)
    other = tmp_path / "w2" / "jobs" / "j2"
    other.mkdir(parents=True)
    nap = [sys.executable, "-c", "import time; time.sleep(60)"]  # extra argv is ignored, like a job's path
    mine = subprocess.Popen([*nap, str(jobs / "j1" / "marker")])
    theirs = subprocess.Popen([*nap, str(other / "marker")])
    try:
        killed = kill_leftovers(jobs)
        assert killed == [mine.pid]
        assert mine.wait(timeout=10) != 0
        assert psutil.pid_exists(theirs.pid) and theirs.poll() is None
    finally:
        for p in (mine, theirs):
            p.kill()
            p.wait()
