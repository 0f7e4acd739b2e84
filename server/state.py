"""Typed application state shared by the handlers (one object under one AppKey)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from server.authcache import AuthCache
from server.authz import Actor
from server.certificates import CrlCache
from server.longpoll import LongPollBudget
from server.metrics.instruments import ServerMetrics
from server.oidc.trust import TrustedProviders
from server.pki import CA
from server.scheduler.catalog import Catalog
from server.scheduler.heartbeat import Liveness, alive_period
from server.scheduler.matching import HostView
from server.scheduler.wakeup import Wakeups
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
    readers: async_sessionmaker[AsyncSession]  # reads beside the writer (server/db/engine.py: make_reader)
    signer: TokenSigner
    ca: CA
    store: DataStore
    wakeups: Wakeups = field(default_factory=Wakeups)
    liveness: Liveness = field(default_factory=Liveness)
    auth: AuthCache = field(default_factory=AuthCache)
    catalog: Catalog = field(default_factory=Catalog)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    passwords: PasswordGate = field(default_factory=lambda: PasswordGate(password_slots(), 64))
    crl: CrlCache = field(default_factory=CrlCache)
    longpolls: LongPollBudget = field(default_factory=lambda: LongPollBudget(DEFAULT_MAX_LONGPOLLS))
    oidc: TrustedProviders = field(default_factory=lambda: TrustedProviders(()))
    metrics: ServerMetrics = field(default_factory=ServerMetrics)

    def alive_period(self) -> float:
        """The heartbeat period to ask of workers: stretched as the fleet this process hears grows."""
        s = self.settings
        fleet = self.liveness.fleet(max(s.alive_timeout, 600.0))
        return alive_period(s.alive_period, fleet, s.heartbeats_per_second)

    def longpoll(self) -> float:
        """How long a work request may wait: the setting, stretched as the fleet grows so that idle
        workers' returns (each one claim query) stay near ``heartbeats_per_second`` / 2 per second."""
        s = self.settings
        fleet = self.liveness.fleet(max(s.alive_timeout, 600.0))
        return alive_period(s.longpoll, fleet, s.heartbeats_per_second / 2)

    def alive_timeout(self) -> float:
        """Silence after which a host is lost: at least three periods as asked now."""
        return max(self.settings.alive_timeout, 3 * self.alive_period())


def password_slots() -> int:
    """Password hashes at once: leave a core to everything else."""
    return max(1, (os.cpu_count() or 1) - 1)


SERVICES = web.AppKey("services", Services)
ACTOR_KEY = web.RequestKey("actor", Actor)
HOST_KEY = web.RequestKey("host", HostView)  # the host a host credential speaks for


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def actor_of(request: web.Request) -> Actor:
    """The authenticated requester (set by the auth middleware)."""
    return request[ACTOR_KEY]
