"""Creating a server home: settings, CA, server certificate, signing key, database, administrator."""

from __future__ import annotations

import asyncio
import secrets
import socket
from pathlib import Path

from sqlalchemy import select

from common.config import dump_flat_toml, read_toml, write_private
from common.enums import UserRights
from common.rights import PRIVATE
from common.uri import new_uid
from server.certificates import record_issued
from server.db.engine import make_engine, make_sessionmaker, upgrade_sync
from server.db.models import User
from server.passwords import hash_password
from server.pki import CA, cert_pem, create_ca, issue_server_cert, issue_user_cert, key_pem, subject_string
from server.settings import SETTINGS_FILE, ServerSettings, load_settings
from server.tokens import TokenSigner, create_key

ADMIN_LOGIN = "admin"


def init_home(
    home: Path,
    *,
    host: str,
    port: int,
    database_url: str = "",
    public_name: str = "",
    extra_hosts: tuple[str, ...] = (),
) -> ServerSettings:
    """Create a self-contained server home in ``home``; refuse to overwrite an existing one."""
    home = home.resolve()
    if (home / SETTINGS_FILE).exists():
        raise FileExistsError(f"{home} already holds a server home")
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    write_private(
        home / SETTINGS_FILE,
        dump_flat_toml(
            {
                "host": host,
                "port": port,
                "public_name": public_name or None,
                "database_url": database_url or None,
            }
        ),
    )
    settings = load_settings(home)
    ca = create_ca(f"xwhep CA {public_name or host}")
    ca.save(settings.ca_cert, settings.ca_key)
    names = [host, "localhost", "127.0.0.1", socket.gethostname(), *extra_hosts]
    if public_name:
        names.insert(0, public_name)
    cert, key = issue_server_cert(ca, names)
    write_private(settings.server_key, key_pem(key))
    settings.server_cert.write_text(cert_pem(cert))
    create_key(settings.jwt_key)
    TokenSigner.from_file(settings.jwt_key, settings.token_ttl).write_public(settings.jwt_pub)
    settings.store_dir.mkdir(exist_ok=True)
    upgrade_sync(settings.db_url)
    db_file = home / "xwhep.db"
    if db_file.exists():
        db_file.chmod(0o600)  # password hashes: SQLite would create it with the umask's mode
    password = secrets.token_urlsafe(18)
    asyncio.run(add_user(settings.db_url, ADMIN_LOGIN, password, UserRights.SUPER_USER))
    write_client_conf(
        settings.admin_conf,
        url=f"https://{host}:{port}",
        ca=settings.ca_cert,
        login=ADMIN_LOGIN,
        password=password,
    )
    return settings


def write_client_conf(
    path: Path,
    *,
    url: str,
    ca: Path,
    login: str | None = None,
    password: str | None = None,
    cert: Path | None = None,
    key: Path | None = None,
) -> None:
    """A client config file (private: it may hold a password)."""
    write_private(
        path,
        dump_flat_toml(
            {
                "server": url,
                "ca": str(ca),
                "login": login,
                "password": password,
                "cert": str(cert) if cert else None,
                "key": str(key) if key else None,
            }
        ),
    )


def set_conf_server(path: Path, url: str) -> None:
    """Point an existing client config at ``url`` (used when the server bound port 0)."""
    values = read_toml(path)
    values["server"] = url
    write_private(path, dump_flat_toml(values))


async def add_user(db_url: str, login: str, password: str, rights: UserRights) -> str:
    """Insert a user directly (bootstrap only; the API is the normal way)."""
    engine = make_engine(db_url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            uid = new_uid()
            hashed = await asyncio.to_thread(hash_password, password)
            session.add(
                User(
                    uid=uid,
                    owner_uid=uid,
                    group_uid=None,
                    access_rights=PRIVATE,
                    login=login,
                    password_hash=hashed,
                    rights=rights.value,
                )
            )
        return uid
    finally:
        await engine.dispose()


def issue_cert_files(settings: ServerSettings, login: str, prefix: Path) -> str:
    """Issue a client certificate for ``login``, write PREFIX.crt/.key, record it in the registry."""
    ca = CA.load(settings.ca_cert, settings.ca_key)
    cert, key = issue_user_cert(ca, login)
    subject = subject_string(cert)

    async def _map() -> None:
        engine = make_engine(settings.db_url)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                user = (await session.execute(select(User).where(User.login == login))).scalar_one_or_none()
                if user is None:
                    raise LookupError(f"no user {login!r}")
                holder = (
                    await session.execute(
                        select(User.login).where(User.cert_subject == subject, User.uid != user.uid)
                    )
                ).scalar_one_or_none()
                if holder is not None:
                    raise LookupError(f"certificate subject {subject!r} is already mapped to {holder!r}")
                user.cert_subject = subject
                record_issued(session, user, cert)
        finally:
            await engine.dispose()

    asyncio.run(_map())
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_private(prefix.with_name(prefix.name + ".key"), key_pem(key))
    prefix.with_name(prefix.name + ".crt").write_text(cert_pem(cert))
    return subject
