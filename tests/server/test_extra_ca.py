"""Client certificates from an extra trusted CA directory authenticate once their subject is mapped."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from client.api import XWClient
from common.errors import TransportError, Unauthorized
from common.schemas import UserPatch
from server.app import start
from server.pki import cert_pem, create_ca, issue_user_cert, key_pem, subject_string


async def test_extra_ca_certificate_maps_to_user(grid, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other = create_ca("partner grid CA")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "partner.pem").write_text(cert_pem(other.cert))
    cert, key = issue_user_cert(other, "carol-at-partner")
    (tmp_path / "carol.crt").write_text(cert_pem(cert))
    (tmp_path / "carol.key").write_text(key_pem(key))
    carol_cfg = grid.config(cert=tmp_path / "carol.crt", key=tmp_path / "carol.key")

    # Before the server trusts the partner CA, the handshake refuses the certificate.
    async with XWClient(carol_cfg) as xw:
        with pytest.raises((TransportError, Unauthorized)):
            await xw.ping()

    server = await start(replace(grid.settings, port=0, extra_ca_dir=str(trusted)), migrate=False)
    try:
        cfg = replace(carol_cfg, server=server.url)
        async with XWClient(cfg) as xw:
            with pytest.raises(Unauthorized, match="not mapped"):
                await xw.ping()
        carol = await grid.add_user("carol")
        me = (await grid.admin.users(login="carol"))[0]
        await grid.admin.patch_user(me.uid, UserPatch(cert_subject=subject_string(cert)))
        async with XWClient(cfg) as xw:
            pong = await xw.ping()
        assert (pong.login, pong.auth) == ("carol", "certificate")
        assert (await carol.ping()).auth == "token"
    finally:
        await server.aclose()
