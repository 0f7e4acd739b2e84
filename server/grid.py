"""``xwgrid``: a whole grid on one machine with embedded defaults — server, workers (relay: later issue).

The server runs in this process; workers are separate ``python -m worker`` processes that talk to it
over TLS on 127.0.0.1 exactly as remote volunteers would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import click
from sqlalchemy import select

from common.enums import UserRights
from server.app import start
from server.db.engine import make_engine
from server.db.models import Host, utcnow
from server.home import add_user, init_home, set_conf_server, write_client_conf
from server.settings import load_settings

logger = logging.getLogger("xwgrid")
WORKER_LOGIN = "worker"
STOP_GRACE = 10.0
READY_POLL = 0.2  # how often xwgrid looks for its workers' enrolments
READY_WARN = 30.0  # after that long, say which workers have not enrolled yet
CLOCK_SLACK = 2.0  # an enrolment this much before xwgrid's start still counts as this run's


def ensure_home(home: Path) -> None:
    """Create the grid's server home and its worker account on first use.

    The home stays unlistable but becomes traversable (0711): workers keep their jobs under it, and jobs
    run as an unprivileged user that must reach its scratch directory. Secrets inside are 0600 files.
    """
    if not (home / "settings.toml").exists():
        settings = init_home(home, host="127.0.0.1", port=0)
        password = secrets.token_urlsafe(18)
        asyncio.run(add_user(settings.db_url, WORKER_LOGIN, password, UserRights.WORKER_USER))
        write_client_conf(
            home / "worker.conf",
            url="https://127.0.0.1:0",
            ca=settings.ca_cert,
            login=WORKER_LOGIN,
            password=password,
        )
    home.chmod(0o711)
    (home / "workers").mkdir(mode=0o711, exist_ok=True)
    (home / "logs").mkdir(exist_ok=True)


def worker_command(home: Path, index: int, extra: list[str]) -> list[str]:
    """The command line of grid worker ``index``."""
    return [
        sys.executable,
        "-m",
        "worker",
        "--xwconfig",
        str(home / "worker.conf"),
        "--name",
        f"grid-w{index}",
        "--work-dir",
        str(home / "workers" / f"w{index}"),
        *extra,
    ]


async def up(home: Path, workers: int, worker_args: list[str], demo: bool) -> int:
    """Run the grid until SIGINT/SIGTERM (or until the demo sweep ends, with ``demo``)."""
    relay_proc, relay_addr = await start_relay(home)
    settings = replace(
        load_settings(home), relays=relay_addr, relay_host_key=str(home / "relay" / "host_key.pub")
    )
    server = await start(settings)
    url = server.url
    for conf in (settings.admin_conf, home / "worker.conf"):
        set_conf_server(conf, url)
    (home / "server.url").write_text(url + "\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fleet = Fleet(home)
    rc = 0
    try:
        await fleet.start(workers, worker_args)
        enrolled = await fleet.wait_enrolled(settings.db_url, stop)
        if stop.is_set():
            return 0
        if workers and not enrolled:
            click.echo("xwgrid: no worker is running (see above); stopping", err=True)
            return 1
        click.echo(
            f"xwgrid ready: server {url}, relay {relay_addr}, {enrolled} of {workers} worker(s) enrolled; "
            f"admin config {settings.admin_conf}, "
            f"more workers with: xwworker --xwconfig {home / 'worker.conf'}",
            err=False,
        )
        click.echo(f"dashboard: {url}/ui/ (sign in as admin, password in {settings.admin_conf})")
        sys.stdout.flush()
        if demo:
            sweep = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "client.sweep",
                "--xwconfig",
                str(settings.admin_conf),
                "--jobs",
                "100",
                "--out",
                str(home / "sweep"),
            )
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait(
                {asyncio.create_task(sweep.wait()), waiter}, return_when=asyncio.FIRST_COMPLETED
            )
            if waiter in done:
                sweep.terminate()
            rc = await sweep.wait()
            click.echo("demo sweep done; the grid keeps running until Ctrl-C")
        await stop.wait()
    finally:
        click.echo("xwgrid: stopping workers and server", err=True)
        await fleet.stop()
        await server.aclose()
        await _stop_workers([relay_proc])
    return rc


class Fleet:
    """The grid's worker processes: started, watched (an exit is reported on the console with the
    worker's last log line), counted as ready only once enrolled, and stopped."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self._log_start: dict[str, int] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    def log_path(self, name: str) -> Path:
        return self.home / "logs" / f"{name.removeprefix('grid-')}.log"

    async def start(self, workers: int, worker_args: list[str]) -> None:
        (self.home / "logs").mkdir(exist_ok=True)
        for i in range(1, workers + 1):
            name = f"grid-w{i}"
            path = self.log_path(name)
            with path.open("ab") as log:
                self._log_start[name] = log.tell()
                self.procs[name] = proc = await asyncio.create_subprocess_exec(
                    *worker_command(self.home, i, worker_args),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._watchers.append(asyncio.create_task(self._watch(name, proc)))

    async def _watch(self, name: str, proc: asyncio.subprocess.Process) -> None:
        rc = await proc.wait()
        if not self._stopping:
            click.echo(f"xwgrid: worker {name} exited ({rc}): {self.last_line(name)}", err=True)

    def last_line(self, name: str) -> str:
        """The last line the worker logged in this run (its error, when it failed)."""
        path = self.log_path(name)
        with path.open("rb") as log:
            log.seek(self._log_start.get(name, 0))
            lines = [ln.strip() for ln in log.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else f"no output (see {path})"

    def running(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.returncode is None]

    async def wait_enrolled(self, db_url: str, stop: asyncio.Event) -> int:
        """Wait until every running worker has enrolled in this run, or has exited; how many enrolled."""
        since = utcnow() - timedelta(seconds=CLOCK_SLACK)
        engine = make_engine(db_url)
        warned = False
        deadline = time.monotonic() + READY_WARN
        try:
            while not stop.is_set():
                async with engine.connect() as conn:
                    rows = await conn.execute(
                        select(Host.name).where(Host.name.in_(list(self.procs)), Host.last_alive >= since)
                    )
                    enrolled = {name for (name,) in rows}
                alive = set(self.running())
                if alive <= enrolled:
                    return len(enrolled & alive)
                if not warned and time.monotonic() > deadline:
                    late = ", ".join(sorted(alive - enrolled))
                    click.echo(
                        f"xwgrid: still waiting for {late} to enrol (see {self.home / 'logs'})", err=True
                    )
                    warned = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), READY_POLL)
            return 0
        finally:
            await engine.dispose()

    async def stop(self) -> None:
        self._stopping = True
        await _stop_workers(list(self.procs.values()))
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)


async def start_relay(home: Path) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``xwrelay`` on a free port of 127.0.0.1; returns the process and its host:port."""
    (home / "relay").mkdir(mode=0o700, exist_ok=True)
    log = (home / "logs" / "relay.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--host-key",
        str(home / "relay" / "host_key"),
        "--verify-key",
        str(home / "jwt.pub"),
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
    if not line.startswith("xwrelay ready at "):
        raise click.ClickException(f"the relay did not start (see {home / 'logs' / 'relay.log'})")
    return proc, line.removeprefix("xwrelay ready at ")


async def _stop_workers(procs: list[asyncio.subprocess.Process]) -> None:
    for p in procs:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await asyncio.wait_for(p.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """A local xwhep grid: server and workers on 127.0.0.1 with embedded defaults."""


@cli.command("up")
@click.option("--dir", "home", type=click.Path(path_type=Path), default=Path("grid"), show_default=True)
@click.option("--workers", type=click.IntRange(0, 256), default=2, show_default=True)
@click.option("--slots", type=click.IntRange(1, 64), default=None, help="Slots per worker (default: cores).")
@click.option("--sandbox", type=click.Choice(["auto", "bwrap", "none"]), default="auto", show_default=True)
@click.option(
    "--allow-unsandboxed-jobs",
    "unconfined",
    is_flag=True,
    help="Let the workers run jobs without bubblewrap (they then see the network and your files).",
)
@click.option("--demo", is_flag=True, help="Once up, run a first sweep: an app, 100 jobs, their results.")
def up_cmd(home: Path, workers: int, slots: int | None, sandbox: str, unconfined: bool, demo: bool) -> None:
    """Bring the grid up; Ctrl-C or SIGTERM shuts everything down cleanly."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ensure_home(home.resolve())
    extra = ["--sandbox", sandbox] + (["--slots", str(slots)] if slots else [])
    extra += ["--allow-unsandboxed-jobs"] if unconfined else []
    sys.exit(asyncio.run(up(home.resolve(), workers, extra, demo)))


def main() -> None:
    """Console entry point."""
    cli()
