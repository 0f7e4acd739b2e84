"""Relay: stream throughput and new-connection latency through client -> relay -> publisher, beside raw
loopback TCP and OpenSSH ``ssh -L`` through a local ``sshd``; CPU per MiB.

Three processes make the xwhep path, as in a real grid: ``xwrelay``, a publisher (``bench.relay_endpoint
publish``: one RelayLink publishing a name, as a worker does for a job's listen port) and a client
(``bench.relay_endpoint connect``: one RelayLink with a local entrance, as ``xwproxy`` does). The
OpenSSH path is ``ssh -N -L`` to ``sshd -D`` on a high port with generated keys (same cipher as the
relay prefers: aes128-gcm). Behind every path sit the same two local services of this process: a sink
(reads the declared number of bytes, answers ``ok``) and an echo (for the connection latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

from bench.harness import (
    ROOT,
    Options,
    Record,
    Row,
    Spread,
    command_line,
    latency_summary,
    log,
    not_measured,
    ratio,
    run_benchmark,
    self_cpu,
)
from bench.profiling import start_profiler
from bench.servers import drain_stdout, sample, stop_process, tool, wait_line

RELAY_BUILT = all(
    (Path(__file__).resolve().parent.parent / "proxy" / f).exists() for f in ("endpoints.py", "relay.py")
)
NAME = "relay"
CIPHER = "aes128-gcm@openssh.com"
BLOCK = 1 << 20
GOAL = "relay >= OpenSSH throughput"


# --- local services ------------------------------------------------------------------------------------


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
        left = size
        while left:
            chunk = await reader.read(min(left, BLOCK))
            if not chunk:
                raise ConnectionError("stream ended early")
            left -= len(chunk)
        writer.write(b"ok")
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def stream(port: int, size: int) -> float:
    """Send ``size`` bytes to the sink behind ``port``; seconds until the sink confirmed them all."""
    payload = os.urandom(BLOCK)
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(struct.pack("!Q", size))
    left = size
    while left:
        n = min(left, BLOCK)
        writer.write(payload[:n] if n < BLOCK else payload)
        await writer.drain()
        left -= n
    ack = await asyncio.wait_for(reader.readexactly(2), 300)
    elapsed = time.perf_counter() - t0
    writer.close()
    if ack != b"ok":
        raise RuntimeError(f"sink answered {ack!r}")
    return elapsed


async def connect_times(port: int, n: int) -> list[float]:
    """``n`` sequential new connections: connect, 1 byte to the echo and back, close."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        await asyncio.wait_for(reader.readexactly(1), 30)
        out.append(time.perf_counter() - t0)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return out


# --- paths -----------------------------------------------------------------------------------------------


@dataclass
class Route:
    """A way to reach the sink and the echo, and the processes that carry it."""

    label: str
    sink: int
    echo: int
    pids: list[int] = field(default_factory=list)  # measured with their children
    main_pid: int | None = None  # the relay / sshd: its CPU is reported on its own


async def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def xw_route(where: Path, sink: int, echo: int) -> AsyncIterator[Route]:
    key = ECKey.generate_key("P-256")
    (where / "ticket.key").write_bytes(key.as_pem(private=True))
    (where / "ticket.pub").write_bytes(key.as_pem(private=False))
    procs: list[asyncio.subprocess.Process] = []
    try:
        with (where / "relay.log").open("ab") as err:
            relay = await asyncio.create_subprocess_exec(
                tool("xwrelay"),
                "--port",
                "0",
                "--host-key",
                str(where / "relay_host_key"),
                "--verify-key",
                str(where / "ticket.pub"),
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        procs.append(relay)
        address = await wait_line(relay, "xwrelay ready at ", 60, "xwrelay")
        drain_stdout(relay)
        names = {f"proxy-{uuid.uuid4()}-9001": sink, f"proxy-{uuid.uuid4()}-9002": echo}
        common = ["--relay", address, "--host-key", str(where / "relay_host_key.pub"), "--key"]
        common.append(str(where / "ticket.key"))
        publisher = await _endpoint(where, "publish", common, [f"{n}={p}" for n, p in names.items()])
        procs.append(publisher)
        await wait_line(publisher, "ready", 60, "publisher")
        client = await _endpoint(where, "connect", common, list(names))
        procs.append(client)
        ready = dict(item.split("=", 1) for item in (await wait_line(client, "ready", 60, "client")).split())
        entrances = [int(ready[n]) for n in names]
        yield Route("xwhep relay", entrances[0], entrances[1], [publisher.pid, client.pid], relay.pid)
    finally:
        for proc in reversed(procs):
            await stop_process(proc)


async def _endpoint(
    where: Path, mode: str, common: list[str], names: list[str]
) -> asyncio.subprocess.Process:
    with (where / f"{mode}.log").open("ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.relay_endpoint",
            mode,
            *common,
            *names,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
        )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ssh_missing() -> str:
    """Why OpenSSH cannot be measured here ('' if it can)."""
    if not Path("/usr/sbin/sshd").exists():
        return "/usr/sbin/sshd not installed (apt-get install -y openssh-server)"
    for exe in ("ssh", "ssh-keygen"):
        if shutil.which(exe) is None:
            return f"{exe} not installed"
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        try:  # sshd running as root needs its privilege separation directory
            Path("/run/sshd").mkdir(mode=0o755)
        except OSError as exc:
            return f"cannot create /run/sshd: {exc}"
    return ""


@contextlib.asynccontextmanager
async def ssh_route(where: Path, sink: int, echo: int) -> AsyncIterator[Route]:
    d = where / "ssh"
    d.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    user = os.environ.get("USER") or ("root" if os.geteuid() == 0 else os.getlogin())
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile none\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"AllowTcpForwarding yes\nLogLevel ERROR\nCiphers {CIPHER}\n"
    )
    port = _free_port()
    procs: list[asyncio.subprocess.Process] = []
    try:
        with (d / "sshd.log").open("ab") as err:
            sshd = await asyncio.create_subprocess_exec(
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
                str(d / "sshd_config"),
                "-p",
                str(port),
                "-h",
                str(d / "host_key"),
                stderr=err,
            )
        procs.append(sshd)
        await wait_port(port)
        local_sink, local_echo = _free_port(), _free_port()
        with (d / "ssh.log").open("ab") as ssh_log:
            ssh = await asyncio.create_subprocess_exec(
                "ssh",
                "-N",
                "-c",
                CIPHER,
                "-L",
                f"127.0.0.1:{local_sink}:127.0.0.1:{sink}",
                "-L",
                f"127.0.0.1:{local_echo}:127.0.0.1:{echo}",
                "-p",
                str(port),
                "-i",
                str(d / "client_key"),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ExitOnForwardFailure=yes",
                f"{user}@127.0.0.1",
                stderr=ssh_log,
            )
        procs.append(ssh)
        await wait_port(local_sink)
        await wait_port(local_echo)
        yield Route("OpenSSH ssh -L", local_sink, local_echo, [ssh.pid], sshd.pid)
    finally:
        for proc in reversed(procs):
            await stop_process(proc)


# --- measuring ---------------------------------------------------------------------------------------------


async def measure_route(route: Route, size: int, reps: int, conns: int) -> dict[str, Any]:
    pids = [p for p in [route.main_pid, *route.pids] if p is not None]
    await stream(route.sink, min(size, 8 * BLOCK))  # warm-up: connections, caches
    speeds: list[float] = []
    before = {p: sample(p, children=True).cpu for p in pids}
    cpu0 = self_cpu()
    for _ in range(reps):
        speeds.append(size / BLOCK / await stream(route.sink, size))
    bench_cpu = self_cpu() - cpu0
    after = {p: sample(p, children=True).cpu for p in pids}
    mib = size * reps / BLOCK
    tunnel_cpu = sum(after[p] - before[p] for p in pids)
    main_cpu = after[route.main_pid] - before[route.main_pid] if route.main_pid else 0.0
    lat = await connect_times(route.echo, conns)
    s = Spread.of(speeds)
    connect = latency_summary(lat)
    out: dict[str, Any] = {
        "mib_per_s": s.median,
        "mib_per_s_runs": speeds,
        "main_cpu_ms_per_mib": 1000 * main_cpu / mib,  # the relay or sshd alone
        "tunnel_cpu_ms_per_mib": 1000 * tunnel_cpu / mib,  # every process of the tunnel
        "bench_cpu_ms_per_mib": 1000 * bench_cpu / mib,  # sender + sink (this process)
        "connect": connect,
    }
    log(
        f"{route.label}: {s.median:.0f} MiB/s ({s.low:.0f}-{s.high:.0f}), new connection p50 "
        f"{connect['p50_ms']:.2f} ms, tunnel CPU {out['tunnel_cpu_ms_per_mib']:.1f} ms/MiB"
    )
    return out


async def measure(opts: Options, where: Path) -> Record:
    size = (16 if opts.quick else 200) * BLOCK
    reps = 1 if opts.quick else 3
    conns = 20 if opts.quick else 200
    sink = await asyncio.start_server(_sink, "127.0.0.1", 0)
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    sink_port, echo_port = sink.sockets[0].getsockname()[1], echo.sockets[0].getsockname()[1]
    details: dict[str, Any] = {"bytes": size, "runs": reps, "connections": conns, "cipher": CIPHER}
    profiles: dict[str, Any] = {}
    try:
        details["raw"] = await measure_route(
            Route("raw loopback TCP", sink_port, echo_port), size, reps, conns
        )
        if not RELAY_BUILT:
            return placeholder(opts)
        async with xw_route(where, sink_port, echo_port) as route:
            details["relay"] = await measure_route(route, size, reps, conns)
            if opts.profile:
                profiles = await profiled(route, size, where)
        missing = ssh_missing()
        if missing:
            details["ssh_skipped"] = missing
            log(f"OpenSSH not measured: {missing}")
        else:
            async with ssh_route(where, sink_port, echo_port) as route:
                details["ssh"] = await measure_route(route, size, reps, conns)
    finally:
        sink.close()
        echo.close()
    return Record(
        benchmark=NAME,
        title="Relay",
        command=command_line(NAME),
        quick=opts.quick,
        rows=rows(details, size),
        details=details,
        profiles=profiles,
    )


async def profiled(route: Route, size: int, where: Path) -> dict[str, Any]:
    """One more stream while py-spy samples the relay, the publisher and the client."""
    pids = {"relay": route.main_pid, "publisher": route.pids[0], "client": route.pids[1]}
    profs = {k: await start_profiler(pid, where / f"{k}.pyspy") for k, pid in pids.items() if pid}
    try:
        await stream(route.sink, size)
    finally:
        out = {k: await p.stop() for k, p in profs.items()}
    return out


def placeholder(opts: Options) -> Record:
    return Record(
        benchmark=NAME,
        title="Relay",
        command=command_line(NAME),
        quick=opts.quick,
        rows=[
            not_measured("Relay stream throughput and connection latency", "relay not built yet (issue 4)")
        ],
    )


def rows(d: dict[str, Any], size: int) -> list[Row]:
    raw, xw, ssh = d["raw"], d["relay"], d.get("ssh")
    mib = size // BLOCK
    skipped = f"OpenSSH not measured: {d.get('ssh_skipped')}" if ssh is None else ""
    runs = Spread.of(xw["mib_per_s_runs"])
    return [
        Row(
            figure=f"Relay stream throughput, {mib} MiB, client -> relay -> publisher",
            value=xw["mib_per_s"],
            unit="MiB/s",
            spread=runs,
            baseline=ssh["mib_per_s"] if ssh else None,
            baseline_unit="MiB/s",
            baseline_label=f"OpenSSH ssh -L via local sshd ({CIPHER})",
            ratio=ratio(xw["mib_per_s"], ssh["mib_per_s"] if ssh else None),
            ratio_label="relay / OpenSSH",
            anchor=f"raw loopback TCP {raw['mib_per_s']:.0f} MiB/s (same run)",
            goal=GOAL,
            met=(xw["mib_per_s"] >= ssh["mib_per_s"]) if ssh else None,
            note=skipped,
        ),
        Row(
            figure="Relay new-connection latency p50 (connect + 1-byte echo)",
            value=xw["connect"]["p50_ms"],
            unit="ms",
            baseline=ssh["connect"]["p50_ms"] if ssh else None,
            baseline_unit="ms",
            baseline_label="OpenSSH ssh -L",
            ratio=ratio(xw["connect"]["p50_ms"], ssh["connect"]["p50_ms"] if ssh else None),
            ratio_label="relay / OpenSSH",
            anchor=f"raw loopback TCP {raw['connect']['p50_ms']:.2f} ms",
            note=f"p99 {xw['connect']['p99_ms']:.1f} ms over {d['connections']} connections",
        ),
        Row(
            figure="Relay CPU per MiB streamed (relay process; all 3 tunnel processes)",
            value=xw["main_cpu_ms_per_mib"],
            unit="ms CPU/MiB",
            baseline=ssh["main_cpu_ms_per_mib"] if ssh else None,
            baseline_unit="ms CPU/MiB",
            baseline_label="sshd (OpenSSH)",
            ratio=ratio(xw["main_cpu_ms_per_mib"], ssh["main_cpu_ms_per_mib"] if ssh else None),
            ratio_label="relay / sshd",
            note=f"all tunnel processes: xwhep {xw['tunnel_cpu_ms_per_mib']:.1f} ms/MiB"
            + (f", OpenSSH (ssh + sshd) {ssh['tunnel_cpu_ms_per_mib']:.1f} ms/MiB" if ssh else ""),
        ),
    ]


def main() -> None:
    run_benchmark(NAME, __doc__ or "", measure)


if __name__ == "__main__":
    main()
