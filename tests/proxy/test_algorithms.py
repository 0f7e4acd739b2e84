"""Only modern SSH algorithms: peers offering nothing but SHA-1 key exchange or MACs are refused."""

from __future__ import annotations

import asyncssh
import pytest

from common.errors import TransportError
from proxy.algorithms import ENCRYPTION_ALGS, HOST_KEY_ALGS, KEX_ALGS, MAC_ALGS
from proxy.endpoints import RelayLink, Ticket
from proxy.relay import HostKeyError, Relay, load_or_create_host_key

pytestmark = pytest.mark.timeout(30)


def _connect(grid, **algs):
    return grid.ssh(grid.signer.token([]), **algs)


@pytest.mark.parametrize("kex", ["diffie-hellman-group1-sha1", "diffie-hellman-group14-sha1"])
async def test_a_client_offering_only_sha1_key_exchange_is_refused(grid, kex) -> None:
    with pytest.raises(asyncssh.KeyExchangeFailed, match="key exchange"):
        await _connect(grid, kex_algs=[kex])


async def test_a_client_offering_only_hmac_sha1_is_refused(grid) -> None:
    # A MAC is negotiated only with a cipher that needs one (AEAD ciphers carry their own integrity).
    with pytest.raises(asyncssh.KeyExchangeFailed, match="MAC"):
        await _connect(grid, encryption_algs=["aes128-ctr"], mac_algs=["hmac-sha1"])


@pytest.mark.parametrize("cipher", ["aes128-cbc", "3des-cbc"])
async def test_a_client_offering_only_weak_ciphers_is_refused(grid, cipher) -> None:
    with pytest.raises(asyncssh.KeyExchangeFailed, match="encryption"):
        await _connect(grid, encryption_algs=[cipher])


async def test_a_client_accepting_only_rsa_host_keys_is_refused(grid) -> None:
    with pytest.raises(asyncssh.KeyExchangeFailed, match="host key"):
        await _connect(grid, server_host_key_algs=["rsa-sha2-256"])


async def test_a_link_negotiates_the_preferred_algorithms(grid) -> None:
    link = await grid.link()
    conn = link._conn
    assert conn is not None
    assert conn.get_extra_info("send_cipher") == ENCRYPTION_ALGS[0]
    assert conn.get_extra_info("recv_cipher") == ENCRYPTION_ALGS[0]
    assert conn.get_server_host_key().get_algorithm() == HOST_KEY_ALGS[0]


async def test_a_default_client_with_a_cipher_that_needs_a_mac_gets_a_listed_one(grid) -> None:
    async with _connect(grid, encryption_algs=["aes128-ctr"]) as conn:  # asyncssh's own MAC preferences
        assert conn.get_extra_info("send_mac") in MAC_ALGS
        assert conn.get_extra_info("recv_mac") in MAC_ALGS


@pytest.mark.parametrize("kex", [[k] for k in KEX_ALGS], ids=KEX_ALGS)
@pytest.mark.filterwarnings("ignore:Diffie-Hellman over finite fields")  # cryptography deprecates FFDH
async def test_every_listed_key_exchange_works(grid, kex) -> None:
    async with _connect(grid, kex_algs=kex) as conn:
        assert (await conn.run(f"grant {grid.signer.token([])}")).exit_status == 0


async def test_a_link_refuses_a_relay_offering_only_sha1(grid) -> None:
    """The link side has the same lists: it does not fall back to an old server's algorithms."""
    old = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[grid.relay.host_key],
        kex_algs=["diffie-hellman-group14-sha1"],
        config=None,
    )
    try:

        async def tickets() -> Ticket:
            return Ticket(f"127.0.0.1:{old.get_port()}", None, grid.signer.token([]))

        link = RelayLink(tickets)
        with pytest.raises(TransportError, match="key exchange"):
            await link.start()
        await link.aclose()
    finally:
        old.close()
        await old.wait_closed()


def test_the_relay_takes_only_an_ed25519_host_key(signer, tmp_path) -> None:
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    with pytest.raises(HostKeyError, match="ssh-ed25519"):
        Relay(signer.public_pem, rsa)
    path = tmp_path / "host_key"
    path.write_bytes(rsa.export_private_key())
    with pytest.raises(HostKeyError, match="ssh-ed25519"):
        load_or_create_host_key(path)
