"""Bulk submit: time to submit 100,000 jobs through the API (``POST /api/v1/jobs``, 32 requests in flight,
one ``XWClient``: there is no bulk endpoint) and to list them back (paginated ``GET /api/v1/jobs``, 1,000
per page, each page validated into ``JobOut`` models as the client library does). Quick mode: 2,000.

Beside it, the same submissions through the command line (``xwsubmit --xwargfile FILE``, one job per
line) for a smaller count, and the rate per tenth of the run (does it slow down as the table grows?).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    Options,
    Record,
    Row,
    Spread,
    command_line,
    log,
    machine_busy,
    raise_nofile,
    run_benchmark,
    self_cpu,
)
from bench.profiling import start_profiler
from bench.servers import PASSWORD, Server, add_user, running_server, script_app, submit_many, tool
from client.api import XWClient
from client.transport import ApiRequest
from common.config import dump_flat_toml, write_private
from common.enums import UserRights
from common.schemas import JobOut, Page

NAME = "submit"
IN_FLIGHT = 32
PAGE = 1000
GOAL = "100,000 jobs submitted in < 10 s"


async def timed_submit(server: Server, xw: XWClient, app: str, n: int) -> dict[str, Any]:
    marks: list[float] = []
    tenth = max(1, n // 10)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if done % tenth == 0:
            marks.append(time.perf_counter())

    srv0, cli0, all0 = server.sample(), self_cpu(), machine_busy()
    t0 = time.perf_counter()
    await submit_many(xw, app, n, concurrency=IN_FLIGHT, on_done=tick)
    elapsed = time.perf_counter() - t0
    srv1, cli1, all1 = server.sample(), self_cpu(), machine_busy()
    starts = [t0, *marks[:-1]]
    return {
        "jobs": n,
        "seconds": elapsed,
        "jobs_per_s": n / elapsed,
        "rate_per_tenth": [tenth / (b - a) for a, b in zip(starts, marks, strict=True)],
        "server_cpu_ms_per_job": 1000 * (srv1.cpu - srv0.cpu) / n,
        "server_cpu_busy": (srv1.cpu - srv0.cpu) / elapsed,
        "client_cpu_busy": (cli1 - cli0) / elapsed,
        "others_cpu_busy": max(0.0, (all1 - all0) - (srv1.cpu - srv0.cpu) - (cli1 - cli0)) / elapsed,
    }


async def timed_list(xw: XWClient, pages: list[int] | None = None) -> dict[str, Any]:
    """Page through every job (or just ``pages``); total seconds and per-page seconds."""
    page_times: list[float] = []
    seen = 0
    offset = 0
    t0 = time.perf_counter()
    index = 0
    while True:
        if pages is not None:
            if index >= len(pages):
                break
            offset = pages[index] * PAGE
        p0 = time.perf_counter()
        params = {"offset": str(offset), "limit": str(PAGE)}
        resp = await xw.open(ApiRequest("GET", "/jobs", params=params))
        try:
            page = Page[JobOut].model_validate(await resp.json())
        finally:
            await resp.aclose()
        page_times.append(time.perf_counter() - p0)
        seen += len(page.items)
        offset += len(page.items)
        index += 1
        if pages is None and (not page.items or offset >= page.total):
            break
    elapsed = time.perf_counter() - t0
    return {
        "jobs": seen,
        "seconds": elapsed,
        "jobs_per_s": seen / elapsed if elapsed else 0.0,
        "pages": len(page_times),
        "first_page_ms": 1000 * page_times[0] if page_times else None,
        "last_page_ms": 1000 * page_times[-1] if page_times else None,
        "median_page_ms": 1000 * Spread.of(page_times).median if page_times else None,
    }


async def cli_submit(server: Server, where: Path, app: str, n: int) -> dict[str, Any]:
    """``xwsubmit APP --xwargfile FILE`` as a user would run it."""
    conf = where / "alice.conf"
    write_private(
        conf,
        dump_flat_toml({"server": server.url, "ca": str(server.ca), "login": "alice", "password": PASSWORD}),
    )
    argfile = where / "args.txt"
    argfile.write_text("".join(f"cli{i}\n" for i in range(n)))
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        tool("xwsubmit"),
        app,
        "--xwargfile",
        str(argfile),
        "--xwconfig",
        str(conf),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"xwsubmit failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")
    return {"jobs": n, "seconds": elapsed, "jobs_per_s": n / elapsed}


async def measure(opts: Options, where: Path) -> Record:
    raise_nofile()
    n = opts.extra.jobs or (2000 if opts.quick else 100_000)
    n_cli = 200 if opts.quick else 1000
    details: dict[str, Any] = {"in_flight": IN_FLIGHT, "page": PAGE}
    profiles: dict[str, Any] = {}
    async with running_server(where / "srv") as server:
        admin = server.admin()
        await add_user(admin, "alice", UserRights.STANDARD_USER)
        alice = server.client("alice")
        app = await script_app(alice, where, "true", "true\n")
        log(f"submitting {n} jobs, {IN_FLIGHT} in flight")
        details["api"] = sub = await timed_submit(server, alice, app, n)
        log(f"{n} jobs in {sub['seconds']:.1f} s ({sub['jobs_per_s']:.0f}/s)")
        details["list"] = lst = await timed_list(alice)
        log(f"listed {lst['jobs']} jobs in {lst['seconds']:.1f} s ({lst['pages']} pages)")
        if lst["jobs"] != n:
            raise RuntimeError(f"listed {lst['jobs']} jobs, submitted {n}")
        details["xwsubmit"] = cli = await cli_submit(server, where, app, n_cli)
        log(f"xwsubmit --xwargfile: {n_cli} jobs in {cli['seconds']:.1f} s")
        if opts.profile:
            profiles.update(await profiled(server, alice, app, where, lst["pages"]))
    tenths = sub["rate_per_tenth"]
    rows = [
        Row(
            figure=f"Bulk submit, {n:,} jobs through the API ({IN_FLIGHT} in flight, SQLite)",
            value=sub["seconds"],
            unit="s",
            baseline=sub["jobs_per_s"],
            baseline_unit="jobs/s",
            baseline_label="the same run as a rate",
            note=f"rate per tenth of the run {min(tenths):.0f}-{max(tenths):.0f} jobs/s; "
            f"server {sub['server_cpu_ms_per_job']:.1f} ms CPU/job",
            goal=GOAL,
            met=n >= 100_000 and sub["seconds"] < 10,
        ),
        Row(
            figure=f"List {n:,} jobs (GET /jobs, {PAGE} per page)",
            value=lst["seconds"],
            unit="s",
            baseline=lst["jobs_per_s"],
            baseline_unit="jobs/s",
            baseline_label="the same run as a rate",
            note=f"first page {lst['first_page_ms']:.0f} ms, last page {lst['last_page_ms']:.0f} ms",
        ),
        Row(
            figure=f"Bulk submit with xwsubmit --xwargfile, {n_cli:,} jobs",
            value=cli["jobs_per_s"],
            unit="jobs/s",
            baseline=sub["jobs_per_s"],
            baseline_unit="jobs/s",
            baseline_label="API, 32 in flight (above)",
            ratio=cli["jobs_per_s"] / sub["jobs_per_s"],
            ratio_label="xwsubmit / API",
            note=f"{cli['seconds']:.1f} s including the command's start-up",
        ),
    ]
    return Record(
        benchmark=NAME,
        title="Bulk submit and list",
        command=command_line(NAME),
        quick=opts.quick,
        rows=rows,
        details=details,
        profiles=profiles,
    )


async def profiled(server: Server, xw: XWClient, app: str, where: Path, pages: int) -> dict[str, Any]:
    """Profile 2,000 more submissions, then listing the first and last 10 pages."""
    prof = await start_profiler(server.pid, where / "submit.pyspy")
    await submit_many(xw, app, 2000, concurrency=IN_FLIGHT, prefix="p")
    out = {"submit": await prof.stop()}
    prof = await start_profiler(server.pid, where / "list.pyspy")
    wanted = sorted({*range(min(10, pages)), *range(max(0, pages - 10), pages)})
    await timed_list(xw, wanted)
    out["list"] = await prof.stop()
    return out


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=0, help="jobs to submit (default 100,000; quick 2,000)")


def main() -> None:
    run_benchmark(NAME, __doc__ or "", measure, add_options)


if __name__ == "__main__":
    main()
