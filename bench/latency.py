"""Start latency: submit -> RUNNING and submit -> COMPLETED of a trivial job (``/bin/sh`` running ``true``)
on an idle pool of real workers (``python -m worker`` processes, sandboxed as they would be), one job at a
time: submit, wait until COMPLETED, next.

RUNNING is measured from the job's own timestamps: ``started - created`` (both set by the server: at the
claim and at the submit), so neither polling nor clock skew enters it; COMPLETED likewise as
``completed - created``. The client also times submit -> COMPLETED as it sees it, polling ``GET
/jobs/{uid}`` every 10 ms (that figure includes up to one polling interval).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    Options,
    Record,
    Row,
    command_line,
    latency_summary,
    log,
    machine_busy,
    raise_nofile,
    run_benchmark,
)
from bench.profiling import start_profiler
from bench.servers import Server, add_user, running_server, script_app, worker_pool
from client.api import XWClient
from common.enums import JobStatus, UserRights
from common.schemas import JobIn

NAME = "latency"
POLL = 0.01
FINAL = {JobStatus.COMPLETED, JobStatus.ERROR}
WARMUP = 3  # first jobs fill the workers' caches (the script) and warm the server: not counted
GOAL = "submit -> RUNNING p50 < 50 ms"


async def one_job(xw: XWClient, app: str, i: int) -> dict[str, float]:
    t0 = time.perf_counter()
    job = await xw.submit(JobIn(app=app, args=f"{i}", max_retries=0))
    while job.status not in FINAL:
        await asyncio.sleep(POLL)
        job = await xw.get_job(job.uid)
        if time.perf_counter() - t0 > 120:
            raise RuntimeError(f"job {job.uid} not done after 120 s ({job.status})")
    seen = time.perf_counter() - t0
    if job.status is not JobStatus.COMPLETED or job.started is None or job.completed is None:
        raise RuntimeError(f"job {job.uid} ended {job.status}: {job.status_reason}")
    return {
        "running": (job.started - job.created).total_seconds(),
        "completed": (job.completed - job.created).total_seconds(),
        "seen_completed": seen,
    }


async def series(xw: XWClient, app: str, n: int, first: int = 0) -> list[dict[str, float]]:
    return [await one_job(xw, app, first + i) for i in range(n)]


async def measure(opts: Options, where: Path) -> Record:
    raise_nofile()
    n = 20 if opts.quick else 200
    workers, slots = 2, 2
    details: dict[str, Any] = {"submissions": n, "workers": workers, "slots_per_worker": slots}
    profiles: dict[str, Any] = {}
    async with running_server(where / "srv") as server, worker_pool(server, where) as pool:
        admin = server.admin()
        await add_user(admin, "worker", UserRights.WORKER_USER)
        await add_user(admin, "alice", UserRights.STANDARD_USER)
        alice = server.client("alice")
        app = await script_app(alice, where, "true", "true\n")
        for i in range(workers):
            await pool.start(f"w{i}", "--slots", str(slots), "--longpoll", "30")
        details["sandboxes"] = await pool.wait_enrolled(admin)
        log(f"{workers} workers enrolled (sandbox: {details['sandboxes']}); {WARMUP} warm-up jobs")
        await series(alice, app, WARMUP, first=-WARMUP)
        busy0, srv0, t0 = machine_busy(), server.sample(), time.perf_counter()
        samples = await series(alice, app, n)
        elapsed = time.perf_counter() - t0
        details["server_cpu_busy"] = (server.sample().cpu - srv0.cpu) / elapsed
        details["machine_cpu_busy"] = (machine_busy() - busy0) / elapsed
        if opts.profile:
            profiles.update(await profiled(server, pool.procs, alice, app, where))
    for key in ("running", "completed", "seen_completed"):
        details[key] = latency_summary([s[key] for s in samples])
    run, done, seen = details["running"], details["completed"], details["seen_completed"]
    log(f"RUNNING p50 {run['p50_ms']:.0f} ms, COMPLETED p50 {done['p50_ms']:.0f} ms")
    sandbox = "/".join(sorted(set(details["sandboxes"]))) or "none"
    pool_text = f"{workers} idle workers x {slots} slots, sandbox {sandbox}; {n} sequential jobs"
    rows = [
        Row(
            figure=f"Start latency submit -> RUNNING, p50 ({pool_text})",
            value=run["p50_ms"],
            unit="ms",
            note=f"p90 {run['p90_ms']:.0f} ms, p99 {run['p99_ms']:.0f} ms "
            "(server timestamps started - created)",
            goal=GOAL,
            met=run["p50_ms"] < 50,
        ),
        Row(
            figure="Start latency submit -> COMPLETED, p50 (same jobs)",
            value=done["p50_ms"],
            unit="ms",
            baseline=seen["p50_ms"],
            baseline_unit="ms",
            baseline_label="submit -> COMPLETED seen by the client (10 ms polling)",
            note=f"p90 {done['p90_ms']:.0f} ms, p99 {done['p99_ms']:.0f} ms (server timestamps)",
        ),
    ]
    return Record(
        benchmark=NAME,
        title="Start latency",
        command=command_line(NAME),
        quick=opts.quick,
        rows=rows,
        details=details,
        profiles=profiles,
    )


async def profiled(
    server: Server, procs: dict[str, asyncio.subprocess.Process], xw: XWClient, app: str, where: Path
) -> dict[str, Any]:
    """30 more jobs while py-spy samples the server and every worker process."""
    profilers = {"server": await start_profiler(server.pid, where / "server.pyspy")}
    for name, proc in procs.items():
        profilers[f"worker {name}"] = await start_profiler(proc.pid, where / f"{name}.pyspy")
    try:
        await series(xw, app, 30, first=100_000)
    finally:
        out = {name: await prof.stop() for name, prof in profilers.items()}
    return out


def main() -> None:
    run_benchmark(NAME, __doc__ or "", measure)


if __name__ == "__main__":
    main()
