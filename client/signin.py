"""A server's cached OpenID Connect sign-in: its xwhep token, renewed at the provider when it runs out.

ID tokens are single-use at the server, so renewing means a refresh at the provider (a new ID token, and
maybe a rotated refresh token) and then an exchange at the server; both are stored together, under the
cache's lock, so that processes sharing the cache do not spend one refresh token twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from client import oidc
from client.tokencache import CachedLogin, TokenCache
from common.errors import Unauthorized
from common.schemas import TokenResponse

RENEW_MARGIN = 30.0  # renew an xwhep token with less than this many seconds left

Exchange = Callable[[str, str, str | None], Awaitable[TokenResponse]]  # (provider, id_token, nonce)


def not_signed_in(server: str) -> Unauthorized:
    return Unauthorized(f"not signed in to {server}: run xwlogin")


def signed_in(
    provider: oidc.Provider, tokens: oidc.Tokens, answer: TokenResponse, login: str, now: float | None = None
) -> CachedLogin:
    """The cache entry for a sign-in whose ID token the server just exchanged for ``answer``."""
    return CachedLogin(
        provider=provider.name,
        issuer=provider.issuer,
        client_id=provider.client_id,
        scopes=provider.scopes,
        login=login,
        refresh_token=tokens.refresh_token,
        access_token=answer.access_token,
        expires_at=(time.time() if now is None else now) + answer.expires_in,
    )


class CachedSignIn:
    """The sign-in cached for ``server`` in ``tokens``; ``exchange`` trades an ID token at that server."""

    def __init__(self, tokens: TokenCache, server: str, exchange: Exchange) -> None:
        self.tokens = tokens
        self.server = server
        self.exchange = exchange
        self._known: CachedLogin | None = None  # the entry last read or written: no file read per request

    async def token(self, *, refused: str | None = None) -> str | None:
        """The xwhep token to send, renewed when it runs out or is the one the server ``refused``;
        None when not signed in to this server."""
        known = self._known
        if known is not None and known.access_token != refused and known.fresh(RENEW_MARGIN):
            return known.access_token
        entry = self._known = await asyncio.to_thread(self.tokens.get, self.server)
        if entry is None:
            return None
        if entry.access_token != refused and entry.fresh(RENEW_MARGIN):
            return entry.access_token
        return await self._renew(entry.access_token)

    async def _renew(self, stale: str) -> str:
        lock = self.tokens.lock()
        await asyncio.to_thread(lock.__enter__)
        try:
            entry = await asyncio.to_thread(self.tokens.get, self.server)
            if entry is None:
                raise not_signed_in(self.server)
            if entry.access_token != stale and entry.fresh(RENEW_MARGIN):
                self._known = entry
                return entry.access_token  # another process renewed it while we waited for the lock
            renewed = await self._refresh(entry)
            await asyncio.to_thread(self.tokens.put, self.server, renewed, locked=True)
            self._known = renewed
            return renewed.access_token
        finally:
            await asyncio.to_thread(lock.__exit__, None, None, None)

    async def _refresh(self, entry: CachedLogin) -> CachedLogin:
        expired = Unauthorized(f"your sign-in through {entry.issuer} has expired: run xwlogin again")
        if not entry.refresh_token:
            raise expired
        provider = await asyncio.to_thread(
            oidc.discover, entry.provider, entry.issuer, entry.client_id, entry.scopes
        )
        try:
            tokens = await asyncio.to_thread(oidc.refresh, provider, entry.refresh_token)
        except Unauthorized:
            raise expired from None  # the provider no longer honours the refresh token
        answer = await self.exchange(entry.provider, tokens.id_token, None)
        return signed_in(provider, tokens, answer, entry.login)
