"""Typed application state shared by the handlers (one object under one AppKey)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from server.authz import Actor
from server.dispatch import Dispatcher
from server.pki import CA
from server.settings import ServerSettings
from server.store import DataStore
from server.tokens import TokenSigner


@dataclass
class Services:
    """What a request handler may use."""

    settings: ServerSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    signer: TokenSigner
    ca: CA
    store: DataStore
    dispatcher: Dispatcher


SERVICES = web.AppKey("services", Services)
ACTOR_KEY = web.RequestKey("actor", Actor)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def actor_of(request: web.Request) -> Actor:
    """The authenticated requester (set by the auth middleware)."""
    return request[ACTOR_KEY]
