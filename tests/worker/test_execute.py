"""worker.execute with real processes, under bubblewrap and under the rlimits fallback."""

from __future__ import annotations

import asyncio
import io
import stat
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from worker.execute import JobRun
from worker.sandbox import Limits

PY = "#!/usr/bin/python3\n"
SH = "#!/bin/sh\n"


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def names_in(results: Path) -> set[str]:
    with zipfile.ZipFile(results) as zf:
        return set(zf.namelist())


def read_member(results: Path, name: str) -> str:
    with zipfile.ZipFile(results) as zf:
        return zf.read(name).decode()


async def test_exit_code_and_stdout_propagate(runner: Any) -> None:
    out = await runner.run(SH + "echo hello out\necho hello err >&2\nexit 3\n")
    assert (out.status, out.return_code, out.reason) == ("exited", 3, "exit code 3")
    assert read_member(out.results, "stdout.txt") == "hello out\n"
    assert read_member(out.results, "stderr.txt") == "hello err\n"
    assert out.wall_seconds < 5


async def test_stdin_args_env_and_xw_variables_reach_the_job(runner: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("XW_WORKER_SECRET", "must-not-leak")
    script = PY + (
        "import json, os, sys\n"
        "json.dump({'argv': sys.argv[1:], 'stdin': sys.stdin.read(), 'env': dict(os.environ),\n"
        "           'cwd': os.getcwd(), 'uid': os.getuid()}, sys.stdout)\n"
    )
    stdin = runner.cached("stdin-data", "line one\nline two\n")
    job = runner.job(script, args=["a b", "c'd", "$HOME"], stdin=stdin, env={"FOO": "bar"})
    out = await job.run()
    assert out.status == "exited" and out.return_code == 0, read_member(out.results, "stderr.txt")
    import json

    seen = json.loads(read_member(out.results, "stdout.txt"))
    assert seen["argv"] == ["a b", "c'd", "$HOME"]
    assert seen["stdin"] == "line one\nline two\n"
    scratch = str(job.scratch)
    expected = {
        "XWJOBUID": job.spec.job_uid,
        "XWATTEMPTUID": job.spec.run,  # this run of the job (names its directory)
        "XWSCRATCHPATH": scratch,
        "XWBINPATH": str(job.exe_path),
        "HOME": scratch,
        "TMPDIR": "/tmp" if runner.sandbox.kind == "bwrap" else str(job.tmp),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "FOO": "bar",
    }
    env = dict(seen["env"])
    env.pop("PWD", None)  # bwrap's --chdir sets it
    assert env == expected
    assert seen["cwd"] == scratch
    if runner.sandbox.job_uid is not None:
        assert seen["uid"] == runner.sandbox.job_uid


async def test_cached_executable_is_copied_never_touched(runner: Any) -> None:
    job = runner.job(SH + "exit 0\n")
    before = job.spec.executable.read_bytes()
    out = await job.run()
    assert out.status == "exited" and out.return_code == 0
    assert stat.S_IMODE(job.spec.executable.stat().st_mode) == 0o644
    assert job.spec.executable.read_bytes() == before
    assert stat.S_IMODE(job.exe_path.stat().st_mode) == 0o555


async def test_wallclock_kills_the_job(runner: Any) -> None:
    limits = replace(runner.spec("").limits, wallclock=1)
    job = runner.job("#!/bin/sh\nsleep 30 &\nexec sleep 30\n", limits=limits)
    t0 = time.monotonic()
    watch = await runner.watch(job)
    out = watch.outcome
    assert time.monotonic() - t0 < 15  # far below the 30 s the job would run: it was stopped
    assert (out.status, out.return_code) == ("wallclock", None)
    assert "wallclock 1 s exceeded" in out.reason
    assert watch.most >= 2  # the check below can see the job's processes ...
    assert watch.processes() == []  # ... and none is left


async def test_kill_stops_the_job(runner: Any) -> None:
    job = runner.job(SH + "sleep 30\n")
    task = asyncio.create_task(runner.watch(job))
    await asyncio.sleep(0.5)
    assert not task.done()
    t0 = time.monotonic()
    job.kill("killed by request")
    watch = await asyncio.wait_for(task, 5)
    out = watch.outcome
    assert time.monotonic() - t0 < 15  # far below the 30 s the job would run: it was stopped
    assert (out.status, out.return_code, out.reason) == ("killed", None, "killed by request")
    assert watch.most >= 2
    assert watch.processes() == []


async def test_cancelling_run_kills_the_job(runner: Any) -> None:
    job = runner.job(SH + "sleep 30\n")
    task = asyncio.create_task(job.run())
    watch = runner.watcher(job)
    for _ in range(200):
        watch.look()
        if watch.most >= 1:
            break
        await asyncio.sleep(0.05)
    assert watch.most >= 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert watch.processes() == []


async def test_daemonized_leftovers_are_killed(runner: Any) -> None:
    # forked after the worker's first sample and gone before its second: only the XWJOBUID cookie finds them
    job = runner.job(SH + "sleep 0.1\nsetsid sleep 60 &\n(sleep 60 &)\nsleep 0.1\necho bye\n")
    watch = await runner.watch(job)
    assert watch.outcome is not None and watch.outcome.status == "exited"
    assert watch.most >= 3  # the job, and the two sleeps that escaped its session or its tree
    assert watch.processes() == []


async def test_memory_hog_is_contained(runner: Any) -> None:
    limits = replace(runner.spec("").limits, address_space=256 << 20)
    t0 = time.monotonic()
    out = await runner.run(PY + "b = bytearray(1 << 30)\nprint('allocated')\n", limits=limits)
    assert time.monotonic() - t0 < 15  # far below the job's own run time: it was stopped
    assert out.status == "exited" and out.return_code != 0
    assert "MemoryError" in read_member(out.results, "stderr.txt")
    assert "allocated" not in read_member(out.results, "stdout.txt")


async def test_cpu_limit_stops_a_busy_job(runner: Any) -> None:
    limits = replace(runner.spec("").limits, cpu_seconds=1)
    out = await runner.run(PY + "while True: pass\n", limits=limits)
    assert out.status == "exited"
    assert "SIGXCPU" in out.reason or "SIGKILL" in out.reason
    assert out.cpu_seconds < 4  # stopped near its 1 s limit (sampled every 0.5 s, so no lower bound)


async def test_file_size_limit(runner: Any) -> None:
    limits = replace(runner.spec("").limits, file_size=1 << 20)
    job = runner.job(PY + "open('big', 'wb').write(b'x' * (2 << 20))\n", limits=limits)
    out = await job.run()
    assert out.status == "exited" and out.return_code != 0
    assert (job.scratch / "big").stat().st_size <= 1 << 20


async def test_usage_is_sampled_live(runner: Any) -> None:
    # Burns 1.2 s of CPU (not of wall time), so a loaded machine only makes it slower, never wrong.
    job = runner.job(PY + "import time\nwhile time.process_time() < 1.2: pass\n")
    task = asyncio.create_task(job.run())
    cpu = rss = wall = 0.0
    for _ in range(300):
        await asyncio.sleep(0.1)
        cpu, rss, wall = job.usage()
        if cpu > 0.3 or task.done():
            break
    assert cpu > 0.3 and rss > 1 << 20 and wall > 0.3, "usage is sampled while the job runs"
    out = await task
    assert out.status == "exited" and out.return_code == 0
    assert out.cpu_seconds >= 1.0 and out.max_rss > 1 << 20 and out.wall_seconds >= 1.0


async def test_results_hold_outputs_and_new_or_changed_files_only(runner: Any) -> None:
    data = runner.cached("data-in", "unchanged input\n")
    bundle = runner.cached("bundle-in", zip_bytes({"dir/a.txt": b"A\n", "keep.txt": b"K\n"}))
    script = PY + (
        "import os\n"
        "open('dir/a.txt', 'a').write('more\\n')\n"
        "os.makedirs('out/deep')\n"
        "open('out/deep/new.txt', 'w').write('new\\n')\n"
        "os.symlink('/etc/passwd', 'link')\n"
        "os.mkfifo('pipe')\n"
        "print('done')\n"
    )
    job = runner.job(script, inputs=[("data.txt", data), ("bundle.zip", bundle)])
    out = await job.run()
    assert out.status == "exited" and out.return_code == 0, read_member(out.results, "stderr.txt")
    assert names_in(out.results) == {"stdout.txt", "stderr.txt", "dir/a.txt", "out/deep/new.txt"}
    assert read_member(out.results, "dir/a.txt") == "A\nmore\n"
    assert read_member(out.results, "stdout.txt") == "done\n"
    with zipfile.ZipFile(out.results) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}
    # the inputs were staged: the plain file under its data name, the zip extracted
    assert (job.scratch / "data.txt").read_text() == "unchanged input\n"
    assert (job.scratch / "keep.txt").read_text() == "K\n"
    job.cleanup()
    assert not job.dir.exists()


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("../evil.txt", "'..' component"),
        ("sub/../../evil.txt", "'..' component"),
        ("/var/tmp/xw-absolute-evil.txt", "absolute"),
        ("link", "symbolic link"),
    ],
)
async def test_unsafe_zip_input_fails_the_job_and_writes_nothing(
    plain_runner: Any, member: str, why: str
) -> None:
    info = zipfile.ZipInfo(member)
    data = b"evil\n"
    if member == "link":
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        data = b"../../../../etc"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("fine.txt", b"fine\n")
        zf.writestr(info, data)
    bundle = plain_runner.cached("bad-zip", buf.getvalue())
    job = plain_runner.job(SH + "echo ran > ran.txt\n", inputs=[("bundle.zip", bundle)])
    out = await job.run()
    assert (out.status, out.return_code) == ("failed", None)
    assert why in out.reason
    assert names_in(out.results) == {"stdout.txt", "stderr.txt"}
    assert not (job.scratch / "ran.txt").exists()
    assert sorted(p.name for p in job.dir.iterdir()) == [
        "bin",
        "results.zip",
        "scratch",
        "stderr.txt",
        "stdout.txt",
        "tmp",
    ]
    assert not (job.scratch / "fine.txt").exists()  # refused before anything was written
    for where in (job.dir, job.dir.parent, job.dir.parent.parent, Path("/var/tmp")):
        assert not (where / "evil.txt").exists()
    assert not Path("/var/tmp/xw-absolute-evil.txt").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ""])
async def test_unsafe_input_name_fails_the_job(plain_runner: Any, name: str) -> None:
    data = plain_runner.cached("plain", "x")
    out = await plain_runner.run(SH + "exit 0\n", inputs=[(name, data)])
    assert out.status == "failed" and "unsafe file name" in out.reason


async def test_input_size_cap(plain_runner: Any) -> None:
    bundle = plain_runner.cached("bomb", zip_bytes({"zeros": b"\0" * (1 << 20)}))
    out = await plain_runner.run(SH + "exit 0\n", inputs=[("b.zip", bundle)], max_input_bytes=1000)
    assert out.status == "failed" and "(at most" in out.reason


async def test_missing_interpreter_fails_to_start_or_exits_nonzero(runner: Any) -> None:
    out = await runner.run("#!/nonexistent/interpreter\n")
    assert out.return_code != 0
    assert out.status in ("failed", "exited")


async def test_kill_before_start_never_runs_it(plain_runner: Any) -> None:
    job = plain_runner.job(SH + "echo ran > ran.txt\n")
    job.kill("drained")
    out = await job.run()
    assert (out.status, out.reason) == ("killed", "drained")
    assert not (job.scratch / "ran.txt").exists()


async def test_jobs_root_the_job_uid_cannot_reach_is_refused(tmp_path: Path, plain_box: Any) -> None:
    if plain_box.job_uid is None:
        pytest.skip("jobs run as the worker's own uid when it is not root")
    exe = tmp_path / "exe"
    exe.write_text(SH + "exit 0\n")
    spec_limits = Limits(wallclock=5, cpu_seconds=None, address_space=None, file_size=None, processes=None)
    from worker.execute import JobSpec

    spec = JobSpec("j", None, exe, "prog", True, [], [], None, {}, spec_limits)
    # pytest's tmp_path lives under a 0o700 directory of root's
    out = await JobRun(spec, tmp_path / "jobs", plain_box).run()
    assert out.status == "failed" and "not traversable" in out.reason
