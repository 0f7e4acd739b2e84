"""The xw* commands about running work: results, workers, holding and releasing jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import click

from client.api import XWClient
from client.cli import USER_ERRORS, complain, echo_objects, reason, run, transfer, xw_options
from client.output import status_lines
from client.results import MAX_RESULT_BYTES, MAX_RESULT_MEMBERS, unpack_into, unpack_target, zip_name
from common.enums import JobStatus, ObjectKind
from common.schemas import HostOut, JobOut
from common.uri import is_uid

WORK, HOST = ObjectKind.JOB.value, ObjectKind.HOST.value
FINISHED = (JobStatus.COMPLETED, JobStatus.ERROR)  # what xwresults fetches and, by default, erases
Act = Callable[[XWClient, str], Awaitable[JobOut]]


# --- results --------------------------------------------------------------------------------------


async def _finished_jobs(xw: XWClient) -> list[JobOut]:
    """The caller's own COMPLETED and ERROR jobs, oldest first."""
    me = (await xw.ping()).login
    jobs = [job for status in FINISHED for job in await xw.jobs(status=status.value, owner=me)]
    return sorted(jobs, key=lambda job: (job.created, job.uid))


async def _fetch(xw: XWClient, job: JobOut, result: str, out: Path, keep_zip: bool, fmt: str) -> None:
    """Download a job's results zip (data ``result``) into ``out`` and unpack it into ``out/<label|uid>``."""
    target = unpack_target(out, job.uid, job.label)  # refuse before downloading if both names are taken
    archive = out / zip_name(job.uid, job.label)
    meta = await xw.get_data(result)
    with transfer(archive.name, meta.size) as progress:
        await xw.download(result, archive, progress)
    if fmt == "short":
        click.echo(f"Downloaded to : {archive}")
    try:
        await asyncio.to_thread(
            unpack_into, archive, target, max_bytes=MAX_RESULT_BYTES, max_members=MAX_RESULT_MEMBERS
        )
    except ValueError as exc:
        raise ValueError(f"results of {job.uid} refused: {reason(exc)}") from None
    finally:
        if not keep_zip:
            archive.unlink(missing_ok=True)
    if fmt == "short":
        click.echo(f"Unpacked to : {target}")


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
@click.option("--xwnoerase", "no_erase", is_flag=True, help="Keep COMPLETED/ERROR jobs on the server.")
@click.option(
    "--xwkeepzip", "keep_zip", is_flag=True, help="Keep the downloaded zip next to the unpacked results."
)
@xw_options
def xwresults(
    refs: tuple[str, ...], out: Path, no_erase: bool, keep_zip: bool, config: Path | None, fmt: str
) -> None:
    """Download and unpack the results of jobs (the named ones, or all your COMPLETED/ERROR jobs), then
    delete the finished jobs unless --xwnoerase (their results data stays). Unfinished jobs are skipped."""

    async def body(xw: XWClient) -> None:
        directory = out.expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        todo: list[str | JobOut] = list(refs) if refs else list(await _finished_jobs(xw))
        shown, failed = [], 0
        for item in todo:
            try:
                job = item if isinstance(item, JobOut) else await xw.get_job(await xw.resolve(WORK, item))
                shown.append(job)
                if fmt == "short":
                    click.echo(status_lines([job]))
                if job.status not in FINISHED:
                    continue
                if job.status is JobStatus.COMPLETED and job.result:
                    await _fetch(xw, job, job.result, directory, keep_zip, fmt)
                if not no_erase:
                    await xw.remove(job.uid)
            except USER_ERRORS as exc:
                complain(reason(exc))
                failed += 1
        if fmt != "short":
            echo_objects(WORK, shown, fmt)
        if failed:
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
