"""The xw* commands about running work: results, workers, holding and releasing jobs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import click

from client.api import XWClient
from client.cli import USER_ERRORS, complain, echo_objects, prog, reason, run, transfer, xw_options
from client.output import status_lines
from client.results import MAX_RESULT_BYTES, MAX_RESULT_MEMBERS, unpack_into, unpack_target, zip_name
from common.enums import JobStatus, ObjectKind
from common.errors import NotFound
from common.schemas import HostOut, JobOut
from common.uri import is_uid

WORK, HOST = ObjectKind.JOB.value, ObjectKind.HOST.value
FINISHED = (JobStatus.COMPLETED, JobStatus.ERROR)  # what xwresults fetches and, by default, erases
IN_FLIGHT = (  # will finish without anyone acting
    JobStatus.PENDING,
    JobStatus.RUNNING,
    JobStatus.DATAREQUEST,
    JobStatus.REPLICATING,
    JobStatus.VALIDATING,
    JobStatus.INCONCLUSIVE,
)
Act = Callable[[XWClient, str], Awaitable[JobOut]]


# --- results --------------------------------------------------------------------------------------

# --xwwait polls (the server has no long-poll for clients): the first look after half a second, then
# 1.5 times longer each time, at most every 10 s. A job's results come at most 10 s after it ends.
POLL_FIRST, POLL_GROWTH, POLL_MAX = 0.5, 1.5, 10.0
ERASE_HELP = (
    "Keep the fetched jobs on the server. By default each COMPLETED/ERROR job is erased once its results are"
    " here (as XWHEP did); its results data object stays (xwrm it to free the space)."
)


def poll_delays() -> Iterator[float]:
    """The waits between looks at unfinished jobs: growing, then capped (never a tight loop)."""
    delay = POLL_FIRST
    while True:
        yield delay
        delay = min(delay * POLL_GROWTH, POLL_MAX)


def job_name(job: JobOut) -> str:
    """``job <uid> (<label>)``, for messages."""
    return f"job {job.uid} ({job.label})" if job.label else f"job {job.uid}"


async def _finished_jobs(xw: XWClient, me: str) -> list[JobOut]:
    """The caller's own COMPLETED and ERROR jobs, oldest first."""
    jobs = [job for status in FINISHED for job in await xw.jobs(status=status.value, owner=me)]
    return sorted(jobs, key=lambda job: (job.created, job.uid))


class Harvest:
    """One xwresults run: fetches finished jobs' results, erases the jobs, prints, counts failures.

    Per finished job it costs two requests, the download and the erasure: the job itself comes from the
    listing, or from the one request that resolves its name (``XWClient.resolve_job``), and the download
    carries the content's size and sha256 (``XWClient.download_content``).
    """

    def __init__(self, xw: XWClient, out: Path, erase: bool, keep_zip: bool, fmt: str) -> None:
        self.xw, self.out, self.erase, self.keep_zip, self.fmt = xw, out, erase, keep_zip, fmt
        self.shown: list[JobOut] = []
        self.failed = 0

    def refuse(self, message: str) -> None:
        complain(message)
        self.failed += 1

    async def take(self, job: JobOut) -> None:
        """Fetch a finished job's results (COMPLETED with results), then erase the job unless asked not to."""
        self.shown.append(job)
        if self.fmt == "short":
            click.echo(status_lines([job]))
        try:
            if job.status is JobStatus.COMPLETED and job.result:
                await self._fetch(job, job.result)
            if self.erase:
                await self.xw.delete_job(job.uid)
                if self.fmt == "short":
                    kept = f"; its results data {job.result} stays" if job.result else " (it had no results)"
                    click.echo(f"Erased {job_name(job)} from the server{kept}")
        except USER_ERRORS as exc:
            self.refuse(reason(exc))

    async def _fetch(self, job: JobOut, result: str) -> None:
        """Download the results zip (data ``result``) into ``out`` and unpack it into ``out/<label|uid>``."""
        target = unpack_target(self.out, job.uid, job.label)  # refuse before downloading if both are taken
        archive = self.out / zip_name(job.uid, job.label)
        with contextlib.ExitStack() as bars:
            bar: list[Callable[[int], None]] = []  # the progress bar, once the size is known

            def sized(total: int | None) -> None:
                bar.append(bars.enter_context(transfer(archive.name, total)))

            await self.xw.download_content(result, archive, lambda n: bar[0](n) if bar else None, sized)
        if self.fmt == "short" and self.keep_zip:  # the zip is named only if it stays
            click.echo(f"Downloaded to : {archive}")
        try:
            await asyncio.to_thread(
                unpack_into, archive, target, max_bytes=MAX_RESULT_BYTES, max_members=MAX_RESULT_MEMBERS
            )
        except ValueError as exc:
            raise ValueError(f"results of {job.uid} refused: {reason(exc)}") from None
        finally:
            if not self.keep_zip:
                archive.unlink(missing_ok=True)
        if self.fmt == "short":
            click.echo(f"Unpacked to : {target}")

    async def named(self, refs: Sequence[str], wait: bool, timeout: float | None) -> None:
        """The named jobs: each finished one now; with ``wait``, the others as they finish."""
        waiting: list[JobOut] = []
        named: set[str] = set()
        for ref in refs:
            try:
                job = await self.xw.resolve_job(ref)
            except USER_ERRORS as exc:
                self.refuse(reason(exc))
                continue
            if job.uid in named:  # named twice (uid and label): fetched once
                continue
            named.add(job.uid)
            if job.status in FINISHED:
                await self.take(job)
            elif wait:
                status = job.status.value
                click.echo(f"{prog()}: waiting for {job_name(job)} to finish (it is {status})", err=True)
                waiting.append(job)
            else:
                self.shown.append(job)
                if self.fmt == "short":
                    click.echo(status_lines([job]))
                why = f"is {job.status.value}: not finished, nothing fetched; --xwwait waits for it"
                self.refuse(f"{job_name(job)} {why}")
        deadline = None if timeout is None else time.monotonic() + timeout
        delays = poll_delays()
        while waiting:
            if not await _pause(delays, deadline):
                for job in waiting:
                    self.shown.append(job)
                    self.refuse(
                        f"{job_name(job)} is still {job.status.value} after {timeout:g} s (--xwtimeout):"
                        " nothing fetched"
                    )
                return
            still = []
            for old in waiting:
                try:
                    job = await self.xw.get_job(old.uid)
                except NotFound:
                    self.refuse(f"{job_name(old)} was deleted while waiting for it: nothing fetched")
                    continue
                if job.status in FINISHED:
                    await self.take(job)
                else:
                    still.append(job)
            waiting = still

    async def mine(self, wait: bool, timeout: float | None) -> None:
        """All the caller's finished jobs; with ``wait``, also those queued or running, as they finish."""
        me = (await self.xw.ping()).login
        if not wait:
            for job in await _finished_jobs(self.xw, me):
                await self.take(job)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        delays = poll_delays()
        taken: set[str] = set()  # tried once: kept (--xwnoerase) or refused, never again
        told = False
        while True:
            jobs = sorted(await self.xw.jobs(owner=me), key=lambda job: (job.created, job.uid))
            for job in jobs:
                if job.status in FINISHED and job.uid not in taken:
                    taken.add(job.uid)
                    await self.take(job)
            flying = [job for job in jobs if job.status in IN_FLIGHT]
            if not flying:
                return
            if not told:
                click.echo(f"{prog()}: waiting for {_jobs(len(flying))} of yours to finish", err=True)
                told = True
            if not await _pause(delays, deadline):
                self.refuse(
                    f"{_jobs(len(flying))} of yours still queued or running after {timeout:g} s"
                    " (--xwtimeout): their results are not fetched"
                )
                return


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


async def _pause(delays: Iterator[float], deadline: float | None) -> bool:
    """Wait for the next look; False once ``deadline`` has passed (the last look is at the deadline)."""
    if deadline is None:
        await asyncio.sleep(next(delays))
        return True
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    await asyncio.sleep(min(next(delays), left))
    return True


@click.command("xwresults")
@click.argument("refs", nargs=-1, metavar="[REF...]")
@click.option(
    "--xwout",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    default=".",
    show_default=True,
    help="Directory for the results (unpacked into DIR/<label|uid>/).",
)
@click.option("--xwnoerase", "no_erase", is_flag=True, help=ERASE_HELP)
@click.option(
    "--xwkeepzip", "keep_zip", is_flag=True, help="Keep the downloaded zip next to the unpacked results."
)
@click.option(
    "--xwwait",
    "wait",
    is_flag=True,
    help="Wait for unfinished jobs to finish, then fetch them: the named ones, or (no REF) every job of"
    " yours that is queued, running or being validated (PENDING, RUNNING, DATAREQUEST, REPLICATING,"
    " VALIDATING, INCONCLUSIVE; held and UNAVAILABLE ones are not waited for).",
)
@click.option(
    "--xwtimeout",
    "timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="With --xwwait: give up after SECONDS (exit status 1, naming what was not fetched).",
)
@xw_options
def xwresults(
    refs: tuple[str, ...],
    out: Path,
    no_erase: bool,
    keep_zip: bool,
    wait: bool,
    timeout: float | None,
    config: Path | None,
    fmt: str,
) -> None:
    """Download and unpack the results of jobs (the named ones, or all your COMPLETED/ERROR jobs), then
    erase each fetched job from the server unless --xwnoerase (its results data object stays; the
    "Erased job ..." line names it).

    A named job that is not finished is not fetched: that is an error (exit status 1) unless --xwwait.
    """

    async def body(xw: XWClient) -> None:
        if timeout is not None and not wait:
            raise ValueError("--xwtimeout bounds --xwwait: give both")
        directory = out.expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        harvest = Harvest(xw, directory, not no_erase, keep_zip, fmt)
        if refs:
            await harvest.named(refs, wait, timeout)
        else:
            await harvest.mine(wait, timeout)
        if fmt != "short":
            echo_objects(WORK, harvest.shown, fmt)
        if harvest.failed:
            raise click.exceptions.Exit(1)

    run(config, body)


# --- workers --------------------------------------------------------------------------------------


@click.command("xwworkers")
@click.option("--xwalive", "alive", is_flag=True, help="Only the hosts heard from recently (alive).")
@click.option(
    "--xwrevoke",
    "revoke",
    metavar="HOST",
    multiple=True,
    help="Revoke a host's credential (uid, or a name only one host has); its jobs are rescheduled.",
)
@click.option("--reason", "--xwreason", "why", default="", help="Why the host is revoked (shown with it).")
@xw_options
def xwworkers(alive: bool, revoke: tuple[str, ...], why: str, config: Path | None, fmt: str) -> None:
    """List the worker hosts you can see, or revoke hosts' credentials (their owner or an administrator)."""

    async def body(xw: XWClient) -> None:
        if not revoke:
            echo_objects(HOST, await xw.hosts(**({"alive": "true"} if alive else {})), fmt)
            return
        hosts = await xw.hosts()
        done = [await xw.revoke_host(_host_uid(hosts, ref), why) for ref in revoke]
        echo_objects(HOST, done, fmt)

    run(config, body)


def _host_uid(hosts: list[HostOut], ref: str) -> str:
    """A host by uid, or by a name exactly one visible host has (names are the volunteers' choice)."""
    if is_uid(ref):
        return ref.lower()
    named = [h.uid for h in hosts if h.name == ref]
    if len(named) != 1:
        found = "no host" if not named else f"{len(named)} hosts"
        raise ValueError(f"{found} named {ref!r}: give the host's uid (xwworkers lists them)")
    return named[0]


# --- holding jobs ---------------------------------------------------------------------------------


async def _move_jobs(xw: XWClient, refs: tuple[str, ...], fmt: str, act: Act) -> None:
    """Apply ``act`` to each job in turn, printing its new status line (with the reason)."""
    done = []
    for ref in refs:
        job = await act(xw, await xw.resolve(WORK, ref))
        if fmt == "short":
            click.echo(status_lines([job], with_reason=True))
        done.append(job)
    if fmt != "short":
        echo_objects(WORK, done, fmt)


@click.command("xwhold")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@click.option("--reason", "--xwreason", "why", default="", help="Why the jobs are held (shown with them).")
@xw_options
def xwhold(refs: tuple[str, ...], why: str, config: Path | None, fmt: str) -> None:
    """Hold jobs: they go WAITING and are not scheduled until released."""

    async def body(xw: XWClient) -> None:
        await _move_jobs(xw, refs, fmt, lambda xw, uid: xw.hold(uid, why))

    run(config, body)


@click.command("xwrelease")
@click.argument("refs", nargs=-1, required=True, metavar="REF...")
@xw_options
def xwrelease(refs: tuple[str, ...], config: Path | None, fmt: str) -> None:
    """Release held jobs back to PENDING."""

    async def body(xw: XWClient) -> None:
        await _move_jobs(xw, refs, fmt, lambda xw, uid: xw.release(uid))

    run(config, body)
