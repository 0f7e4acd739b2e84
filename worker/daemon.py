"""The worker's I/O loop: enrol, long-poll for work in every free slot, run jobs, heartbeat, upload.

Decisions about which job is where live in worker/state.py; this module only does the I/O and feeds
what happened back as events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import platform
import random
import shlex
import shutil
import time
from collections.abc import Callable, Coroutine, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from client.api import XWClient
from common import __version__
from common.enums import CPU, OS, AppType
from common.errors import Conflict, NotFound, TooManyRequests, TransportError, Unauthorized, XWError
from common.schemas import (
    INLINE_RESULT_BYTES,
    Assignment,
    Enrolment,
    FileRef,
    Heartbeat,
    HostIn,
    JobReport,
    JobUsage,
)
from worker import identity
from worker import state as st
from worker.busy import BusyPolicy, OwnerWatch, PauseStatus, Sample, save_status
from worker.cache import FileCache
from worker.execute import JobRun, JobSpec, Outcome
from worker.outbox import Outbox
from worker.sandbox import Limits, Sandbox
from worker.tunnels import Tunnels

logger = logging.getLogger(__name__)

RETRY_UPLOAD_SECONDS = 3.0
BACKOFF_MAX = 30.0
# A server that cannot be reached at start is waited for: a volunteer machine that boots during an
# outage must join the grid when the server is back, not stay off it.
ENROL_RETRY_MIN = 1.0
ENROL_RETRY_MAX = 60.0
# After a failed heartbeat: try again soon (never later than half a period), so that a restarted server
# hears from us well within its start-up grace (a whole alive timeout, at least three periods).
HEARTBEAT_RETRY_MIN = 1.0
HEARTBEAT_RETRY_MAX = 15.0
# A heartbeat unanswered this long has failed (a dead peer may leave the connection hanging for minutes).
HEARTBEAT_TIMEOUT_MIN = 30.0
TICK_SECONDS = 0.5
SHUTDOWN_GRACE = 10.0
# Jobs of a root worker run under uids no account uses: base + (worker pid mod 4096) * 1024 + slot.
SLOT_UID_BASE = 0x40000000
SLOT_UID_PROCESSES = 4096
SLOT_UID_STRIDE = 1024
MIN_ADDRESS_SPACE = 1 << 30
DEFAULT_ADDRESS_SPACE = 4 << 30
MAX_FILE_SIZE = 8 << 30
MAX_PROCESSES = 256


class HostAdapter(logging.LoggerAdapter[logging.Logger]):
    """Prefix log lines with ``[host=.. job=..]``."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        ctx = " ".join(f"{k}={v}" for k, v in extra.items() if v)
        return f"[{ctx}] {msg}", kwargs


@dataclass
class WorkerOptions:
    """How this worker runs (from the command line)."""

    name: str
    work_dir: Path
    slots: int
    cache_bytes: int
    sandbox: Sandbox
    max_jobs: int | None = None
    max_idle: float | None = None
    project: str | None = None
    longpoll: float = 300.0  # the server caps it (30 s, more for a large fleet)
    activation: tuple[int, int] | None = None  # (start hour, end hour), e.g. (20, 7)
    memory_limit: int = DEFAULT_ADDRESS_SPACE  # address-space cap of a job that requests no memory
    cache_dir: Path | None = None  # default: work_dir/cache
    busy: BusyPolicy | None = None  # pause while the machine's owner is busy (worker/busy.py)


def machine_os() -> OS:
    return {"Linux": OS.LINUX, "Darwin": OS.MACOSX, "Windows": OS.WIN32}.get(platform.system(), OS.ANY)


def machine_cpu() -> CPU:
    try:
        return CPU.parse(platform.machine())
    except ValueError:
        return CPU.ANY


def in_window(hour: int, window: tuple[int, int] | None) -> bool:
    """Whether ``hour`` lies in an activation window such as (20, 7) = 20:00 to 07:00."""
    if window is None:
        return True
    start, end = window
    return start <= hour < end if start < end else hour >= start or hour < end


@dataclass
class _Held:
    assignment: Assignment
    run: JobRun | None = None
    outcome: Outcome | None = None
    pinned: list[str] = field(default_factory=list)


class Worker:
    """One worker process: ``await Worker(client, options).run()`` until stopped or drained."""

    def __init__(
        self, client: XWClient, options: WorkerOptions, *, meter: Callable[[], Sample] | None = None
    ) -> None:
        self.client = client
        self.opt = options
        self.state = st.WorkerState(
            options.slots, options.max_jobs, options.max_idle, started_at=time.monotonic()
        )
        self.cache = FileCache(options.cache_dir or options.work_dir / "cache", options.cache_bytes)
        self.jobs_root = options.work_dir / "jobs"
        self.held: dict[str, _Held] = {}
        self.host_uid = ""
        self.tunnels = Tunnels(client, "")
        self.alive_period = 10.0
        self.log = HostAdapter(logger, {"host": options.name})
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self.credential_refused = False  # stopped because the server refused our host credential
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._free_slots = set(range(options.slots))  # each slot runs its jobs under a uid of its own
        self.outbox = Outbox(client, lambda: self.host_uid, self.log)
        # meter: the owner's load source (default: this machine's CPU counters; tests pass their own)
        self.owner = OwnerWatch(options.busy, self._owner_sample, meter) if options.busy else None

    def stop(self, reason: str) -> None:
        """Stop now: running jobs are killed and given back to the server."""
        if not self._stop.is_set():
            self.log.info("stopping: %s", reason)
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    def drain(self, reason: str) -> None:
        """Take no new work and stop when the held jobs are done."""
        self.state.drain(reason)
        self._wake.set()

    async def run(self) -> str:
        """Serve until stopped; returns why it stopped."""
        self.jobs_root.mkdir(parents=True, exist_ok=True)
        self.opt.sandbox.check_reachable(self.jobs_root)  # jobs of a root worker run as nobody
        for pid in kill_leftovers(self.jobs_root):
            self.log.warning("killed process %d left over from a previous run of this worker", pid)
        if not await self._unless_stopped(self._enrol_patiently()):
            await self.tunnels.aclose()
            self.log.info("worker stopped before it enrolled: %s", self._stop_reason)
            return self._stop_reason
        loops = [self._heartbeat_loop(), self._tick_loop(), self._upload_retry_loop(), self._claim_loop()]
        loops += [self.outbox.run()]
        if self.owner is not None:
            self._save_status()
            loops.append(self.owner.run())
        tasks = [asyncio.create_task(self._guard(c), name=getattr(c, "__qualname__", "loop")) for c in loops]
        try:
            await self._stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
            for t in pending:
                self.log.error("task %s ignores cancellation: %s", t.get_name(), t.get_stack(limit=3))
            await self._give_back()
            await self.tunnels.aclose()
        self.log.info("worker stopped: %s", self._stop_reason)
        return self._stop_reason

    async def _guard(self, loop: Coroutine[Any, Any, None]) -> None:
        """Run a loop of the worker; if it dies the worker stops (loudly) instead of hanging."""
        try:
            await loop
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("internal error in %s", getattr(loop, "__qualname__", loop))
            self.stop(f"internal error in {getattr(loop, '__qualname__', loop)}")

    async def _unless_stopped(self, coro: Coroutine[Any, Any, None]) -> bool:
        """Run ``coro`` unless the worker is stopped first (then cancel it); whether it ran to its end."""
        task = asyncio.create_task(coro)
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, XWError):
                    await task
        if task.cancelled():
            return False
        task.result()  # a refusal propagates
        return True

    async def _enrol_patiently(self) -> None:
        """Enrol, waiting out an outage (jittered exponential backoff) for as long as it lasts.

        Only an unreachable or failing server is waited for; its refusals (bad password, revoked or
        unknown host, forbidden) raise at once, as does an outage longer than a pilot's --max-idle.
        """
        started = time.monotonic()
        backoff = ENROL_RETRY_MIN
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._enrol()
                return
            except TooManyRequests as err:
                delay = float(err.retry_after)  # the server asks us to come back later: do as told
                self.log.info("enrolment deferred by the server: %s; retrying in %.0f s", err.reason, delay)
            except XWError as err:
                if not _outage(err):
                    raise
                waited = time.monotonic() - started
                if self.opt.max_idle is not None and waited >= self.opt.max_idle:
                    # a pilot must not hold its batch slot waiting for a server that is down
                    raise type(err)(
                        f"{err.reason} (gave up after {waited:.0f} s: --max-idle {self.opt.max_idle:g})"
                    ) from None
                delay = backoff * random.uniform(0.5, 1.0)  # jitter: a restarted server is not stormed
                backoff = min(backoff * 2, ENROL_RETRY_MAX)
                self.log.warning(
                    "cannot enrol (attempt %d): %s; retrying in %.1f s", attempt, err.reason, delay
                )
            await asyncio.sleep(delay)

    async def enrol(self) -> str:
        """Enrol once, now, saving the host credential (``xwworker install``); the host uid.

        No waiting out an outage here: whoever installs is told at once that the server is unreachable.
        """
        await self._enrol()
        return self.host_uid

    async def _enrol(self) -> None:
        free = shutil.disk_usage(self.opt.work_dir).free
        host = HostIn(
            name=self.opt.name,
            os=machine_os(),
            cpu=machine_cpu(),
            cores=os.cpu_count() or 1,
            memory=_memory_bytes(),
            disk=free,
            version=__version__,
            sandbox=self.opt.sandbox.kind,
            project=self.opt.project,
        )
        enrolment = await self._enrol_as(host)
        self.host_uid = self.tunnels.host_uid = enrolment.host.uid
        self.alive_period = enrolment.alive_period
        self.log.info(
            "enrolled as host %s (%s sandbox, %d slot(s), heartbeat every %g s)",
            self.host_uid,
            self.opt.sandbox.describe(),
            self.opt.slots,
            self.alive_period,
        )

    async def _enrol_as(self, host: HostIn) -> Enrolment:
        """Enrol with the saved host credential if there is one, else as a new host with the account."""
        saved = identity.load(self.opt.work_dir)
        if saved is not None:
            try:
                return await self.client.enrol(host, credential=saved.credential)
            except Unauthorized as err:
                if "revoked" in err.reason:
                    raise Unauthorized(
                        f"{err.reason} (to enrol this machine as a new host, delete "
                        f"{identity.path_in(self.opt.work_dir)})"
                    ) from None
                self.log.warning(
                    "saved host credential not accepted (%s): enrolling as a new host", err.reason
                )
        enrolment = await self.client.enrol(host)
        if enrolment.credential is None:
            raise XWError("the server answered no host credential to a new enrolment")
        identity.save(
            self.opt.work_dir,
            identity.SavedHost(enrolment.host.uid, enrolment.credential, self.client.cfg.server),
        )
        return enrolment

    def _credential_refused(self, err: XWError) -> bool:
        """A revoked or deleted host stops: it must not keep asking with a credential that is dead."""
        if isinstance(err, Unauthorized):
            self.credential_refused = True
            self.stop(
                f"the server no longer accepts this host's credential: {err.reason} (to enrol this "
                f"machine as a new host, delete {identity.path_in(self.opt.work_dir)})"
            )
            return True
        return False

    # --- loops ------------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        """Ask for as many jobs as there are free slots, in one long-poll, and start each one."""
        backoff = 1.0
        while not self._stop.is_set():
            free = min(self.state.free_slots(), len(self._free_slots))
            paused = self.owner is not None and self.owner.paused
            if free <= 0 or paused or not in_window(time.localtime().tm_hour, self.opt.activation):
                self._wake.clear()
                # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancel when the event
                # fires in the same loop iteration (Forget/Stop set it just before shutdown cancels us).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5.0):
                        await self._wake.wait()
                continue
            try:
                got = await self._claim_unless_paused(free)
                backoff = 1.0
                if got is None:
                    continue
                assignments = got
            except TransportError as err:
                self.log.warning("work request failed (%s); retrying in %.0f s", err.reason, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except TooManyRequests as err:
                # the server asks us to come back later (busy): do as told, quietly
                self.log.info("work request deferred by the server: %s", err.reason)
                await asyncio.sleep(err.retry_after)
                continue
            except XWError as err:
                if self._credential_refused(err):
                    return
                self.log.error("work request refused: %s", err.reason)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            for a in assignments:
                self._start(a)

    async def _claim_unless_paused(self, free: int) -> list[Assignment] | None:
        """A work request, given up (None) if the owner gets busy while it waits: what it would bring
        could only wait here. An answer lost that way goes back to the queue (we never report it)."""
        if self.owner is None:
            return await self.client.claim_work(self.host_uid, self.opt.longpoll, free)
        claim = asyncio.create_task(self.client.claim_work(self.host_uid, self.opt.longpoll, free))
        busy = asyncio.create_task(self.owner.event.wait())
        try:
            await asyncio.wait({claim, busy}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            busy.cancel()
            if not claim.done():
                claim.cancel()
                with contextlib.suppress(asyncio.CancelledError, XWError):
                    await claim
        return None if claim.cancelled() else claim.result()

    def _owner_sample(self, paused: bool, changed: bool, load: float) -> None:
        """After each sample of the owner's load: suspend or resume the jobs, say so once."""
        assert self.owner is not None
        policy = self.owner.policy
        runs = [h.run for h in self.held.values() if h.run is not None and h.outcome is None]
        if paused:
            for run in runs:
                run.suspend()  # again each time: catches jobs and processes started since
        elif changed:
            for run in runs:
                run.resume()
            self._wake.set()
        if changed:
            self.log.info(
                "%s: the owner's load averaged %.0f%% of all cores over %g s (threshold %g%%); %d job(s) %s",
                "pausing" if paused else "resuming",
                load,
                policy.busy_after if paused else policy.calm_after,
                policy.threshold,
                len(runs),
                "suspended, no new work" if paused else "resumed",
            )
            self._save_status()

    def _save_status(self) -> None:
        """Tell ``xwworker status`` whether we are paused (a failure to write only loses that)."""
        if self.owner is None:
            return
        status = PauseStatus(
            os.getpid(),
            self.owner.paused,
            self.owner.changed_at,
            self.owner.load,
            self.owner.policy.threshold,
        )
        try:
            save_status(self.opt.work_dir, status)
        except OSError as exc:
            self.log.warning("cannot write the status file: %s", exc)

    def _start(self, a: Assignment) -> None:
        """Hold an attempt (counted against the free slots at once) and run it in a slot of its own."""
        slot = min(self._free_slots) if self._free_slots else self.opt.slots + len(self.held)
        self._free_slots.discard(slot)
        self.held[a.attempt] = _Held(a)
        self._apply(self.state.handle(st.Assigned(a.attempt)))
        self._spawn(self._run_job(a, slot))

    async def _heartbeat_loop(self) -> None:
        delay = self.alive_period
        backoff = HEARTBEAT_RETRY_MIN
        failures = 0
        while not self._stop.is_set():
            await asyncio.sleep(delay)
            usage = []
            for uid in self.state.held():
                held = self.held.get(uid)
                cpu, rss, wall = held.run.usage() if held and held.run else (0.0, 0, 0.0)
                tunnels = self.tunnels.jobs.get(uid)
                net_in, net_out = tunnels.traffic() if tunnels else (0, 0)
                usage.append(
                    JobUsage(
                        attempt=uid,
                        cpu_seconds=cpu,
                        max_rss=rss,
                        wall_seconds=wall,
                        net_in=net_in,
                        net_out=net_out,
                    )
                )
            wait = max(HEARTBEAT_TIMEOUT_MIN, self.alive_period)
            try:
                async with asyncio.timeout(wait):
                    reply = await self.client.heartbeat(self.host_uid, Heartbeat(running=usage))
            except (XWError, TimeoutError) as exc:
                err = exc if isinstance(exc, XWError) else TransportError(f"no answer within {wait:g} s")
                if self._credential_refused(err):
                    return
                if not (_outage(err) or isinstance(err, TooManyRequests)):
                    self.log.warning("heartbeat refused: %s", err.reason)
                    delay = self.alive_period
                    continue
                # Retry soon: silent past the alive timeout we would be lost and our jobs rerun. Our
                # jobs keep running meanwhile; nothing is given back or killed because of an outage.
                failures += 1
                cap = min(HEARTBEAT_RETRY_MAX, self.alive_period / 2)
                delay = min(backoff, cap) * random.uniform(0.5, 1.0)
                if isinstance(err, TooManyRequests):
                    delay = max(delay, float(err.retry_after))
                backoff = min(backoff * 2, HEARTBEAT_RETRY_MAX)
                self.log.warning("heartbeat failed: %s; retrying in %.1f s", err.reason, delay)
                continue
            if failures:
                self.log.info("heartbeat answered again after %d failed attempt(s)", failures)
            failures, backoff = 0, HEARTBEAT_RETRY_MIN
            self.alive_period = delay = reply.alive_period
            for uid, reason in reply.kill.items():
                self._apply(self.state.handle(st.KillOrder(uid, reason)))

    async def _tick_loop(self) -> None:
        while not self._stop.is_set():
            self._apply(self.state.handle(st.Tick(time.monotonic())))
            await asyncio.sleep(TICK_SECONDS)

    async def _upload_retry_loop(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(RETRY_UPLOAD_SECONDS)
            self._apply(self.state.retry_uploads())

    # --- one job ----------------------------------------------------------------------------------

    def _sandbox_for(self, slot: int) -> Sandbox:
        """The slot's own uid when jobs run under another uid: one job's fork bomb cannot use up the
        process limit (counted per uid) of the jobs in other slots or other workers of this machine."""
        box = self.opt.sandbox
        if box.job_uid is None:
            return box
        uid = SLOT_UID_BASE + (os.getpid() % SLOT_UID_PROCESSES) * SLOT_UID_STRIDE + slot
        return dataclasses.replace(box, job_uid=uid, job_gid=uid)

    async def _run_job(self, a: Assignment, slot: int) -> None:
        uid = a.attempt
        log = HostAdapter(logger, {"host": self.opt.name, "job": a.job.uid[:8]})
        held = self.held[uid]
        try:
            spec = await self._prepare(a, held)
            held.run = run = JobRun(spec, self.jobs_root, self._sandbox_for(slot))
            if self.owner is not None and self.owner.paused:
                run.suspend()  # claimed just before the pause: it starts stopped
            log.info("running %s %s", a.app_name, a.job.args)
            task = asyncio.create_task(run.run())
            try:
                await self._open_tunnels(a, run, log)
                outcome = held.outcome = await task
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await self.tunnels.close(uid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a job must never take the worker down
            log.exception("job could not run")
            self._apply(self.state.handle(st.Ended(uid, ok=False, reason=f"worker could not run it: {exc}")))
            return
        finally:
            for sha in held.pinned:
                self.cache.unpin(sha)
            if slot < self.opt.slots:
                self._free_slots.add(slot)
                self._wake.set()
        killed = outcome.status == "killed"
        ok = outcome.status == "exited"
        log.info("ended: %s%s", outcome.status, f" ({outcome.reason})" if outcome.reason else "")
        self._apply(self.state.handle(st.Ended(uid, ok=ok, reason=outcome.reason, killed=killed)))

    async def _open_tunnels(self, a: Assignment, run: JobRun, log: HostAdapter) -> None:
        """Tunnels of a job that declares ports; a failure is logged and the job runs without them."""
        try:
            await self.tunnels.open(a, run)
        except XWError as err:
            log.warning("tunnels not available: %s", err.reason)
        except OSError as err:
            log.warning("tunnels not available: %s", err)

    async def _prepare(self, a: Assignment, held: _Held) -> JobSpec:
        async def get(ref: FileRef) -> Path:
            async def download(tmp: Path) -> None:
                await self.client.fetch_job_file(self.host_uid, a.attempt, ref.uid, tmp)

            self.cache.pin(ref.sha256)  # before fetching: a fetched file must never be evicted before use
            held.pinned.append(ref.sha256)
            return await self.cache.fetch(ref.sha256, ref.size, download)

        executable = await get(a.executable)
        inputs = [(ref.name, await get(ref)) for ref in a.inputs]
        stdin = await get(a.stdin) if a.stdin else None
        # The address-space cap only stops runaway jobs; the requested memory is policed on resident size
        # by the server's hold policy (address space counts mappings that are never touched).
        space = max(2 * a.memory, MIN_ADDRESS_SPACE) if a.memory else self.opt.memory_limit
        limits = Limits(
            wallclock=float(a.wallclock) if a.wallclock else None,
            cpu_seconds=None,
            address_space=space,
            file_size=MAX_FILE_SIZE,
            processes=MAX_PROCESSES,
        )
        return JobSpec(
            job_uid=a.job.uid,
            run_id=a.attempt,
            label=a.job.label,
            executable=executable,
            exe_name=a.app_name,
            is_script=a.app_type is AppType.SCRIPT,
            args=shlex.split(a.job.args),
            inputs=inputs,
            stdin=stdin,
            env={},
            limits=limits,
            listen_ports=list(a.job.listen_ports),
            forward_ports=[f.port for f in a.job.forward_addresses],
        )

    def _apply(self, instructions: list[st.Instruction]) -> None:
        for ins in instructions:
            match ins:
                case st.Upload(job):
                    self._spawn(self._upload(job))
                case st.ReportFailure(job, reason):
                    self._spawn(self._report(job, JobReport(outcome="failed", reason=reason)))
                case st.ReportPending(job):
                    self._spawn(
                        self._report(job, JobReport(outcome="result_pending", reason="result upload failed"))
                    )
                case st.Kill(job, reason):
                    held = self.held.get(job)
                    if held and held.run:
                        self.log.info("killing job %s: %s", job[:8], reason)
                        held.run.kill(reason)
                case st.Forget(job):
                    held = self.held.pop(job, None)
                    if held and held.run:
                        held.run.cleanup()
                case st.Stop(reason):
                    self.stop(reason)
        if any(isinstance(i, (st.Forget, st.Stop)) for i in instructions):
            self._wake.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upload(self, job: str) -> None:
        held = self.held.get(job)
        if held is None or held.outcome is None or held.outcome.return_code is None:
            return
        try:
            size = held.outcome.results.stat().st_size
            if size <= INLINE_RESULT_BYTES:
                # small: rides along with other finished attempts' results in one request
                await self.outbox.send(job, held.outcome.results, held.outcome.return_code)
            else:
                await self.client.upload_result(
                    self.host_uid, job, held.outcome.results, held.outcome.return_code
                )
        except (NotFound, Conflict) as err:
            self.log.info("results of %s not wanted any more: %s", job[:8], err.reason)
            self._apply(self.state.handle(st.UploadFailed(job, gone=True)))
        except XWError as err:
            self.log.warning("upload of %s failed: %s (will retry)", job[:8], err.reason)
            self._apply(self.state.handle(st.UploadFailed(job)))
        else:
            self.log.info("results of %s uploaded", job[:8])
            self._apply(self.state.handle(st.Uploaded(job)))

    async def _report(self, job: str, report: JobReport) -> None:
        try:
            await self.client.report(self.host_uid, job, report)
        except XWError as err:
            self.log.warning("report on %s failed: %s", job[:8], err.reason)

    async def _give_back(self) -> None:
        """On shutdown: kill what runs and hand those jobs back (the server requeues them)."""
        for uid, held in list(self.held.items()):
            if held.run is not None and held.outcome is None:
                held.run.kill("worker stopping")
            with contextlib.suppress(XWError):
                await asyncio.wait_for(
                    self.client.report(
                        self.host_uid,
                        uid,
                        JobReport(outcome="abort", reason=f"worker {self.opt.name} stopped"),
                    ),
                    5,
                )
            if held.run is not None:
                held.run.cleanup()
        for task in list(self._tasks):
            task.cancel()


def _outage(err: XWError) -> bool:
    """Whether ``err`` says the server is unreachable or failing (down, restarting, behind a failing
    proxy) rather than answering no: the former is waited out, the latter is an answer."""
    return isinstance(err, TransportError) or err.status >= 500


def kill_leftovers(jobs_root: Path) -> list[int]:
    """Kill processes of jobs a previous (killed) incarnation of this worker left behind.

    A SIGKILLed worker cannot clean up, and bubblewrap's --die-with-parent does not survive the switch to
    the job's uid, so an outer bwrap may linger. Such processes name the jobs directory on their command
    line; nothing else does.
    """
    marker = str(jobs_root.resolve()) + os.sep
    killed = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.info["pid"] == os.getpid():
            continue
        if any(marker in arg for arg in proc.info["cmdline"] or ()):
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed.append(int(proc.info["pid"]))
    return killed


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0
