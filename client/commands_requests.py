"""The administrators' side of ``xwworker request``: list host requests, approve or deny them."""

from __future__ import annotations

from pathlib import Path

import click

from client.api import XWClient
from client.cli import echo_objects, fail, run, xw_options
from client.output import HOST_REQUEST
from common.uri import is_uid

STATUSES = ("pending", "approved", "denied", "delivered", "expired", "all")


def _request_uid(ref: str) -> str:
    if not is_uid(ref.lower()):
        fail(f"{ref!r} is not a host request uid (xwhostrequests lists them)")
    return ref.lower()


@click.command("xwhostrequests")
@click.option(
    "--status",
    "--xwstatus",
    "status",
    type=click.Choice(STATUSES, case_sensitive=False),
    default="pending",
    show_default=True,
    help="Which requests (a pending one past its time is expired).",
)
@xw_options
def xwhostrequests(status: str, config: Path | None, fmt: str) -> None:
    """List the requests for a host credential of machines without an account (administrators)."""

    async def body(xw: XWClient) -> None:
        echo_objects(HOST_REQUEST, await xw.host_requests(status.lower()), fmt)

    run(config, body)


@click.command("xwapprove")
@click.argument("request", metavar="REQ")
@click.option(
    "--code", required=True, help="The code the volunteer's `xwworker request` printed, e.g. K7QF-2M9D."
)
@click.option(
    "--owner",
    default=None,
    help="Who owns the new host, login or uid (default: the shared `worker` account if there is one, "
    "else you). A worker or administrator's host runs everyone's jobs; a standard user's only theirs.",
)
@xw_options
def xwapprove(request: str, code: str, owner: str | None, config: Path | None, fmt: str) -> None:
    """Approve a host request (administrators): its worker then collects a credential of its own."""
    uid = _request_uid(request)

    async def body(xw: XWClient) -> None:
        echo_objects(HOST_REQUEST, [await xw.approve_host_request(uid, code, owner)], fmt)

    run(config, body)


@click.command("xwdeny")
@click.argument("request", metavar="REQ")
@click.option("--reason", "--xwreason", "why", default="", help="Why (the requesting worker prints it).")
@xw_options
def xwdeny(request: str, why: str, config: Path | None, fmt: str) -> None:
    """Deny a host request, or withdraw an approval not collected yet (administrators)."""
    uid = _request_uid(request)

    async def body(xw: XWClient) -> None:
        echo_objects(HOST_REQUEST, [await xw.deny_host_request(uid, why)], fmt)

    run(config, body)
