"""Server settings: defaults < DIR/settings.toml < XW_* environment, built once per process."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from common.config import read_toml
from common.netallow import LOOPBACK, parse_allow, split_allow
from server import gcpolicy
from server.oidc.config import ProviderConfig, parse_providers

DEFAULT_PORT = 4321
DEFAULT_HOST = "127.0.0.1"
DEFAULT_TOKEN_TTL = 3600
DEFAULT_ALIVE_PERIOD = 10.0
DEFAULT_ALIVE_TIMEOUT = 30.0
DEFAULT_LONGPOLL = 30.0
DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_JSON_BYTES = 1 << 20
DEFAULT_TICKET_TTL = 300.0
DEFAULT_HEARTBEATS_PER_SECOND = 200.0  # 10,000 idle hosts: a heartbeat each every 50 s
# Connection handling (server/listener.py, server/connguard.py). The client keeps idle pooled
# connections 15 s (aiohttp's default), so the server's idle timeout must be longer: the client then
# always drops an idle connection first and never sends a request on one the server is closing.
DEFAULT_MAX_CONNECTIONS = 0  # 0: derived from the open-file limit (server/listener.py)
DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # accept -> TLS handshake done, first byte included
DEFAULT_HEADER_TIMEOUT = 15.0  # first byte of a request (a connection's first: its handshake) -> head
DEFAULT_KEEPALIVE_TIMEOUT = 75.0  # idle between requests (nginx's default)
DEFAULT_BODY_TIMEOUT = 30.0  # no byte of a request body for this long ends the request (408)
DEFAULT_MAX_LONGPOLLS = 10_000  # work requests waiting at once, per process (a parked one costs a future)
DEFAULT_TLS_READ_BUFFER = 256 * 1024  # bytes per TLS receive, one buffer shared by all connections
# (server/tlsbuffer.py); 0: asyncio's own buffer of that size per connection
# Several processes on one PostgreSQL (server/cli.py, server/scheduler/notify.py, leader.py).
DEFAULT_PROCESSES = 1  # server processes `xwserver run` starts on one port (SO_REUSEPORT); > 1: PostgreSQL
DEFAULT_NOTIFY_WINDOW = 0.005  # seconds between two NOTIFYs of one process: wake-ups within are summed
DEFAULT_NOTIFY_RECHECK = 15.0  # a parked work request looks again this often while NOTIFY is heard
DEFAULT_LEADER_RETRY = 3.0  # seconds between two tries for the reaper's lock by a process without it
LISTENERS = ("gated", "plain")  # plain: aiohttp's TCPSite as before (a benchmark baseline)
SETTINGS_FILE = "settings.toml"


@dataclass(frozen=True)
class ServerSettings:
    """Everything a server process needs to know, resolved once at start."""

    home: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    public_name: str = ""  # the name in xw:// URIs; defaults to host
    database_url: str = ""  # empty: SQLite file in home
    token_ttl: int = DEFAULT_TOKEN_TTL
    extra_ca_dir: str = ""  # more CAs whose client certificates are trusted
    max_json_bytes: int = MAX_JSON_BYTES
    alive_period: float = DEFAULT_ALIVE_PERIOD  # seconds between worker heartbeats
    alive_timeout: float = DEFAULT_ALIVE_TIMEOUT  # a host silent this long is lost; its jobs go back
    longpoll: float = DEFAULT_LONGPOLL  # longest wait of a work request
    relays: str = ""  # comma-separated host:port of the relay processes (xwrelay); "" = no tunnels
    relay_host_key: str = ""  # path of the relays' OpenSSH public host key file, read per ticket
    ticket_ttl: float = DEFAULT_TICKET_TTL  # seconds a relay ticket stays valid
    # heartbeats one process wants per second at most: the alive period grows with the fleet to keep it
    heartbeats_per_second: float = DEFAULT_HEARTBEATS_PER_SECOND
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # open connections at most; 0 = derive
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_longpolls: int = DEFAULT_MAX_LONGPOLLS
    tls_read_buffer: int = DEFAULT_TLS_READ_BUFFER
    listener: str = "gated"  # one of LISTENERS
    processes: int = DEFAULT_PROCESSES
    notify_window: float = DEFAULT_NOTIFY_WINDOW
    notify_recheck: float = DEFAULT_NOTIFY_RECHECK
    leader_retry: float = DEFAULT_LEADER_RETRY
    # seconds between freezes of surviving objects (server/gcpolicy.py; 0: never), and between full
    # garbage collections of everything
    gc_freeze_every: float = gcpolicy.FREEZE_EVERY
    gc_full_every: float = gcpolicy.FULL_EVERY
    oidc: tuple[ProviderConfig, ...] = ()  # trusted identity providers ([oidc.<name>] tables)
    # addresses and networks (CIDR) that may read /metrics without logging in (server/metrics/)
    metrics_allow: tuple[str, ...] = LOOPBACK
    env_keys: tuple[str, ...] = field(default=(), compare=False)

    @property
    def ca_cert(self) -> Path:
        return self.home / "ca" / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.home / "ca" / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.home / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.home / "server.key"

    @property
    def jwt_key(self) -> Path:
        return self.home / "jwt.key"

    @property
    def jwt_pub(self) -> Path:
        """The token key's public half (PEM): what relays verify tickets with."""
        return self.home / "jwt.pub"

    @property
    def relay_list(self) -> tuple[str, ...]:
        """The configured relays, in configuration order."""
        return tuple(r.strip() for r in self.relays.split(",") if r.strip())

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def admin_conf(self) -> Path:
        return self.home / "admin.conf"

    @property
    def url_file(self) -> Path:
        return self.home / "server.url"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.home / 'xwhep.db'}"

    @property
    def postgres(self) -> bool:
        """The database is PostgreSQL (several processes may share it; SQLite has one writer)."""
        return self.db_url.startswith("postgresql")

    @property
    def uri_host(self) -> str:
        return self.public_name or self.host


_ENV = {
    "XW_HOST": "host",
    "XW_PORT": "port",
    "XW_PUBLIC_NAME": "public_name",
    "XW_DATABASE_URL": "database_url",
    "XW_TOKEN_TTL": "token_ttl",
    "XW_EXTRA_CA_DIR": "extra_ca_dir",
    "XW_ALIVE_PERIOD": "alive_period",
    "XW_ALIVE_TIMEOUT": "alive_timeout",
    "XW_RELAYS": "relays",
    "XW_RELAY_HOST_KEY": "relay_host_key",
    "XW_TICKET_TTL": "ticket_ttl",
    "XW_HEARTBEATS_PER_SECOND": "heartbeats_per_second",
    "XW_MAX_CONNECTIONS": "max_connections",
    "XW_HANDSHAKE_TIMEOUT": "handshake_timeout",
    "XW_HEADER_TIMEOUT": "header_timeout",
    "XW_KEEPALIVE_TIMEOUT": "keepalive_timeout",
    "XW_BODY_TIMEOUT": "body_timeout",
    "XW_MAX_LONGPOLLS": "max_longpolls",
    "XW_TLS_READ_BUFFER": "tls_read_buffer",
    "XW_LISTENER": "listener",
    "XW_PROCESSES": "processes",
    "XW_NOTIFY_WINDOW": "notify_window",
    "XW_NOTIFY_RECHECK": "notify_recheck",
    "XW_LEADER_RETRY": "leader_retry",
    "XW_GC_FREEZE_EVERY": "gc_freeze_every",
    "XW_GC_FULL_EVERY": "gc_full_every",
    "XW_METRICS_ALLOW": "metrics_allow",
}

_INT_LIMITS = ("max_connections", "max_longpolls", "tls_read_buffer", "processes")
_TIMEOUTS = ("handshake_timeout", "header_timeout", "keepalive_timeout", "body_timeout")


def load_settings(home: Path, **overrides: Any) -> ServerSettings:
    """Build settings for the server home ``home``; ``overrides`` (e.g. from the CLI) win over everything."""
    home = home.resolve()
    path = home / SETTINGS_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{home} is not a server home (no {SETTINGS_FILE}); run `xwserver init --dir {home}`"
        )
    settings = ServerSettings(home=home)
    types = {f.name: f.type for f in fields(ServerSettings)}
    values: dict[str, Any] = {}
    for key, value in read_toml(path).items():
        if key in types and key not in ("home", "env_keys", "oidc"):
            values[key] = value
        elif key == "oidc":
            values["oidc"] = parse_providers(value)
    for env, key in _ENV.items():
        if env in os.environ:
            values[key] = os.environ[env]
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("port", "token_ttl", "max_json_bytes", *_INT_LIMITS):
        if key in values:
            values[key] = int(values[key])
    if isinstance(values.get("relays"), list | tuple):  # settings.toml may list them
        values["relays"] = ",".join(str(r) for r in values["relays"])
    for key in ("relays", "relay_host_key"):
        if key in values:
            values[key] = str(values[key])
    for key in (
        "alive_period",
        "alive_timeout",
        "longpoll",
        "ticket_ttl",
        "heartbeats_per_second",
        "notify_window",
        "notify_recheck",
        "leader_retry",
        "gc_freeze_every",
        "gc_full_every",
        *_TIMEOUTS,
    ):
        if key in values:
            values[key] = float(values[key])
    if values.get("processes", 1) < 1:
        raise ValueError(f"processes must be at least 1, not {values['processes']}")
    if "metrics_allow" in values:  # a TOML list, or comma-separated in XW_METRICS_ALLOW
        values["metrics_allow"] = split_allow(values["metrics_allow"])
        parse_allow(values["metrics_allow"])  # a bad entry stops the start, naming it
    if "listener" in values and values["listener"] not in LISTENERS:
        raise ValueError(f"listener must be one of {', '.join(LISTENERS)}, not {values['listener']!r}")
    return replace(settings, **values)
