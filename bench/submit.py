"""Bulk submit: 100,000 jobs with ``xwsubmit APP --xwargfile FILE`` (one job per line), the command itself
timed end to end (its start-up, reading the file, the batches of ``POST /api/v1/jobs/batch``, printing
100,000 URIs) against an ``xwserver`` process, three runs on one server, on SQLite and, when a PostgreSQL
server is available (``scripts/pg-test-server``, as ``make bench`` runs), on PostgreSQL. Beside it, the
old way for a smaller count: one ``POST /api/v1/jobs`` per job, 32 requests in flight; and listing the
first run's jobs back (paginated ``GET /api/v1/jobs``, 1,000 per page, each page validated into ``JobOut``
models as the client library does). Quick mode: 2,000 jobs, one run.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
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
    not_measured,
    raise_nofile,
    ratio,
    run_benchmark,
    self_cpu,
)
from bench.profiling import start_profiler
from bench.servers import (
    PASSWORD,
    Server,
    add_user,
    count_jobs,
    pg_database,
    pg_url,
    running_server,
    script_app,
    submit_many,
    tool,
)
from client.api import XWClient
from client.transport import ApiRequest
from common.config import dump_flat_toml, write_private
from common.enums import UserRights
from common.schemas import JobOut, Page

NAME = "submit"
IN_FLIGHT = 32  # the one-job-per-request baseline
PAGE = 1000
GOAL = "100,000 jobs submitted with xwsubmit --xwargfile in < 10 s"


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


def _children_cpu() -> float:
    """CPU seconds of the child processes this process has waited for (the xwsubmit commands)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


async def cli_submit(server: Server, where: Path, app: str, n: int, tag: str = "cli") -> dict[str, Any]:
    """``xwsubmit APP --xwargfile FILE --xwconfig CONF`` as a user runs it: start to exit, checked."""
    conf = where / "alice.conf"
    write_private(
        conf,
        dump_flat_toml({"server": server.url, "ca": str(server.ca), "login": "alice", "password": PASSWORD}),
    )
    argfile = where / f"{tag}.txt"
    argfile.write_text("".join(f"{tag}{i}\n" for i in range(n)))
    out = where / f"{tag}.out"
    srv0, cmd0, all0 = server.sample(), _children_cpu(), machine_busy()
    t0 = time.perf_counter()
    with out.open("wb") as stdout:
        proc = await asyncio.create_subprocess_exec(
            tool("xwsubmit"),
            app,
            "--xwargfile",
            str(argfile),
            "--xwconfig",
            str(conf),
            stdout=stdout,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
    elapsed = time.perf_counter() - t0
    srv1, cmd1, all1 = server.sample(), _children_cpu(), machine_busy()
    if proc.returncode != 0:
        raise RuntimeError(f"xwsubmit failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")
    lines = out.read_text().splitlines()
    if len(lines) != n or not all(line.startswith("xw://") for line in (lines[0], lines[-1])):
        raise RuntimeError(f"xwsubmit printed {len(lines)} lines for {n} jobs: {lines[:2]}")
    server_cpu, command_cpu = srv1.cpu - srv0.cpu, cmd1 - cmd0
    return {
        "jobs": n,
        "seconds": elapsed,
        "jobs_per_s": n / elapsed,
        "server_cpu_ms_per_job": 1000 * server_cpu / n,
        "server_cpu_busy": server_cpu / elapsed,
        "command_cpu_s": command_cpu,
        "others_cpu_busy": max(0.0, (all1 - all0) - server_cpu - command_cpu) / elapsed,
    }


async def one_per_request(server: Server, xw: XWClient, app: str, n: int) -> dict[str, Any]:
    """The old way: one ``POST /jobs`` per job, ``IN_FLIGHT`` requests at once."""
    srv0, cli0, all0 = server.sample(), self_cpu(), machine_busy()
    t0 = time.perf_counter()
    await submit_many(xw, app, n, concurrency=IN_FLIGHT, prefix="one")
    elapsed = time.perf_counter() - t0
    srv1, cli1, all1 = server.sample(), self_cpu(), machine_busy()
    return {
        "jobs": n,
        "seconds": elapsed,
        "jobs_per_s": n / elapsed,
        "server_cpu_ms_per_job": 1000 * (srv1.cpu - srv0.cpu) / n,
        "others_cpu_busy": max(0.0, (all1 - all0) - (srv1.cpu - srv0.cpu) - (cli1 - cli0)) / elapsed,
    }


async def backend(label: str, url: str, where: Path, opts: Options, n: int) -> dict[str, Any]:
    """Every measurement on one database: xwsubmit runs, then (SQLite) listing and the old way."""
    reps = 1 if opts.quick else 3
    out: dict[str, Any] = {"runs": []}
    async with running_server(where / label, database_url=url) as server:
        admin = server.admin()
        await add_user(admin, "alice", UserRights.STANDARD_USER)
        alice = server.client("alice")
        app = await script_app(alice, where, f"true_{label.lower()}", "true\n")
        for rep in range(reps):
            run = await cli_submit(server, where, app, n, f"cli{rep}_")
            out["runs"].append(run)
            log(
                f"{label} xwsubmit --xwargfile run {rep + 1}/{reps}: {n} jobs in {run['seconds']:.1f} s, "
                f"server {run['server_cpu_ms_per_job']:.3f} ms CPU/job, "
                f"command {run['command_cpu_s']:.1f} s CPU"
            )
            if rep == 0 and label == "SQLite":
                out["list"] = lst = await timed_list(alice)
                log(f"listed {lst['jobs']} jobs in {lst['seconds']:.1f} s ({lst['pages']} pages)")
                if lst["jobs"] != n:
                    raise RuntimeError(f"listed {lst['jobs']} jobs, submitted {n}")
        total = await count_jobs(alice)
        if total != reps * n:
            raise RuntimeError(f"{total} jobs stored, {reps * n} submitted")
        if label == "SQLite":
            n_old = 200 if opts.quick else 5000
            out["one_per_request"] = old = await one_per_request(server, alice, app, n_old)
            log(f"one POST /jobs per job: {n_old} jobs in {old['seconds']:.1f} s ({old['jobs_per_s']:.0f}/s)")
            if opts.profile:
                out["profiles"] = await profiled(server, alice, app, where, out["list"]["pages"])
    return out


async def measure(opts: Options, where: Path) -> Record:
    raise_nofile()
    n = opts.extra.jobs or (2000 if opts.quick else 100_000)
    details: dict[str, Any] = {"jobs": n, "in_flight_baseline": IN_FLIGHT, "page": PAGE}
    rows: list[Row] = []
    profiles: dict[str, Any] = {}
    if opts.extra.db in ("both", "sqlite"):
        details["SQLite"] = await backend("SQLite", "", where, opts, n)
        profiles.update(details["SQLite"].pop("profiles", {}))
    if opts.extra.db in ("both", "postgresql") and pg_url():
        async with pg_database() as url:
            details["PostgreSQL"] = await backend("PostgreSQL", url, where, opts, n)
    old = details.get("SQLite", {}).get("one_per_request")
    for label in ("SQLite", "PostgreSQL"):
        res = details.get(label)
        if res is None:
            if opts.extra.db in ("both", label.lower()):
                rows.append(
                    not_measured(
                        f"Bulk submit with xwsubmit --xwargfile, {n:,} jobs, {label}",
                        "no PostgreSQL server (run under scripts/pg-test-server, as `make bench` does)",
                        "s",
                    )
                )
            continue
        seconds = Spread.of([r["seconds"] for r in res["runs"]])
        cpu = Spread.of([r["server_cpu_ms_per_job"] for r in res["runs"]])
        command = Spread.of([r["command_cpu_s"] for r in res["runs"]])
        others = Spread.of([r["others_cpu_busy"] for r in res["runs"]])
        rate = n / seconds.median
        rows.append(
            Row(
                figure=f"Bulk submit with xwsubmit --xwargfile, {n:,} jobs, {label} (the command end to end)",
                value=seconds.median,
                unit="s",
                spread=seconds,
                baseline=old["jobs_per_s"] if old else None,
                baseline_unit="jobs/s",
                baseline_label=f"one POST /jobs per job, {IN_FLIGHT} in flight, SQLite",
                ratio=ratio(rate, old["jobs_per_s"]) if old else None,
                ratio_label="xwsubmit jobs/s / one-per-request jobs/s",
                goal=GOAL,
                met=seconds.median < 10 if n >= 100_000 else None,  # smaller runs are not judged
                note=f"{rate:,.0f} jobs/s; server {cpu.median:.3f} ms CPU/job, the command "
                f"{command.median:.1f} s CPU; other processes kept {others.median:.1f} cores busy"
                + (" (the PostgreSQL server among them)" if label == "PostgreSQL" else ""),
            )
        )
    if old:
        rows.append(
            Row(
                figure=f"One POST /jobs per job ({IN_FLIGHT} in flight), {old['jobs']:,} jobs, SQLite",
                value=old["jobs_per_s"],
                unit="jobs/s",
                note=f"server {old['server_cpu_ms_per_job']:.1f} ms CPU/job: the path xwsubmit --xwargfile "
                "took before batches",
            )
        )
    lst = details.get("SQLite", {}).get("list")
    if lst:
        rows.append(
            Row(
                figure=f"List {n:,} jobs (GET /jobs, {PAGE} per page)",
                value=lst["seconds"],
                unit="s",
                baseline=lst["jobs_per_s"],
                baseline_unit="jobs/s",
                baseline_label="the same run as a rate",
                note=f"first page {lst['first_page_ms']:.0f} ms, last page {lst['last_page_ms']:.0f} ms",
            )
        )
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
    """Profile the server through 20,000 more submissions by xwsubmit, then listing the first and last
    10 pages."""
    prof = await start_profiler(server.pid, where / "submit.pyspy")
    await cli_submit(server, where, app, 20_000, "profiled")
    out = {"xwsubmit": await prof.stop()}
    prof = await start_profiler(server.pid, where / "list.pyspy")
    wanted = sorted({*range(min(10, pages)), *range(max(0, pages - 10), pages)})
    await timed_list(xw, wanted)
    out["list"] = await prof.stop()
    return out


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=0, help="jobs to submit (default 100,000; quick 2,000)")
    parser.add_argument(
        "--db",
        choices=("both", "sqlite", "postgresql"),
        default="both",
        help="databases to measure (PostgreSQL needs a server: scripts/pg-test-server)",
    )


def main() -> None:
    run_benchmark(NAME, __doc__ or "", measure, add_options)


if __name__ == "__main__":
    main()
