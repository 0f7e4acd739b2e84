"""``xwworker request``: a machine without an account asks for a host credential; an administrator decides.

HTCondor's ``condor_token_request``. The request is sent without credentials; the server answers its
uid, a secret only this machine holds and a short code the volunteer reads to the administrator, who
runs ``xwapprove REQ --code CODE``. Meanwhile this command polls (with backoff) until the decision: an
approval brings the host's own credential, stored where an enrolment stores it (``WORKDIR/host.json``,
worker/identity.py), so that ``xwworker`` then runs as that host.

The request is kept in ``WORKDIR/request.json`` (0600) until decided: interrupted (Ctrl-C, --timeout),
the same command run again resumes it instead of sending another. Given ``--server`` (and ``--ca``)
rather than a config file, it also writes ``WORKDIR/client.conf`` (server and CA, no login) for
``xwworker --xwconfig`` to use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import random
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import click

from client.api import XWClient
from client.config import ClientConfig, ConfigError, load_config
from common import __version__
from common.config import dump_flat_toml, write_private
from common.enums import CPU, OS
from common.errors import Conflict, Forbidden, NotFound, TooManyRequests, TransportError, XWError
from common.schemas import HostRequestIn, HostRequestState
from worker import identity
from worker.sandbox import detect

logger = logging.getLogger(__name__)

REQUEST_FILE = "request.json"
CONFIG_FILE = "client.conf"
POLL_FIRST, POLL_GROWTH, POLL_MAX = 1.0, 1.5, 15.0  # seconds between polls: growing, then capped


@dataclass(frozen=True)
class Pending:
    """A request sent and not decided yet: what resuming it takes."""

    uid: str
    secret: str
    code: str
    expires: str  # ISO 8601, for messages
    server: str


def load_pending(work_dir: Path) -> Pending | None:
    try:
        return Pending(**json.loads((work_dir / REQUEST_FILE).read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        logger.warning("ignoring unreadable %s: %s", work_dir / REQUEST_FILE, exc)
        return None


def save_pending(work_dir: Path, pending: Pending) -> None:
    write_private(work_dir / REQUEST_FILE, json.dumps(asdict(pending), indent=2) + "\n")


def forget_pending(work_dir: Path) -> None:
    (work_dir / REQUEST_FILE).unlink(missing_ok=True)


def describe(name: str, work_dir: Path) -> HostRequestIn:
    """This machine, as the administrator will see it."""
    sandbox: str
    try:
        sandbox = detect("auto").kind
    except (RuntimeError, OSError):
        sandbox = ""
    os_name = {"Linux": OS.LINUX, "Darwin": OS.MACOSX, "Windows": OS.WIN32}.get(platform.system(), OS.ANY)
    try:
        cpu = CPU.parse(platform.machine())
    except ValueError:
        cpu = CPU.ANY
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 0
    return HostRequestIn(
        name=name,
        os=os_name,
        cpu=cpu,
        cores=min(os.cpu_count() or 1, 4096),
        memory=memory,
        disk=shutil.disk_usage(work_dir).free,
        version=__version__,
        sandbox=sandbox,
    )


def _when(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


@click.command("request", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--xwconfig",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A client config naming the server and its CA (no login needed).",
)
@click.option("--server", default=None, help="The server's URL, e.g. https://grid.example.org:4321.")
@click.option(
    "--ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The grid's CA certificate (PEM), with --server.",
)
@click.option("--name", default=None, help="Host name to ask for (default: this machine's name).")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the credential goes (default ~/.xwhep/worker/NAME, as for xwworker).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Stop waiting after this long (s); the request stays pending (default: until decided or expired).",
)
@click.option("--new", "fresh", is_flag=True, help="Drop a request this work directory still waits for.")
def request(
    config: Path | None,
    server: str | None,
    ca: Path | None,
    name: str | None,
    work_dir: Path | None,
    timeout: float | None,
    fresh: bool,
) -> None:
    """Ask the grid's administrator for a host credential, without an account, and wait for the decision.

    Prints the request and its code, and the command the administrator runs (xwapprove). Ctrl-C stops
    waiting; running the same command again resumes the same request.
    """
    from worker.cli import default_work_dir  # worker.cli registers this command: import it late

    name = name or socket.gethostname()
    work = (work_dir or default_work_dir(name)).expanduser()
    cfg, conf_path = _config(config, server, ca, work)
    saved = identity.load(work)
    if saved is not None:
        raise click.ClickException(
            f"{identity.path_in(work)} already holds host {saved.host_uid}'s credential: start the worker "
            f"({_run_line(conf_path, name, work_dir)}), or delete that file to ask for a new host"
        )
    work.mkdir(parents=True, exist_ok=True)
    if conf_path is not None and config is None:
        values = {"server": cfg.server} | ({"ca": str(cfg.ca)} if cfg.ca else {})
        write_private(conf_path, dump_flat_toml(values))
    pending = None if fresh else load_pending(work)
    if pending is not None and pending.server != cfg.server:
        pending = None  # asked of another server: that one cannot answer it
    try:
        state, pending = asyncio.run(_request(cfg, name, work, pending, timeout))
    except KeyboardInterrupt:
        _still_pending(load_pending(work), "interrupted", 130)
    except XWError as err:
        raise click.ClickException(err.reason) from None
    if state is None:
        _still_pending(pending, f"no decision after {timeout or 0:g} s", 1)
    assert pending is not None
    forget_pending(work)
    if state.status == "denied":
        raise click.ClickException(f"request {pending.uid} was denied: {state.reason}")
    if state.status == "expired":
        raise click.ClickException(f"request {pending.uid} expired: {state.reason}")
    assert state.host is not None and state.credential is not None
    identity.save(work, identity.SavedHost(state.host, state.credential, cfg.server))
    click.echo(
        f"Request {pending.uid} approved: this machine is host {state.host} (owner {state.owner}); its "
        f"credential is in {identity.path_in(work)}. Start the worker with:\n"
        f"    {_run_line(conf_path, name, work_dir)}"
    )


def _config(
    config: Path | None, server: str | None, ca: Path | None, work: Path
) -> tuple[ClientConfig, Path | None]:
    """The server to ask, and the config file ``xwworker`` will run with (None: its default)."""
    if server is not None:
        if config is not None:
            raise click.UsageError("give --xwconfig or --server, not both")
        return ClientConfig(server=server, ca=ca.absolute() if ca else None), work / CONFIG_FILE
    if ca is not None:
        raise click.UsageError("--ca goes with --server")
    try:
        return load_config(config), config
    except ConfigError as exc:
        raise click.ClickException(f"{exc} (or give --server URL --ca CA.pem)") from None


def _run_line(conf: Path | None, name: str, work_dir: Path | None) -> str:
    line = "xwworker" + (f" --xwconfig {conf}" if conf else "") + f" --name {name}"
    return line + (f" --work-dir {work_dir}" if work_dir else "")


def _still_pending(pending: Pending | None, why: str, code: int) -> NoReturn:
    if pending is None:
        click.echo(f"xwworker: {why}; no request was sent", err=True)
    else:
        click.echo(
            f"xwworker: {why}: request {pending.uid} (code {pending.code}) waits for a decision until "
            f"{_when(pending.expires)}; run the same command again to keep waiting",
            err=True,
        )
    sys.exit(code)


async def _request(
    cfg: ClientConfig, name: str, work: Path, pending: Pending | None, timeout: float | None
) -> tuple[HostRequestState | None, Pending]:
    """Send the request (or resume ``pending``) and poll until decided; (None, pending) on timeout."""
    async with XWClient(cfg) as xw:
        if pending is None:
            ticket = await xw.request_host(describe(name, work))
            pending = Pending(ticket.uid, ticket.secret, ticket.code, ticket.expires.isoformat(), cfg.server)
            save_pending(work, pending)
            first = "sent"
        else:
            first = "resumed"
        click.echo(
            f"Request {pending.uid} {first} (code {pending.code}). Ask your grid administrator to run:\n"
            f"    xwapprove {pending.uid} --code {pending.code}\n"
            f"Waiting for the decision until {_when(pending.expires)} (Ctrl-C stops waiting; the same "
            "command resumes it)."
        )
        try:
            return await _poll(xw, pending, timeout), pending
        except (NotFound, Forbidden, Conflict) as err:
            forget_pending(work)  # the server will never answer this request: do not resume it
            raise type(err)(f"request {pending.uid}: {err.reason}") from None


async def _poll(xw: XWClient, pending: Pending, timeout: float | None) -> HostRequestState | None:
    """Poll until the request is no longer pending; None once ``timeout`` seconds have passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = POLL_FIRST
    while True:
        wait = delay * random.uniform(0.8, 1.0)  # jitter: many machines asking at once spread out
        try:
            state = await xw.poll_host_request(pending.uid, pending.secret)
            if state.status != "pending":
                return state
        except TooManyRequests as err:
            wait = float(err.retry_after)
        except TransportError as err:  # the server is away for now: the request waits there
            click.echo(f"xwworker: {err.reason}; trying again", err=True)
        delay = min(delay * POLL_GROWTH, POLL_MAX)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            wait = min(wait, left)
        await asyncio.sleep(wait)
