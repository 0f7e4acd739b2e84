"""Fixtures: a real xwhep server over TLS on 127.0.0.1 port 0, with a fresh database per test.

The database is SQLite in the server home, or, when XW_TEST_DATABASE_URL names a PostgreSQL server
(postgresql+asyncpg://user@host:port/db), a database created for the test and dropped after it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from client.api import XWClient
from client.config import ClientConfig
from common.enums import UserRights
from common.schemas import UserIn
from server.app import RunningServer, start
from server.home import init_home
from server.settings import ServerSettings, load_settings

PG_URL = os.environ.get("XW_TEST_DATABASE_URL", "")
PASSWORD = "correct horse battery"


async def _pg(url: str, sql: str) -> None:
    import asyncpg

    u = make_url(url)
    conn = await asyncpg.connect(
        host=u.host, port=u.port, user=u.username, password=u.password, database=u.database or "postgres"
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On PostgreSQL (``make test-pg``) run only the tests that reach a database: those that use the
    ``database_url`` or ``grid_database_url`` fixture, directly or through another (every server), or
    are marked ``database``. The rest (pure functions, the client against in-memory transports, the relay, the
    worker's sandbox) already ran on SQLite and would only repeat themselves."""
    if not PG_URL:
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        names = getattr(item, "fixturenames", ())
        uses = "database_url" in names or "grid_database_url" in names or item.get_closest_marker("database")
        (keep if uses else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """'' for SQLite in the home, or a fresh PostgreSQL database."""
    if not PG_URL:
        yield ""
        return
    name = "xwt_" + uuid.uuid4().hex[:12]
    await _pg(PG_URL, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        await _pg(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Grid:
    """A running server and ways to act on it as various users."""

    settings: ServerSettings
    server: RunningServer
    admin_cfg: ClientConfig
    clients: list[XWClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def home(self) -> Path:
        return self.settings.home

    def config(self, **kw: object) -> ClientConfig:
        base: dict[str, object] = {"server": self.url, "ca": self.settings.ca_cert}
        base.update(kw)
        return ClientConfig(**base)  # type: ignore[arg-type]

    def client(self, cfg: ClientConfig) -> XWClient:
        xw = XWClient(cfg)
        self.clients.append(xw)
        return xw

    @property
    def admin(self) -> XWClient:
        return self.client(self.admin_cfg)

    async def add_user(
        self,
        login: str,
        rights: UserRights = UserRights.STANDARD_USER,
        group: str | None = None,
        by: XWClient | None = None,
    ) -> XWClient:
        """Create a user (as admin unless ``by``) and return a client logged in as that user."""
        creator = by or self.admin
        await creator.create_user(
            UserIn(
                login=login, password=PASSWORD, email=f"{login}@example.org", rights=rights, usergroup=group
            )
        )
        return self.client(self.config(login=login, password=PASSWORD))

    def write_client_conf(self, path: Path, **kw: str) -> Path:
        from common.config import dump_flat_toml

        path.write_text(dump_flat_toml({"server": self.url, "ca": str(self.settings.ca_cert), **kw}))
        return path


@pytest.fixture(scope="session")
def template_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised SQLite home, copied for each test (CA, keys and migrations made once)."""
    home = tmp_path_factory.mktemp("template") / "home"
    init_home(home, host="127.0.0.1", port=0)
    return home


def _admin_password(home: Path) -> str:
    from common.config import read_toml

    return str(read_toml(home / "admin.conf")["password"])


async def start_grid(tmp_path: Path, template_home: Path, database_url: str, **overrides: Any) -> Grid:
    """A fresh server on 127.0.0.1:0 (``overrides`` replace settings, e.g. alive_period).

    ``template_home`` is copied: the SQLite one with its database, or on PostgreSQL the template's home,
    pointed at ``database_url``, a clone of the template's database (grid_database_url)."""
    home = tmp_path / "server"
    shutil.copytree(template_home, home)
    if database_url:
        from common.config import dump_flat_toml, read_toml, write_private

        values = read_toml(home / "settings.toml")
        write_private(home / "settings.toml", dump_flat_toml({**values, "database_url": database_url}))
    settings = replace(load_settings(home), **overrides)
    server = await start(settings, migrate=False)  # both homes are migrated already
    admin_cfg = ClientConfig(
        server=server.url, ca=settings.ca_cert, login="admin", password=_admin_password(home)
    )
    return Grid(settings, server, admin_cfg)


async def stop_grid(g: Grid) -> None:
    for xw in g.clients:
        await xw.aclose()
    await g.server.aclose()


@pytest.fixture(scope="session")
def pg_template_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | None]:
    """On PostgreSQL, one initialised home (CA, keys, admin) whose migrated database every grid's
    database is cloned from (CREATE DATABASE ... TEMPLATE): a grid costs a copy, not the migrations."""
    if not PG_URL:
        yield None
        return
    name = "xwt_tmpl_" + uuid.uuid4().hex[:12]
    asyncio.run(_pg(PG_URL, f'CREATE DATABASE "{name}"'))
    try:
        home = tmp_path_factory.mktemp("pg-template") / "home"
        init_home(home, host="127.0.0.1", port=0, database_url=_database(name))
        yield home
    finally:
        asyncio.run(_pg(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _database(name: str) -> str:
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
async def grid_database_url(pg_template_home: Path | None) -> AsyncIterator[str]:
    """'' for SQLite, or on PostgreSQL a fresh clone of the template's database (migrated, with admin)."""
    if pg_template_home is None:
        yield ""
        return
    template = make_url(load_settings(pg_template_home).db_url).database
    name = "xwt_" + uuid.uuid4().hex[:12]
    await _pg(PG_URL, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield _database(name)
    finally:
        await _pg(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def grid_home(template_home: Path, pg_template_home: Path | None) -> Path:
    """The home a grid copies: the SQLite template, or the PostgreSQL one."""
    return pg_template_home or template_home


@pytest.fixture
async def grid(tmp_path: Path, grid_home: Path, grid_database_url: str) -> AsyncIterator[Grid]:
    """A fresh server on 127.0.0.1:0."""
    g = await start_grid(tmp_path, grid_home, grid_database_url)
    try:
        yield g
    finally:
        await stop_grid(g)


@pytest.fixture
async def grid_factory(tmp_path: Path, grid_home: Path, grid_database_url: str) -> AsyncIterator[Any]:
    """Start servers with settings overrides: ``g = await grid_factory(alive_period=0.5)``."""
    made: list[Grid] = []

    async def make(**overrides: Any) -> Grid:
        g = await start_grid(tmp_path, grid_home, grid_database_url, **overrides)
        made.append(g)
        return g

    try:
        yield make
    finally:
        for g in made:
            await stop_grid(g)


@pytest.fixture
def oidc_provider() -> Any:
    """A real OpenID provider (tests/oidc/provider.py) on 127.0.0.1 with user alice/alice-password."""
    from tests.oidc.provider import TestProvider  # lazy: Flask is only imported by the tests that use it

    provider = TestProvider()
    provider.add_user("alice", "alice-password", name="Alice Liddell", groups=["physics"])
    with provider:
        yield provider


@pytest.fixture
def iam(request: pytest.FixtureRequest) -> Iterator[Any]:
    """pytest-iam's server, without leaking the AUTHLIB_INSECURE_TRANSPORT=1 that its
    ``iam_configuration`` fixture puts in os.environ into the rest of the session."""
    before = os.environ.get("AUTHLIB_INSECURE_TRANSPORT")
    try:
        server = request.getfixturevalue("iam_server")
    except pytest.FixtureLookupError:
        pytest.skip("the pytest-iam plugin is disabled (-p no:iam)")
    try:
        yield server
    finally:
        server.logout()
        if before is None:
            os.environ.pop("AUTHLIB_INSECURE_TRANSPORT", None)
