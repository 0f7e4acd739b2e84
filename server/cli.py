"""``xwserver``: init a server home, run it, issue client certificates."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import click

from common.config import write_private
from server import gcpolicy
from server.app import start
from server.home import init_home, issue_cert_files, set_conf_server
from server.scheduler import leader
from server.settings import DEFAULT_HOST, DEFAULT_PORT, ServerSettings, load_settings
from server.supervisor import READY, StartError, Supervisor, refusal, watch_parent

logger = logging.getLogger("xwserver")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The xwhep server."""


@cli.command()
@click.option("--dir", "home", type=click.Path(path_type=Path), required=True, help="Server home to create.")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port (0: any free port).",
)
@click.option("--public-name", default="", help="Name clients use for this server (xw:// URIs, certificate).")
@click.option(
    "--database-url", envvar="XW_DATABASE_URL", default="", help="SQLAlchemy URL (default: SQLite in DIR)."
)
def init(home: Path, host: str, port: int, public_name: str, database_url: str) -> None:
    """Create a server home: settings, CA, server certificate, database, administrator."""
    try:
        settings = init_home(home, host=host, port=port, database_url=database_url, public_name=public_name)
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"server home ready in {settings.home}")
    click.echo(f"administrator config: {settings.admin_conf} (use with --xwconfig)")


@cli.command()
@click.option("--dir", "home", type=click.Path(path_type=Path), required=True, help="Server home.")
@click.option("--host", default=None, help="Override the listen address.")
@click.option(
    "--port", default=None, type=click.IntRange(0, 65535), help="Override the port (0: any free port)."
)
@click.option(
    "--database-url",
    envvar="XW_DATABASE_URL",
    default=None,
    help="SQLAlchemy URL (PostgreSQL: postgresql+asyncpg://...).",
)
@click.option(
    "--processes",
    default=None,
    type=click.IntRange(1, 256),
    help="Server processes on the one port (PostgreSQL only; default 1, or `processes` in settings.toml).",
)
@click.option("--child", is_flag=True, hidden=True, help="One of the processes a supervising parent runs.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def run(
    home: Path,
    host: str | None,
    port: int | None,
    database_url: str | None,
    processes: int | None,
    child: bool,
    verbose: bool,
) -> None:
    """Serve a server home until SIGINT/SIGTERM."""
    try:
        settings = load_settings(home, host=host, port=port, database_url=database_url, processes=processes)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    several = child or settings.processes > 1
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        # with several processes, say which one speaks
        format="%(asctime)s %(levelname)s %(name)s" + ("[%(process)d]" if several else "") + ": %(message)s",
    )
    if child:
        asyncio.run(_serve(settings, child=True))
        return
    if settings.processes == 1:
        asyncio.run(_serve(settings))
        return
    reason = refusal(settings, settings.processes)
    if reason:
        raise click.ClickException(reason)
    try:
        asyncio.run(_supervise(settings, verbose))
    except StartError as exc:
        raise click.ClickException(str(exc)) from None


async def _serve(settings: ServerSettings, *, child: bool = False) -> None:
    """Serve in this process; a ``child`` of ``--processes N`` shares the port and leaves the database's
    migration and the home's files to its parent."""
    server = await start(settings, migrate=not child, reuse_port=child)
    frozen = asyncio.create_task(
        gcpolicy.keep_survivors_frozen(settings.gc_freeze_every, settings.gc_full_every), name="gc-freeze"
    )
    try:
        url = f"https://{settings.uri_host}:{server.port}"
        if not child:
            _publish(settings, url)
        stop = _stop_on_signals(ignore_interrupt=child)
        if child:
            watch_parent(stop)
        try:
            click.echo(f"{READY}{url}", err=False)
            sys.stdout.flush()
        except BrokenPipeError:  # a child whose parent died while it started: nobody to serve for
            if not child:
                raise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            stop.set()
        await stop.wait()
    finally:
        logger.info("shutting down")
        frozen.cancel()
        await server.aclose()


async def _supervise(settings: ServerSettings, verbose: bool) -> None:
    """Migrate once, start the processes, publish the URL once, and keep them running until a signal."""
    stop = _stop_on_signals()
    await leader.upgrade_once(settings.db_url)
    supervisor = Supervisor(settings, settings.processes, verbose=verbose)
    await supervisor.start()
    try:
        _publish(settings, supervisor.url)
        click.echo(f"{READY}{supervisor.url}", err=False)
        sys.stdout.flush()
        await stop.wait()
    finally:
        logger.info("shutting down %d server processes", settings.processes)
        await supervisor.stop()


def _publish(settings: ServerSettings, url: str) -> None:
    """Write the bound URL where clients of this home look for it (once per home, not per process)."""
    if settings.admin_conf.exists():
        set_conf_server(settings.admin_conf, url)
    write_private(settings.url_file, url + "\n", 0o644)


def _stop_on_signals(*, ignore_interrupt: bool = False) -> asyncio.Event:
    """An event set by SIGTERM and SIGINT. ``ignore_interrupt``: the children of ``--processes N``
    ignore the terminal's Ctrl-C, which reaches the whole process group: their parent stops them, in
    order, without taking their exit for a crash."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, (lambda: None) if ignore_interrupt else stop.set)
    return stop


@cli.command("issue-cert")
@click.option("--dir", "home", type=click.Path(path_type=Path), required=True, help="Server home.")
@click.option("--user", "login", required=True, help="Login the certificate authenticates.")
@click.option(
    "--out", "prefix", type=click.Path(path_type=Path), required=True, help="Writes PREFIX.crt, PREFIX.key."
)
def issue_cert(home: Path, login: str, prefix: Path) -> None:
    """Issue a client certificate from the server CA for an existing user."""
    try:
        subject = issue_cert_files(load_settings(home), login, prefix)
    except (FileNotFoundError, LookupError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None
    click.echo(f"wrote {prefix}.crt and {prefix}.key for {subject}")


def main() -> None:
    """Console entry point."""
    cli()


if __name__ == "__main__":  # the children of `xwserver run --processes N` start this way
    main()
