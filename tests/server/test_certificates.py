"""Client certificates: recorded by serial, revocable, published in a CRL, never revived or inherited."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from client.api import XWClient
from common.enums import UserRights
from common.errors import Conflict, Forbidden, Unauthorized
from common.schemas import UserGroupIn, UserPatch
from server.home import issue_cert_files
from server.pki import key_pem, new_key


async def _xwcert(grid: Any, user: XWClient, prefix: Path) -> tuple[XWClient, str]:
    """What ``xwcert`` does: a key here, the server signs it; a client speaking with that certificate."""
    key = new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    signed = await user.sign_csr(csr.public_bytes(serialization.Encoding.PEM).decode())
    crt, pem = prefix.with_suffix(".crt"), prefix.with_suffix(".key")
    crt.write_text(signed.certificate)
    pem.write_text(key_pem(key))
    assert signed.serial
    return grid.client(grid.config(cert=crt, key=pem)), signed.serial


async def _uid(grid: Any, login: str) -> str:
    [user] = await grid.admin.users(login=login)
    return str(user.uid)


async def _crl(grid: Any) -> x509.CertificateRevocationList:
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        async with http.get(f"{grid.url}/api/v1/ca/crl") as resp:  # public: no credentials
            assert resp.status == 200
            assert resp.content_type == "application/pkix-crl"
            crl = x509.load_der_x509_crl(await resp.read())
    ca = x509.load_pem_x509_certificate(grid.settings.ca_cert.read_bytes())
    assert crl.issuer == ca.subject
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    return crl


async def test_revoked_certificate_is_refused_and_listed_in_the_crl(grid: Any, tmp_path: Path) -> None:
    alice = await grid.add_user("alice")
    by_cert, serial = await _xwcert(grid, alice, tmp_path / "alice")
    assert (await by_cert.ping()).auth == "certificate"
    assert [c.serial for c in await alice.certificates()] == [serial]
    assert (await _crl(grid)).get_revoked_certificate_by_serial_number(int(serial, 16)) is None
    revoked = await alice.revoke_certificate(serial, "laptop stolen")
    assert revoked.revoked is not None and revoked.revoke_reason == "laptop stolen"
    with pytest.raises(Unauthorized, match="revoked"):
        await by_cert.ping()
    assert (await _crl(grid)).get_revoked_certificate_by_serial_number(int(serial, 16)) is not None


async def test_clearing_the_subject_revokes_and_a_new_xwcert_does_not_revive(
    grid: Any, tmp_path: Path
) -> None:
    alice = await grid.add_user("alice")
    old, old_serial = await _xwcert(grid, alice, tmp_path / "old")
    await old.ping()
    await grid.admin.patch_user(await _uid(grid, "alice"), UserPatch(cert_subject=""))
    with pytest.raises(Unauthorized, match="revoked"):
        await old.ping()
    alice_again = grid.client(grid.config(login="alice", password="correct horse battery"))
    new, new_serial = await _xwcert(grid, alice_again, tmp_path / "new")
    assert new_serial != old_serial
    assert (await new.ping()).login == "alice"
    with pytest.raises(Unauthorized, match="revoked"):
        await old.ping()  # the same subject again, but the old serial stays dead


async def test_a_recreated_login_does_not_inherit_the_old_certificate(grid: Any, tmp_path: Path) -> None:
    await grid.add_user("alice")
    prefix = tmp_path / "alice"
    await asyncio.to_thread(issue_cert_files, grid.settings, "alice", prefix)  # xwserver issue-cert
    old = grid.client(grid.config(cert=prefix.with_suffix(".crt"), key=prefix.with_suffix(".key")))
    assert (await old.ping()).login == "alice"
    await grid.admin.remove(await _uid(grid, "alice"))
    await grid.add_user("alice")  # another person, same login
    with pytest.raises(Unauthorized, match=r"revoked|no longer exists"):
        await old.ping()


async def test_who_may_revoke(grid: Any, tmp_path: Path) -> None:
    await grid.admin.create_usergroup(UserGroupIn(label="g"))
    gadmin = await grid.add_user("gadmin", UserRights.ADVANCED_USER, group="g")
    root2 = await grid.add_user("root2", UserRights.SUPER_USER, group="g")
    std = await grid.add_user("std", group="g")
    bob = await grid.add_user("bob")
    _, root_serial = await _xwcert(grid, root2, tmp_path / "root2")
    std_cert, std_serial = await _xwcert(grid, std, tmp_path / "std")
    with pytest.raises(Forbidden):
        await gadmin.revoke_certificate(root_serial)
    with pytest.raises(Forbidden):
        await bob.revoke_certificate(std_serial)
    assert await bob.certificates() == []
    with pytest.raises(Forbidden):
        await bob.certificates(user="std")
    await gadmin.revoke_certificate(std_serial)  # its group's standard user: yes
    with pytest.raises(Unauthorized):
        await std_cert.ping()
    everyone = {c.serial for c in await grid.admin.certificates()}
    assert {root_serial, std_serial} <= everyone


async def test_revocation_ends_the_users_tokens_too(grid: Any, tmp_path: Path) -> None:
    alice = await grid.add_user("alice")
    token = (await alice.login("alice", "correct horse battery")).access_token
    _, serial = await _xwcert(grid, alice, tmp_path / "alice")
    await grid.admin.revoke_certificate(serial)
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        async with http.get(f"{grid.url}/api/v1/ping", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 401


async def test_duplicate_certificate_subject_is_409_not_500(grid: Any) -> None:
    await grid.add_user("alice")
    await grid.add_user("bob")
    await grid.admin.patch_user(await _uid(grid, "alice"), UserPatch(cert_subject="CN=shared,O=partner"))
    with pytest.raises(Conflict, match="already mapped"):
        await grid.admin.patch_user(await _uid(grid, "bob"), UserPatch(cert_subject="CN=shared,O=partner"))
