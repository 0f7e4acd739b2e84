"""Starting what the benchmarks measure: an ``xwserver run`` process, PostgreSQL databases, real workers,
and clients (each simulated worker its own ``XWClient``, i.e. its own aiohttp session and TLS connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import signal
import sys
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.engine import make_url

from bench.harness import log
from client.api import XWClient
from client.config import ClientConfig
from client.transport import ApiRequest, ApiResponse, HttpTransport
from common.config import dump_flat_toml, read_toml, write_private
from common.enums import AppType, UserRights
from common.schemas import AppIn, Binary, JobIn, JobOut, UserIn

PASSWORD = "bench password 1"
READY = "xwserver ready at "


def tool(name: str) -> str:
    """A console script of this virtualenv (next to the interpreter), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


# --- process measurements ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    """CPU seconds (user + system) and memory of a process at one moment."""

    cpu: float
    rss: int
    hwm: int  # VmHWM: the peak resident set size so far


def sample(pid: int, *, children: bool = False) -> ProcSample:
    """CPU time and memory of ``pid`` (and its children, added, when ``children``)."""
    procs = [psutil.Process(pid)]
    if children:
        procs += procs[0].children(recursive=True)
    cpu, rss, hwm = 0.0, 0, 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            cpu += t.user + t.system
            rss += p.memory_info().rss
            hwm += vm_hwm(p.pid)
    return ProcSample(cpu, rss, hwm)


def vm_hwm(pid: int) -> int:
    """Peak RSS in bytes from /proc/PID/status (0 if unavailable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


async def stop_process(
    proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM, grace: float = 15
) -> None:
    """Signal a process we started, wait for it, kill it if it lingers."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def wait_line(proc: asyncio.subprocess.Process, prefix: str, timeout: float, what: str) -> str:
    """Read ``proc``'s stdout until a line starting with ``prefix``; the rest of that line."""
    assert proc.stdout is not None

    async def read() -> str:
        assert proc.stdout is not None
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise RuntimeError(f"{what} exited (code {await proc.wait()}) before it was ready")
            line = raw.decode(errors="replace").strip()
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    return await asyncio.wait_for(read(), timeout)


def drain_stdout(proc: asyncio.subprocess.Process) -> asyncio.Task[None]:
    """Keep reading a child's stdout so it never blocks on a full pipe."""

    async def drain() -> None:
        assert proc.stdout is not None
        while await proc.stdout.read(65536):
            pass

    return asyncio.create_task(drain())


# --- the server --------------------------------------------------------------------------------------


@dataclass
class Server:
    """An ``xwserver run`` process on 127.0.0.1 (port 0) with its home."""

    home: Path
    proc: asyncio.subprocess.Process
    url: str
    admin_password: str
    log_path: Path
    clients: list[XWClient] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ca(self) -> Path:
        return self.home / "ca" / "ca.crt"

    def config(self, login: str | None = None, password: str | None = None) -> ClientConfig:
        return ClientConfig(server=self.url, ca=self.ca, login=login, password=password)

    def client(self, login: str, password: str = PASSWORD) -> XWClient:
        """A new XWClient (own aiohttp session) logged in lazily as ``login``; closed with the server."""
        xw = XWClient(self.config(login, password))
        self.clients.append(xw)
        return xw

    def token_client(self, token: str, *, limit: int = 0, source: str | None = None) -> XWClient:
        """A new XWClient that sends ``token`` (no login of its own); ``limit`` 0 = unlimited connections;
        ``source``: the loopback address to connect from (127.0.0.x: more ephemeral ports)."""
        local = (source, 0) if source else None
        xw = XWClient(self.config(), BearerTransport(self.config(), token, limit=limit, local_addr=local))
        self.clients.append(xw)
        return xw

    def admin(self) -> XWClient:
        return self.client("admin", self.admin_password)

    def sample(self) -> ProcSample:
        return sample(self.pid)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    async def aclose(self) -> None:
        await asyncio.gather(*(xw.aclose() for xw in self.clients), return_exceptions=True)
        self.clients.clear()
        await stop_process(self.proc)
        if self._drain is not None:
            self._drain.cancel()


def _init_home(home: Path, database_url: str, settings: dict[str, Any]) -> None:
    from server.home import init_home

    init_home(home, host="127.0.0.1", port=0, database_url=database_url)
    path = home / "settings.toml"
    values = read_toml(path)
    values.update(settings)
    write_private(path, dump_flat_toml(values))


async def spawn_xwserver(
    home: Path, log_path: Path, args: list[str], *, timeout: float
) -> tuple[asyncio.subprocess.Process, str]:
    """Run ``xwserver run --dir HOME ARGS`` in a session of its own (stderr to ``log_path``) and wait
    for its READY line; the process and its URL. If it does not start, it is stopped and the error
    carries its log's tail."""
    with log_path.open("ab") as log_file:
        proc = await asyncio.create_subprocess_exec(
            tool("xwserver"),
            "run",
            "--dir",
            str(home),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
        )
    try:
        return proc, await wait_line(proc, READY, timeout, "xwserver")
    except (RuntimeError, TimeoutError) as exc:
        await stop_process(proc)
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"xwserver did not start ({exc}); its log:\n{tail}") from None


async def start_server(
    where: Path, *, database_url: str = "", settings: dict[str, Any] | None = None
) -> Server:
    """Create a home in ``where`` and run ``xwserver run --dir`` on it as a separate process."""
    home = where / "home"
    await asyncio.to_thread(_init_home, home, database_url, settings or {})
    password = str(read_toml(home / "admin.conf")["password"])
    log_path = where / "server.log"
    proc, url = await spawn_xwserver(home, log_path, ["--port", "0"], timeout=120)
    server = Server(home, proc, url, password, log_path)
    server._drain = drain_stdout(proc)
    log(f"server pid {proc.pid} at {url} ({'PostgreSQL' if database_url else 'SQLite'})")
    return server


@contextlib.asynccontextmanager
async def running_server(
    where: Path, *, database_url: str = "", settings: dict[str, Any] | None = None
) -> AsyncIterator[Server]:
    where.mkdir(parents=True, exist_ok=True)
    server = await start_server(where, database_url=database_url, settings=settings)
    try:
        yield server
    finally:
        await server.aclose()


class BearerTransport(HttpTransport):
    """The client transport, sending a token obtained elsewhere (many simulated hosts, one login)."""

    def __init__(
        self, cfg: ClientConfig, token: str, *, limit: int = 0, local_addr: tuple[str, int] | None = None
    ) -> None:
        super().__init__(cfg, limit=limit, local_addr=local_addr)
        self._bearer = f"Bearer {token}"

    async def handle(self, req: ApiRequest) -> ApiResponse:
        req.headers.setdefault("Authorization", self._bearer)
        return await super().handle(req)


# --- PostgreSQL --------------------------------------------------------------------------------------


def pg_url() -> str:
    """The PostgreSQL server to create benchmark databases on ('' if none: scripts/pg-test-server sets it)."""
    return os.environ.get("XW_BENCH_DATABASE_URL") or os.environ.get("XW_TEST_DATABASE_URL", "")


async def _pg(url: str, sql: str) -> None:
    import asyncpg

    u = make_url(url)
    conn = await asyncpg.connect(
        host=u.host, port=u.port, user=u.username, password=u.password, database=u.database or "postgres"
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """A fresh PostgreSQL database (dropped afterwards); its SQLAlchemy URL."""
    base = pg_url()
    if not base:
        raise RuntimeError("no PostgreSQL: set XW_TEST_DATABASE_URL or run under scripts/pg-test-server")
    name = "xwbench_" + uuid.uuid4().hex[:12]
    await _pg(base, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        await _pg(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- objects the benchmarks need --------------------------------------------------------------------


async def add_user(admin: XWClient, login: str, rights: UserRights) -> None:
    await admin.create_user(
        UserIn(login=login, password=PASSWORD, email=f"{login}@bench.invalid", rights=rights)
    )


async def script_app(xw: XWClient, where: Path, name: str, body: str) -> str:
    """Register a script application (``body`` as /bin/sh script) and return its uid."""
    path = where / f"{name}.sh"
    path.write_text(body if body.startswith("#!") else "#!/bin/sh\n" + body)
    data = await xw.send_file(path, access_rights="1700")
    app = await xw.send_app(
        AppIn(name=name, type=AppType.SCRIPT, binaries=[Binary(os="ANY", cpu="ANY", data=data.uid)])
    )
    return app.uid


def tiny_result_zip(path: Path) -> Path:
    """A results zip like a worker's for a job that printed 'ok' (about 250 bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("stdout.txt", "ok\n")
        zf.writestr("stderr.txt", "")
    path.write_bytes(buf.getvalue())
    return path


async def count_jobs(xw: XWClient, **filters: str) -> int:
    """How many jobs match (one page of one item: the server's total)."""
    resp = await xw.open(ApiRequest("GET", "/jobs", params={**filters, "limit": "1"}))
    try:
        return int((await resp.json())["total"])
    finally:
        await resp.aclose()


async def submit_many(
    xw: XWClient,
    app_uid: str,
    n: int,
    *,
    concurrency: int = 32,
    prefix: str = "b",
    on_done: Callable[[], None] | None = None,
) -> list[JobOut]:
    """Submit ``n`` jobs with ``concurrency`` requests in flight; the jobs in submission order."""
    out: list[JobOut | None] = [None] * n
    next_index = 0

    async def submitter() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            out[i] = await xw.submit(JobIn(app=app_uid, args=f"{prefix}{i}", max_retries=0))
            if on_done is not None:
                on_done()

    await asyncio.gather(*(submitter() for _ in range(concurrency)))
    return [j for j in out if j is not None]


# --- real workers ------------------------------------------------------------------------------------


@dataclass
class WorkerPool:
    """``python -m worker`` processes (each a real xwworker) against one server."""

    server: Server
    root: Path  # traversable (0711): jobs of a root worker run as nobody
    conf: Path
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)

    async def start(self, name: str, *args: str) -> asyncio.subprocess.Process:
        log_path = self.root / f"{name}.log"
        with log_path.open("ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "worker",
                "--xwconfig",
                str(self.conf),
                "--name",
                name,
                "--work-dir",
                str(self.root / name),
                *args,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    async def wait_enrolled(self, admin: XWClient, timeout: float = 60) -> list[str]:
        """Wait until every started worker's host is alive; their sandbox kinds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            hosts = {h.name: h for h in await admin.hosts(alive="true")}
            if set(self.procs) <= set(hosts):
                return [hosts[n].sandbox for n in self.procs]
            dead = [n for n, p in self.procs.items() if p.returncode is not None]
            if dead or loop.time() > deadline:
                logs = {n: (self.root / f"{n}.log").read_text(errors="replace")[-2000:] for n in self.procs}
                raise RuntimeError(f"workers did not enrol (dead: {dead}); logs: {logs}")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        await asyncio.gather(*(stop_process(p) for p in self.procs.values()))


@contextlib.asynccontextmanager
async def worker_pool(server: Server, where: Path, login: str = "worker") -> AsyncIterator[WorkerPool]:
    """A WORKER_USER ``login`` and a pool to start its worker processes in."""
    root = where / "workers"
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)
    conf = where / "worker.conf"
    write_private(
        conf,
        dump_flat_toml({"server": server.url, "ca": str(server.ca), "login": login, "password": PASSWORD}),
    )
    pool = WorkerPool(server, root, conf)
    try:
        yield pool
    finally:
        await pool.stop()
