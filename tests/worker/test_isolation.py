"""What a job under bubblewrap cannot do; each check also shows the same thing works without the sandbox."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from worker.sandbox import detect

PY = "#!/usr/bin/python3\n"
SH = "#!/bin/sh\n"


def stdout_of(out: Any) -> str:
    with zipfile.ZipFile(out.results) as zf:
        return zf.read("stdout.txt").decode()


def stderr_of(out: Any) -> str:
    with zipfile.ZipFile(out.results) as zf:
        return zf.read("stderr.txt").decode()


async def test_job_sees_only_its_own_processes(bwrap_runner: Any) -> None:
    out = await bwrap_runner.run(SH + "ls /proc | grep -E '^[0-9]+$'\nhostname\n")
    assert out.status == "exited" and out.return_code == 0, stderr_of(out)
    lines = stdout_of(out).split()
    pids = [int(x) for x in lines[:-1]]
    assert lines[-1] == "xwjob"
    assert 1 <= len(pids) <= 5 and max(pids) < 10, pids  # bwrap's init, the shell, ls, grep
    assert str(os.getpid()) not in lines[:-1]


async def test_job_cannot_read_another_jobs_scratch(bwrap_runner: Any) -> None:
    first = bwrap_runner.job(SH + "echo top secret > secret.txt\n")
    out1 = await first.run()
    secret = first.scratch / "secret.txt"
    assert out1.status == "exited" and secret.read_text() == "top secret\n"  # it is there on the host
    out2 = await bwrap_runner.run(SH + f"cat {secret}\nls {first.dir}\n")
    assert out2.return_code != 0
    assert "top secret" not in stdout_of(out2)
    assert "No such file" in stderr_of(out2)


async def test_job_cannot_see_host_directories(bwrap_runner: Any, plain_runner: Any) -> None:
    cache = bwrap_runner.cached("some-cached-file", "cached\n").parent
    probe = SH + "".join(
        f"if ls {d} >/dev/null 2>&1; then echo visible {d}; else echo hidden {d}; fi\n"
        for d in ("/root", "/work", "/home", cache)
    )
    out = await bwrap_runner.run(probe)
    assert out.status == "exited", stderr_of(out)
    assert "visible" not in stdout_of(out), stdout_of(out)
    # the fallback runs the same probe and sees at least the cache and /work: the check is meaningful
    seen = stdout_of(await plain_runner.run(probe))
    assert f"visible {cache}" in seen and "visible /work" in seen


async def test_job_sees_only_mount_points_of_its_own_directory(bwrap_runner: Any) -> None:
    other = bwrap_runner.job(SH + "exit 0\n")
    await other.run()  # another job's directory exists on the host
    job = bwrap_runner.job(SH + f"ls -A {bwrap_runner.root}\necho --\nls -A {bwrap_runner.root / 'jobs'}\n")
    out = await job.run()
    above, _, own = stdout_of(out).partition("--\n")
    assert above.split() == ["jobs"]  # not cache/, not the other job: only the path to our mounts
    assert sorted(own.split()) == sorted([job.spec.job_uid])  # only our own job directory ...
    assert (bwrap_runner.root / "jobs" / other.spec.job_uid).is_dir()  # ... though the other is there


async def test_job_cannot_reach_the_hosts_network(bwrap_runner: Any, plain_runner: Any) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    script = PY + (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=3).close()\n"
        "except OSError as exc:\n"
        "    print('no connection:', exc); sys.exit(1)\n"
        "print('connected')\n"
        "print(open('/proc/net/dev').read())\n"
    )
    try:
        inside = await bwrap_runner.run(script)
        outside = await plain_runner.run(script)
    finally:
        server.close()
    assert inside.return_code == 1 and "no connection" in stdout_of(inside)
    assert outside.return_code == 0 and "connected" in stdout_of(outside)


async def test_only_loopback_inside(bwrap_runner: Any) -> None:
    out = await bwrap_runner.run(SH + "tail -n +3 /proc/net/dev | cut -d: -f1\n")
    assert stdout_of(out).split() == ["lo"]


async def test_tmp_is_private(bwrap_runner: Any) -> None:
    marker = f"xw-host-{uuid.uuid4().hex}"
    host_file = Path("/tmp") / marker
    host_file.write_text("host\n")
    job_marker = Path("/tmp") / f"xw-job-{uuid.uuid4().hex}"
    try:
        job = bwrap_runner.job(
            SH + f"test -e /tmp/{marker} && echo sees-host-tmp\necho job > {job_marker}\ncat {job_marker}\n"
        )
        out = await job.run()
        assert out.status == "exited", stderr_of(out)
        assert stdout_of(out) == "job\n"
        assert not job_marker.exists()  # the job's /tmp is its own ...
        assert (job.tmp / job_marker.name).read_text() == "job\n"  # ... kept in its job directory
    finally:
        host_file.unlink()


async def test_filesystem_outside_scratch_is_read_only(bwrap_runner: Any) -> None:
    targets = ["/usr/xw-test", "/etc/xw-test", "/xw-test", '"$XWBINPATH"', '"$(dirname "$XWBINPATH")/new"']
    script = SH + "".join(f"if touch {t} 2>/dev/null; then echo wrote {t}; fi\n" for t in targets)
    script += "echo ok > in-scratch.txt && echo scratch-writable\n"
    job = bwrap_runner.job(script)
    out = await job.run()
    assert out.status == "exited", stderr_of(out)
    assert stdout_of(out) == "scratch-writable\n"
    assert (job.scratch / "in-scratch.txt").read_text() == "ok\n"


def uid_in_use(uid: int) -> bool:
    return any(p.info["uids"] and p.info["uids"].real == uid for p in psutil.process_iter(["uids"]))


@contextlib.contextmanager
def spare_uid() -> Iterator[int]:
    """A uid no process uses, kept from concurrent test runs (which pick theirs the same way) until the end.

    The reservation is an abstract unix socket: the kernel drops it with its holder, however that ends.
    """
    for uid in range(61000, 62000):
        claim = socket.socket(socket.AF_UNIX)
        try:
            claim.bind(f"\0xwhep-test-uid-{uid}")
        except OSError:
            claim.close()
            continue
        with claim:
            if not uid_in_use(uid):
                yield uid
                return
    raise RuntimeError("no spare uid in 61000-61999")


NAIVE_BOMB = "import os\nwhile True:\n    os.fork()\n"
STUBBORN_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"


@pytest.mark.parametrize(
    ("bomb", "wallclock"), [(NAIVE_BOMB, 5), (STUBBORN_BOMB, 2)], ids=["naive", "stubborn"]
)
async def test_fork_bomb_is_contained(bwrap_runner: Any, bomb: str, wallclock: float) -> None:
    with contextlib.ExitStack() as stack:
        runner = bwrap_runner
        if os.geteuid() == 0:
            # RLIMIT_NPROC counts every process of a uid: give the bomb its own, so that jobs of other test
            # runs on this machine (as nobody, or bombs under their own spare uid) keep their share
            uid = stack.enter_context(spare_uid())
            runner = replace(bwrap_runner, sandbox=detect("bwrap", run_as=(uid, uid)))
        limits = replace(runner.spec("").limits, wallclock=wallclock, processes=64)
        job = runner.job(PY + bomb, limits=limits)
        t0 = time.monotonic()
        watch = await runner.watch(job, every=0.1)
        out = watch.outcome
        assert out is not None
        assert time.monotonic() - t0 < wallclock + 15  # stopped by the wallclock, not by itself
        assert out.status in ("exited", "wallclock"), out.reason
        if bomb is STUBBORN_BOMB:
            assert out.status == "wallclock"
            assert watch.pid_ns is not None and watch.most >= 32  # it did fork a lot ...
        assert watch.most <= 64 + 8, watch.most  # ... but RLIMIT_NPROC held (give or take bwrap itself)
        assert watch.processes() == []  # no process of the job remains
        if os.geteuid() == 0:
            assert not uid_in_use(runner.sandbox.job_uid)
        assert psutil.virtual_memory().available > 64 << 20  # the machine is fine


async def test_job_runs_unprivileged_without_capabilities(bwrap_runner: Any) -> None:
    out = await bwrap_runner.run(
        PY + "import json, os\nstatus = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "print(json.dumps({'uid': os.getuid(), 'cap': status['CapEff'].strip()}))\n"
    )
    seen = json.loads(stdout_of(out))
    assert seen["cap"] == "0000000000000000"
    if bwrap_runner.sandbox.job_uid is not None:
        assert seen["uid"] == bwrap_runner.sandbox.job_uid


async def test_job_cannot_create_user_namespaces(bwrap_runner: Any) -> None:
    out = await bwrap_runner.run(SH + "unshare -U true && echo nested-userns\n")
    assert "nested-userns" not in stdout_of(out)
