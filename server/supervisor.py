"""Several server processes on one port: ``xwserver run --processes N`` (PostgreSQL only).

One Python process uses one core, whatever the machine has; N processes serving the same home and the
same PostgreSQL use N. The parent (this module) does what must happen once — migrate the database, pick
the port, write ``admin.conf`` and ``server.url``, print the ready line — and then only supervises: it
serves no request itself.

* **One port.** Each child binds the port with ``SO_REUSEPORT`` and the kernel spreads new connections
  over the children (by a hash of the connection's addresses; a connection stays with its process).
  The parent first binds the port itself with ``SO_REUSEPORT`` without listening: that finds a free
  port when asked for port 0, refuses an address already taken by anything else with one clear error,
  and keeps the port ours while a child restarts. A bound socket that does not listen gets no
  connections.
* **Children** are ``python -m server.cli run --dir HOME --child`` with the host, port and database in
  their environment (so the database password never shows in ``ps``). Each reports readiness on its
  stdout and watches its stdin: when the parent dies, even by SIGKILL, the pipe closes and the child
  shuts down.
* **Supervision.** A child that exits is started again after a backoff (0.5 s doubling to 10 s; back to
  0.5 s once a child has run 30 s), with one log line each time. The connections it held are reset;
  clients reconnect (to the port: another child answers) and workers retry. SIGINT/SIGTERM stop every
  child (SIGTERM, then SIGKILL after a grace longer than the server's own shutdown wait).
* **Metrics.** Every child gets the same fresh ``PROMETHEUS_MULTIPROC_DIR`` (made at start, deleted at
  stop): prometheus-client keeps each process's counters there and a scrape of any child sums them all
  (server/metrics/endpoint.py). A child that exits has its live gauges dropped (``mark_process_dead``);
  its counters stay, so the totals never go back when it restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field

from prometheus_client.multiprocess import mark_process_dead

from server.settings import ServerSettings

logger = logging.getLogger("xwserver")

READY = "xwserver ready at "
RESTART_MIN = 0.5
RESTART_MAX = 10.0
STABLE = 30.0  # a child that ran this long is restarted after the shortest backoff again
START_TIMEOUT = 120.0
STOP_GRACE = 70.0  # longer than aiohttp's wait for requests in progress (60 s) at shutdown


class StartError(Exception):
    """The server processes could not all be started (one line: why)."""


def refusal(settings: ServerSettings, processes: int) -> str | None:
    """Why ``processes`` server processes cannot run on ``settings``' database, or None if they can."""
    if processes > 1 and not settings.postgres:
        return (
            f"{processes} server processes need PostgreSQL: SQLite has one writer per database file, so "
            "more processes would only wait for each other (set database_url to postgresql+asyncpg://..., "
            "or run one process)"
        )
    return None


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) the address the children will share; port 0 picks a free one."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Child:
    """One running server process."""

    index: int
    proc: asyncio.subprocess.Process
    started: float
    drain: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid


class Supervisor:
    """Start N server processes on one port, keep them running, stop them together."""

    def __init__(self, settings: ServerSettings, processes: int, *, verbose: bool = False) -> None:
        self.settings = settings
        self.processes = processes
        self.verbose = verbose
        self.port = settings.port
        self.children: list[Child | None] = [None] * processes
        self.restarts = 0
        self._reserved: socket.socket | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self.metrics_dir: str | None = None  # the children's PROMETHEUS_MULTIPROC_DIR, fresh per run

    @property
    def url(self) -> str:
        return f"https://{self.settings.uri_host}:{self.port}"

    async def start(self) -> None:
        """Start every child and wait until all serve; StartError (all stopped again) if one cannot."""
        try:
            self._reserved = reserve_port(self.settings.host, self.settings.port)
        except OSError as exc:
            raise StartError(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror or exc}"
            ) from None
        self.port = int(self._reserved.getsockname()[1])
        self.metrics_dir = tempfile.mkdtemp(prefix="xwserver-metrics-")  # values of an earlier run: never
        results = await asyncio.gather(
            *(self._launch(i) for i in range(self.processes)), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop()
            for failure in failed:
                if not isinstance(failure, Exception):
                    raise failure  # cancelled: not a start failure
            known = [f for f in failed if isinstance(f, StartError)]
            raise known[0] if known else StartError(f"cannot start the server processes: {failed[0]}")
        logger.info(
            "%d server processes on port %d (pids %s)",
            self.processes,
            self.port,
            ", ".join(str(c.pid) for c in self.children if c is not None),
        )
        self._watchers = [
            asyncio.create_task(self._watch(i), name=f"watch-{i}") for i in range(self.processes)
        ]

    async def stop(self) -> None:
        """Stop watching, then stop every child (SIGTERM; SIGKILL after the grace)."""
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers = []
        await asyncio.gather(*(self._stop_child(c) for c in self.children if c is not None))
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            self.metrics_dir = None

    def pids(self) -> list[int]:
        return [c.pid for c in self.children if c is not None and c.proc.returncode is None]

    # --- children -------------------------------------------------------------------------------------

    def _command(self) -> list[str]:
        cmd = [sys.executable, "-m", "server.cli", "run", "--dir", str(self.settings.home), "--child"]
        return [*cmd, "--verbose"] if self.verbose else cmd

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            XW_HOST=self.settings.host,
            XW_PORT=str(self.port),
            XW_DATABASE_URL=self.settings.db_url,
            XW_PROCESSES="1",
        )
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        return env

    async def _launch(self, index: int) -> Child:
        """Start child ``index`` and wait for its ready line; StartError if it exits or stays silent."""
        loop = asyncio.get_running_loop()
        proc = await asyncio.create_subprocess_exec(
            *self._command(),
            stdin=asyncio.subprocess.PIPE,  # closed when we die: the child then stops
            stdout=asyncio.subprocess.PIPE,
            env=self._environment(),
        )
        child = Child(index, proc, loop.time())
        self.children[index] = child
        try:
            await asyncio.wait_for(self._ready(child), START_TIMEOUT)
        except TimeoutError:
            await self._stop_child(child)
            raise StartError(
                f"server process {index} (pid {proc.pid}) not ready after {START_TIMEOUT:g} s"
            ) from None
        except StartError:
            await self._stop_child(child)
            raise
        child.started = loop.time()
        child.drain = asyncio.create_task(_drain(proc), name=f"drain-{index}")
        return child

    async def _ready(self, child: Child) -> None:
        assert child.proc.stdout is not None
        while True:
            raw = await child.proc.stdout.readline()
            if not raw:
                code = await child.proc.wait()
                raise StartError(
                    f"server process {child.index} (pid {child.pid}) exited ({describe(code)}) before it "
                    "was ready; its log is above"
                )
            if raw.decode(errors="replace").startswith(READY):
                return

    async def _watch(self, index: int) -> None:
        """Start child ``index`` again whenever it exits, with a growing backoff."""
        loop = asyncio.get_running_loop()
        backoff = RESTART_MIN
        while True:
            child = self.children[index]
            assert child is not None
            code = await child.proc.wait()
            if self.metrics_dir is not None:  # its live gauges no longer count (its counters do)
                mark_process_dead(child.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
            ran = loop.time() - child.started
            if ran >= STABLE:
                backoff = RESTART_MIN
            logger.warning(
                "server process %d (pid %d) exited (%s) after %.0f s; starting it again in %.1f s",
                index,
                child.pid,
                describe(code),
                ran,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_MAX)
            self.restarts += 1
            try:
                new = await self._launch(index)
            except StartError as exc:
                logger.warning("%s", exc)
                continue
            logger.info("server process %d started again (pid %d)", index, new.pid)

    async def _stop_child(self, child: Child) -> None:
        proc = child.proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if proc.stdin is not None:
            proc.stdin.close()  # after the signal: the child takes the stop for an order, not our death
        if proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                logger.warning("server process %d (pid %d) did not stop: killing it", child.index, proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if child.drain is not None:
            child.drain.cancel()
            await asyncio.gather(child.drain, return_exceptions=True)


async def _drain(proc: asyncio.subprocess.Process) -> None:
    """Read what a child still prints, so it never blocks on a full pipe."""
    assert proc.stdout is not None
    while await proc.stdout.read(65536):
        pass


def describe(code: int | None) -> str:
    """An exit status as a person reads it: 'code 1', 'signal KILL'."""
    if code is None:
        return "running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name.removeprefix('SIG')}"
        return f"signal {-code}"
    return f"code {code}"


def watch_parent(stop: asyncio.Event) -> None:
    """In a child: set ``stop`` when stdin (the parent's pipe) reaches end of file — the parent stops us,
    or is gone (even killed by SIGKILL: the kernel closes the pipe)."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    parent = os.getppid()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return
        loop.remove_reader(fd)
        if stop.is_set():
            return
        if os.getppid() == parent:
            logger.info("stopping at the supervising process's request")
        else:  # orphaned: adopted by init or a subreaper
            logger.warning("the supervising process is gone: shutting down")
        stop.set()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
