"""Ticket verification and relay names, without sockets."""

from __future__ import annotations

import base64
import json
import time

import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from proxy.tickets import TicketError, is_name, lifetime, port_of, unverified_claims, verify

UID = "0b5c1d2e-3f40-4a5b-8c6d-7e8f90a1b2c3"


def test_a_valid_ticket_gives_its_scopes_and_subject(signer) -> None:
    claims = verify(signer.token([f"publish:job-{UID}-8080"], sub="w1"), signer.public_pem)
    assert claims.scopes == {"link", f"publish:job-{UID}-8080"}
    assert claims.subject == "w1"
    assert claims.expires > time.time()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: type(s)().token([]), "signature"),
        (lambda s: s.token([], ttl=-60), "expired"),
        (lambda s: s.token([], aud="api"), "aud"),
        (lambda s: s.token([], iss="someone"), "iss"),
        (lambda s: s.token([], nbf=int(time.time()) + 600), "not yet valid"),
        (lambda s: s.token([], scope="link"), "scope must be a list"),
        (lambda s: s.token([], scope=["link", 3]), "scope must be a list"),
        (lambda s: "not a jwt", "encoding"),
    ],
    ids=["other-key", "expired", "audience", "issuer", "not-before", "scope-string", "scope-int", "garbage"],
)
def test_bad_tickets_are_refused_with_a_reason(signer, make, reason) -> None:
    with pytest.raises(TicketError) as info:
        verify(make(signer), signer.public_pem)
    assert reason in info.value.reason
    assert "\n" not in info.value.reason


def test_a_tampered_ticket_is_refused(signer) -> None:
    header, payload, signature = signer.token(["connect:x"]).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = ["link", f"publish:job-{UID}-8080"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(TicketError, match="signature"):
        verify(f"{header}.{forged}.{signature}", signer.public_pem)


def test_a_missing_expiry_is_refused(signer) -> None:
    token = jwt.encode({"alg": "ES256"}, {"iss": "xwhep", "aud": "relay", "scope": ["link"]}, signer.key)
    with pytest.raises(TicketError, match="exp"):
        verify(token, signer.public_pem)


@pytest.mark.parametrize(
    "jti", [None, "", 7, "x" * 129], ids=["missing", "empty", "not-a-string", "too-long"]
)
def test_a_ticket_needs_a_usable_jti(signer, jti) -> None:
    with pytest.raises(TicketError, match="jti"):
        verify(signer.token([], jti=jti), signer.public_pem)


def test_expiry_is_exact_to_the_fraction_of_a_second(signer) -> None:
    now = time.time()
    token = signer.token([], exp=now + 10.5, iat=now)
    assert verify(token, signer.public_pem, now=now + 10.4, leeway=0).expires == now + 10.5
    with pytest.raises(TicketError, match="expired"):
        verify(token, signer.public_pem, now=now + 10.5, leeway=0)
    verify(token, signer.public_pem, now=now + 12, leeway=2)  # the leeway is added to exp
    with pytest.raises(TicketError, match="expired"):
        verify(token, signer.public_pem, now=now + 12.5, leeway=2)


def test_lifetime_reads_the_payload_without_verifying(signer) -> None:
    assert lifetime(signer.token([], ttl=300)) == 300  # exp - iat: the local clock does not matter
    assert lifetime(type(signer)().token([], ttl=60)) == 60  # any key: only for timing renewals
    no_iat = signer.token([], iat=None, exp=int(time.time()) + 100)
    assert 98 <= (lifetime(no_iat) or 0) <= 100  # exp - now
    assert lifetime(signer.token([], exp=None)) is None
    assert lifetime(signer.token([], exp="soon")) is None
    assert lifetime(signer.token([], exp=10**400)) is None
    assert lifetime(signer.token([], exp=float("nan"))) is None
    assert lifetime("not.a-jwt.token") is None
    assert lifetime("garbage") is None
    assert unverified_claims(signer.token(["connect:x"], sub="w"))["sub"] == "w"
    assert unverified_claims("a.W10.b") == {}  # a JSON list, not an object


def test_a_symmetric_ticket_is_refused(signer) -> None:
    key = OctKey.generate_key(256)
    token = jwt.encode(
        {"alg": "HS256"},
        {"iss": "xwhep", "aud": "relay", "exp": int(time.time()) + 60, "scope": ["link"]},
        key,
    )
    with pytest.raises(TicketError):
        verify(token, signer.public_pem)


def test_now_is_injectable(signer) -> None:
    token = signer.token([], ttl=60)
    verify(token, signer.public_pem, now=time.time() + 30)
    with pytest.raises(TicketError, match="expired"):
        verify(token, signer.public_pem, now=time.time() + 3600)


def test_a_bad_verify_key_is_a_ticket_error(signer) -> None:
    with pytest.raises(TicketError, match="verify key"):
        verify(signer.token([]), b"not a pem")


@pytest.mark.parametrize(
    ("name", "port"),
    [(f"job-{UID}-8080", 8080), (f"proxy-{UID}-1", 1), ("proxy-abc-65535", 65535), ("job-a-b-c-22", 22)],
)
def test_port_of_valid_names(name: str, port: int) -> None:
    assert port_of(name) == port
    assert is_name(name)


@pytest.mark.parametrize(
    "name",
    [
        f"Job-{UID}-8080",
        f"job-{UID}-0",
        f"job-{UID}-65536",
        f"job-{UID}-08080",
        f"job-{UID}",
        f"host-{UID}-80",
        "job--80",
        "job-a_b-80",
        "job-" + "a" * 200 + "-80",
        "",
    ],
)
def test_port_of_refuses_what_is_not_a_name(name: str) -> None:
    with pytest.raises(ValueError, match="not a relay name"):
        port_of(name)
    assert not is_name(name)
