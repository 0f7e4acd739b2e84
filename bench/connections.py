"""Connections: the server under 20,000 idle TCP connections and 1,000 TLS connections trickling header
lines (one byte every 2 s), while a legitimate client times authenticated ``GET /api/v1/ping``.

The same run measures the gated listener (server/listener.py, the default) and, as the baseline, the
plain one (``listener = "plain"``: aiohttp's TCPSite as before). For each: start ``xwserver run`` in its
own process with default settings; time pings with no attack; start the attackers (``bench.flood``,
several processes, since one process may hold 20,000 descriptors at most; they reopen what the server
closes); once the flood is up, time pings for a while, sampling the server's RSS and open descriptors
every second; then count the lines and tracebacks the server logged meanwhile. Pings alternate between
a new connection per request (TCP + TLS + request: what a flood of sockets hurts first) and a keep-alive
connection. The attackers run at nice 10 (a real flood's CPU is on other machines; here they share the
2 cores with the server). Quick: 200 idle and 20 trickling connections, and a cap of 150 so eviction
runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.harness import (
    ROOT,
    Options,
    Record,
    Row,
    command_line,
    latency_summary,
    log,
    machine_busy,
    raise_nofile,
    ratio,
    run_benchmark,
)
from bench.servers import Server, running_server, stop_process, vm_hwm

NAME = "connections"
MIB = 1 << 20
GOAL_RSS_MIB = 512
GOAL_P99_MS = 100.0
PING_TIMEOUT = 10.0  # seconds before a ping counts as failed
PING_GAP = 0.05  # seconds between two pings of the legitimate client
PLAIN_RSS_LIMIT = 8 << 30  # stop the baseline's flood early past this (the machine is shared)
MODES = ("gated", "plain")


@dataclass(frozen=True)
class Sizes:
    idle: int
    trickle: int
    attackers: int  # processes
    interval: float  # seconds between trickled bytes
    quiet_s: float  # pinging before the flood
    ramp_s: float  # at most this long for the flood to build up
    flood_s: float  # pinging during the flood
    cap: int  # max_connections of the gated server (0: derived from the open-file limit)


FULL = Sizes(idle=20_000, trickle=1_000, attackers=4, interval=2.0, quiet_s=10, ramp_s=90, flood_s=45, cap=0)
QUICK = Sizes(idle=200, trickle=20, attackers=1, interval=0.5, quiet_s=2, ramp_s=20, flood_s=3, cap=150)


# --- the legitimate client -------------------------------------------------------------------------------


async def pings(server: Server, token: str, ctx: ssl.SSLContext, seconds: float) -> dict[str, Any]:
    """Alternate pings on new connections and on one keep-alive connection for ``seconds``."""
    url = server.url + "/api/v1/ping"
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=PING_TIMEOUT)
    times: dict[str, list[float]] = {"new": [], "keepalive": []}
    failures: dict[str, dict[str, int]] = {"new": {}, "keepalive": {}}
    fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, force_close=True), timeout=timeout)
    kept = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=1), timeout=timeout)
    deadline = time.perf_counter() + seconds
    try:
        while time.perf_counter() < deadline:
            for kind, session in (("new", fresh), ("keepalive", kept)):
                t0 = time.perf_counter()
                try:
                    async with session.get(url, headers=headers) as resp:
                        await resp.read()
                        if resp.status != 200:
                            raise RuntimeError(f"HTTP {resp.status}")
                    times[kind].append(time.perf_counter() - t0)
                except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as exc:
                    name = type(exc).__name__
                    failures[kind][name] = failures[kind].get(name, 0) + 1
            await asyncio.sleep(PING_GAP)
    finally:
        await fresh.close()
        await kept.close()
    return {
        kind: {**latency_summary(times[kind]), "failed": sum(failures[kind].values()), "why": failures[kind]}
        for kind in times
    }


# --- the flood -------------------------------------------------------------------------------------------


@dataclass
class Attacker:
    proc: asyncio.subprocess.Process
    status: dict[str, Any]
    reader: asyncio.Task[None] | None = None

    def cpu(self) -> float:
        try:
            t = psutil.Process(self.proc.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return float(t.user + t.system)


async def start_attackers(server: Server, sizes: Sizes) -> list[Attacker]:
    port = int(server.url.rsplit(":", 1)[1])
    attackers = []
    for i in range(sizes.attackers):
        share = [
            n // sizes.attackers + (1 if i < n % sizes.attackers else 0) for n in (sizes.idle, sizes.trickle)
        ]
        sources = [f"127.{i + 1}.0.{k}" for k in range(1, 5)]  # each address has its own ephemeral ports
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.flood",
            "--port",
            str(port),
            "--ca",
            str(server.ca),
            "--idle",
            str(share[0]),
            "--trickle",
            str(share[1]),
            "--interval",
            str(sizes.interval),
            *[arg for s in sources for arg in ("--source", s)],
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            start_new_session=True,
        )
        attacker = Attacker(proc, {})
        attacker.reader = asyncio.create_task(_follow(attacker))
        attackers.append(attacker)
    return attackers


async def _follow(attacker: Attacker) -> None:
    assert attacker.proc.stdout is not None
    while line := await attacker.proc.stdout.readline():
        with contextlib.suppress(ValueError):
            attacker.status = json.loads(line)


def flood_total(attackers: list[Attacker], key: str) -> int:
    return sum(int(a.status.get(key, 0)) for a in attackers)


async def stop_attackers(attackers: list[Attacker]) -> dict[str, Any]:
    await asyncio.gather(*(stop_process(a.proc) for a in attackers))
    for a in attackers:
        if a.reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(a.reader, 5)
    errors: dict[str, int] = {}
    for a in attackers:
        for k, v in a.status.get("errors", {}).items():
            errors[k] = errors.get(k, 0) + int(v)
    return {
        "opened": flood_total(attackers, "opened"),
        "closed": flood_total(attackers, "closed"),
        "errors": errors,
    }


# --- the server's side -----------------------------------------------------------------------------------


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class Watch:
    """The server's RSS and descriptors, sampled every second while the flood runs."""

    pid: int
    peak_rss: int = 0
    peak_fds: int = 0
    samples: int = 0

    async def run(self) -> None:
        proc = psutil.Process(self.pid)
        while True:
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, proc.memory_info().rss)
            self.peak_fds = max(self.peak_fds, open_fds(self.pid))
            self.samples += 1
            await asyncio.sleep(1.0)


def log_since(path: Path, offset: int) -> dict[str, int]:
    """Lines, tracebacks and bytes the server logged after ``offset``."""
    lines = tracebacks = size = 0
    with path.open("rb") as fh:
        fh.seek(offset)
        for line in fh:
            lines += 1
            size += len(line)
            if line.startswith(b"Traceback (most recent call last)"):
                tracebacks += 1
    return {"lines": lines, "tracebacks": tracebacks, "bytes": size}


async def run_mode(mode: str, sizes: Sizes, where: Path) -> dict[str, Any]:
    settings: dict[str, Any] = {"listener": mode}
    if mode == "gated" and sizes.cap:
        settings["max_connections"] = sizes.cap
    out: dict[str, Any] = {"mode": mode}
    async with running_server(where / mode, settings=settings) as server:
        ctx = ssl.create_default_context(cafile=str(server.ca))
        token = (await server.admin().login("admin", server.admin_password)).access_token
        out["quiet"] = await pings(server, token, ctx, sizes.quiet_s)
        out["quiet_hwm_mib"] = vm_hwm(server.pid) / MIB
        offset = server.log_path.stat().st_size
        cpu0, busy0 = psutil.Process(server.pid).cpu_times(), machine_busy()
        watch = Watch(server.pid)
        watcher = asyncio.create_task(watch.run())
        attackers = await start_attackers(server, sizes)
        target = sizes.idle + sizes.trickle
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < sizes.ramp_s:
            await asyncio.sleep(1.0)
            if flood_total(attackers, "opened") >= target or watch.peak_rss > PLAIN_RSS_LIMIT:
                break
        out["ramp_s"] = time.perf_counter() - t0
        out["flood_open_at_start"] = flood_total(attackers, "idle") + flood_total(attackers, "trickle")
        log(f"{mode}: flood up after {out['ramp_s']:.0f} s ({out['flood_open_at_start']} connections open)")
        opened0, t1 = flood_total(attackers, "opened"), time.perf_counter()
        pinger = asyncio.create_task(pings(server, token, ctx, sizes.flood_s))
        while not pinger.done():
            await asyncio.sleep(0.5)
            if watch.peak_rss > PLAIN_RSS_LIMIT:
                out["stopped_early"] = f"server RSS over {PLAIN_RSS_LIMIT // (1 << 30)} GiB"
                break
        out["flood"] = await pinger
        out["reopened_per_s"] = (flood_total(attackers, "opened") - opened0) / (time.perf_counter() - t1)
        out["flood_open_at_end"] = flood_total(attackers, "idle") + flood_total(attackers, "trickle")
        cpu1 = psutil.Process(server.pid).cpu_times()
        elapsed = time.perf_counter() - t0
        out["server_cpu_busy"] = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / elapsed
        out["flood_cpu_busy"] = sum(a.cpu() for a in attackers) / elapsed
        out["machine_cpu_busy"] = (machine_busy() - busy0) / elapsed
        t2 = time.perf_counter()
        out["attackers"] = await stop_attackers(attackers)
        log(f"{mode}: attackers stopped in {time.perf_counter() - t2:.1f} s")
        watcher.cancel()
        out["peak_rss_mib"] = watch.peak_rss / MIB
        out["hwm_mib"] = vm_hwm(server.pid) / MIB
        out["peak_fds"] = watch.peak_fds
        out["log"] = log_since(server.log_path, offset)
        await asyncio.sleep(1.0)  # let the last lines land
        out["log"] = log_since(server.log_path, offset)
    flood, log_info = out["flood"], out["log"]
    log(
        f"{mode}: peak RSS {out['hwm_mib']:.0f} MiB, {out['peak_fds']} fds, ping p99 new "
        f"{flood['new']['p99_ms']:.1f} ms ({flood['new']['failed']} failed), keep-alive "
        f"{flood['keepalive']['p99_ms']:.1f} ms; log {log_info['lines']} lines, "
        f"{log_info['tracebacks']} tracebacks"
    )
    return out


async def measure(opts: Options, where: Path) -> Record:
    raise_nofile()
    sizes = QUICK if opts.quick else FULL
    details: dict[str, Any] = {"sizes": sizes.__dict__}
    for mode in MODES:
        details[mode] = await run_mode(mode, sizes, where)
    return Record(
        benchmark=NAME,
        title="Connections under a flood of idle and trickling sockets",
        command=command_line(NAME),
        quick=opts.quick,
        rows=rows(details, sizes),
        details=details,
    )


def _failed(series: dict[str, Any]) -> str:
    return f"{series['failed']} of {int(series['n']) + series['failed']} failed"


def rows(d: dict[str, Any], sizes: Sizes) -> list[Row]:
    gated, plain = d["gated"], d["plain"]
    flood = f"{sizes.idle:,} idle TCP + {sizes.trickle:,} trickling TLS connections"
    base = "plain listener (aiohttp TCPSite, as before), same flood"
    out = [
        Row(
            figure=f"Server peak RSS (VmHWM) under {flood}",
            value=gated["hwm_mib"],
            unit="MiB",
            baseline=plain["hwm_mib"],
            baseline_unit="MiB",
            baseline_label=base + (f"; {plain['stopped_early']}" if plain.get("stopped_early") else ""),
            ratio=ratio(gated["hwm_mib"], plain["hwm_mib"]),
            ratio_label="gated / plain",
            goal=f"< {GOAL_RSS_MIB} MiB",
            met=gated["hwm_mib"] < GOAL_RSS_MIB,
            note=f"{gated['quiet_hwm_mib']:.0f} MiB before the flood; {gated['peak_fds']:,} descriptors at "
            f"peak (plain {plain['peak_fds']:,})",
        )
    ]
    for kind, label in (("new", "a new connection per request"), ("keepalive", "a keep-alive connection")):
        g, p = gated["flood"][kind], plain["flood"][kind]
        out.append(
            Row(
                figure=f"Authenticated GET /ping p99 on {label}, during that flood",
                value=g["p99_ms"],
                unit="ms",
                baseline=p["p99_ms"],
                baseline_unit="ms",
                baseline_label=f"{base}; {_failed(p)}",
                ratio=ratio(g["p99_ms"], p["p99_ms"]),
                ratio_label="gated / plain",
                goal=f"p99 < {GOAL_P99_MS:.0f} ms",
                met=bool(g["p99_ms"] < GOAL_P99_MS and not g["failed"]),
                note=f"p50 {g['p50_ms']:.1f} ms; {_failed(g)}; without the flood p99 "
                f"{gated['quiet'][kind]['p99_ms']:.1f} ms",
            )
        )
    lg, lp = gated["log"], plain["log"]
    out.append(
        Row(
            figure="Server log written during that flood",
            value=lg["lines"],
            unit="lines",
            baseline=lp["lines"],
            baseline_unit="lines",
            baseline_label=f"{base}; {lp['tracebacks']:,} tracebacks, {lp['bytes'] / MIB:.1f} MiB",
            goal="a small log, no tracebacks",
            met=lg["tracebacks"] == 0 and lg["lines"] < 100,
            note=f"{lg['tracebacks']} tracebacks, {lg['bytes']:,} bytes",
        )
    )
    return out


def main() -> None:
    run_benchmark(NAME, __doc__ or "", measure)


if __name__ == "__main__":
    main()
