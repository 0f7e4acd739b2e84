"""The registry of client certificates the grid CA issued: record, revoke, look up, publish as a CRL.

Every certificate our CA signs for a user is recorded by serial together with that user's uid. An mTLS
request with one of our certificates is accepted only if its serial is recorded for an existing user and
not revoked, so revocation takes effect on the next request, a login deleted and created again (a new
uid) never inherits an old certificate, and issuing a new certificate never revives a revoked one.
Certificates of extra trusted CAs are not ours to record: they map to users by subject, as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from common.enums import UserRights
from common.errors import Forbidden, NotFound
from server.authz import Actor, may_manage_user
from server.db.models import Certificate, User, utcnow
from server.pki import CA, build_crl, issued_by, serial_hex, subject_string

MAX_REASON = 512
CRL_CACHE_SECONDS = 30.0  # other server processes' revocations show in our CRL within this time


def bump_tokens(user: User) -> None:
    """End every token ``user`` holds: they carry the old version and stop verifying."""
    user.token_version = (user.token_version or 0) + 1


def record_issued(session: AsyncSession, user: User, cert: x509.Certificate) -> Certificate:
    """Record a certificate just issued for ``user`` (in the caller's transaction)."""
    row = Certificate(
        serial=serial_hex(cert),
        user_uid=user.uid,
        subject=subject_string(cert),
        issued=utcnow(),
        not_after=cert.not_valid_after_utc,
    )
    session.add(row)
    return row


async def revoke_all(session: AsyncSession, user_uid: str, reason: str) -> int:
    """Revoke every live certificate of ``user_uid``; how many were revoked."""
    result = await session.execute(
        update(Certificate)
        .where(Certificate.user_uid == user_uid, Certificate.revoked.is_(None))
        .values(revoked=utcnow(), revoke_reason=reason[:MAX_REASON])
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def revoke_one(session: AsyncSession, serial: str, reason: str) -> Certificate:
    """Revoke one certificate by serial (already revoked: unchanged)."""
    row = await session.get(Certificate, normalise_serial(serial))
    if row is None:
        raise NotFound(f"no certificate with serial {serial}")
    if row.revoked is None:
        row.revoked, row.revoke_reason = utcnow(), reason[:MAX_REASON]
    return row


def normalise_serial(text: str) -> str:
    """A serial as typed by a person (``0A:1B..`` or hex) in the recorded form."""
    cleaned = text.strip().lower().replace(":", "").lstrip("0") or "0"
    if len(cleaned) > 40 or any(c not in "0123456789abcdef" for c in cleaned):
        raise NotFound(f"{text!r} is not a certificate serial (hex)")
    return cleaned


@dataclass(frozen=True)
class Presented:
    """What an mTLS request's certificate resolves to."""

    user: User
    serial: str | None  # None for a certificate of an extra trusted CA


async def user_for_certificate(session: AsyncSession, ca: CA, cert: x509.Certificate) -> Presented | str:
    """The user a verified client certificate authenticates, or the reason it does not."""
    if _ours(ca, cert):
        serial = serial_hex(cert)
        row = (
            await session.execute(
                select(Certificate, User)
                .join(User, User.uid == Certificate.user_uid, isouter=True)
                .where(Certificate.serial == serial)
            )
        ).first()
        if row is None:
            return (
                f"certificate {serial} ({subject_string(cert)}) is not in this server's registry "
                "(get a new one with xwcert)"
            )
        record, user = row
        if record.revoked is not None:
            return f"certificate {serial} was revoked ({record.revoke_reason or 'no reason given'})"
        if user is None:
            return f"certificate {serial} belongs to a user that no longer exists"
        return Presented(user, serial)
    subject = subject_string(cert)
    mapped = (await session.execute(select(User).where(User.cert_subject == subject))).scalar_one_or_none()
    if mapped is None:
        return f"certificate subject {subject!r} is not mapped to any user"
    return Presented(mapped, None)


_issuer_cache: dict[bytes, bool] = {}


def _ours(ca: CA, cert: x509.Certificate) -> bool:
    """Whether our CA signed ``cert``; remembered per certificate (a signature check per request is waste)."""
    fingerprint = cert.fingerprint(hashes.SHA256()) + ca.cert.fingerprint(hashes.SHA256())
    known = _issuer_cache.get(fingerprint)
    if known is None:
        known = issued_by(cert, ca)
        if len(_issuer_cache) > 10_000:
            _issuer_cache.clear()
        _issuer_cache[fingerprint] = known
    return known


def may_revoke(actor: Actor, owner: User) -> bool:
    """The certificate's own user, a super user, or its group administrator over lower levels."""
    if owner.uid == actor.uid:
        return True
    return may_manage_user(actor, owner.uid, UserRights(owner.rights), owner.usergroup_uid)


def require_may_revoke(actor: Actor, owner: User | None, serial: str) -> None:
    """Raise Forbidden unless ``actor`` may revoke a certificate of ``owner`` (None: its user is gone)."""
    if owner is None and actor.is_admin:
        return
    if owner is None or not may_revoke(actor, owner):
        raise Forbidden(f"{actor.login} may not revoke certificate {serial}")


class CrlCache:
    """The CA's CRL in DER, rebuilt after a local revocation or every few seconds (other processes)."""

    def __init__(self) -> None:
        self._der: bytes | None = None
        self._built = 0.0

    def invalidate(self) -> None:
        self._der = None

    async def der(self, session: AsyncSession, ca: CA) -> bytes:
        if self._der is not None and time.monotonic() - self._built < CRL_CACHE_SECONDS:
            return self._der
        now = utcnow()
        rows = (
            await session.execute(
                select(Certificate.serial, Certificate.revoked).where(
                    Certificate.revoked.is_not(None), Certificate.not_after > now
                )
            )
        ).all()
        crl = build_crl(ca, [(serial, when) for serial, when in rows if when is not None])
        self._der = crl.public_bytes(serialization.Encoding.DER)
        self._built = time.monotonic()
        return self._der
