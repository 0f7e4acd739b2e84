"""Authentication through a real TLS server: client certificates, CSRs, bearer tokens, refused credentials."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from common.errors import PROBLEM_BASE, TransportError, Unauthorized
from server.home import issue_cert_files
from server.pki import CA, cert_pem, create_ca, issue_user_cert, key_pem, new_key
from server.tokens import TokenSigner, create_key

API = "/api/v1"
CERT_REASON = re.compile(r"certificate|\bCA\b", re.IGNORECASE)


def _write_pair(prefix: Path, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    crt, pem = prefix.with_suffix(".crt"), prefix.with_suffix(".key")
    crt.write_text(cert_pem(cert))
    pem.write_text(key_pem(key))
    return crt, pem


@pytest.fixture
async def http(grid: Any) -> AsyncIterator[aiohttp.ClientSession]:
    """A raw HTTPS session trusting the grid CA, presenting no credentials of its own."""
    ctx = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    async with aiohttp.ClientSession(base_url=grid.url, connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        yield session


async def _problem(resp: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    body = await resp.text()
    assert resp.status == status, body
    assert resp.content_type == "application/problem+json", body
    doc: dict[str, Any] = await resp.json(content_type=None)
    assert doc["type"] == PROBLEM_BASE + code
    assert doc["status"] == status
    assert doc["detail"]
    return doc


async def _ping_with(http: aiohttp.ClientSession, authorization: str) -> dict[str, Any]:
    async with http.get(f"{API}/ping", headers={"Authorization": authorization}) as resp:
        return await _problem(resp, 401, "unauthorized")


async def _uid_of(grid: Any, login: str) -> str:
    [user] = await grid.admin.users(login=login)
    return str(user.uid)


# --- client certificates -------------------------------------------------------------------------


async def test_certificate_alone_authenticates(grid: Any, tmp_path: Path) -> None:
    await grid.add_user("alice")
    prefix = tmp_path / "alice"
    subject = await asyncio.to_thread(issue_cert_files, grid.settings, "alice", prefix)
    xw = grid.client(grid.config(cert=tmp_path / "alice.crt", key=tmp_path / "alice.key"))
    assert xw.cfg.login is None and xw.cfg.password is None
    pong = await xw.ping()
    assert (pong.auth, pong.login) == ("certificate", "alice")
    [me] = await grid.admin.users(login="alice")
    assert me.cert_subject == subject


async def test_csr_signed_certificate_authenticates_as_its_user(grid: Any, tmp_path: Path) -> None:
    alice = await grid.add_user("alice")
    key = new_key()
    # The subject asked for is ignored: the server names the certificate after the logged-in user.
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .sign(key, hashes.SHA256())
    )
    signed = await alice.sign_csr(csr.public_bytes(serialization.Encoding.PEM).decode())
    cert = x509.load_pem_x509_certificate(signed.certificate.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    crt, pem = _write_pair(tmp_path / "csr", cert, key)
    pong = await grid.client(grid.config(cert=crt, key=pem)).ping()
    assert (pong.auth, pong.login) == ("certificate", "alice")


async def _refused(grid: Any, crt: Path, pem: Path) -> None:
    """The server must not serve a single request on this certificate."""
    xw = grid.client(grid.config(cert=crt, key=pem))
    for _ in range(2):  # a second try on a fresh connection must fail too
        with pytest.raises((TransportError, Unauthorized)) as info:
            await xw.ping()
        if isinstance(info.value, TransportError):
            assert CERT_REASON.search(info.value.reason), info.value.reason


async def test_certificate_from_another_ca_is_refused(grid: Any, tmp_path: Path) -> None:
    await grid.add_user("alice")
    await asyncio.to_thread(issue_cert_files, grid.settings, "alice", tmp_path / "real")  # alice is mapped
    rogue = create_ca("rogue CA")
    crt, pem = _write_pair(tmp_path / "rogue", *issue_user_cert(rogue, "alice"))
    await _refused(grid, crt, pem)


async def test_expired_certificate_is_refused(grid: Any, tmp_path: Path) -> None:
    await grid.add_user("alice")
    await asyncio.to_thread(issue_cert_files, grid.settings, "alice", tmp_path / "real")
    ca = CA.load(grid.settings.ca_cert, grid.settings.ca_key)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    crt, pem = _write_pair(tmp_path / "old", *issue_user_cert(ca, "alice", not_before=start, days=1))
    await _refused(grid, crt, pem)


async def test_certificate_of_our_ca_not_in_the_registry_is_401_naming_it(grid: Any, tmp_path: Path) -> None:
    """Signed by the grid CA but never recorded (not issued through the server): refused, by serial."""
    ca = CA.load(grid.settings.ca_cert, grid.settings.ca_key)
    crt, pem = _write_pair(tmp_path / "ghost", *issue_user_cert(ca, "ghost"))
    xw = grid.client(grid.config(cert=crt, key=pem))
    with pytest.raises(Unauthorized) as info:
        await xw.ping()
    assert "CN=ghost" in info.value.reason
    assert "not in this server's registry" in info.value.reason


# --- bearer tokens -------------------------------------------------------------------------------


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


async def test_valid_token_is_accepted(grid: Any, http: aiohttp.ClientSession) -> None:
    """The control for the refusals below: the same request with an untouched token succeeds."""
    token = (await grid.admin.login("admin", grid.admin_cfg.password)).access_token
    async with http.get(f"{API}/ping", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["auth"] == "token"


@pytest.mark.parametrize("part", [1, 2], ids=["payload", "signature"])
async def test_tampered_token_is_401(grid: Any, http: aiohttp.ClientSession, part: int) -> None:
    token = (await grid.admin.login("admin", grid.admin_cfg.password)).access_token
    pieces = token.split(".")
    pieces[part] = _flip(pieces[part], len(pieces[part]) // 2)
    doc = await _ping_with(http, "Bearer " + ".".join(pieces))
    assert "invalid token" in doc["detail"]


async def test_unsigned_token_is_401(grid: Any, http: aiohttp.ClientSession) -> None:
    token = (await grid.admin.login("admin", grid.admin_cfg.password)).access_token
    _, payload, _ = token.split(".")
    header = "eyJhbGciOiJub25lIn0"  # {"alg":"none"}
    doc = await _ping_with(http, f"Bearer {header}.{payload}.")
    assert "invalid token" in doc["detail"]


async def test_expired_token_is_401(grid: Any, http: aiohttp.ClientSession) -> None:
    await grid.add_user("alice")
    signer = TokenSigner.from_file(grid.settings.jwt_key, ttl=3600)
    token = signer.issue(await _uid_of(grid, "alice"), ttl=-10)
    doc = await _ping_with(http, f"Bearer {token}")
    assert "expired" in doc["detail"]


async def test_token_signed_by_another_key_is_401(
    grid: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await grid.add_user("alice")
    create_key(tmp_path / "other.key")
    token = TokenSigner.from_file(tmp_path / "other.key", ttl=3600).issue(await _uid_of(grid, "alice"))
    doc = await _ping_with(http, f"Bearer {token}")
    assert "invalid token" in doc["detail"]


async def test_token_for_another_audience_is_401(grid: Any, http: aiohttp.ClientSession) -> None:
    signer = TokenSigner.from_file(grid.settings.jwt_key, ttl=3600)
    token = signer.issue(await _uid_of(grid, "admin"), audience="ticket")
    doc = await _ping_with(http, f"Bearer {token}")
    assert "audience" in doc["detail"]


@pytest.mark.parametrize(
    "header", ["Bearer xyz", "Bearer a.b.c", "Bearer ", "Basic YWRtaW46YWRtaW4=", "Token abc", "bearer"]
)
async def test_garbage_or_foreign_authorization_is_401(http: aiohttp.ClientSession, header: str) -> None:
    await _ping_with(http, header)


async def test_no_credentials_is_401(http: aiohttp.ClientSession) -> None:
    async with http.get(f"{API}/ping") as resp:
        doc = await _problem(resp, 401, "unauthorized")
    assert "no credentials" in doc["detail"]


@pytest.mark.parametrize("login", ["alice", "nobody"], ids=["wrong-password", "unknown-login"])
async def test_wrong_login_or_password_is_401(grid: Any, http: aiohttp.ClientSession, login: str) -> None:
    await grid.add_user("alice")
    async with http.post(f"{API}/auth/token", json={"login": login, "password": "definitely wrong"}) as resp:
        doc = await _problem(resp, 401, "unauthorized")
    assert doc["detail"] == "wrong login or password"
    with pytest.raises(Unauthorized, match="wrong login or password"):
        await grid.client(grid.config(login=login, password="not the password")).ping()


# --- TLS -----------------------------------------------------------------------------------------


async def _handshake(host: str, port: int, ctx: ssl.SSLContext) -> str | None:
    """The negotiated TLS version, or raise if the handshake fails."""
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), timeout=10)
    try:
        version: str | None = writer.get_extra_info("ssl_object").version()
        return version
    finally:
        writer.close()


def _tls11_context(cafile: Path, purpose: ssl.Purpose) -> ssl.SSLContext:
    ctx = ssl.create_default_context(
        purpose, cafile=str(cafile) if purpose is ssl.Purpose.SERVER_AUTH else None
    )
    with warnings.catch_warnings():  # TLSVersion.TLSv1_1 itself is deprecated: that's the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    # OpenSSL 3 disables TLS 1.1 at its default security level; level 0 lets us speak it.
    try:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    return ctx


async def _local_openssl_speaks_tls11(grid: Any) -> bool:
    """Whether a permissive local server and our TLS 1.1 client agree on TLS 1.1 (the control)."""
    server_ctx = _tls11_context(grid.settings.ca_cert, ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(grid.settings.server_cert, grid.settings.server_key)
    permissive = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ctx)
    try:
        port = permissive.sockets[0].getsockname()[1]
        client = _tls11_context(grid.settings.ca_cert, ssl.Purpose.SERVER_AUTH)
        return await _handshake("127.0.0.1", port, client) == "TLSv1.1"
    except (ssl.SSLError, ConnectionError):
        return False
    finally:
        permissive.close()
        await permissive.wait_closed()


async def test_server_refuses_tls_1_1(grid: Any) -> None:
    modern = ssl.create_default_context(cafile=str(grid.settings.ca_cert))
    assert await _handshake(grid.server.host, grid.server.port, modern) in ("TLSv1.2", "TLSv1.3")
    # If the local OpenSSL cannot speak TLS 1.1 at all (the control fails), the client cannot even offer
    # it: the handshake below still fails, which is still a refusal, but it proves less.
    speaks_tls11 = await _local_openssl_speaks_tls11(grid)
    old = _tls11_context(grid.settings.ca_cert, ssl.Purpose.SERVER_AUTH)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _handshake(grid.server.host, grid.server.port, old)
    if not speaks_tls11:
        print("note: the local OpenSSL cannot speak TLS 1.1; the refusal may be the client's own")
