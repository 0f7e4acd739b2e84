"""Client configuration: --xwconfig FILE, else $XW_CONFIG, else ~/.xwhep/client.conf; XW_* env wins.

``server`` names one server URL, or several equivalent ones (processes or machines sharing one database)
as a TOML list or a comma-separated string (``XW_SERVER`` too); the transport uses the first that
answers and moves on when it stops answering (``client/transport.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from common.config import read_toml

DEFAULT_PATH = Path("~/.xwhep/client.conf")


class ConfigError(Exception):
    """The configuration is missing or unusable."""


@dataclass(frozen=True)
class ClientConfig:
    """Where the server is and how to prove who we are."""

    server: str  # one URL, or several separated by commas
    ca: Path | None = None
    login: str | None = None
    password: str | None = None
    cert: Path | None = None
    key: Path | None = None
    source: Path | None = None

    @property
    def servers(self) -> tuple[str, ...]:
        """The server URLs, in the order they are tried."""
        return split_servers(self.server)

    @property
    def host(self) -> str:
        """The server's name as it appears in xw:// URIs (the first URL's)."""
        first = self.servers[0] if self.servers else self.server
        rest = first.split("://", 1)[-1]
        return rest.split("/", 1)[0].rsplit(":", 1)[0]


def split_servers(value: object) -> tuple[str, ...]:
    """Server URLs from a config value: a list, or a string of comma-separated URLs."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return tuple(u for u in (str(i).strip().rstrip("/") for i in items) if u)


def load_config(path: str | Path | None = None) -> ClientConfig:
    """Resolve and read the configuration; raise ConfigError with a one-line reason."""
    chosen = Path(path) if path else Path(os.environ["XW_CONFIG"]) if os.environ.get("XW_CONFIG") else None
    file = (chosen or DEFAULT_PATH).expanduser()
    values: dict[str, object] = {}
    if file.exists():
        try:
            values = read_toml(file)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"cannot read config {file}: {exc}") from None
    elif chosen is not None:
        raise ConfigError(f"config file {file} does not exist")
    servers = split_servers(os.environ.get("XW_SERVER") or values.get("server") or "")
    if not servers:
        raise ConfigError(f"no server configured (use --xwconfig FILE, XW_CONFIG, or {DEFAULT_PATH})")
    base = file.parent

    def _path(key: str) -> Path | None:
        value = values.get(key)
        return (base / str(value)).expanduser() if value else None

    cfg = ClientConfig(
        server=",".join(servers),
        ca=_path("ca"),
        login=_opt(values.get("login")),
        password=_opt(values.get("password")),
        cert=_path("cert"),
        key=_path("key"),
        source=file if file.exists() else None,
    )
    if os.environ.get("XW_LOGIN"):
        cfg = replace(cfg, login=os.environ["XW_LOGIN"], cert=None, key=None)
    if os.environ.get("XW_PASSWORD"):
        cfg = replace(cfg, password=os.environ["XW_PASSWORD"])
    return cfg


def _opt(value: object) -> str | None:
    return str(value) if value not in (None, "") else None
