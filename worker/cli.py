"""``xwworker``: run a volunteer worker (or a private one, with a standard user's credentials).

``xwworker install|uninstall|status`` manage it as a systemd service (worker/service_cli.py);
``xwworker request`` asks for a host credential without an account (worker/request_cli.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import sys
from pathlib import Path

import click

from client.api import XWClient
from client.config import ConfigError, load_config
from common.errors import XWError
from worker import settings as ws
from worker.busy import BusyPolicy
from worker.daemon import Worker, WorkerOptions
from worker.request_cli import request
from worker.sandbox import detect
from worker.service_cli import install, status, uninstall


def parse_size(text: str) -> int:
    """``512M``, ``2GiB``, ``1000`` (bytes) -> bytes."""
    try:
        return ws.parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def parse_window(text: str) -> tuple[int, int]:
    """XWHEP's activation window ``* 20-7`` (or ``20-7``): work from 20:00 to 07:00."""
    try:
        return ws.parse_window(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def default_work_dir(name: str) -> Path:
    """Where a worker keeps jobs and cache: jobs of a root worker run as nobody, so not under /root."""
    return Path(f"/var/lib/xwhep/worker/{name}") if os.geteuid() == 0 else Path(f"~/.xwhep/worker/{name}")


def refusal(why: str) -> str:
    """The one line a worker without a sandbox stops with (it never runs strangers' code unconfined)."""
    return (
        f"no working sandbox: {why}. Refusing to run other people's jobs unconfined. Install "
        "bubblewrap (apt-get install bubblewrap), or accept the risk with --allow-unsandboxed-jobs"
    )


def make_work_dir(work_dir: Path, *, traversable: bool) -> None:
    """Create the work directory; when jobs run as another uid, open the directories created here to
    traversal (o+x, never o+r). Directories that existed before are left to the volunteer: the check
    that follows names the chmod they need."""
    created = [d for d in (work_dir, *work_dir.parents) if not d.exists()]
    work_dir.mkdir(parents=True, exist_ok=True)
    if traversable:
        for d in created:
            d.chmod(d.stat().st_mode & 0o7777 | stat.S_IXOTH)
        work_dir.chmod(0o711)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--settings",
    "settings_path",
    type=click.Path(path_type=Path),
    help="A worker settings file (what `xwworker install` writes); the options below override it.",
)
@click.option(
    "--xwconfig", "config", type=click.Path(path_type=Path), help="Worker credentials (a client config)."
)
@click.option("--name", default=None, help="Host name to enrol as (default: this machine's name).")
@click.option("--slots", type=click.IntRange(1, 1024), default=None, help="Jobs at once (default: cores).")
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Jobs and cache (default ~/.xwhep/worker/NAME).",
)
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), default=None, help="Cache (default WORKDIR/cache)."
)
@click.option("--cache-size", default=None, help="Cache limit, e.g. 512M or 2G (default 2G).")
@click.option("--max-jobs", type=click.IntRange(1), default=None, help="Pilot mode: exit after N jobs.")
@click.option(
    "--max-idle", type=click.FloatRange(0), default=None, help="Pilot mode: exit after idling that long (s)."
)
@click.option("--project", default=None, help="Run only this usergroup's jobs.")
@click.option("--activation", default=None, help="Work only in this hour window, e.g. '* 20-7'.")
@click.option(
    "--sandbox",
    type=click.Choice(ws.SANDBOXES),
    default=None,
    help="auto (the default): bubblewrap if it works here; none needs --allow-unsandboxed-jobs.",
)
@click.option(
    "--allow-unsandboxed-jobs",
    "allow_unsandboxed",
    is_flag=True,
    help="Without a working bubblewrap, run jobs anyway with rlimits only: they can then use this "
    "machine's network and read what its files allow. Without this flag the worker refuses to start.",
)
@click.option(
    "--memory-limit",
    default=None,
    help="Address-space cap of a job that asks for no memory (default 4G).",
)
@click.option(
    "--busy-threshold",
    type=click.FloatRange(0, 100),
    default=None,
    help="Suspend the jobs while programs other than ours use more than this percentage of all cores "
    "(0, the default: never).",
)
@click.option(
    "--busy-after",
    type=click.FloatRange(0, 86400, min_open=True),
    default=None,
    help=f"...for this long, on average (s, default {ws.DEFAULT_BUSY_AFTER:g}).",
)
@click.option(
    "--calm-after",
    type=click.FloatRange(0, 86400, min_open=True),
    default=None,
    help=f"Resume once their load has stayed below it this long (s, default {ws.DEFAULT_CALM_AFTER:g}).",
)
@click.option(
    "--longpoll",
    type=click.FloatRange(1, 3600),
    default=300.0,
    show_default=True,
    help="Longest wait of a work request (s); the server caps it at what it can afford.",
)
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def main(
    ctx: click.Context,
    settings_path: Path | None,
    config: Path | None,
    name: str | None,
    slots: int | None,
    work_dir: Path | None,
    cache_dir: Path | None,
    cache_size: str | None,
    max_jobs: int | None,
    max_idle: float | None,
    project: str | None,
    activation: str | None,
    sandbox: str | None,
    allow_unsandboxed: bool,
    memory_limit: str | None,
    busy_threshold: float | None,
    busy_after: float | None,
    calm_after: float | None,
    longpoll: float,
    verbose: bool,
) -> None:
    """Pull jobs from an xwhep server over TLS and run them in a sandbox.

    Run as a service: `xwworker install` (then `xwworker status`, `xwworker uninstall`).
    """
    if ctx.invoked_subcommand is not None:
        return
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        base = ws.load_settings(settings_path) if settings_path else ws.WorkerSettings()
    except ws.SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    s = base.override(
        credentials=config,
        name=name,
        work_dir=work_dir,
        slots=slots,
        cache_size=parse_size(cache_size) if cache_size else None,
        memory_limit=parse_size(memory_limit) if memory_limit else None,
        activation=parse_window(activation) if activation else None,
        sandbox=sandbox,
        allow_unsandboxed_jobs=allow_unsandboxed or None,
        busy_threshold=busy_threshold,
        busy_after=busy_after,
        calm_after=calm_after,
        project=project,
    )
    name = s.name or socket.gethostname()
    try:
        cfg = load_config(s.credentials)
        box = detect(s.sandbox)
    except (ConfigError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    if box.kind != "bwrap":
        if not s.allow_unsandboxed_jobs:
            where = f" (or allow_unsandboxed_jobs = true in {settings_path})" if settings_path else ""
            raise click.ClickException(refusal(box.unconfined_reason) + where)
        click.echo(f"xwworker {name}: WARNING: {box.describe()} ({box.unconfined_reason})", err=True)
    opts = WorkerOptions(
        name=name,
        work_dir=(s.work_dir or default_work_dir(name)).expanduser(),
        slots=s.slots or os.cpu_count() or 1,
        cache_bytes=s.cache_size,
        cache_dir=cache_dir,
        sandbox=box,
        max_jobs=max_jobs,
        max_idle=max_idle,
        project=s.project,
        longpoll=longpoll,
        activation=s.activation,
        memory_limit=s.memory_limit,
        busy=BusyPolicy(s.busy_threshold, s.busy_after, s.calm_after) if s.busy_threshold > 0 else None,
    )
    make_work_dir(opts.work_dir, traversable=box.job_uid is not None)
    try:
        box.check_reachable(opts.work_dir / "jobs")
    except RuntimeError as exc:
        raise click.ClickException(f"--work-dir {opts.work_dir}: {exc}") from None
    try:
        reason, refused = asyncio.run(_serve(cfg, opts))
    except XWError as err:
        raise click.ClickException(err.reason) from None
    click.echo(f"xwworker {name}: {reason}", err=True)
    if refused:
        sys.exit(1)  # a supervisor must see that this worker cannot go on as it is


async def _serve(cfg: object, opts: WorkerOptions) -> tuple[str, bool]:
    from client.config import ClientConfig

    assert isinstance(cfg, ClientConfig)
    async with XWClient(cfg) as client:
        worker = Worker(client, opts)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop, f"signal {sig.name}")
        reason = await worker.run()
        return reason, worker.credential_refused


for _command in (install, uninstall, status, request):
    main.add_command(_command)
