"""Run one job in its own directory: staged inputs, a sandboxed process, limits, live usage, results.zip."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from worker.bridge import JobPorts, PortBridge
from worker.results import InputError, Snapshot, build_results, safe_name, snapshot, stage_input
from worker.sandbox import JobProcesses, Limits, Sandbox, become_subreaper, read_info

logger = logging.getLogger(__name__)

DEFAULT_MAX_INPUT_BYTES = 4 << 30
JOB_PATH = "/usr/local/bin:/usr/bin:/bin"
SAMPLE_SECONDS = 0.5
POLL_SECONDS = 0.05  # only without pidfd support
KILL_POLL_SECONDS = 0.1
# We kill inside the sandbox first so bwrap sees its namespace end; only after this do we kill bwrap.
KILL_GRACE_SECONDS = 2.0
SIGNAL_ROUNDS = 5  # suspending a job: passes over its process tree until no new process shows up

Status = Literal["exited", "wallclock", "killed", "failed"]


@dataclass
class JobSpec:
    """Everything needed to run one job, with its files already in the cache."""

    job_uid: str
    label: str | None
    executable: Path
    exe_name: str
    is_script: bool  # scripts run through their shebang: copying and chmod 0o555 is all they need
    args: list[str]
    inputs: list[tuple[str, Path]]
    stdin: Path | None
    env: dict[str, str]
    limits: Limits
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    listen_ports: list[int] = field(default_factory=list)  # the job serves these (reached via open_listen)
    forward_ports: list[int] = field(default_factory=list)  # the job connects to 127.0.0.1:<port>
    # this run of the job (its attempt): names its directory, so two runs of one job never share one
    run_id: str = ""

    @property
    def run(self) -> str:
        return self.run_id or self.job_uid


@dataclass
class Outcome:
    """How a job ended and where its results are."""

    return_code: int | None
    status: Status
    reason: str
    results: Path
    wall_seconds: float
    cpu_seconds: float
    max_rss: int


class _JobLog(logging.LoggerAdapter[logging.Logger]):
    """Prefix log lines with ``[job=..]``."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        """Prefix ``msg``."""
        return f"[job={(self.extra or {}).get('job')}] {msg}", kwargs


def _exit_reason(code: int, sandbox: Sandbox) -> str:
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    if sandbox.kind == "bwrap" and 128 < code < 128 + signal.NSIG:
        # bwrap reports a job killed by signal N as exit code 128 + N
        return f"exit code {code} (signal {signal.Signals(code - 128).name}?)"
    return f"exit code {code}"


class JobRun(JobPorts):
    """One run of one job; ``await run()`` once, then read the Outcome and ``cleanup()``."""

    # Layout: jobs_root/<job_uid>/{bin/, scratch/, tmp/, stdout.txt, stderr.txt, results.zip}. bin/ holds a
    # read-only copy of the executable (the cached file is never touched); scratch/ is the job's working
    # directory and, with tmp/ (its /tmp), the only place it can write. A job with ports under bubblewrap
    # also has bin/xwbridge.py and sock/; JobPorts (worker.bridge) gives the methods to reach its ports.
    #
    # An unusable input (a zip with absolute, '..' or symlink members, over the size cap, two inputs with
    # one name) does not raise: run() returns status "failed" with the reason, having written nothing
    # outside scratch. kill() and usage() are for the event loop's thread.

    def __init__(self, spec: JobSpec, jobs_root: Path, sandbox: Sandbox) -> None:
        self.spec = spec
        self.sandbox = sandbox
        self.dir = jobs_root / safe_name(spec.run)
        self.bin_dir = self.dir / "bin"
        self.exe_path = self.bin_dir / safe_name(spec.exe_name)
        self.scratch = self.dir / "scratch"
        self.tmp = self.dir / "tmp"
        self.stdout_path = self.dir / "stdout.txt"
        self.stderr_path = self.dir / "stderr.txt"
        self.results_path = self.dir / "results.zip"
        self.ports = PortBridge(self.dir, spec.listen_ports, spec.forward_ports, sandbox)
        self._log = _JobLog(logger, {"job": spec.job_uid[:8]})
        self._ran = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._procs: JobProcesses | None = None
        self._pidfd = -1
        self._kill_reason: str | None = None
        self._wallclock_hit = False
        self._kill_requested = asyncio.Event()
        self._t0: float | None = None
        self._t1: float | None = None
        # Suspended while the machine's owner is busy (worker/busy.py): that time is not the job's.
        self._hold = False
        self._paused_since: float | None = None
        self._paused_total = 0.0

    @property
    def pid(self) -> int | None:
        """The top process (bwrap, or the job itself under rlimits); also its session and group id."""
        return self._proc.pid if self._proc is not None else None

    def usage(self) -> tuple[float, int, float]:
        """(cpu seconds, max rss bytes, wall seconds) so far, sampled every ~0.5 s; wall time leaves out
        the time the job spent suspended (its wallclock limit is on the time it could run)."""
        if self._t0 is None:
            return 0.0, 0, 0.0
        wall = self._run_seconds()
        procs = self._procs
        return (procs.cpu, procs.max_rss, wall) if procs else (0.0, 0, wall)

    def _run_seconds(self) -> float:
        """Seconds the job has been running, not counting the time it was suspended."""
        if self._t0 is None:
            return 0.0
        end = self._t1 if self._t1 is not None else time.monotonic()
        paused = self._paused_total
        if self._paused_since is not None:
            paused += max(end - self._paused_since, 0.0)
        return max(end - self._t0 - paused, 0.0)

    @property
    def suspended(self) -> bool:
        return self._hold

    def suspend(self) -> None:
        """SIGSTOP every process of the job (again: catches processes started since); a job that has
        not started yet starts stopped. Its wallclock stands still until ``resume()``."""
        if self._kill_requested.is_set():
            return  # being killed: it must be free to die
        self._hold = True
        if self._procs is None or self._procs.reaped:
            return
        if self._paused_since is None:
            self._paused_since = time.monotonic()
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the job's processes; its wallclock runs again."""
        self._hold = False
        if self._paused_since is not None:
            self._paused_total += time.monotonic() - self._paused_since
            self._paused_since = None
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: signal.Signals) -> None:
        """Signal the whole job: the top process, its tree, bwrap's namespace init, the processes seen.

        Repeated until no new process shows up, so a process forked while the tree was being stopped
        is stopped too. SIGSTOP reaches a pid namespace's init from outside; SIGCONT resumes it.
        """
        procs = self._procs
        if procs is None or procs.reaped:
            return
        done: set[int] = set()
        for _ in range(SIGNAL_ROUNDS):
            found = {procs.pid: procs.top, **procs.seen}
            if procs.inner is not None:
                found[procs.inner.pid] = procs.inner
            with contextlib.suppress(psutil.Error):
                found.update((p.pid, p) for p in procs.top.children(recursive=True))
            fresh = [p for pid, p in found.items() if pid not in done]
            if not fresh:
                break
            for p in fresh:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(sig)  # psutil checks the pid still names the same process
                done.add(p.pid)
        if self.sandbox.kind != "bwrap" and not procs.reaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(procs.pid, sig)  # the job's session: what left the tree but not its group

    def kill(self, reason: str) -> None:
        """SIGKILL the whole job now; ``run()`` then returns status "killed" with ``reason``."""
        if self._procs is not None and self._procs.reaped:
            return  # already over
        if self._kill_reason is None:
            self._kill_reason = reason
        self._kill_requested.set()
        if self._procs is not None:
            self._procs.kill_inside()
            if self.sandbox.kind != "bwrap":
                self._procs.kill_group()
            if self._hold:
                # SIGKILL ends stopped processes too, but a stopped bwrap could not see its namespace
                # end (nor reap it) until continued: what is left of the job may run to its death now.
                self.resume()

    def cleanup(self) -> None:
        """Remove the job directory (killing the job first if it still runs)."""
        if self._procs is not None and not self._procs.reaped:
            self.kill("cleaned up while running")
        shutil.rmtree(self.dir, ignore_errors=True)

    async def run(self) -> Outcome:
        """Prepare the directory, run the job to its end and collect results.zip."""
        if self._ran:
            raise RuntimeError("a JobRun runs only once")
        self._ran = True
        try:
            before = await asyncio.to_thread(self._prepare)
        except (InputError, OSError, RuntimeError) as exc:
            self._log.warning("cannot prepare: %s", exc)
            return await self._finish("failed", None, f"cannot prepare the job: {exc}", None)
        if self._kill_reason is not None:
            return await self._finish("killed", None, self._kill_reason, before)
        try:
            info_r = self._spawn()
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self._log.warning("cannot start: %s", exc)
            return await self._finish("failed", None, f"cannot start: {exc}", before)
        code = await self._supervise(info_r)
        if self._wallclock_hit:
            return await self._finish(
                "wallclock", None, f"wallclock {self.spec.limits.wallclock:g} s exceeded", before
            )
        if self._kill_reason is not None:
            return await self._finish("killed", None, self._kill_reason, before)
        return await self._finish("exited", code, _exit_reason(code, self.sandbox), before)

    # --- preparation (in a thread) ----------------------------------------------------------------

    def _prepare(self) -> Snapshot:
        if self.dir.exists():  # an earlier attempt of the same job
            shutil.rmtree(self.dir)
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir()
        self.dir.chmod(0o711)  # the job uid may traverse (bwrap binds bin/ and scratch/ as that uid)
        self.bin_dir.mkdir()
        self.bin_dir.chmod(0o755)
        shutil.copyfile(self.spec.executable, self.exe_path)
        self.exe_path.chmod(0o555)
        self.ports.prepare(self.exe_path)
        self.scratch.mkdir()
        self.tmp.mkdir()
        budget = self.spec.max_input_bytes
        for name, path in self.spec.inputs:
            budget -= stage_input(self.scratch, name, path, budget)
        self.sandbox.prepare_scratch(self.scratch)
        self.sandbox.prepare_scratch(self.tmp)
        return snapshot(self.scratch)

    # --- the process --------------------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        env = {
            "HOME": str(self.scratch),
            # rlimits only: the host /tmp is shared, so point TMPDIR at the job's own directory
            "TMPDIR": "/tmp" if self.sandbox.kind == "bwrap" else str(self.tmp),
            "PATH": JOB_PATH,
            "LANG": "C.UTF-8",
        }
        env.update(self.spec.env)
        env.update(XWJOBUID=self.spec.job_uid, XWSCRATCHPATH=str(self.scratch), XWBINPATH=str(self.exe_path))
        env["XWATTEMPTUID"] = self.spec.run
        return env

    def _spawn(self) -> int:
        """Start the job; the read end of bwrap's info pipe (-1 without bwrap)."""
        info_r, info_w = os.pipe() if self.sandbox.kind == "bwrap" else (-1, -1)
        argv, env = self.sandbox.command(
            self.ports.wrap([str(self.exe_path), *self.spec.args]),
            scratch=self.scratch,
            ro_binds=[(self.bin_dir, self.bin_dir)],
            env=self._environment(),
            tmp=self.tmp,
            info_fd=info_w if info_w >= 0 else None,
            rw_binds=self.ports.rw_binds(),
        )

        def private(path: str, flags: int) -> int:
            return os.open(path, flags, 0o600)

        become_subreaper()
        stdin = self.spec.stdin if self.spec.stdin is not None else os.devnull
        try:
            with (
                open(stdin, "rb") as fin,
                open(self.stdout_path, "wb", opener=private) as fout,
                open(self.stderr_path, "wb", opener=private) as ferr,
            ):
                self._proc = subprocess.Popen(
                    argv,
                    stdin=fin,
                    stdout=fout,
                    stderr=ferr,
                    env=env,
                    cwd=self.scratch,
                    pass_fds=(info_w,) if info_w >= 0 else (),
                    **self.sandbox.spawn_kwargs(self.spec.limits),
                )
        except BaseException:
            if info_r >= 0:
                os.close(info_r)
            raise
        finally:
            if info_w >= 0:
                os.close(info_w)
        self._t0 = time.monotonic()
        self.ports.started = True
        self._procs = JobProcesses(self.sandbox, self._proc.pid)
        try:
            self._pidfd = os.pidfd_open(self._proc.pid)
        except (AttributeError, OSError):
            self._pidfd = -1
        if self._hold:  # suspended before it started: it starts stopped
            self.suspend()
        self._log.info("started pid %d (%s)", self._proc.pid, self.sandbox.kind)
        return info_r

    async def _supervise(self, info_r: int) -> int:
        """Wait for the end, enforcing the wallclock and kill requests; the exit code."""
        assert self._procs is not None
        info_task = asyncio.create_task(self._read_info(info_r)) if info_r >= 0 else None
        exit_task = asyncio.create_task(self._wait_exit())
        kill_task = asyncio.create_task(self._kill_requested.wait())
        sampler = asyncio.create_task(self._sample_loop())
        limit = self.spec.limits.wallclock
        try:
            done: set[asyncio.Task[Any]] = set()
            while not done:
                # the time left is on the job's own clock, which stands still while it is suspended
                left = None if limit is None else limit - self._run_seconds()
                if left is not None and left <= 0:
                    self._wallclock_hit = True
                    self._log.info("wallclock %g s exceeded: killing", limit)
                    break
                done, _ = await asyncio.wait(
                    {exit_task, kill_task}, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
            if exit_task not in done:
                await self._terminate(exit_task)
            code = exit_task.result()
        except asyncio.CancelledError:
            self.kill("worker stopping")
            await self._terminate(exit_task)
            await self._sweep(info_task)
            raise
        finally:
            kill_task.cancel()
            sampler.cancel()
        await self._sweep(info_task)
        return code

    async def _sweep(self, info_task: asyncio.Task[None] | None) -> None:
        """After the top process is reaped: kill and reap whatever of the job is left."""
        assert self._procs is not None
        if info_task is not None:
            await info_task  # bwrap is gone, so its info pipe is at EOF
        if self.sandbox.kind != "bwrap":
            await asyncio.to_thread(self._find_escapees)
        if survivors := await asyncio.to_thread(self._procs.sweep):
            self._log.warning("%d process(es) of the job survived SIGKILL", survivors)

    def _find_escapees(self) -> None:
        """Without a pid namespace, also hunt processes that left the session but kept our XWJOBUID."""
        assert self._procs is not None
        uid = self.sandbox.job_uid
        for p in psutil.process_iter(["uids"]):
            try:
                if uid is not None and p.info["uids"].real != uid:
                    continue
                if p.pid != os.getpid() and p.environ().get("XWATTEMPTUID") == self.spec.run:
                    self._procs.seen.setdefault(p.pid, p)
            except psutil.Error:
                continue

    async def _read_info(self, fd: int) -> None:
        """Learn the namespace init's pid from bwrap (written once at start-up, then EOF)."""
        pid = await asyncio.to_thread(read_info, fd)
        if pid is not None and self._procs is not None:
            self._procs.set_inner(pid)
            if self._kill_requested.is_set():
                self._procs.kill_inside()

    async def _wait_exit(self) -> int:
        """The exit code of the job's top process, reaped with its resource usage."""
        assert self._proc is not None and self._procs is not None
        pid = self._proc.pid
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            await self._exit_signalled()
        # Still a zombie, so its pid and process group cannot be reused: kill what it left behind.
        self._procs.kill_group()
        _, status, usage = os.wait4(pid, 0)
        self._procs.mark_reaped(usage)
        self._t1 = time.monotonic()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        code = os.waitstatus_to_exitcode(status)
        self._proc.returncode = code
        return code

    async def _exit_signalled(self) -> None:
        if self._pidfd < 0:
            await asyncio.sleep(POLL_SECONDS)
            return
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self._pidfd, wake)
        try:
            await ready
        finally:
            loop.remove_reader(self._pidfd)

    async def _terminate(self, exit_task: asyncio.Task[int]) -> None:
        """Kill until the top process has exited (bwrap first gets to reap its namespace)."""
        assert self._procs is not None
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        while not exit_task.done():
            self._procs.kill_inside()
            if self.sandbox.kind != "bwrap" or time.monotonic() > deadline:
                self._procs.kill_group()
            await asyncio.wait({exit_task}, timeout=KILL_POLL_SECONDS)

    async def _sample_loop(self) -> None:
        assert self._procs is not None
        while True:
            self._procs.sample()
            await asyncio.sleep(SAMPLE_SECONDS)

    # --- the end --------------------------------------------------------------------------------------

    async def _finish(
        self, status: Status, code: int | None, reason: str, before: Snapshot | None
    ) -> Outcome:
        if self._t1 is None and self._t0 is not None:
            self._t1 = time.monotonic()
        self.ports.ended = True
        await asyncio.to_thread(self._collect, before)
        cpu, rss, wall = self.usage()
        self._log.info("%s: %s (%.1f s wall, %.1f s cpu)", status, reason, wall, cpu)
        return Outcome(code, status, reason, self.results_path, wall, cpu, rss)

    def _collect(self, before: Snapshot | None) -> None:
        """Write results.zip; ``before`` None (the job never ran): only stdout.txt and stderr.txt."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in (self.stdout_path, self.stderr_path):
            path.touch(mode=0o600, exist_ok=True)
        extra = [("stdout.txt", self.stdout_path), ("stderr.txt", self.stderr_path)]
        scratch = self.scratch if before is not None else None
        build_results(self.results_path, scratch, before or {}, extra)
