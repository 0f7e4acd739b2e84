"""``xwrelay``: run the relay until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import asyncssh
import click

from common.netallow import LOOPBACK, parse_allow, split_allow
from proxy.metrics import MetricsServer
from proxy.relay import HostKeyError, Relay, load_or_create_host_key
from proxy.tickets import TicketError, import_verify_key

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4322

logger = logging.getLogger("xwrelay")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535), help="0: any free port."
)
@click.option(
    "--host-key",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="SSH host key (ed25519, created if missing); its public half is written to FILE.pub.",
)
@click.option(
    "--verify-key",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The server's ticket verification key (jwt.pub, PEM).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics over plain HTTP on this port (0: any free port). Default: none.",
)
@click.option("--metrics-host", default=DEFAULT_HOST, show_default=True, help="Address of the metrics port.")
@click.option(
    "--metrics-allow",
    default=",".join(LOOPBACK),
    show_default=True,
    help="Addresses and networks (CIDR, comma-separated) that may read the metrics.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(
    host: str,
    port: int,
    host_key: Path,
    verify_key: Path,
    metrics_port: int | None,
    metrics_host: str,
    metrics_allow: str,
    verbose: bool,
) -> None:
    """The xwhep relay: an SSH server that publishes job and proxy ports under virtual names."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
    try:
        pem = verify_key.read_bytes()
        import_verify_key(pem)
    except OSError as exc:
        raise click.ClickException(f"cannot read the verify key {verify_key}: {exc.strerror}") from None
    except TicketError:
        raise click.ClickException(f"{verify_key} is not an EC public key (PEM)") from None
    try:
        key = load_or_create_host_key(host_key)
    except OSError as exc:
        raise click.ClickException(f"cannot use the host key {host_key}: {exc.strerror or exc}") from None
    except HostKeyError as exc:
        raise click.ClickException(f"cannot use the host key {host_key}: {exc}") from None
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise click.ClickException(f"{host_key} is not an SSH private key: {exc}") from None
    try:
        allow = split_allow(metrics_allow)
        parse_allow(allow)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--metrics-allow") from None
    metrics = (metrics_host, metrics_port, allow) if metrics_port is not None else None
    asyncio.run(_serve(Relay(pem, key), host, port, metrics))


async def _serve(
    relay: Relay, host: str, port: int, metrics: tuple[str, int, tuple[str, ...]] | None
) -> None:
    try:
        bound = await relay.start(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    exporter = None
    m_host = ""
    if metrics is not None:
        m_host, m_port, allow = metrics
        exporter = MetricsServer(relay, allow)
        try:
            await exporter.start(m_host, m_port)
        except OSError as exc:
            await relay.aclose()
            raise click.ClickException(
                f"cannot serve metrics on {m_host}:{m_port}: {exc.strerror or exc}"
            ) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    click.echo(f"xwrelay ready at {host}:{bound}")
    if exporter is not None:  # after the ready line, which scripts wait for as the first one
        click.echo(f"xwrelay metrics at http://{m_host}:{exporter.port}/metrics")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        logger.info("shutting down")
        if exporter is not None:
            await exporter.aclose()
        await relay.aclose()


if __name__ == "__main__":
    main()
