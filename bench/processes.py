"""Several server processes on one PostgreSQL: dispatch throughput with one and with two processes
(``xwserver run --processes N``, one port, SO_REUSEPORT), and how fast a job submitted on one process
reaches a worker waiting on another (LISTEN/NOTIFY).

**Throughput.** One server home on one fresh database; the server is started with ``--processes 1``,
then ``--processes 2``, alternately, on the same port. Simulated workers (each its own host credential
and its own ``XWClient``, i.e. its own TLS connections, which the kernel spreads over the processes)
claim up to ``SLOTS`` jobs per request (``POST /hosts/{h}/work?wait=0&max=S``) and complete them with a
~150-byte result inline (``POST /hosts/{h}/results``). The jobs are submitted before the clock starts;
the clock stops when every job is COMPLETED. The load generator is this one Python process: batched
claims and inline results keep it cheap per job, and its CPU is reported beside the servers'.

**Wake-up across processes.** Two ``xwserver run`` processes on the same home and database, on two
ports (A and B, as two machines behind a load balancer would be). Idle simulated workers long-poll B;
jobs are submitted one at a time on A; RUNNING is the job's own ``started - created`` (both set by the
servers: the submit on A, the claim on B; one machine, one clock). The same measured with the submit on
B itself is the baseline (no process boundary).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import io
import os
import socket
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from sqlalchemy.engine import make_url

from bench.harness import (
    Options,
    Record,
    Row,
    Spread,
    command_line,
    latency_summary,
    log,
    machine_busy,
    not_measured,
    raise_nofile,
    ratio,
    run_benchmark,
    self_cpu,
)
from bench.servers import (
    PASSWORD,
    add_user,
    drain_stdout,
    pg_database,
    pg_url,
    sample,
    script_app,
    spawn_xwserver,
    stop_process,
)
from client.api import XWClient
from client.config import ClientConfig
from common.config import read_toml
from common.enums import CPU, OS, UserRights
from common.schemas import Heartbeat, HostIn, InlineResult, JobIn
from server.scheduler.dedicated import connect_kwargs

NAME = "processes"
CORES = os.cpu_count() or 1
SLOTS = 32  # jobs a simulated worker claims per request
SPEEDUP_GOAL = ">= 1.6x one process's dispatch rate with 2 processes"
LATENCY_GOAL = "submit on one process -> RUNNING on a worker waiting on another: p50 < 50 ms"


@dataclass
class Served:
    """An ``xwserver run`` (supervisor and children, or one process) on the bench's home."""

    proc: asyncio.subprocess.Process
    url: str
    processes: int
    drain: asyncio.Task[None]

    def cpu(self) -> float:
        """CPU seconds of the whole process tree so far (children that restarted are not counted)."""
        return sample(self.proc.pid, children=True).cpu

    async def aclose(self) -> None:
        await stop_process(self.proc, grace=90)
        self.drain.cancel()


async def serve(home: Path, log_path: Path, port: int, processes: int) -> Served:
    args = ["--port", str(port), "--processes", str(processes)]
    proc, url = await spawn_xwserver(home, log_path, args, timeout=180)
    return Served(proc, url, processes, drain_stdout(proc))


@contextlib.asynccontextmanager
async def serving(home: Path, where: Path, port: int, processes: int) -> AsyncIterator[Served]:
    served = await serve(home, where / f"server-{processes}p-{port}.log", port, processes)
    try:
        yield served
    finally:
        await served.aclose()


def postgres_pid(url: str) -> int | None:
    """The postmaster serving ``url`` (the process listening on its port on this machine), if found."""
    port = make_url(url).port or 5432
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return int(conn.pid)
    return None


def postgres_cpu(pid: int | None) -> float:
    """CPU seconds of the PostgreSQL cluster so far (0 if not found): the postmaster, its live backends,
    and the backends that ended already (the postmaster reaps them: its children's times count them)."""
    if not pid:
        return 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        t = psutil.Process(pid).cpu_times()
        return sample(pid, children=True).cpu + t.children_user + t.children_system
    return 0.0


async def postgres_sessions(url: str) -> int:
    """Sessions the database has had so far (each a backend process forked, authenticated, warmed)."""
    conn = await asyncpg.connect(**connect_kwargs(url))
    try:
        return int(
            await conn.fetchval("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        )
    finally:
        await conn.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Grid:
    """What the runs share: the home, the app, the submitter and the enrolled hosts' credentials."""

    home: Path
    ca: Path
    admin_password: str
    app: str = ""
    hosts: list[tuple[str, str]] = field(default_factory=list)  # (host uid, credential)

    def client(self, url: str, login: str | None = None, password: str | None = None) -> XWClient:
        return XWClient(ClientConfig(server=url, ca=self.ca, login=login, password=password))

    def host_client(self, url: str, host: tuple[str, str]) -> XWClient:
        xw = self.client(url)
        xw.use_host(*host)
        return xw


async def prepare(grid: Grid, url: str, where: Path, hosts: int) -> None:
    """Users, the app and ``hosts`` enrolled hosts (their credentials kept for every later run)."""
    async with grid.client(url, "admin", grid.admin_password) as admin:
        await add_user(admin, "submitter", UserRights.STANDARD_USER)
        await add_user(admin, "worker", UserRights.WORKER_USER)
    async with grid.client(url, "submitter", PASSWORD) as submitter:
        grid.app = await script_app(submitter, where, "true", "true\n")
    async with grid.client(url, "worker", PASSWORD) as worker:
        for i in range(hosts):
            got = await worker.enrol(HostIn(name=f"sim{i:03d}", os=OS.LINUX, cpu=CPU.AMD64, cores=SLOTS))
            assert got.credential is not None
            grid.hosts.append((got.host.uid, got.credential))


def result_of(attempt: str, shared: bool = False) -> InlineResult:
    """A job's results zip (~150 bytes) inline: its own stdout, as jobs' outputs mostly differ;
    ``shared``: the same bytes for every job (they then all count references to one blob row)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("stdout.txt", "ok\n" if shared else f"ok {attempt}\n")
    raw = buf.getvalue()
    return InlineResult(
        attempt=attempt,
        return_code=0,
        content=base64.b64encode(raw).decode(),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


async def dispatch_run(
    grid: Grid, served: Served, jobs: int, pg: int | None, shared: bool, url: str
) -> dict[str, Any]:
    """Submit ``jobs``, then time every host claiming and completing them until none is left."""
    workers = [grid.host_client(served.url, h) for h in grid.hosts]
    submitter = grid.client(served.url, "submitter", PASSWORD)
    try:
        # a sign of life first: hosts silent since the last run must not be taken for lost mid-run
        await asyncio.gather(
            *(xw.heartbeat(h[0], Heartbeat()) for xw, h in zip(workers, grid.hosts, strict=True))
        )
        t0 = time.perf_counter()
        await submitter.submit_many([JobIn(app=grid.app, args=str(i), max_retries=0) for i in range(jobs)])
        submit_s = time.perf_counter() - t0

        async def drain(xw: XWClient, host: str) -> int:
            done = 0
            while True:
                got = await xw.claim_work(host, 0, SLOTS)
                if not got:
                    return done
                results = [result_of(a.attempt, shared) for a in got]
                reply = await xw.send_results(host, results)
                if reply.refused:
                    raise RuntimeError(f"results refused: {reply.refused}")
                done += len(got)

        sessions0 = await postgres_sessions(url)
        srv0, cli0, all0, pg0 = served.cpu(), self_cpu(), machine_busy(), postgres_cpu(pg)
        t0 = time.perf_counter()
        done = sum(
            await asyncio.gather(*(drain(xw, h[0]) for xw, h in zip(workers, grid.hosts, strict=True)))
        )
        elapsed = time.perf_counter() - t0
        srv1, cli1, all1, pg1 = served.cpu(), self_cpu(), machine_busy(), postgres_cpu(pg)
        sessions = await postgres_sessions(url) - sessions0 - 1  # less our own look
    finally:
        await asyncio.gather(*(xw.aclose() for xw in [*workers, submitter]), return_exceptions=True)
    if done != jobs:
        raise RuntimeError(f"{done} jobs completed, {jobs} submitted")
    return {
        "processes": served.processes,
        "jobs_per_s": jobs / elapsed,
        "elapsed_s": elapsed,
        "submit_per_s": jobs / submit_s,
        "server_cpu_ms_per_job": 1000 * (srv1 - srv0) / jobs,
        "server_cpu_busy": (srv1 - srv0) / elapsed,
        "client_cpu_busy": (cli1 - cli0) / elapsed,
        "client_cpu_ms_per_job": 1000 * (cli1 - cli0) / jobs,
        "postgres_cpu_ms_per_job": 1000 * (pg1 - pg0) / jobs,
        "postgres_cpu_busy": (pg1 - pg0) / elapsed,
        "postgres_sessions": sessions,  # new connections the servers opened during the run
        # everything else on the machine (it is shared)
        "others_cpu_busy": max(0.0, (all1 - all0) - (srv1 - srv0) - (cli1 - cli0) - (pg1 - pg0)) / elapsed,
    }


async def latency_series(
    grid: Grid, submit_url: str, wait_url: str, n: int, waiters: int
) -> list[dict[str, float]]:
    """``n`` jobs submitted one at a time on ``submit_url`` while ``waiters`` hosts long-poll
    ``wait_url``; per job: started - created (server clocks) and submit -> claimed (this client)."""
    hosts = grid.hosts[:waiters]
    workers = [grid.host_client(wait_url, h) for h in hosts]
    submitter = grid.client(submit_url, "submitter", PASSWORD)
    claimed: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    async def wait_loop(xw: XWClient, host: str) -> None:
        while True:
            got = await xw.claim_work(host, 30, 1)
            now = time.perf_counter()
            for a in got:
                await claimed.put((a.job.uid, now))
                await xw.send_results(host, [result_of(a.attempt)])

    loops = [asyncio.create_task(wait_loop(xw, h[0])) for xw, h in zip(workers, hosts, strict=True)]
    out: list[dict[str, float]] = []
    try:
        await asyncio.sleep(1.0)  # every waiter parked
        for i in range(n):
            t0 = time.perf_counter()
            job = await submitter.submit(JobIn(app=grid.app, args=f"lat{i}", max_retries=0))
            uid, at = await asyncio.wait_for(claimed.get(), 60)
            if uid != job.uid:
                raise RuntimeError(f"claimed {uid}, expected {job.uid}")
            seen = await submitter.get_job(uid)
            if seen.started is None:
                raise RuntimeError(f"job {uid} has no start time")
            out.append({"running": (seen.started - seen.created).total_seconds(), "claimed": at - t0})
            await asyncio.sleep(0.05)  # the waiter parks again
    finally:
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await asyncio.gather(*(xw.aclose() for xw in [*workers, submitter]), return_exceptions=True)
    return out


async def measure(opts: Options, where: Path) -> Record:
    raise_nofile()
    if not pg_url():
        reason = "no PostgreSQL server (run under scripts/pg-test-server, as `make bench` does)"
        return Record(
            benchmark=NAME,
            title="Several server processes",
            command=command_line(NAME),
            quick=opts.quick,
            rows=[
                not_measured("Dispatch throughput, 2 processes vs 1, PostgreSQL", reason, "jobs/s"),
                not_measured("Submit on A -> RUNNING on B, p50", reason, "ms"),
            ],
        )
    hosts, jobs, reps, lat_n = (4, 400, 1, 20) if opts.quick else (16, 6000, 3, 200)
    details: dict[str, Any] = {
        "hosts": hosts,
        "slots": SLOTS,
        "jobs_per_run": jobs,
        "shared_result": opts.extra.shared_result,
        "runs": [],
    }
    async with pg_database() as url:
        home = where / "home"
        await asyncio.to_thread(_init_home, home, url)
        grid = Grid(home, home / "ca" / "ca.crt", str(read_toml(home / "admin.conf")["password"]))
        port, pg = free_port(), postgres_pid(url)
        for rep in range(reps):
            for n in (1, 2):
                async with serving(home, where, port, n) as served:
                    if not grid.app:
                        await prepare(grid, served.url, where, hosts)
                    run = await dispatch_run(grid, served, jobs, pg, opts.extra.shared_result, url)
                details["runs"].append(run)
                log(
                    f"{n} process(es), run {rep + 1}/{reps}: {run['jobs_per_s']:.0f} jobs/s; cores: "
                    f"server {run['server_cpu_busy']:.2f}, PostgreSQL {run['postgres_cpu_busy']:.2f}, "
                    f"load generator {run['client_cpu_busy']:.2f}, others {run['others_cpu_busy']:.2f}; "
                    f"{run['postgres_sessions']} new PostgreSQL sessions"
                )
        a_port, b_port = free_port(), free_port()
        async with serving(home, where, a_port, 1) as a, serving(home, where, b_port, 1) as b:
            across = await latency_series(grid, a.url, b.url, lat_n, min(4, hosts))
            same = await latency_series(grid, b.url, b.url, lat_n, min(4, hosts))
    details["across"] = {k: latency_summary([s[k] for s in across]) for k in ("running", "claimed")}
    details["same"] = {k: latency_summary([s[k] for s in same]) for k in ("running", "claimed")}
    return Record(
        benchmark=NAME,
        title="Several server processes",
        command=command_line(NAME),
        quick=opts.quick,
        rows=rows_for(details),
        details=details,
    )


def _init_home(home: Path, database_url: str) -> None:
    from server.home import init_home

    init_home(home, host="127.0.0.1", port=0, database_url=database_url)


def rows_for(d: dict[str, Any]) -> list[Row]:
    by = {n: [r for r in d["runs"] if r["processes"] == n] for n in (1, 2)}
    one, two = (Spread.of([r["jobs_per_s"] for r in by[n]]) for n in (1, 2))
    cpu_one, cpu_two = (Spread.of([r["server_cpu_ms_per_job"] for r in by[n]]) for n in (1, 2))
    pg_one, pg_two = (Spread.of([r["postgres_cpu_ms_per_job"] for r in by[n]]) for n in (1, 2))
    cores = Spread.of(
        [
            r["server_cpu_busy"] + r["client_cpu_busy"] + r["postgres_cpu_busy"] + r["others_cpu_busy"]
            for r in by[2]
        ]
    )
    # what the machine's cores allow at most when servers, PostgreSQL and the load generator share them
    per_job = Spread.of(
        [
            r["server_cpu_ms_per_job"] + r["postgres_cpu_ms_per_job"] + r["client_cpu_ms_per_job"]
            for r in by[2]
        ]
    )
    ceiling = CORES * 1000 / per_job.median if per_job.median else None
    speedup = ratio(two.median, one.median)
    across, same = d["across"]["running"], d["same"]["running"]
    who = f"{d['hosts']} simulated workers x {d['slots']} slots, {d['jobs_per_run']} jobs/run"
    return [
        Row(
            figure=f"Dispatch throughput, 2 server processes on one PostgreSQL ({who})",
            value=two.median,
            unit="jobs/s",
            spread=two,
            baseline=one.median,
            baseline_unit="jobs/s",
            baseline_label="1 process, same home, database and load, alternating runs",
            ratio=speedup,
            ratio_label="2 processes / 1",
            goal=SPEEDUP_GOAL,
            met=speedup is not None and speedup >= 1.6,
            note=f"machine cores busy with 2 processes: {cores.median:.2f} of {CORES} (servers, PostgreSQL, "
            f"load generator, other users); CPU per job, all of them: {per_job.median:.2f} ms, so these "
            f"{CORES} cores allow ~{ceiling or 0:.0f} jobs/s at most",
        ),
        Row(
            figure="Server CPU per dispatched job, 2 processes (summed)",
            value=cpu_two.median,
            unit="ms CPU/job",
            spread=cpu_two,
            baseline=cpu_one.median,
            baseline_unit="ms CPU/job",
            baseline_label="1 process",
            ratio=ratio(cpu_two.median, cpu_one.median),
            ratio_label="2 processes / 1",
            note=f"PostgreSQL CPU per job: {pg_two.median:.2f} ms with 2 processes, "
            f"{pg_one.median:.2f} ms with 1",
        ),
        Row(
            figure="Submit on process A -> RUNNING on a worker waiting on process B, p50",
            value=across["p50_ms"],
            unit="ms",
            baseline=same["p50_ms"],
            baseline_unit="ms",
            baseline_label="submit and wait on the same process",
            ratio=ratio(across["p50_ms"], same["p50_ms"]),
            ratio_label="across / same process",
            goal=LATENCY_GOAL,
            met=across["p50_ms"] < 50,
            note=f"p99 {across['p99_ms']:.0f} ms (same process: {same['p99_ms']:.0f} ms); {int(across['n'])} "
            "jobs one at a time; server timestamps started - created",
        ),
    ]


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shared-result",
        action="store_true",
        help="every job sends the same result bytes (one blob row counted by every completion)",
    )


def main() -> None:
    run_benchmark(NAME, __doc__ or "", measure, add_options)


if __name__ == "__main__":
    main()
