"""Client configuration: --xwconfig FILE, else $XW_CONFIG, else ~/.xwhep/client.conf; XW_* env wins."""

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

    server: str
    ca: Path | None = None
    login: str | None = None
    password: str | None = None
    cert: Path | None = None
    key: Path | None = None
    source: Path | None = None

    @property
    def host(self) -> str:
        """The server's name as it appears in xw:// URIs."""
        rest = self.server.split("://", 1)[-1]
        return rest.split("/", 1)[0].rsplit(":", 1)[0]


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
    server = os.environ.get("XW_SERVER") or values.get("server")
    if not server:
        raise ConfigError(f"no server configured (use --xwconfig FILE, XW_CONFIG, or {DEFAULT_PATH})")
    base = file.parent

    def _path(key: str) -> Path | None:
        value = values.get(key)
        return (base / str(value)).expanduser() if value else None

    cfg = ClientConfig(
        server=str(server).rstrip("/"),
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
