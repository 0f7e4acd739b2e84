"""worker.sandbox: detection, the bwrap command line, rlimits in the child, scratch ownership."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.sandbox import FALLBACK_WARNING, Limits, Sandbox, detect

BOX = Sandbox(
    kind="bwrap",
    job_uid=65534,
    job_gid=65534,
    bwrap="/usr/bin/bwrap",
    system_links=(("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", ""), ("sbin", "usr/sbin")),
)


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    """The (source, dest) arguments of every ``flag`` in argv."""
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_bwrap_command_shape() -> None:
    scratch = Path("/var/lib/xw/jobs/j1/scratch")
    bindir = Path("/var/lib/xw/jobs/j1/bin")
    argv, env = BOX.command(
        ["/var/lib/xw/jobs/j1/bin/prog", "a b"],
        scratch=scratch,
        ro_binds=[(bindir, bindir)],
        env={"XWJOBUID": "j1", "TOKEN": "s3cret"},
        tmp=Path("/var/lib/xw/jobs/j1/tmp"),
    )
    assert argv[0] == "/usr/bin/bwrap"
    head = argv[: argv.index("--")]
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--disable-userns"):
        assert flag in head
    assert head[head.index("--hostname") + 1] == "xwjob"
    assert ("/usr", "/usr") in pairs(head, "--ro-bind")
    assert ("usr/bin", "/bin") in pairs(head, "--symlink") and ("usr/sbin", "/sbin") in pairs(
        head, "--symlink"
    )
    assert ("/lib64", "/lib64") in pairs(head, "--ro-bind-try")  # a real directory on non-merged systems
    assert ("/etc", "/etc") in pairs(head, "--ro-bind-try")
    assert (str(bindir), str(bindir)) in pairs(head, "--ro-bind")
    assert pairs(head, "--bind") == [("/var/lib/xw/jobs/j1/tmp", "/tmp"), (str(scratch), str(scratch))]
    assert head[head.index("--proc") + 1] == "/proc" and head[head.index("--dev") + 1] == "/dev"
    assert head[head.index("--chdir") + 1] == str(scratch)
    assert head[head.index("--remount-ro") + 1] == "/"
    sources = {src for flag in ("--bind", "--ro-bind", "--ro-bind-try") for src, _ in pairs(head, flag)}
    for hidden in ("/", "/home", "/root", "/work", "/tmp", "/var/lib/xw", "/var/lib/xw/jobs"):
        assert hidden not in sources
    assert argv[argv.index("--") + 1 :] == ["/var/lib/xw/jobs/j1/bin/prog", "a b"]
    assert env == {"XWJOBUID": "j1", "TOKEN": "s3cret"}  # through exec: never visible in the host's ps
    assert not any("s3cret" in a for a in argv)


def test_bwrap_without_tmp_dir_uses_a_bounded_tmpfs() -> None:
    argv, _ = BOX.command(["x"], scratch=Path("/s"), ro_binds=[], env={})
    i = argv.index("--tmpfs")
    assert argv[i + 1] == "/tmp" and argv[i - 2] == "--size"


def test_rlimits_command_is_the_job_itself() -> None:
    box = Sandbox(kind="rlimits", job_uid=None, job_gid=None)
    assert box.command(["prog", "x"], scratch=Path("/s"), ro_binds=[], env={"A": "1"}) == (
        ["prog", "x"],
        {"A": "1"},
    )


def test_preexec_sets_the_limits_in_the_child() -> None:
    box = Sandbox(kind="rlimits", job_uid=None, job_gid=None)
    limits = Limits(
        wallclock=None, cpu_seconds=7, address_space=1 << 30, file_size=1 << 20, processes=50, open_files=64
    )
    code = (
        "import resource as r\n"
        "names = ('CPU', 'AS', 'FSIZE', 'NPROC', 'NOFILE', 'CORE')\n"
        "print([r.getrlimit(getattr(r, 'RLIMIT_' + n)) for n in names])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=box.preexec(limits),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str([(7, 8), (1 << 30,) * 2, (1 << 20,) * 2, (50, 50), (64, 64), (0, 0)])


def test_detect_rejects_unknown_preference() -> None:
    with pytest.raises(ValueError, match="unknown sandbox"):
        detect("docker")


def test_fallback_warns_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.sandbox"):
        box = detect("none")
    assert box.kind == "rlimits"
    assert FALLBACK_WARNING in caplog.text
    assert "network" in box.describe()


def test_detect_runs_jobs_unprivileged_when_root() -> None:
    box = detect("none")
    if os.geteuid() == 0:
        assert (box.job_uid, box.job_gid) == (65534, 65534)
        assert detect("none", run_as=(1234, 1234)).job_uid == 1234
        kwargs = box.spawn_kwargs(Limits(None, None, None, None, None))
        assert (kwargs["user"], kwargs["group"], kwargs["extra_groups"]) == (65534, 65534, [])
    else:
        assert box.job_uid is None
        with pytest.raises(RuntimeError):
            detect("none", run_as=(1234, 1234))


def test_detect_bwrap_proves_it_works(bwrap_box: Sandbox) -> None:
    assert bwrap_box.kind == "bwrap" and "namespaces" in bwrap_box.describe()
    assert detect("auto").kind == "bwrap"


def test_detect_bwrap_without_bwrap_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(
        RuntimeError, match="bubblewrap sandbox requested but unavailable: bwrap is not installed"
    ):
        detect("bwrap")
    assert detect("auto").kind == "rlimits"


def test_prepare_scratch_hands_the_tree_to_the_job_uid(workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    scratch = workdir / "jobs" / "s"
    (scratch / "sub").mkdir(parents=True)
    (scratch / "sub" / "f").write_text("x")
    (scratch / "link").symlink_to("/etc/passwd")
    BOX.prepare_scratch(scratch)
    for path in (scratch, scratch / "sub", scratch / "sub" / "f"):
        assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534)
    assert scratch.lstat().st_mode & 0o777 == 0o700
    assert (scratch / "link").lstat().st_uid == 65534
    assert Path("/etc/passwd").stat().st_uid == 0  # the symlink was not followed


def test_prepare_scratch_refuses_a_directory_the_job_cannot_reach(workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("jobs run as the worker's uid when it is not root")
    hidden = workdir / "private"
    hidden.mkdir()
    hidden.chmod(0o700)
    (hidden / "scratch").mkdir()
    with pytest.raises(RuntimeError, match="not traversable by the job uid 65534"):
        BOX.prepare_scratch(hidden / "scratch")
    with pytest.raises(RuntimeError, match=f"{hidden} is not traversable"):
        BOX.check_reachable(hidden / "jobs")
    hidden.chmod(0o711)
    BOX.check_reachable(hidden / "jobs")
