"""``xwproxy``: reach a running job's port from here, or publish a local port to jobs (docs/RELAY.md).

* ``xwproxy JOB --xwlistenport L [--xwjobport P] [--xwwait]`` listens on ``127.0.0.1:L`` and forwards
  every connection to port P of the running job JOB (a uid, an xw:// URI or a label) through the relay;
  it prints ``listening on 127.0.0.1:L -> job-<uid>-<P>``.
* ``xwproxy --xwlistenport L`` publishes ``127.0.0.1:L`` of this machine as ``proxy-<id>-<L>``, an address
  jobs may name in ``--xwforwardaddresses``; it prints that address alone on the first line of stdout.

Both serve until SIGINT or SIGTERM, then exit 0. Every other output goes to stderr; errors are one line
(exit 1), as with the other xw* commands. Tickets expire, and the relay accepts each one once: the relay
link fetches a fresh one from the server each time it connects, for each grant, and to renew its rights
about half way through a ticket's lifetime (docs/RELAY.md).

This is the only module of ``client`` that imports ``proxy``: workers and xwproxy use its tunnel endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import click

from client.api import XWClient
from client.cli import fail, prog, reason, run, xw_options
from common.enums import JobStatus, ObjectKind
from common.errors import Conflict, ValidationFailed, XWError
from common.schemas import JOB_ADDRESS, JobOut, TunnelTicket, tunnel_name
from proxy.endpoints import RelayLink, Target, Ticket, serve_local

logger = logging.getLogger("xwproxy")

LOCALHOST = "127.0.0.1"
WAIT_POLL = 2.0  # seconds between looks at a job that --xwwait waits for
CLOSE_TIMEOUT = 5.0  # how long shutdown waits for the local listener and the proxy's removal
SETTLE_TIMEOUT = 2.0  # how long shutdown lets the connections still open end by themselves
FINAL = (JobStatus.COMPLETED, JobStatus.ERROR)  # a job in these states never runs again
_PORT = re.compile(r"[0-9]{1,5}")

Fetch = Callable[[], Awaitable[TunnelTicket]]


def parse_port(text: str, option: str) -> int:
    """A TCP port 1-65535 given to ``option`` (ValueError with a one-line reason otherwise)."""
    value = text.strip()
    if not _PORT.fullmatch(value) or not 1 <= int(value) <= 65535:
        raise ValueError(f"bad {option} {text!r}: expected a port 1-65535")
    return int(value)


def job_port(job: JobOut, wanted: int | None) -> int:
    """The listen port of ``job`` to reach: ``wanted``, or the job's only one."""
    ports = list(dict.fromkeys(job.listen_ports))
    listed = ", ".join(str(p) for p in ports)
    if wanted is not None:
        if wanted not in ports:
            raise ValidationFailed(
                f"job {job.uid} does not listen on port {wanted} (its listen ports: {listed or 'none'})"
            )
        return wanted
    if not ports:
        raise ValidationFailed(f"job {job.uid} has no listen port (submit it with --xwlistenport)")
    if len(ports) > 1:
        raise ValidationFailed(f"job {job.uid} listens on ports {listed}: choose one with --xwjobport")
    return ports[0]


class Tickets:
    """Relay tickets from one server call: ``first`` (fetched up front) once, then a fresh one each time."""

    def __init__(self, fetch: Fetch, first: TunnelTicket | None = None) -> None:
        self._fetch = fetch
        self._first = first
        self._warned = False

    async def ticket(self) -> Ticket:
        """For connecting the link (a TicketSource)."""
        got, self._first = self._first, None
        if got is None:
            got = await self._fetch()
        if not got.host_key and not self._warned:
            self._warned = True
            logger.warning(
                "the server pins no relay host key (relay_host_key): relay %s is not verified", got.relay
            )
        return Ticket(got.relay, got.host_key, got.ticket)

    async def grant(self) -> str:
        """For granting rights on the link (a GrantSource)."""
        return (await self._fetch()).ticket


def local_target(port: int) -> Target:
    """Opens a connection to ``127.0.0.1:port`` (the local service a proxy publishes)."""

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(LOCALHOST, port)

    return connect


def _listen_error(port: int, exc: OSError) -> XWError:
    why = os.strerror(exc.errno) if exc.errno else str(exc)
    return XWError(f"cannot listen on {LOCALHOST}:{port}: {why}")


def check_free(port: int) -> None:
    """Refuse early a local port we could not listen on (before waiting for a job or a relay)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's listener does
        try:
            sock.bind((LOCALHOST, port))
        except OSError as exc:
            raise _listen_error(port, exc) from None


def _say(line: str) -> None:
    """One line on stdout, flushed at once (scripts read it while we keep running)."""
    click.echo(line)
    sys.stdout.flush()


async def _forever() -> None:
    await asyncio.Event().wait()


# --- client -> job --------------------------------------------------------------------------------


async def _job_ticket(xw: XWClient, job: JobOut, port: int, wait: bool) -> TunnelTicket:
    """The first connect ticket; with ``wait``, once the job runs (polling its status)."""
    announced: JobStatus | None = None
    while True:
        try:
            return await xw.job_tunnel(job.uid, port)
        except Conflict:
            if not wait:
                raise
            was = job.status
            job = await xw.get_job(job.uid)
            if job.status is JobStatus.RUNNING and was is JobStatus.RUNNING:
                raise  # refused while it runs: not about its status (no relay, unreadable host key)
            if job.status in FINAL:
                raise Conflict(f"job {job.uid} is {job.status.value}: it will not run again") from None
            if job.status is JobStatus.RUNNING:
                continue  # it started in between: ask again now
        if job.status is not announced:
            announced = job.status
            click.echo(f"{prog()}: waiting for job {job.uid} to run (it is {job.status.value})", err=True)
        await asyncio.sleep(WAIT_POLL)


async def connect_job(xw: XWClient, ref: str, listen_port: int, wanted: int | None, wait: bool) -> None:
    """Listen on 127.0.0.1:``listen_port`` and forward each connection to the job's port; serve forever."""
    job = await xw.get_job(await xw.resolve(ObjectKind.JOB.value, ref))
    port = job_port(job, wanted)
    check_free(listen_port)
    first = await _job_ticket(xw, job, port, wait)
    name = first.name or tunnel_name(JOB_ADDRESS, job.uid, port)
    tickets = Tickets(lambda: xw.job_tunnel(job.uid, port), first)
    async with RelayLink(tickets.ticket, label=name) as link:
        await link.allow(name, tickets.grant)
        try:
            server = await serve_local(link, name, host=LOCALHOST, port=listen_port)
        except OSError as exc:
            raise _listen_error(listen_port, exc) from None
        try:
            _say(f"listening on {LOCALHOST}:{listen_port} -> {name}")
            await _forever()
        finally:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)


# --- job -> client ("serve") ----------------------------------------------------------------------


async def publish_local(xw: XWClient, port: int) -> None:
    """Publish 127.0.0.1:``port`` as a new proxy, print its address; serve forever, then forget the proxy."""
    first = await xw.create_proxy(port)
    uid, name = first.id, first.name
    if not uid or not name:
        raise XWError("the server's proxy ticket has no proxy id or name")
    try:
        tickets = Tickets(lambda: xw.proxy_ticket(uid), first)
        async with RelayLink(tickets.ticket, label=name) as link:
            await link.publish(name, local_target(port), tickets.grant)
            _say(name)
            await _forever()
    finally:
        await _forget(xw, uid)


async def _forget(xw: XWClient, uid: str) -> None:
    """Delete the proxy record: its address leads nowhere once we stop (best effort)."""
    try:
        await asyncio.wait_for(xw.remove(uid), CLOSE_TIMEOUT)
    except (XWError, OSError, TimeoutError) as exc:
        logger.warning("proxy %s not removed from the server: %s", uid, reason(exc))


# --- running until a signal -----------------------------------------------------------------------


async def until_signalled(work: Awaitable[None]) -> None:
    """Run ``work`` until it fails (its error is raised) or SIGINT/SIGTERM arrives (it is cancelled)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread: nothing to catch
            continue
        installed.append(sig)
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            logger.info("stopping")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sig in installed:
            loop.remove_signal_handler(sig)
        await _settle(SETTLE_TIMEOUT)
    if not task.cancelled():
        task.result()  # the work's own error, if it ended by itself


async def _settle(timeout: float) -> None:
    """Let the tasks still running (local connections ending with the link) finish by themselves.

    Whatever is left when asyncio.run returns is cancelled, and on Python 3.11 a cancelled connection
    handler of a stream server is logged as an error: a clean shutdown leaves nothing behind instead.
    """
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        await asyncio.wait(others, timeout=timeout)


def _setup_logging(verbose: bool) -> None:
    """Log to stderr (warnings, or everything with --xwverbose); stdout is for the address line only."""
    if logging.getLogger().handlers:  # embedded (tests, another program): leave its logging alone
        return
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("asyncssh").setLevel(logging.INFO if verbose else logging.WARNING)


@click.command("xwproxy")
@click.argument("ref", required=False, metavar="[JOB]")
@click.option(
    "--xwlistenport",
    "listen_port",
    required=True,
    metavar="PORT",
    help="With JOB: the local port to listen on. Without: the local port to publish.",
)
@click.option("--xwjobport", "job_port_text", metavar="PORT", help="The job's port (default: its only one).")
@click.option("--xwwait", "wait", is_flag=True, help="Wait until JOB runs instead of failing.")
@click.option("--xwverbose", "verbose", is_flag=True, help="Log the relay link's activity on stderr.")
@xw_options
def main(
    ref: str | None,
    listen_port: str,
    job_port_text: str | None,
    wait: bool,
    verbose: bool,
    config: Path | None,
    fmt: str,
) -> None:
    """Tunnel through the grid's relay until interrupted (SIGINT/SIGTERM).

    With JOB (a uid, xw:// URI or label): listen on 127.0.0.1:PORT and forward every connection to the
    running job's port. Without: publish 127.0.0.1:PORT of this machine and print its address
    (proxy-<id>-<port>, for xwsubmit --xwforwardaddresses) alone on the first line of stdout.
    """
    try:
        port = parse_port(listen_port, "--xwlistenport")
        wanted = parse_port(job_port_text, "--xwjobport") if job_port_text is not None else None
        if ref is None and (wanted is not None or wait):
            raise ValueError("--xwjobport and --xwwait need a JOB (xwproxy JOB --xwlistenport PORT)")
    except ValueError as exc:
        fail(reason(exc))
    _setup_logging(verbose)

    async def body(xw: XWClient) -> None:
        if ref is None:
            await until_signalled(publish_local(xw, port))
        else:
            await until_signalled(connect_job(xw, ref, port, wanted, wait))

    run(config, body)
