"""Data: upload and download of one 1 GiB data object (quick: 64 MiB) through the API, throughput and the
server's peak RSS, beside a plain TLS copy of the same bytes (bench.tls_copy: an asyncio TLS server in its
own process with the server's certificate, no HTTP, no hashing).

Upload is ``XWClient.upload`` of a data object created with its size and sha256 (the client hashes the file
before the clock starts, as ``send_file`` does); the server hashes, writes and fsyncs. Download is
``XWClient.download`` (the client hashes while writing). The server runs as its own process; its peak RSS
is VmHWM from /proc/PID/status, read before and after the transfers.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import tls_copy
from bench.harness import (
    ROOT,
    Options,
    Record,
    Row,
    Spread,
    command_line,
    log,
    ratio,
    run_benchmark,
    self_cpu,
)
from bench.profiling import start_profiler
from bench.servers import (
    Server,
    add_user,
    drain_stdout,
    running_server,
    sample,
    stop_process,
    vm_hwm,
    wait_line,
)
from client.api import XWClient
from common.enums import UserRights
from common.schemas import DataIn

NAME = "data"
MIB = 1 << 20
GOAL = ">= 50% of a plain TLS copy, flat server memory"


def make_file(path: Path, size: int) -> str:
    """Random content of ``size`` bytes; its sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        for _ in range(size // MIB):
            block = os.urandom(MIB)
            digest.update(block)
            fh.write(block)
    return digest.hexdigest()


async def xw_round(
    server: Server, xw: XWClient, src: Path, sha: str, rep: int, where: Path
) -> dict[str, float]:
    size = src.stat().st_size
    data = await xw.create_data(DataIn(name=f"big{rep}", size=size, sha256=sha))
    cpu0, t0 = server.sample().cpu, time.perf_counter()
    await xw.upload(data.uid, src)
    up = time.perf_counter() - t0
    cpu1, hwm_up = server.sample().cpu, vm_hwm(server.pid)
    dest = where / "download.bin"
    t0 = time.perf_counter()
    await xw.download(data.uid, dest)
    down = time.perf_counter() - t0
    cpu2 = server.sample().cpu
    dest.unlink()
    await xw.remove(data.uid)
    return {
        "upload_mib_s": size / MIB / up,
        "download_mib_s": size / MIB / down,
        "server_cpu_ms_per_mib_up": 1000 * (cpu1 - cpu0) / (size / MIB),
        "server_cpu_ms_per_mib_down": 1000 * (cpu2 - cpu1) / (size / MIB),
        "server_hwm_after_upload_mib": hwm_up / MIB,
        "server_hwm_after_download_mib": vm_hwm(server.pid) / MIB,
    }


async def tls_rounds(server: Server, src: Path, reps: int, where: Path) -> dict[str, Any]:
    store = where / "tls-store"
    store.mkdir()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.tls_copy",
        "--cert",
        str(server.home / "server.crt"),
        "--key",
        str(server.home / "server.key"),
        "--dir",
        str(store),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        port = int(await wait_line(proc, "ready", 30, "TLS copy server"))
        drain_stdout(proc)
        hwm0 = vm_hwm(proc.pid)
        ctx = tls_copy.client_context(server.ca)
        size = src.stat().st_size / MIB
        ups, downs, cpu_up, cpu_down = [], [], [], []
        for rep in range(reps):
            c0, t0 = sample(proc.pid).cpu, time.perf_counter()
            await tls_copy.put(port, ctx, src, f"copy{rep}")
            ups.append(size / (time.perf_counter() - t0))
            c1, t0 = sample(proc.pid).cpu, time.perf_counter()
            await tls_copy.get(port, ctx, f"copy{rep}", where / "tls-download.bin")
            downs.append(size / (time.perf_counter() - t0))
            c2 = sample(proc.pid).cpu
            cpu_up.append(1000 * (c1 - c0) / size)
            cpu_down.append(1000 * (c2 - c1) / size)
            (where / "tls-download.bin").unlink()
            (store / f"copy{rep}").unlink()
        return {
            "upload_mib_s": ups,
            "download_mib_s": downs,
            "server_cpu_ms_per_mib_up": Spread.of(cpu_up).median,
            "server_cpu_ms_per_mib_down": Spread.of(cpu_down).median,
            "server_hwm_before_mib": hwm0 / MIB,
            "server_hwm_after_mib": vm_hwm(proc.pid) / MIB,
        }
    finally:
        await stop_process(proc)


async def measure(opts: Options, where: Path) -> Record:
    size = (64 if opts.quick else 1024) * MIB
    reps = 1 if opts.quick else 3
    src = where / "source.bin"
    sha = await asyncio.to_thread(make_file, src, size)
    details: dict[str, Any] = {"bytes": size, "runs": reps}
    profiles: dict[str, Any] = {}
    async with running_server(where / "srv") as server:
        admin = server.admin()
        await add_user(admin, "alice", UserRights.STANDARD_USER)
        alice = server.client("alice")
        await alice.ping()  # log in before measuring
        details["server_hwm_before_mib"] = vm_hwm(server.pid) / MIB
        cli0 = self_cpu()
        details["xw"] = [await xw_round(server, alice, src, sha, rep, where) for rep in range(reps)]
        details["client_cpu_s"] = self_cpu() - cli0
        for r in details["xw"]:
            log(f"xwhep: upload {r['upload_mib_s']:.0f} MiB/s, download {r['download_mib_s']:.0f} MiB/s")
        details["server_hwm_after_mib"] = vm_hwm(server.pid) / MIB
        details["tls"] = await tls_rounds(server, src, reps, where)
        log(
            f"plain TLS: upload {details['tls']['upload_mib_s']}, download {details['tls']['download_mib_s']}"
        )
        if opts.profile:
            prof = await start_profiler(server.pid, where / "data.pyspy")
            await xw_round(server, alice, src, sha, 99, where)
            profiles["upload + download"] = await prof.stop()
    return Record(
        benchmark=NAME,
        title="Data upload and download",
        command=command_line(NAME),
        quick=opts.quick,
        rows=rows(details, size),
        details=details,
        profiles=profiles,
    )


def rows(d: dict[str, Any], size: int) -> list[Row]:
    tls = d["tls"]
    label = f"{size // MIB} MiB" if size < 1 << 30 else f"{size / (1 << 30):g} GiB"
    out = []
    for key, what in (("upload_mib_s", "upload"), ("download_mib_s", "download")):
        xw = Spread.of([r[key] for r in d["xw"]])
        base = Spread.of(tls[key])
        direction = "up" if what == "upload" else "down"
        cpu = Spread.of([r["server_cpu_ms_per_mib_" + direction] for r in d["xw"]]).median
        out.append(
            Row(
                figure=f"Data {what}, one {label} object (server in its own process)",
                value=xw.median,
                unit="MiB/s",
                spread=xw,
                baseline=base.median,
                baseline_unit="MiB/s",
                baseline_label="plain asyncio TLS copy, same certificate and bytes",
                ratio=ratio(xw.median, base.median),
                ratio_label="xwhep / plain TLS",
                goal=GOAL,
                met=(xw.median >= 0.5 * base.median),
                note=f"server CPU {cpu:.1f} ms/MiB vs {tls['server_cpu_ms_per_mib_' + direction]:.1f} ms/MiB "
                "for the TLS copy",
            )
        )
    growth = d["server_hwm_after_mib"] - d["server_hwm_before_mib"]
    out.append(
        Row(
            figure=f"Server peak RSS (VmHWM) after {d['runs']} x {label} up and down",
            value=d["server_hwm_after_mib"],
            unit="MiB",
            baseline=d["server_hwm_before_mib"],
            baseline_unit="MiB",
            baseline_label="server VmHWM before the transfers",
            ratio=ratio(d["server_hwm_after_mib"], d["server_hwm_before_mib"]),
            ratio_label="after / before",
            note=f"grew {growth:.0f} MiB; TLS copy server {tls['server_hwm_before_mib']:.0f} -> "
            f"{tls['server_hwm_after_mib']:.0f} MiB",
            goal="flat server memory",
            met=growth < 64,
        )
    )
    return out


def main() -> None:
    run_benchmark(NAME, __doc__ or "", measure)


if __name__ == "__main__":
    main()
