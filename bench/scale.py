"""Worker scale: how many simulated idle workers one server holds with heartbeat p99 under 200 ms, its CPU
and memory per 1,000 workers, and how fast a job submitted to that idle fleet starts.

The server runs as its own process (``xwserver run``) so that psutil measures only it. Each simulated
worker enrols its own host (and speaks with its own host credential) and then behaves like an idle
one-slot ``xwworker``: a heartbeat (``POST /hosts/{h}/alive``) every alive period — the period the
server answers, which it stretches as the fleet grows (``heartbeats_per_second``) — and one outstanding
long-poll (``POST /hosts/{h}/work?wait=300&max=1``: the server caps the wait, longer for a larger fleet,
and parks the request on a future; past ``max_longpolls`` it answers 429 with a Retry-After the worker
obeys). A job that reaches a simulated worker is completed at once with a tiny inline result. A second
ramp, on a fresh server, sends heartbeats only (``--longpoll-only`` skips it). The workers share one
WORKER_USER token and a few client sessions spread over several loopback source addresses (127.0.0.x:
past the ephemeral-port limit of one address). At each level the ramp waits one period after the
enrolments (their burst is not the held fleet's steady state), measures heartbeat latency over 1.5
periods, then the start latency of jobs submitted one by one to the idle fleet (the server's
``started - created``), until p99 exceeds 200 ms or the time cap. The load generator shares the
machine's cores with the server; its CPU is reported beside the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import io
import random
import time
import zipfile
from dataclasses import dataclass, field
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
    self_cpu,
)
from bench.profiling import start_profiler
from bench.servers import PASSWORD, Server, add_user, pg_database, running_server, script_app
from client.api import XWClient
from common.enums import CPU, OS, UserRights
from common.errors import TooManyRequests, XWError
from common.schemas import Heartbeat, HostIn, InlineResult, JobIn
from server import gcpolicy

NAME = "scale"
LIMIT_MS = 200.0
SESSIONS = 32
LONGPOLL = 300.0  # what the simulated workers ask for, as xwworker does (the server caps it)
STARTS = 20  # jobs submitted one by one to the idle fleet at each level
GOAL = "100,000 workers per server"


def tiny_result_zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("stdout.txt", "ok\n")
    return buf.getvalue()


async def start_latency(submitter: XWClient, app: str, n: int) -> dict[str, Any]:
    """Submit ``n`` jobs one at a time to the idle fleet; their start latency (server clocks)."""
    lat: list[float] = []
    for i in range(n):
        job = await submitter.submit(JobIn(app=app, args=str(i)))
        for _ in range(200):
            seen = await submitter.get_job(job.uid)
            if seen.started is not None:
                lat.append((seen.started - seen.created).total_seconds())
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)
    out = latency_summary(lat)
    out["started"] = len(lat)
    return out


class FleetFailed(RuntimeError):
    """Simulated workers could not enrol or stay connected."""


@dataclass
class Fleet:
    """Simulated idle workers sharing a few client sessions."""

    server: Server
    clients: list[XWClient]
    period: float
    longpoll: bool
    beats: list[tuple[float, float]] = field(default_factory=list)  # (start time, latency s)
    errors: list[str] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    size: int = 0
    deferred: int = 0  # long-polls the server told to come back later (429)

    async def grow(self, target: int) -> float:
        """Enrol workers until there are ``target``; seconds it took."""
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(64)
        enrolled: list[asyncio.Event] = []
        for i in range(self.size, target):
            ev = asyncio.Event()
            enrolled.append(ev)
            self.tasks.append(asyncio.create_task(self.worker(i, sem, ev)))
        self.size = target
        await asyncio.gather(*(ev.wait() for ev in enrolled))
        if self.errors:
            raise FleetFailed(f"{len(self.errors)} simulated workers failed, first: {self.errors[0]}")
        return time.perf_counter() - t0

    async def worker(self, i: int, sem: asyncio.Semaphore, enrolled: asyncio.Event) -> None:
        xw = self.clients[i % len(self.clients)]
        try:
            async with sem:
                host = HostIn(name=f"sim-{i:06d}", os=OS.LINUX, cpu=CPU.AMD64, cores=1)
                uid = (await xw.enrol(host)).host.uid
        except XWError as exc:
            self.errors.append(f"enrol: {exc.reason}")
            enrolled.set()
            return
        enrolled.set()
        loops = [self.heartbeats(xw, uid)]
        if self.longpoll:
            loops.append(self.longpolls(xw, uid))
        await asyncio.gather(*loops)

    async def heartbeats(self, xw: XWClient, uid: str) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + random.uniform(0, self.period)  # workers start at random phases
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            t0 = time.perf_counter()
            try:
                reply = await xw.heartbeat(uid, Heartbeat())
            except XWError as exc:
                self.errors.append(f"heartbeat: {exc.reason}")
                next_at += self.period
                continue
            self.beats.append((t0, time.perf_counter() - t0))
            self.period = reply.alive_period  # as xwworker does: the server sets the pace
            next_at += self.period

    async def longpolls(self, xw: XWClient, uid: str) -> None:
        raw = tiny_result_zip_bytes()
        content, sha = base64.b64encode(raw).decode(), hashlib.sha256(raw).hexdigest()
        while True:
            try:
                got = await xw.claim_work(uid, LONGPOLL, 1)
            except TooManyRequests as exc:
                self.deferred += 1
                await asyncio.sleep(exc.retry_after)
                continue
            except XWError as exc:
                self.errors.append(f"long-poll: {exc.reason}")
                await asyncio.sleep(1)
                continue
            if got:
                result = InlineResult(attempt=got[0].attempt, return_code=0, content=content, sha256=sha)
                try:
                    await xw.send_results(uid, [result])
                except XWError as exc:
                    self.errors.append(f"result: {exc.reason}")

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def hold(fleet: Fleet, level: int, window: float, profile: Path | None) -> dict[str, Any]:
    """Measure one level: heartbeat latency, server CPU and RSS, client CPU, over ``window`` seconds."""
    prof = await start_profiler(fleet.server.pid, profile) if profile else None
    srv0, cli0, all0 = fleet.server.sample(), self_cpu(), machine_busy()
    errors0 = len(fleet.errors)
    t0 = time.perf_counter()
    await asyncio.sleep(window)
    elapsed = time.perf_counter() - t0
    srv1, cli1, all1 = fleet.server.sample(), self_cpu(), machine_busy()
    # beats that started in the window; a beat still pending at its end is waited for (its latency counts)
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline and len([b for b in fleet.beats if b[0] >= t0]) < 0.9 * level * (
        window / fleet.period
    ):
        await asyncio.sleep(0.1)
    lat = [d for start, d in fleet.beats if t0 <= start < t0 + elapsed]
    out: dict[str, Any] = {
        "workers": level,
        "heartbeats": len(lat),
        "expected_heartbeats": level * window / fleet.period,
        **latency_summary(lat),
        "server_cpu_busy": (srv1.cpu - srv0.cpu) / elapsed,
        "server_rss_mib": srv1.rss / 2**20,
        "client_cpu_busy": (cli1 - cli0) / elapsed,
        "others_cpu_busy": max(0.0, (all1 - all0) - (srv1.cpu - srv0.cpu) - (cli1 - cli0)) / elapsed,
        "errors": len(fleet.errors) - errors0,
    }
    if prof is not None:
        out["profile"] = await prof.stop()
    return out


LEVELS = [1000, 2500, 5000, 10_000, 20_000, 40_000, 70_000, 100_000]
SOURCES = 8  # loopback source addresses the sessions connect from
BELOW = [50, 25]  # tried when the first level already fails: where the limit actually is


async def ramp(server: Server, where: Path, opts: Options, longpoll: bool) -> dict[str, Any]:
    period = 2.0 if opts.quick else 10.0
    window = 1.5 * period  # every worker beats once or twice in it
    cap = 30.0 if opts.quick else float(opts.extra.cap)
    steps = [50, 100] if opts.quick else list(LEVELS)
    admin = server.admin()
    login = f"fleet{'lp' if longpoll else 'hb'}"
    await add_user(admin, login, UserRights.WORKER_USER)
    token = (await admin.login(login, PASSWORD)).access_token
    clients = [server.token_client(token, source=f"127.0.0.{2 + i % SOURCES}") for i in range(SESSIONS)]
    fleet = Fleet(server, clients, period, longpoll)
    await add_user(admin, f"{login}-user", UserRights.STANDARD_USER)
    submitter = server.client(f"{login}-user")
    app = (await script_app(submitter, where, f"start-{login}", "true\n")) if longpoll else ""
    base_rss = server.sample().rss / 2**20
    out: dict[str, Any] = {"period_s": period, "window_s": window, "base_rss_mib": base_rss, "levels": []}
    t_start = time.perf_counter()
    try:
        for level in steps:
            if time.perf_counter() - t_start > cap:
                out["stopped"] = f"time cap {cap:.0f} s reached"
                break
            try:
                enrol_s = await fleet.grow(level)
            except FleetFailed as failed:  # e.g. past the server's max_connections or max_longpolls
                out["stopped"] = f"{level} workers could not all be held: {failed}"
                log(out["stopped"])
                break
            log(f"{level} workers enrolled in {enrol_s:.0f} s")
            # let the enrolment burst pass: the new workers' first long-polls and heartbeats (the
            # latter at random phases over one period); the window then measures the held fleet
            await asyncio.sleep(fleet.period if not opts.quick else min(period, 5.0))
            profile = where / f"scale-{login}-{level}.pyspy" if opts.profile else None
            res = await hold(fleet, level, fleet.period * 1.5, profile)
            res["enrol_s"] = enrol_s
            res["period_s"] = fleet.period
            res["deferred"] = fleet.deferred
            log(f"{level} workers: heartbeats measured (p99 {res['p99_ms']:.0f} ms)")
            if longpoll:
                res["start"] = await start_latency(submitter, app, STARTS)
            out["levels"].append(res)
            start = f", job start p50 {res['start']['p50_ms']:.0f} ms" if "start" in res else ""
            log(
                f"{'long-poll+heartbeat' if longpoll else 'heartbeat only'}: {level} workers "
                f"(period {fleet.period:.0f} s): hb p50 {res['p50_ms']:.0f} ms p99 {res['p99_ms']:.0f} ms, "
                f"server {res['server_cpu_busy']:.2f} cores {res['server_rss_mib']:.0f} MiB, "
                f"client {res['client_cpu_busy']:.2f} cores{start}"
            )
            if res["p99_ms"] > LIMIT_MS and level == LEVELS[0] and not opts.quick and not res["errors"]:
                return await below(server, where, opts, longpoll, out, fleet)
            if res["p99_ms"] > LIMIT_MS or res["errors"]:
                out["stopped"] = f"p99 {res['p99_ms']:.0f} ms > {LIMIT_MS:.0f} ms at {level} workers" + (
                    f" ({res['errors']} errors)" if res["errors"] else ""
                )
                break
        else:
            out["stopped"] = "last level reached"
    finally:
        await fleet.aclose()
    return out


async def below(
    server: Server, where: Path, opts: Options, longpoll: bool, out: dict[str, Any], fleet: Fleet
) -> dict[str, Any]:
    """The first level failed: shrink the fleet (new server state is not needed: surplus hosts go silent)."""
    await fleet.aclose()
    first = out["levels"][0]
    out["stopped"] = f"p99 {first['p99_ms']:.0f} ms > {LIMIT_MS:.0f} ms at {first['workers']} workers"
    for level in BELOW:
        login = f"fleet{level}"
        await add_user(server.admin(), login, UserRights.WORKER_USER)
        token = (await server.admin().login(login, PASSWORD)).access_token
        small = Fleet(server, [server.token_client(token) for _ in range(SESSIONS)], fleet.period, longpoll)
        try:
            res = await small.grow(level)
            await asyncio.sleep(min(fleet.period, 5.0))
            res_level = await hold(small, level, out["window_s"], None)
            res_level["enrol_s"] = res
        finally:
            await small.aclose()
        out["levels"].append(res_level)
        log(f"below the first level: {level} workers: hb p99 {res_level['p99_ms']:.0f} ms")
        if res_level["p99_ms"] <= LIMIT_MS:
            break
        await asyncio.sleep(fleet.period)
    return out


def summarise(mode: str, res: dict[str, Any], label: str) -> list[Row]:
    ok = [lv for lv in res["levels"] if lv["p99_ms"] <= LIMIT_MS and not lv["errors"]]
    if not ok:
        first = res["levels"][0] if res["levels"] else {}
        return [
            Row(
                figure=f"Workers held with heartbeat p99 < 200 ms ({mode}, {label})",
                value=0,
                unit="workers",
                note=f"already over at {first.get('workers')} workers: {res.get('stopped', '')}",
                goal=GOAL,
                met=False,
            )
        ]
    best = ok[-1]
    stopped = res.get("stopped", "")
    at_least = (
        " (at least: the time cap stopped the ramp)"
        if "time cap" in stopped
        else " (at least: the last level passed)"
        if stopped == "last level reached"
        else ""
    )
    per_k = 1000.0 / best["workers"]
    cpu_per_k = best["server_cpu_busy"] * per_k
    first = min(ok, key=lambda lv: lv["workers"])
    if best["workers"] > first["workers"]:  # the slope: leaves out what the first burst warmed up once
        span = best["workers"] - first["workers"]
        rss_per_k = (best["server_rss_mib"] - first["server_rss_mib"]) * 1000.0 / span
        rss_how = f"slope from {first['workers']:,} to {best['workers']:,} workers"
    else:  # one passing level: a per-1,000 memory figure would extrapolate the server's warm-up
        rss_per_k = None
        rss_how = f"needs two passing levels (only {best['workers']:,} passed)"
    return [
        Row(
            figure=f"Workers held with heartbeat p99 < 200 ms ({mode}, {label}, "
            f"period {res['period_s']:g} s)",
            value=best["workers"],
            unit="workers" + at_least,
            note=f"p99 {best['p99_ms']:.0f} ms there; {res.get('stopped', '')}",
            goal=GOAL,
            met=best["workers"] >= 100_000,
        ),
        Row(
            figure=f"Server CPU per 1,000 workers ({mode}, {label})",
            value=cpu_per_k,
            unit="cores",
            note=f"at {best['workers']:,} workers"
            + (" (extrapolated from a small fleet)" if best["workers"] < 500 else "")
            + f"; load generator used {best['client_cpu_busy']:.2f} cores",
        ),
        Row(
            figure=f"Server memory per 1,000 workers ({mode}, {label})",
            value=rss_per_k,
            unit="MiB RSS",
            note=f"RSS {best['server_rss_mib']:.0f} MiB at {best['workers']:,} workers; {rss_how}"
            if rss_per_k is not None
            else f"not measured: {rss_how}",
        ),
    ]


async def measure(opts: Options, where: Path) -> Record:
    nofile = raise_nofile()
    details: dict[str, Any] = {"rlimit_nofile": nofile, "sessions": SESSIONS}
    rows: list[Row] = []
    profiles: dict[str, Any] = {}
    modes = [("idle workers: heartbeat + long-poll", True)]
    if not opts.extra.longpoll_only:
        modes.append(("heartbeat only", False))
    settings = {"alive_period": 2.0 if opts.quick else 10.0, "alive_timeout": 60.0}
    # the load generator holds every simulated worker's state: its own full collections (650-900 ms at
    # 5,000 workers) would show as server latency; it freezes its survivors as the server does
    frozen = asyncio.create_task(gcpolicy.keep_survivors_frozen())
    for mode, longpoll in modes:
        async with contextlib.AsyncExitStack() as stack:
            url = await stack.enter_async_context(pg_database()) if opts.extra.db == "postgresql" else ""
            label = "PostgreSQL" if url else "SQLite"
            async with running_server(where / mode.split()[0], database_url=url, settings=settings) as srv:
                res = await ramp(srv, where, opts, longpoll)
        for lv in res["levels"]:
            if "profile" in lv:
                profiles[f"{mode}, {lv['workers']} workers"] = lv.pop("profile")
        details[mode] = res
        rows += summarise(mode, res, label)
    frozen.cancel()
    return Record(
        benchmark=NAME,
        title="Worker scale",
        command=command_line(NAME),
        quick=opts.quick,
        rows=rows,
        details=details,
        profiles=_last_profiles(profiles),
    )


def _last_profiles(profiles: dict[str, Any]) -> dict[str, Any]:
    """Keep the profile of the highest level of each mode (the one that shows what runs out)."""
    best: dict[str, tuple[int, str]] = {}
    for key in profiles:
        mode, _, level = key.rpartition(", ")
        n = int(level.split()[0])
        if mode not in best or n > best[mode][0]:
            best[mode] = (n, key)
    return {key: profiles[key] for _, key in best.values()}


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cap", type=float, default=420.0, help="time cap of each ramp, seconds")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--longpoll-only", action="store_true", help="skip the heartbeat-only ramp")


def main() -> None:
    run_benchmark(NAME, __doc__ or "", measure, add_options)


if __name__ == "__main__":
    main()
