"""Dispatch throughput: jobs/s through claim -> RUNNING -> COMPLETED (tiny result) with many simulated
workers, each its own WORKER_USER, host credential and XWClient (aiohttp session, TLS connection), on
SQLite and PostgreSQL; beside it the server's plain authenticated request rate (GET /api/v1/ping).

The simulated workers speak xwworker's protocol: ``POST /hosts/{h}/work?wait=0&max=S`` claims up to S
jobs (S = the worker's slots), and ``POST /hosts/{h}/results`` completes them with their ~250-byte result
zips inline, in one request. The same run also measures the one-job-per-request path (``max=1`` and a
streamed ``PUT /hosts/{h}/attempts/{a}/result`` per job) as the baseline. The jobs are submitted before
the clock starts; the clock stops when every job is COMPLETED. Each simulated worker also heartbeats
every alive period, as real workers do.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import time
from collections.abc import Awaitable, Callable
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
    Server,
    add_user,
    count_jobs,
    pg_database,
    pg_url,
    running_server,
    script_app,
    submit_many,
    tiny_result_zip,
)
from client.api import XWClient
from common.enums import CPU, OS, UserRights
from common.schemas import Heartbeat, HostIn, InlineResult

NAME = "dispatch"
SLOTS = 16  # jobs a simulated worker claims per request (its free slots)
ANCHOR = "BOINC 102 tasks/s on one server (Anderson et al. 2005); HTCondor ~55 jobs/s per schedd"
GOAL = ">= 1,000 jobs/s on this 2-core machine"


class Fleet:
    """Simulated workers: one WORKER_USER, XWClient and enrolled host each; they heartbeat like workers
    (every alive period, or the server's reaper would take their hosts for lost and their jobs back)."""

    def __init__(self, server: Server, clients: list[XWClient], hosts: list[str], period: float) -> None:
        self.server = server
        self.clients = clients
        self.hosts = hosts
        self.beats = [
            asyncio.create_task(self._heartbeat(xw, h, period)) for xw, h in zip(clients, hosts, strict=True)
        ]

    @staticmethod
    async def _heartbeat(xw: XWClient, host: str, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            await xw.heartbeat(host, Heartbeat())

    async def aclose(self) -> None:
        for task in self.beats:
            task.cancel()
        await asyncio.gather(*self.beats, return_exceptions=True)

    @classmethod
    async def enrol(cls, server: Server, admin: XWClient, n: int) -> Fleet:
        logins = [f"simw{i:04d}" for i in range(n)]
        sem = asyncio.Semaphore(8)  # user creation and the first login each cost one scrypt on the server

        async def one(login: str) -> tuple[XWClient, str, float]:
            async with sem:
                await add_user(admin, login, UserRights.WORKER_USER)
                xw = server.client(login)
                enrolment = await xw.enrol(HostIn(name=f"host-{login}", os=OS.LINUX, cpu=CPU.AMD64, cores=1))
                return xw, enrolment.host.uid, enrolment.alive_period

        made = await asyncio.gather(*(one(login) for login in logins))
        return cls(server, [m[0] for m in made], [m[1] for m in made], made[0][2])

    async def drain(self, result_zip: Path, slots: int) -> int:
        """Every worker claims and completes jobs until none is left; how many were completed.

        ``slots`` > 1: claim that many per request and send their results inline, together (xwworker's
        way); ``slots`` == 1: one claim and one streamed result upload per job (the old way).
        """
        raw = result_zip.read_bytes()
        content, sha = base64.b64encode(raw).decode(), hashlib.sha256(raw).hexdigest()

        async def work(xw: XWClient, host: str) -> int:
            done = 0
            while True:
                got = await xw.claim_work(host, 0, slots)
                if not got:
                    return done
                if slots == 1:
                    await xw.upload_result(host, got[0].attempt, result_zip, 0)
                else:
                    results = [
                        InlineResult(attempt=a.attempt, return_code=0, content=content, sha256=sha)
                        for a in got
                    ]
                    reply = await xw.send_results(host, results)
                    if reply.refused:
                        raise RuntimeError(f"results refused: {reply.refused}")
                done += len(got)

        counts = await asyncio.gather(*(work(xw, h) for xw, h in zip(self.clients, self.hosts, strict=True)))
        return sum(counts)

    async def ping_rate(self, seconds: float) -> dict[str, float]:
        """Authenticated GET /api/v1/ping from every worker's client at once for ``seconds``."""
        return await self.rate(lambda xw, _host: xw.ping(), seconds)

    async def endpoint_costs(self, seconds: float) -> dict[str, dict[str, float]]:
        """Rate and server CPU per request of the worker calls that move no job."""
        calls: dict[str, Callable[[XWClient, str], Awaitable[object]]] = {
            "GET /ping": lambda xw, _h: xw.ping(),
            "POST /hosts/{h}/alive (heartbeat, no job)": lambda xw, h: xw.heartbeat(h, Heartbeat()),
            "POST /hosts/{h}/work?wait=0 (nothing to claim)": lambda xw, h: xw.request_work(h, 0),
        }
        return {name: await self.rate(call, seconds) for name, call in calls.items()}

    async def rate(
        self, call: Callable[[XWClient, str], Awaitable[object]], seconds: float
    ) -> dict[str, float]:
        """``call`` from every worker's client at once, back to back, for ``seconds``."""
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + seconds

        async def hammer(xw: XWClient, host: str) -> int:
            n = 0
            while loop.time() < stop_at:
                await call(xw, host)
                n += 1
            return n

        srv0, all0, t0 = self.server.sample(), machine_busy(), time.perf_counter()
        total = sum(
            await asyncio.gather(*(hammer(xw, h) for xw, h in zip(self.clients, self.hosts, strict=True)))
        )
        elapsed = time.perf_counter() - t0
        srv1, all1 = self.server.sample(), machine_busy()
        return {
            "req_per_s": total / elapsed,
            "server_cpu_ms_per_req": 1000 * (srv1.cpu - srv0.cpu) / total,
            "server_cpu_busy": (srv1.cpu - srv0.cpu) / elapsed,
            "machine_cpu_busy": (all1 - all0) / elapsed,
        }


async def one_run(
    fleet: Fleet,
    submitter: XWClient,
    app: str,
    jobs: int,
    result_zip: Path,
    slots: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Submit ``jobs`` (not timed here), then time their dispatch to completion (profiled if ``profile``)."""
    t0 = time.perf_counter()
    await submit_many(submitter, app, jobs)
    submit_s = time.perf_counter() - t0
    prof = await start_profiler(fleet.server.pid, profile) if profile else None
    srv0, cli0, all0 = fleet.server.sample(), self_cpu(), machine_busy()
    t0 = time.perf_counter()
    done = await fleet.drain(result_zip, slots)
    elapsed = time.perf_counter() - t0
    srv1, cli1, all1 = fleet.server.sample(), self_cpu(), machine_busy()
    summary = await prof.stop() if prof else None
    if done != jobs:
        raise RuntimeError(f"{done} jobs completed, {jobs} submitted")
    pending = await count_jobs(submitter, status="PENDING") + await count_jobs(submitter, status="RUNNING")
    if pending:
        raise RuntimeError(f"{pending} jobs left PENDING/RUNNING after the run")
    return {
        "jobs_per_s": jobs / elapsed,
        "elapsed_s": elapsed,
        "submit_per_s": jobs / submit_s,
        "server_cpu_ms_per_job": 1000 * (srv1.cpu - srv0.cpu) / jobs,
        "server_cpu_busy": (srv1.cpu - srv0.cpu) / elapsed,  # cores the server used
        "client_cpu_busy": (cli1 - cli0) / elapsed,  # cores this (client) process used
        # cores every other process of the machine used meanwhile (the machine is shared)
        "others_cpu_busy": max(0.0, (all1 - all0) - (srv1.cpu - srv0.cpu) - (cli1 - cli0)) / elapsed,
        **({"profile": summary} if summary else {}),
    }


async def backend(label: str, db_url: str, where: Path, opts: Options) -> dict[str, Any]:
    """All runs on one database: dispatch repetitions, ping repetitions, and an optional profiled run."""
    workers, jobs, reps, ping_s = (8, 400, 1, 2.0) if opts.quick else (32, 4000, 3, 3.0)
    out: dict[str, Any] = {
        "workers": workers,
        "slots": SLOTS,
        "jobs_per_run": jobs,
        "runs": [],
        "single": [],
        "ping": [],
    }
    async with running_server(where / label, database_url=db_url) as server:
        admin = server.admin()
        await add_user(admin, "submitter", UserRights.STANDARD_USER)
        submitter = server.client("submitter")
        app = await script_app(submitter, where, f"true-{label}", "true\n")
        result_zip = tiny_result_zip(where / "result.zip")
        t0 = time.perf_counter()
        fleet = await Fleet.enrol(server, admin, workers)
        log(f"{label}: {workers} simulated workers enrolled in {time.perf_counter() - t0:.1f} s")
        try:
            for rep in range(reps):
                run = await one_run(fleet, submitter, app, jobs, result_zip, SLOTS)
                out["runs"].append(run)
                log(
                    f"{label} run {rep + 1}/{reps}: {run['jobs_per_s']:.0f} jobs/s, "
                    f"server {run['server_cpu_ms_per_job']:.2f} ms CPU/job"
                )
                single = await one_run(fleet, submitter, app, max(100, jobs // 8), result_zip, 1)
                out["single"].append(single)
                log(f"{label} one job per request {rep + 1}/{reps}: {single['jobs_per_s']:.0f} jobs/s")
            for rep in range(reps):
                ping = await fleet.ping_rate(ping_s)
                out["ping"].append(ping)
                log(f"{label} ping {rep + 1}/{reps}: {ping['req_per_s']:.0f} req/s")
            out["endpoints"] = await fleet.endpoint_costs(ping_s)
            if opts.profile:
                run = await one_run(
                    fleet, submitter, app, jobs // 2, result_zip, SLOTS, where / f"{label}.pyspy"
                )
                out["profile"] = run.pop("profile")
                out["profiled_run"] = run
        finally:
            await fleet.aclose()
    return out


def rows_for(label: str, res: dict[str, Any]) -> list[Row]:
    runs = res["runs"]
    rate = Spread.of([r["jobs_per_s"] for r in runs])
    ping = Spread.of([p["req_per_s"] for p in res["ping"]])
    ping_cpu = Spread.of([p["server_cpu_ms_per_req"] for p in res["ping"]])
    cpu = Spread.of([r["server_cpu_ms_per_job"] for r in runs])
    single = Spread.of([r["jobs_per_s"] for r in res["single"]])
    who = f"{res['workers']} simulated workers x {res['slots']} slots, {res['jobs_per_run']} jobs/run"
    return [
        Row(
            figure=f"Dispatch throughput, {label} ({who})",
            value=rate.median,
            unit="jobs/s",
            spread=rate,
            baseline=ping.median,
            baseline_unit="req/s",
            baseline_label=f"authenticated GET /ping, same clients, {label}",
            ratio=ratio(rate.median, ping.median),
            ratio_label="jobs/s / ping req/s",
            anchor=ANCHOR,
            goal=GOAL,
            met=rate.median >= 1000,
            note=f"one job per request (claim max=1 + streamed result), same run: {single.median:.0f} jobs/s",
        ),
        Row(
            figure=f"Server CPU per dispatched job, {label}",
            value=cpu.median,
            unit="ms CPU/job",
            spread=cpu,
            baseline=ping_cpu.median,
            baseline_unit="ms CPU/ping",
            baseline_label="server CPU per authenticated GET /ping",
            ratio=ratio(cpu.median, ping_cpu.median),
            ratio_label="a job costs this many pings",
            note=f"server-bound ceiling ~{1000 / cpu.median:.0f} jobs/s per core" if cpu.median else "",
        ),
    ]


async def measure(opts: Options, where: Path) -> Record:
    raise_nofile()
    results: dict[str, Any] = {}
    rows: list[Row] = []
    if opts.extra.db in ("both", "sqlite"):
        results["SQLite"] = await backend("SQLite", "", where, opts)
        rows += rows_for("SQLite", results["SQLite"])
    if opts.extra.db == "sqlite":
        pass
    elif pg_url():
        async with pg_database() as url:
            results["PostgreSQL"] = await backend("PostgreSQL", url, where, opts)
        rows += rows_for("PostgreSQL", results["PostgreSQL"])
    else:
        rows.append(
            not_measured(
                "Dispatch throughput, PostgreSQL",
                "no PostgreSQL server (run under scripts/pg-test-server, as `make bench` does)",
                "jobs/s",
            )
        )
    profiles = {k: v.pop("profile") for k, v in results.items() if "profile" in v}
    return Record(
        benchmark=NAME,
        title="Dispatch throughput",
        command=command_line(NAME),
        quick=opts.quick,
        rows=rows,
        details=results,
        profiles=profiles,
    )


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", choices=["both", "sqlite", "postgresql"], default="both")


def main() -> None:
    run_benchmark(NAME, __doc__ or "", measure, add_options)


if __name__ == "__main__":
    main()
