"""``xwserver``: init a server home, run it, issue client certificates."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

import click

from common.config import write_private
from server.app import start
from server.home import init_home, issue_cert_files, set_conf_server
from server.settings import DEFAULT_HOST, DEFAULT_PORT, load_settings

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
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def run(home: Path, host: str | None, port: int | None, database_url: str | None, verbose: bool) -> None:
    """Serve a server home until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings(home, host=host, port=port, database_url=database_url)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    asyncio.run(_serve(settings))


async def _serve(settings: object) -> None:
    from server.settings import ServerSettings

    assert isinstance(settings, ServerSettings)
    server = await start(settings)
    # the ~100k objects of imports and start-up never die: keep them out of every full collection
    gc.freeze()
    url = f"https://{settings.uri_host}:{server.port}"
    if settings.admin_conf.exists():
        set_conf_server(settings.admin_conf, url)
    write_private(settings.url_file, url + "\n", 0o644)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    click.echo(f"xwserver ready at {url}", err=False)
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        logger.info("shutting down")
        await server.aclose()


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
