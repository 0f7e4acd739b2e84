"""Typed application state shared by the handlers (one object under one AppKey)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from server.authz import Actor
from server.certificates import CrlCache
from server.dispatch import Dispatcher
from server.longpoll import LongPollBudget
from server.pki import CA
from server.settings import DEFAULT_MAX_LONGPOLLS, ServerSettings
from server.store import DataStore
from server.throttle import LoginThrottle, PasswordGate
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
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    passwords: PasswordGate = field(default_factory=lambda: PasswordGate(password_slots(), 64))
    crl: CrlCache = field(default_factory=CrlCache)
    longpolls: LongPollBudget = field(default_factory=lambda: LongPollBudget(DEFAULT_MAX_LONGPOLLS))


def password_slots() -> int:
    """Password hashes at once: leave a core to everything else."""
    return max(1, (os.cpu_count() or 1) - 1)


SERVICES = web.AppKey("services", Services)
ACTOR_KEY = web.RequestKey("actor", Actor)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def actor_of(request: web.Request) -> Actor:
    """The authenticated requester (set by the auth middleware)."""
    return request[ACTOR_KEY]
