"""Address allow-lists: which peers may read an endpoint without logging in (``/metrics``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK = ("127.0.0.0/8", "::1")  # the default: only this machine


def split_allow(value: str | Iterable[str]) -> tuple[str, ...]:
    """An allow-list as given in a file (a list) or an environment variable (comma-separated)."""
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return tuple(item.strip() for item in items if item.strip())


def parse_allow(entries: Iterable[str]) -> tuple[Network, ...]:
    """Networks from addresses and CIDRs (``127.0.0.1``, ``10.0.0.0/8``, ``::1``); ValueError naming a bad
    entry. An address with host bits under its prefix (``10.1.2.3/8``) is refused rather than widened."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not an address or network (CIDR): {exc}") from None
    return tuple(networks)


def allowed(peer: str | None, networks: Iterable[Network]) -> bool:
    """Whether the peer address ``peer`` is in one of ``networks`` (an unknown peer never is)."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket is 127.0.0.1
    return any(address in network for network in networks)
