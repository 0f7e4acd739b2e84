"""Address allow-lists (metrics_allow, xwrelay --metrics-allow): parsing and membership."""

from __future__ import annotations

import pytest

from common.netallow import LOOPBACK, allowed, parse_allow, split_allow


def test_loopback_is_the_default_and_nothing_else() -> None:
    nets = parse_allow(LOOPBACK)
    assert allowed("127.0.0.1", nets) and allowed("127.1.2.3", nets) and allowed("::1", nets)
    assert allowed("::ffff:127.0.0.1", nets)  # a dual-stack socket's view of an IPv4 peer
    assert not allowed("10.0.0.1", nets) and not allowed("::2", nets) and not allowed("fe80::1%eth0", nets)
    assert not allowed(None, nets) and not allowed("", nets) and not allowed("not-an-address", nets)


def test_networks_and_single_addresses() -> None:
    nets = parse_allow(split_allow(" 10.0.0.0/8, 192.168.1.7 ,fd00::/8"))
    assert allowed("10.200.0.1", nets) and allowed("192.168.1.7", nets) and allowed("fd12::1", nets)
    assert not allowed("192.168.1.8", nets) and not allowed("127.0.0.1", nets)
    assert split_allow(["10.0.0.0/8", " ::1 "]) == ("10.0.0.0/8", "::1")


@pytest.mark.parametrize("entry", ["10.1.2.3/8", "localhost", "300.0.0.1", "10.0.0.0/33"])
def test_a_bad_entry_is_named(entry: str) -> None:
    with pytest.raises(ValueError, match=entry.replace(".", r"\.")):
        parse_allow(["127.0.0.1", entry])
