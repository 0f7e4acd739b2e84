"""Trusted identity providers, as an administrator lists them in the server's settings.toml.

::

    [oidc.keycloak]
    issuer = "https://sso.example.org/realms/science"
    client_id = "xwhep-cli"            # a public client: xwlogin uses PKCE or the device grant
    # the dashboard's sign-in (optional): its own confidential client, else client_id as a public one
    web_client_id = "xwhep-web"
    client_secret = "..."              # web_client_id's secret
    scopes = ["openid", "profile", "email", "offline_access"]
    login_claim = "preferred_username" # the claim that names a new user's login
    groups_claim = "groups"
    create_users = true                # unknown people become standard users (false: refused)
    default_group = "physics"          # the usergroup of created users whose groups map to none
    [oidc.keycloak.groups]             # provider group -> xwhep usergroup, the first match wins
    "/physics/higgs" = "higgs"
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_SCOPES = ("openid", "profile", "email", "offline_access")
DEFAULT_LEEWAY = 60.0  # seconds of clock skew allowed on exp, nbf and iat
_KEYS = {
    "issuer",
    "client_id",
    "client_secret",
    "web_client_id",
    "scopes",
    "login_claim",
    "groups_claim",
    "groups",
    "create_users",
    "default_group",
    "leeway",
}


@dataclass(frozen=True)
class ProviderConfig:
    """One trusted OpenID provider."""

    name: str
    issuer: str
    client_id: str
    client_secret: str = ""  # web_client_id's, when the dashboard's client is confidential
    web_client_id: str = ""  # the dashboard's client (default: client_id, public, with PKCE)
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    login_claim: str = "preferred_username"
    groups_claim: str = "groups"
    groups: tuple[tuple[str, str], ...] = ()  # (provider group, usergroup label), in order
    create_users: bool = False
    default_group: str = ""
    leeway: float = DEFAULT_LEEWAY

    @property
    def web_client(self) -> str:
        """The client the dashboard signs in as (xwlogin is always ``client_id``, a public client)."""
        return self.web_client_id or self.client_id

    def usergroup_for(self, groups: object) -> str:
        """The usergroup label a new user gets from the provider's groups claim (or the default)."""
        theirs = {str(g) for g in groups} if isinstance(groups, list | tuple) else set()
        for group, label in self.groups:
            if group in theirs:
                return label
        return self.default_group


def is_loopback_http(url: str) -> bool:
    """Plain http is accepted only for a provider on this machine (tests, a local Keycloak)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> str:
    """An https URL, or http on loopback; anything else raises ValueError naming ``what``."""
    parts = urlsplit(url)
    if not parts.hostname or (parts.scheme != "https" and not is_loopback_http(url)):
        raise ValueError(f"{what} {url!r} must be an https URL (plain http only on 127.0.0.1/localhost)")
    return url


def parse_providers(raw: object) -> tuple[ProviderConfig, ...]:
    """The ``[oidc.<name>]`` tables of settings.toml; a mistake raises ValueError with its place."""
    if raw in (None, {}):
        return ()
    if not isinstance(raw, dict):
        raise ValueError("oidc must be a table of providers: [oidc.<name>]")
    found: list[ProviderConfig] = []
    issuers: set[str] = set()
    for name, table in raw.items():
        where = f"[oidc.{name}]"
        if not isinstance(table, dict):
            raise ValueError(f"{where} must be a table")
        unknown = set(table) - _KEYS
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        for key in ("issuer", "client_id"):
            if not isinstance(table.get(key), str) or not table[key]:
                raise ValueError(f"{where}: {key} is required")
        issuer = check_url(str(table["issuer"]).rstrip("/"), f"{where} issuer")
        if issuer in issuers:
            raise ValueError(f"{where}: issuer {issuer} is listed twice")
        issuers.add(issuer)
        scopes = table.get("scopes", list(DEFAULT_SCOPES))
        if not isinstance(scopes, list) or "openid" not in scopes:
            raise ValueError(f"{where}: scopes must be a list that includes 'openid'")
        groups = table.get("groups", {})
        if not isinstance(groups, dict):
            raise ValueError(f"{where}.groups must be a table: provider group = usergroup")
        found.append(
            ProviderConfig(
                name=str(name),
                issuer=issuer,
                client_id=str(table["client_id"]),
                client_secret=str(table.get("client_secret", "")),
                web_client_id=str(table.get("web_client_id", "")),
                scopes=tuple(str(s) for s in scopes),
                login_claim=str(table.get("login_claim", "preferred_username")),
                groups_claim=str(table.get("groups_claim", "groups")),
                groups=tuple((str(k), str(v)) for k, v in groups.items()),
                create_users=_bool(table.get("create_users", False), f"{where} create_users"),
                default_group=str(table.get("default_group", "")),
                leeway=float(table.get("leeway", DEFAULT_LEEWAY)),
            )
        )
    return tuple(found)


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false")
    return value
