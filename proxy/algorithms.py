"""The SSH algorithms the relay and its links negotiate: modern ones only, one list for both sides.

Nothing SHA-1 based (no diffie-hellman-group1/14-sha1, no hmac-sha1), no CBC or RC4 ciphers, no
truncated or MD5 MACs: a peer that offers nothing else fails the key exchange instead of falling back.
Each list keeps only what this asyncssh build supports (UMAC needs libnettle; the finite-field groups
are deprecated by ``cryptography``): asyncssh refuses to start with an algorithm it does not know.
"""

from __future__ import annotations

from asyncssh.encryption import get_encryption_algs
from asyncssh.kex import get_kex_algs
from asyncssh.mac import get_mac_algs


def _supported(wanted: list[str], known: list[bytes]) -> list[str]:
    return [alg for alg in wanted if alg.encode() in known]


# Key exchange: elliptic curves first (fast, small), then large finite-field groups with SHA-2.
KEX_ALGS = _supported(
    [
        "curve25519-sha256",
        "curve25519-sha256@libssh.org",
        "ecdh-sha2-nistp256",
        "ecdh-sha2-nistp384",
        "ecdh-sha2-nistp521",
        "diffie-hellman-group16-sha512",
        "diffie-hellman-group18-sha512",
        "diffie-hellman-group14-sha256",
    ],
    get_kex_algs(),
)

# Prefer AES-GCM (hardware accelerated almost everywhere), keep a portable fallback; AEAD ciphers carry
# their own integrity, the MACs below only matter for aes128-ctr.
ENCRYPTION_ALGS = _supported(
    [
        "aes128-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-ctr",
    ],
    get_encryption_algs(),
)

# Encrypt-then-MAC first; SHA-2 and UMAC-128 only.
MAC_ALGS = _supported(
    [
        "hmac-sha2-256-etm@openssh.com",
        "hmac-sha2-512-etm@openssh.com",
        "umac-128-etm@openssh.com",
        "hmac-sha2-256",
        "hmac-sha2-512",
    ],
    get_mac_algs(),
)

# The relay's host key is ed25519 (load_or_create_host_key makes and accepts nothing else).
HOST_KEY_ALG = "ssh-ed25519"
HOST_KEY_ALGS = [HOST_KEY_ALG]
