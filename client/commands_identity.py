"""``xwidentity``: which OpenID Connect identities sign in as which users (linking is for administrators)."""

from __future__ import annotations

from pathlib import Path

import click

from client.api import XWClient
from client.cli import echo_objects, run, xw_options
from client.output import IDENTITY
from common.schemas import IdentityIn


@click.group("xwidentity")
def xwidentity() -> None:
    """Identities at trusted OpenID providers (issuer, subject) linked to users.

    A person who signs in with xwlogin is known by the provider's issuer and subject, never by email.
    Administrators link an identity to an existing account (and unlink it); everyone may list their own.
    """


@xwidentity.command("list")
@click.argument("user", required=False)
@xw_options
def list_identities(user: str | None, config: Path | None, fmt: str) -> None:
    """List identities: yours, or (administrators) everyone's or USER's."""

    async def body(xw: XWClient) -> None:
        echo_objects(IDENTITY, await xw.identities(user), fmt)

    run(config, body)


@xwidentity.command("link")
@click.argument("user")
@click.argument("issuer")
@click.argument("subject")
@xw_options
def link(user: str, issuer: str, subject: str, config: Path | None, fmt: str) -> None:
    """Let the person SUBJECT at ISSUER sign in as USER (login or uid)."""

    async def body(xw: XWClient) -> None:
        linked = await xw.link_identity(IdentityIn(user=user, issuer=issuer, subject=subject))
        if fmt == "short":
            click.echo(f"Linked {linked.subject} at {linked.issuer} to user {linked.login} ({linked.uid})")
        else:
            echo_objects(IDENTITY, [linked], fmt)

    run(config, body)


@xwidentity.command("unlink")
@click.argument("uid")
@xw_options
def unlink(uid: str, config: Path | None, fmt: str) -> None:
    """Remove the link UID (from `xwidentity list`); the user's current tokens end with it."""

    async def body(xw: XWClient) -> None:
        await xw.unlink_identity(uid)
        click.echo(f"Unlinked identity {uid}")

    run(config, body)
