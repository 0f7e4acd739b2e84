"""Isolation of jobs on a real local grid (needs bubblewrap; skipped with the reason otherwise)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from common.enums import JobStatus
from common.schemas import JobIn

FINAL = {JobStatus.COMPLETED, JobStatus.ERROR}

PROBE = """#!/usr/bin/python3
import os, socket, sys
port = int(sys.argv[1])
try:
    socket.create_connection(("127.0.0.1", port), timeout=3).close()
    print("server: reachable")
except OSError as exc:
    print("server: blocked", type(exc).__name__)
pids = [p for p in os.listdir("/proc") if p.isdigit()]
print("pids:", len(pids))
print("root:", "visible" if os.path.exists("/root/.bashrc") or os.path.isdir("/work") else "hidden")
"""

SNOOP = """#!/bin/sh
mine="$XWSCRATCHPATH"
other=$(echo "$mine" | sed "s/$XWATTEMPTUID/$1/")
[ "$other" = "$mine" ] && echo "the other job's path is not known"
echo "secret" > secret.txt
if cat "$other/secret.txt" 2>/dev/null; then echo "read other: yes"; else echo "read other: no"; fi
sleep 4
"""


async def _require_bwrap(lg) -> None:  # type: ignore[no-untyped-def]
    kinds = {h.sandbox for h in await lg.admin.hosts()}
    if kinds != {"bwrap"}:
        pytest.skip(
            f"workers run without bubblewrap (sandbox: {sorted(kinds)}): isolation cannot be tested here"
        )


async def test_job_cannot_reach_server_or_see_processes(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    await _require_bwrap(lg)
    alice = await lg.grid.add_user("alice")
    app = await lg.script_app(alice, "probe", PROBE)
    port = urlsplit(lg.grid.url).port
    job = await alice.submit(JobIn(app=app, args=str(port)))
    done = await lg.wait_job(alice, job.uid, FINAL)
    out = (await lg.results(alice, done))["stdout.txt"].decode()
    assert "server: blocked" in out, out
    pids = int(out.split("pids:")[1].split()[0])
    assert pids <= 5, f"the job sees {pids} processes: {out}"
    assert "root: hidden" in out, out


async def test_job_cannot_read_another_jobs_scratch(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    await _require_bwrap(lg)
    alice = await lg.grid.add_user("alice")
    app = await lg.script_app(alice, "snoop", SNOOP)
    first = await alice.submit(JobIn(app=app, args="none", expected_host="w1"))
    running = await lg.wait_job(alice, first.uid, {JobStatus.RUNNING})
    assert running.attempt  # each run has a directory of its own, named after its attempt
    second = await alice.submit(JobIn(app=app, args=running.attempt, expected_host="w1"))
    done = await lg.wait_job(alice, second.uid, FINAL)
    out = (await lg.results(alice, done))["stdout.txt"].decode()
    assert "read other: no" in out and "not known" not in out, out
    assert "secret" not in out.replace("secret.txt", "")


async def test_fork_bomb_and_memory_hog_are_contained(local_grid) -> None:  # type: ignore[no-untyped-def]
    lg = local_grid
    await _require_bwrap(lg)
    alice = await lg.grid.add_user("alice")
    bomb = await lg.script_app(alice, "bomb", "#!/usr/bin/python3\nimport os\nwhile True:\n    os.fork()\n")
    hog = await lg.script_app(
        alice, "hog", "#!/usr/bin/python3\nb = bytearray(64 * 1024 ** 3)\nprint('allocated')\n"
    )
    fine = await lg.script_app(alice, "fine", "echo fine\n")
    b = await alice.submit(JobIn(app=bomb, wallclock=5))
    h = await alice.submit(JobIn(app=hog))
    b_done = await lg.wait_job(alice, b.uid, FINAL, timeout=60)
    h_done = await lg.wait_job(alice, h.uid, FINAL, timeout=60)
    assert b_done.status in FINAL
    assert h_done.status is JobStatus.COMPLETED and h_done.return_code not in (0, None)
    assert b"MemoryError" in (await lg.results(alice, h_done))["stderr.txt"]
    after = await alice.submit(JobIn(app=fine))
    ok = await lg.wait_job(alice, after.uid, FINAL, timeout=60)
    assert ok.status is JobStatus.COMPLETED, "the grid still runs jobs after the bomb"
    assert (await lg.results(alice, ok))["stdout.txt"] == b"fine\n"
