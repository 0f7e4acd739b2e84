"""xwlogin and xwlogout: sign in to a server through one of its OpenID Connect providers, and out again."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from client import oidc
from client.api import XWClient
from client.cli import run, xw_options
from client.signin import signed_in
from client.transport import ApiRequest
from common.errors import ValidationFailed, XWError
from common.schemas import OidcProviderOut, Ping

T = TypeVar("T")


def pick_provider(providers: list[OidcProviderOut], name: str | None, server: str) -> OidcProviderOut:
    """The provider to sign in with: the one named (by name or issuer), or the server's only one."""
    names = ", ".join(p.name for p in providers)
    if not providers:
        raise ValidationFailed(f"{server} offers no OpenID Connect sign-in")
    if name is None:
        if len(providers) > 1:
            raise ValidationFailed(f"{server} trusts several providers: choose one with --provider ({names})")
        return providers[0]
    for provider in providers:
        if name in (provider.name, provider.issuer):
            return provider
    raise ValidationFailed(f"{server} has no provider {name!r} (it has: {names})")


async def _interruptible(fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """Run a blocking flow in a thread that stops (at its next look) when this task is cancelled."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(fn, *args, stop=stop, **kwargs)
    finally:
        stop.set()


def _say(text: str) -> None:
    click.echo(text, err=True)


@click.command("xwlogin")
@click.option("--provider", "provider_name", metavar="NAME", help="The provider to use (name or issuer).")
@click.option("--device", is_flag=True, help="Sign in on another device (a code to enter), no browser here.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=oidc.LOGIN_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the sign-in to be completed.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Loopback port for the browser's return (default: any free one); for providers that only"
    " accept the exact redirect URI registered, http://127.0.0.1:PORT/callback.",
)
@xw_options
def xwlogin(
    provider_name: str | None, device: bool, timeout: float, port: int, config: Path | None, fmt: str
) -> None:
    """Sign in to the server through its OpenID Connect provider; later commands use this sign-in."""

    async def body(xw: XWClient) -> None:
        server = xw.signin.server
        spec = pick_provider((await xw.oidc_providers()).providers, provider_name, server)
        provider = await asyncio.to_thread(oidc.discover, spec.name, spec.issuer, spec.client_id, spec.scopes)
        if oidc.choose_flow(device) == "browser":
            tokens = await _interruptible(oidc.login_browser, provider, timeout=timeout, say=_say, port=port)
        else:
            tokens = await _interruptible(oidc.login_device, provider, timeout=timeout, say=_say)
        answer = await xw.oidc_token(spec.name, tokens.id_token, tokens.nonce)
        auth = {"Authorization": f"Bearer {answer.access_token}"}
        resp = await xw.open(ApiRequest("GET", "/ping", headers=auth), auth=False)
        try:
            pong = Ping.model_validate(await resp.json())
        finally:
            await resp.aclose()
        await asyncio.to_thread(xw.tokens.put, server, signed_in(provider, tokens, answer, pong.login))
        click.echo(f"Signed in to {server} as {pong.login} via oidc: {pong.via or provider.issuer}")

    run(config, body)


@click.command("xwlogout")
@xw_options
def xwlogout(config: Path | None, fmt: str) -> None:
    """Forget this server's sign-in (and revoke its refresh token where the provider allows it)."""

    async def body(xw: XWClient) -> None:
        server = xw.signin.server
        gone = await asyncio.to_thread(xw.tokens.remove, server)
        if gone is None:
            click.echo(f"Not signed in to {server}")
            return
        revoked = False
        if gone.refresh_token:
            try:
                provider = await asyncio.to_thread(
                    oidc.discover, gone.provider, gone.issuer, gone.client_id, gone.scopes
                )
                revoked = await asyncio.to_thread(oidc.revoke, provider, gone.refresh_token)
            except XWError:
                revoked = False  # signing out here never depends on the provider
        done = "; its refresh token is revoked" if revoked else ""
        click.echo(f"Signed out of {server} ({gone.login} via oidc: {gone.issuer}){done}")

    run(config, body)
