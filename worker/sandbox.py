"""Job sandboxes: bubblewrap namespaces when they work, rlimits and an unprivileged uid always."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import psutil

logger = logging.getLogger(__name__)

NOBODY = 65534
DEFAULT_OPEN_FILES = 1024
PROBE_TIMEOUT = 10.0
# Top-level directories that merged-usr systems make symlinks into /usr; bound read-only otherwise.
SYSTEM_LINKS = ("bin", "lib", "lib32", "lib64", "libx32", "sbin")
FALLBACK_WARNING = "no bubblewrap: jobs run with rlimits only, they can see the network and the filesystem"

PR_SET_CHILD_SUBREAPER = 36
LEFTOVER_TIMEOUT = 3.0
LEFTOVER_POLL = 0.05

Kind = Literal["bwrap", "rlimits"]

# (bwrap path, uid, gid) -> whether a trivial sandbox ran; probing forks, so do it once per process.
_probe_cache: dict[tuple[str, int | None, int | None], str | None] = {}


@dataclass(frozen=True)
class Limits:
    """Per-job resource limits; None means unlimited."""

    wallclock: float | None
    cpu_seconds: int | None
    address_space: int | None
    file_size: int | None
    processes: int | None
    open_files: int = DEFAULT_OPEN_FILES


@dataclass(frozen=True)
class Sandbox:
    """How jobs are confined: builds the argv, environment and child-side setup of one job process."""

    kind: Kind
    job_uid: int | None
    job_gid: int | None
    bwrap: str | None = None
    system_links: tuple[tuple[str, str], ...] = ()
    # Why bubblewrap is not used (kind "rlimits"): shown to the volunteer, who must opt in to that.
    unconfined_reason: str = ""

    def describe(self) -> str:
        """One line for logs and the host record."""
        who = f"jobs run as uid {self.job_uid}" if self.job_uid is not None else "jobs run as the worker"
        if self.kind == "bwrap":
            return f"bubblewrap: own pid/net/ipc/uts/mount namespaces, read-only system, rlimits; {who}"
        return f"rlimits only, no namespaces: jobs see the network and the filesystem; {who}"

    def command(
        self,
        argv: list[str],
        *,
        scratch: Path,
        ro_binds: list[tuple[Path, Path]],
        env: dict[str, str],
        tmp: Path | None = None,
        info_fd: int | None = None,
        rw_binds: Sequence[tuple[Path, Path]] = (),
    ) -> tuple[list[str], dict[str, str]]:
        """The argv to exec and its environment; ``tmp`` backs /tmp, ``info_fd`` gets bwrap's --info-fd."""
        if self.kind == "rlimits":
            return list(argv), dict(env)
        assert self.bwrap is not None
        # --unshare-all: user (when unprivileged), ipc, pid, net, uts, cgroup; nested userns refused.
        cmd = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns"]
        cmd += ["--die-with-parent", "--new-session", "--hostname", "xwjob"]
        if info_fd is not None:
            cmd += ["--info-fd", str(info_fd)]
        cmd += ["--ro-bind", "/usr", "/usr"]
        for name, target in self.system_links:
            if target:
                cmd += ["--symlink", target, f"/{name}"]
            else:
                cmd += ["--ro-bind-try", f"/{name}", f"/{name}"]
        cmd += ["--ro-bind-try", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev"]
        if tmp is not None:
            cmd += ["--bind", str(tmp), "/tmp"]
        else:
            cmd += ["--size", str(64 << 20), "--tmpfs", "/tmp"]
        for host, inside in ro_binds:
            cmd += ["--ro-bind", str(host), str(inside)]
        cmd += [arg for host, inside in rw_binds for arg in ("--bind", str(host), str(inside))]
        # Same path inside as outside, so XWSCRATCHPATH means the same thing to the job and to us.
        cmd += ["--bind", str(scratch), str(scratch), "--remount-ro", "/", "--chdir", str(scratch)]
        # The environment goes through exec (not --setenv) so values never show in the host's ps.
        return [*cmd, "--", *argv], dict(env)

    def preexec(self, limits: Limits) -> Callable[[], None]:
        """A child-side hook setting the job's rlimits (runs after the uid switch, before exec)."""
        settings: list[tuple[int, tuple[int, int]]] = [(resource.RLIMIT_CORE, (0, 0))]
        if limits.cpu_seconds is not None:
            # SIGXCPU at the soft limit, SIGKILL one second later if the job ignores it.
            settings.append((resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1)))
        for which, value in (
            (resource.RLIMIT_AS, limits.address_space),
            (resource.RLIMIT_FSIZE, limits.file_size),
            (resource.RLIMIT_NPROC, limits.processes),
            (resource.RLIMIT_NOFILE, limits.open_files),
        ):
            if value is not None:
                settings.append((which, (value, value)))

        def apply() -> None:
            for which, pair in settings:
                hard = resource.getrlimit(which)[1]
                if hard != resource.RLIM_INFINITY:
                    pair = (min(pair[0], hard), min(pair[1], hard))
                resource.setrlimit(which, pair)

        return apply

    def spawn_kwargs(self, limits: Limits) -> dict[str, Any]:
        """Keyword arguments for Popen/create_subprocess_exec: new session, rlimits, job uid."""
        kwargs: dict[str, Any] = {"start_new_session": True, "preexec_fn": self.preexec(limits)}
        if self.job_uid is not None:
            kwargs.update(user=self.job_uid, group=self.job_gid, extra_groups=[])
        return kwargs

    def prepare_scratch(self, path: Path) -> None:
        """Hand ``path`` (recursively, never following symlinks) to the job uid, mode 0o700."""
        if self.job_uid is None or self.job_gid is None:
            path.chmod(0o700)
            return
        self.check_reachable(path)
        uid, gid = self.job_uid, self.job_gid
        os.lchown(path, uid, gid)
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), uid, gid)
        path.chmod(0o700)

    def blocked_parents(self, path: Path) -> list[Path]:
        """The existing directories above ``path`` that the job uid may not traverse, outermost first."""
        uid = self.job_uid
        if uid is None:
            return []
        blocked = []
        for parent in reversed(path.resolve().parents):
            try:
                st = parent.stat()
            except FileNotFoundError:
                break
            if st.st_uid != uid and not st.st_mode & stat.S_IXOTH:
                blocked.append(parent)
        return blocked

    def check_reachable(self, path: Path) -> None:
        """Raise RuntimeError if the job uid cannot traverse to ``path`` (check the jobs root at start-up).

        The message names the exact command that fixes it: o+x lets others pass through a directory,
        not list or read it.
        """
        blocked = self.blocked_parents(path)
        if blocked:
            where = " ".join(shlex.quote(str(b)) for b in blocked)
            raise RuntimeError(
                f"{blocked[0]} is not traversable by the job uid {self.job_uid}, which must reach its "
                f"scratch directory: run 'chmod o+x {where}' or choose a --work-dir elsewhere"
            )


def _system_links() -> tuple[tuple[str, str], ...]:
    """Top-level system directories: (name, symlink target), target '' to bind the real directory."""
    present = [name for name in SYSTEM_LINKS if os.path.lexists(f"/{name}")]
    return tuple((n, os.readlink(f"/{n}") if os.path.islink(f"/{n}") else "") for n in present)


def read_info(fd: int) -> int | None:
    """Read bwrap's --info-fd JSON from ``fd`` to EOF (then close it): the namespace init's pid."""
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
        return int(json.loads(b"".join(chunks))["child-pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    finally:
        os.close(fd)


_PROBE_LIMITS = Limits(wallclock=None, cpu_seconds=None, address_space=None, file_size=None, processes=None)


def _probe(sandbox: Sandbox) -> str | None:
    """Run ``true`` in ``sandbox``; None if that worked, else why not."""
    key = (sandbox.bwrap or "", sandbox.job_uid, sandbox.job_gid)
    if key not in _probe_cache:
        become_subreaper()  # so that we, not the host's pid 1, reap bwrap's namespace init
        with tempfile.TemporaryDirectory(prefix="xwprobe-") as tmp:
            Path(tmp).chmod(0o755)
            info_r, info_w = os.pipe()
            argv, env = sandbox.command(
                ["true"], scratch=Path(tmp), ro_binds=[], env={"PATH": "/usr/bin:/bin"}, info_fd=info_w
            )
            kwargs = sandbox.spawn_kwargs(_PROBE_LIMITS) | {"env": env, "pass_fds": (info_w,)}
            try:
                done = subprocess.run(
                    argv,
                    cwd="/",
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=PROBE_TIMEOUT,
                    **kwargs,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                result: str | None = f"{argv[0]}: {exc}"
            else:
                err = done.stderr.decode(errors="replace").strip().splitlines()
                result = None if done.returncode == 0 else f"exit {done.returncode}: {' '.join(err[-2:])}"
            finally:
                os.close(info_w)
                inner = read_info(info_r)
            if inner is not None:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(inner, 0)
        _probe_cache[key] = result
    return _probe_cache[key]


def detect(prefer: str = "auto", *, run_as: tuple[int, int] | None = None) -> Sandbox:
    """The best sandbox here: "auto" (bwrap if a trial run works, else rlimits), "bwrap" or "none"."""
    if prefer not in ("auto", "bwrap", "none"):
        raise ValueError(f"unknown sandbox preference {prefer!r} (expected auto, bwrap or none)")
    job_uid: int | None = None
    job_gid: int | None = None
    if os.geteuid() == 0:
        job_uid, job_gid = run_as or (NOBODY, NOBODY)
    elif run_as is not None:
        raise RuntimeError("only a worker running as root can choose the uid its jobs run as")
    fallback = Sandbox(kind="rlimits", job_uid=job_uid, job_gid=job_gid)
    if prefer == "none":
        logger.warning("%s (sandbox disabled by configuration)", FALLBACK_WARNING)
        return replace(fallback, unconfined_reason="the sandbox is disabled (--sandbox none)")
    found = shutil.which("bwrap")
    if found is None:
        why: str | None = "bwrap is not installed (apt-get install bubblewrap)"
    else:
        sandbox = Sandbox("bwrap", job_uid, job_gid, bwrap=found, system_links=_system_links())
        why = _probe(sandbox)
        if why is None:
            logger.info("sandbox: %s", sandbox.describe())
            return sandbox
        why = f"bwrap does not work here ({why}); are unprivileged user namespaces enabled?"
    if prefer == "bwrap":
        raise RuntimeError(f"bubblewrap sandbox requested but unavailable: {why}")
    logger.warning("%s: %s", FALLBACK_WARNING, why)
    return replace(fallback, unconfined_reason=why or "")


# --- runtime: the processes of one job ---------------------------------------------------------------

_tops: set[int] = set()  # top pids of jobs not yet reaped by their JobRun: the orphan sweep skips them
_subreaper: list[bool] = []


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans (once); whether that worked."""
    if not _subreaper:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _subreaper.append(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
        except (OSError, AttributeError):
            _subreaper.append(False)
    return _subreaper[0]


def _kill(p: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        p.kill()  # psutil refuses to signal a pid that now belongs to another process


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class JobProcesses:
    """The processes of one running job: sampled usage, SIGKILL for all of them, the final sweep."""

    # bwrap exits without reaping its namespace init, which is then orphaned: the worker makes itself
    # a child subreaper and reaps it here, rather than trust the host's pid 1 to do it.

    def __init__(self, sandbox: Sandbox, pid: int) -> None:
        self.sandbox = sandbox
        self.pid = pid  # the top process (bwrap, or the job): also its session and process group id
        self.top = psutil.Process(pid)
        self.started = self.top.create_time()
        self.inner: psutil.Process | None = None  # bwrap's namespace init: killing it kills the sandbox
        self.seen: dict[int, psutil.Process] = {}
        self.reaped = False
        self.cpu = 0.0  # the larger of the live samples and the usage of reaped processes
        self.max_rss = 0
        self._reaped_cpu = 0.0
        _tops.add(pid)

    def set_inner(self, pid: int) -> None:
        """Record the namespace init's pid (from bwrap's --info-fd)."""
        with contextlib.suppress(psutil.Error):
            self.inner = psutil.Process(pid)

    def mark_reaped(self, usage: resource.struct_rusage) -> None:
        """The top process was waited for: its pid (and group id) may now be reused."""
        self.reaped = True
        _tops.discard(self.pid)
        self._account(usage)

    def _account(self, usage: resource.struct_rusage) -> None:
        """Add a reaped process's usage (which includes its own reaped descendants)."""
        self._reaped_cpu += usage.ru_utime + usage.ru_stime
        self.cpu = max(self.cpu, self._reaped_cpu)
        self.max_rss = max(self.max_rss, usage.ru_maxrss * 1024)

    def sample(self) -> None:
        """Add up cpu and rss over the live tree; remember every process seen."""
        try:
            procs = [self.top, *self.top.children(recursive=True)]
        except psutil.Error:
            return
        self.seen = {pid: p for pid, p in self.seen.items() if p.is_running()}
        cpu, rss = 0.0, 0
        for p in procs:
            if p.pid != self.pid:
                self.seen.setdefault(p.pid, p)
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu += t.user + t.system + t.children_user + t.children_system
                    rss += p.memory_info().rss
            except psutil.Error:
                continue
        self.cpu = max(self.cpu, cpu)
        self.max_rss = max(self.max_rss, rss)

    def kill_inside(self) -> None:
        """SIGKILL everything below the top process (under bwrap, the namespace init takes all with it)."""
        victims = dict(self.seen)
        if self.inner is not None:
            victims[self.inner.pid] = self.inner
        with contextlib.suppress(psutil.Error):
            victims.update((p.pid, p) for p in self.top.children(recursive=True))
        victims.pop(self.pid, None)
        for p in victims.values():
            _kill(p)

    def kill_group(self) -> None:
        """SIGKILL the top process's group; never once it is reaped (the id could be reused)."""
        if not self.reaped:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def session(self) -> list[psutil.Process]:
        """The processes in the job's session (under bwrap: the namespace init before its setsid).

        Once the top process is reaped, its pid (the session id) stays reserved only while a process of
        the session lives; with none left, the kernel may give it to a new process, often the session
        leader of another job. So if that pid names a process, before or after the scan, nothing of the
        job is in the session and whatever has that session id belongs to someone else.
        """
        if self.reaped and psutil.pid_exists(self.pid):
            return []
        found = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.pid and p.create_time() >= self.started:
                    found.append(p)
            except (OSError, psutil.Error):
                continue
        if self.reaped and psutil.pid_exists(self.pid):
            return []
        return found

    def sweep(self) -> int:
        """After the end: kill what is left (seen, or in the session), reap it; survivors (blocking)."""
        victims = list(self.seen.values()) + ([self.inner] if self.inner is not None else [])
        victims += self.session()
        for p in victims:
            _kill(p)
        known = {p.pid for p in victims}
        deadline = time.monotonic() + LEFTOVER_TIMEOUT
        while True:
            victims = [p for p in victims if _alive(p)]
            self._reap_orphans(known)
            if not victims or time.monotonic() > deadline:
                return len(victims)
            time.sleep(LEFTOVER_POLL)

    def _reap_orphans(self, known: set[int]) -> None:
        """Reap zombie children of ours that are job debris (never a job's unreaped top process)."""
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return
        for child in children:
            if child.pid in _tops:
                continue
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    continue
                uid = self.sandbox.job_uid
                if child.pid in known or (uid is not None and child.uids().real == uid):
                    pid, _, usage = os.wait4(child.pid, os.WNOHANG)
                    if pid and child.pid in known:
                        self._account(usage)  # under bwrap: the namespace init, so the whole job
            except (psutil.Error, ChildProcessError):
                continue
