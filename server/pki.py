"""The grid's own certificate authority: create it, issue server and user certificates, sign CSRs."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.config import write_private

CA_DAYS = 3650
CERT_DAYS = 825
ORG = "xwhep"


@dataclass(frozen=True)
class CA:
    """A CA certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CA:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: expected an EC private key")
        return cls(cert, key)

    def save(self, cert_path: Path, key_path: Path) -> None:
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        write_private(key_path, key_pem(self.key))
        cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key (fast to make and to verify)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(common_name: str, days: int = CA_DAYS) -> CA:
    """A self-signed CA able to sign leaf certificates only."""
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CA(cert, key)


def _leaf(
    ca: CA,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey | object,
    *,
    server: bool,
    sans: list[x509.GeneralName] | None = None,
    days: int = CERT_DAYS,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    now = _now()
    start = not_before or now - dt.timedelta(minutes=5)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def issue_server_cert(ca: CA, hosts: list[str]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A TLS server certificate for ``hosts`` (names and IP addresses)."""
    key = new_key()
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
        ]
    )
    return _leaf(ca, subject, key.public_key(), server=True, sans=sans), key


def user_subject(login: str) -> x509.Name:
    """The subject the grid CA gives to ``login``'s certificates."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "users"),
            x509.NameAttribute(NameOID.COMMON_NAME, login),
        ]
    )


def issue_user_cert(
    ca: CA, login: str, *, days: int = CERT_DAYS, not_before: dt.datetime | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A client certificate and key for ``login``."""
    key = new_key()
    return _leaf(
        ca, user_subject(login), key.public_key(), server=False, days=days, not_before=not_before
    ), key


def sign_csr(ca: CA, csr_pem: str, login: str, days: int = CERT_DAYS) -> x509.Certificate:
    """Sign a CSR's public key for ``login``; the CSR's own subject is ignored (the server decides it)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise ValueError("not a PEM certificate signing request") from exc
    if not csr.is_signature_valid:
        raise ValueError("the CSR's signature does not verify")
    return _leaf(ca, user_subject(login), csr.public_key(), server=False, days=days)


def subject_string(cert: x509.Certificate) -> str:
    """The subject as an RFC 4514 string: the key that maps a certificate to a user."""
    return cert.subject.rfc4514_string()


def serial_hex(cert: x509.Certificate) -> str:
    """A certificate's serial as the lowercase hex string the server records it under."""
    return format(cert.serial_number, "x")


def issued_by(cert: x509.Certificate, ca: CA) -> bool:
    """Whether ``ca`` signed ``cert`` (not merely a CA with the same name)."""
    if cert.issuer != ca.cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


CRL_DAYS = 7


def build_crl(
    ca: CA, revoked: list[tuple[str, dt.datetime]], *, days: int = CRL_DAYS
) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca`` listing ``(serial hex, revocation time)`` pairs."""
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(int(serial, 16)).revocation_date(when).build()
        )
    return builder.sign(ca.key, hashes.SHA256())
