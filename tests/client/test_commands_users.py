"""xwsenduser, xwusers, xwsendusergroup, xwusergroups, xwping, xwversion, xwcert and credentials."""

from __future__ import annotations

import csv
import io
import json
import stat

from client.commands import (
    xwcert,
    xwpasswd,
    xwping,
    xwsenduser,
    xwsendusergroup,
    xwusergroups,
    xwusers,
    xwversion,
)
from common import __version__
from tests.client.conftest import PASSWORD


async def test_admin_creates_groups_and_users(grid, tmp_path, xw, admin_conf, error_line) -> None:  # type: ignore[no-untyped-def]
    group_uri = (await xw(xwsendusergroup, admin_conf, "physics")).stdout.strip()
    group_uid = group_uri.rsplit("/", 1)[1]
    assert group_uri == f"xw://127.0.0.1/{group_uid}"
    assert f"UID='{group_uid}', LABEL='physics'" in (await xw(xwusergroups, admin_conf)).stdout

    made = await xw(
        xwsenduser, admin_conf, "carol", "carol's secret", "carol@example.org", "standard_user", "physics"
    )
    first, *snippet = made.stdout.splitlines()
    carol_uid = first.rsplit("/", 1)[1]
    assert first == f"xw://127.0.0.1/{carol_uid}"
    assert snippet[0].startswith("# client config for carol")
    assert 'login = "carol"' in snippet and 'password = "carol\'s secret"' in snippet
    carol_conf = tmp_path / "carol.conf"
    carol_conf.write_text("\n".join(snippet) + "\n")
    assert (await xw(xwping, carol_conf)).stdout == "pong: carol (STANDARD_USER, via token)\n"

    users = (await xw(xwusers, admin_conf)).stdout.splitlines()
    assert f"UID='{carol_uid}', LOGIN='carol'" in users and any("LOGIN='admin'" in u for u in users)
    rows = list(csv.DictReader(io.StringIO((await xw(xwusers, admin_conf, "--xwformat", "csv")).stdout)))
    (carol,) = [r for r in rows if r["login"] == "carol"]
    assert (carol["usergroup"], carol["rights"], carol["email"]) == (
        group_uid,
        "STANDARD_USER",
        "carol@example.org",
    )

    # the default rights level, and one line per refusal
    await xw(xwsenduser, admin_conf, "dave", "dave's secret", "dave@example.org")
    assert "LOGIN='dave'" in (await xw(xwusers, admin_conf)).stdout
    dup = await xw(xwsenduser, admin_conf, "dave", "another secret", "d@example.org", expect=1)
    assert "dave" in error_line(dup.stderr, "xwsenduser")
    bad = await xw(xwsenduser, admin_conf, "erin", "erin's secret", "e@x", "GOD", expect=1)
    assert "unknown user rights 'GOD'" in error_line(bad.stderr, "xwsenduser")
    short = await xw(xwsenduser, admin_conf, "erin", "short", "e@x", expect=1)
    assert error_line(short.stderr, "xwsenduser").startswith("password: ")
    nogroup = await xw(
        xwsenduser, admin_conf, "erin", "erin's secret", "e@x", "STANDARD_USER", "chemistry", expect=1
    )
    assert "no usergroup named 'chemistry'" in error_line(nogroup.stderr, "xwsenduser")
    refused = await xw(xwsendusergroup, carol_conf, "carols", expect=1)
    assert error_line(refused.stderr, "xwsendusergroup")


async def test_env_login_overrides_config(grid, tmp_path, xw, user_conf, error_line) -> None:  # type: ignore[no-untyped-def]
    alice, _ = await user_conf("alice")
    await user_conf("bob")
    assert (await xw(xwping, alice)).stdout == "pong: alice (STANDARD_USER, via token)\n"
    as_bob = await xw(xwping, alice, env={"XW_LOGIN": "bob"})
    assert as_bob.stdout == "pong: bob (STANDARD_USER, via token)\n"
    wrong = await xw(xwping, alice, env={"XW_LOGIN": "bob", "XW_PASSWORD": "not bob's password"}, expect=1)
    assert error_line(wrong.stderr, "xwping") == "wrong login or password"
    # XW_CONFIG names the file when --xwconfig is not given
    via_env = await xw(xwping, None, env={"XW_CONFIG": str(alice)})
    assert via_env.stdout == "pong: alice (STANDARD_USER, via token)\n"


async def test_version_and_json_ping(grid, xw, user_conf) -> None:  # type: ignore[no-untyped-def]
    alice, _ = await user_conf("alice")
    text = (await xw(xwversion, alice)).stdout
    assert text == f"client {__version__}\nserver {__version__} (api v1)\n"
    assert '"auth": "token"' in (await xw(xwping, alice, "--xwformat", "json")).stdout


async def test_cert_then_login_by_certificate_only(grid, tmp_path, xw, user_conf, error_line) -> None:  # type: ignore[no-untyped-def]
    alice, _ = await user_conf("alice")
    prefix = tmp_path / "certs" / "alice"
    out = (await xw(xwcert, alice, "--xwout", str(prefix))).stdout
    crt, key = prefix.with_name("alice.crt"), prefix.with_name("alice.key")
    assert f'cert = "{crt}"' in out and f'key = "{key}"' in out
    assert "BEGIN CERTIFICATE" in crt.read_text() and "PRIVATE KEY" in key.read_text()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    cert_only = grid.write_client_conf(tmp_path / "cert.conf", cert=str(crt), key=str(key))
    assert "login =" not in cert_only.read_text() and "password =" not in cert_only.read_text()
    assert (await xw(xwping, cert_only)).stdout == "pong: alice (STANDARD_USER, via certificate)\n"

    again = await xw(xwcert, alice, "--xwout", str(prefix), expect=1)
    assert f"{crt}: exists" in error_line(again.stderr, "xwcert")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


async def test_xwcert_lists_and_revokes(grid, tmp_path, xw, user_conf, error_line) -> None:  # type: ignore[no-untyped-def]
    alice, _ = await user_conf("alice")
    prefix = tmp_path / "certs" / "alice"
    (made,) = [json.loads((await xw(xwcert, alice, "--xwout", str(prefix), "--xwformat", "json")).stdout)]
    serial = made["serial"]
    listed = json.loads((await xw(xwcert, alice, "--xwlist", "--xwformat", "json")).stdout)
    assert [(c["serial"], c["revoked"]) for c in listed] == [(serial, None)]
    cert_only = grid.write_client_conf(
        tmp_path / "cert.conf",
        cert=str(prefix.with_name("alice.crt")),
        key=str(prefix.with_name("alice.key")),
    )
    assert "via certificate" in (await xw(xwping, cert_only)).stdout
    out = (await xw(xwcert, alice, "--xwrevoke", serial, "--reason", "lost")).stdout
    assert out.startswith(f"SERIAL='{serial}'")
    refused = await xw(xwping, cert_only, expect=1)
    assert "revoked (lost)" in error_line(refused.stderr, "xwping")


async def test_xwpasswd_needs_the_current_password(
    grid, tmp_path, xw, user_conf, error_line, admin_conf
) -> None:  # type: ignore[no-untyped-def]
    alice, _ = await user_conf("alice")
    wrong = await xw(xwpasswd, alice, "--current", "not it", "--new", "a new password", expect=1)
    assert "current_password is wrong" in error_line(wrong.stderr, "xwpasswd")
    done = await xw(xwpasswd, alice, "--current", PASSWORD, "--new", "a new password")
    assert done.stdout == "password of alice changed: older tokens no longer work\n"
    stale = await xw(xwping, alice, expect=1)  # its config still holds the old password
    assert "wrong login or password" in error_line(stale.stderr, "xwping")
    fresh = grid.write_client_conf(tmp_path / "new.conf", login="alice", password="a new password")
    assert "pong: alice" in (await xw(xwping, fresh)).stdout
    # an administrator resets it without knowing it
    await xw(xwpasswd, admin_conf, "alice", "--new", "reset by admin")
    assert "wrong login or password" in error_line((await xw(xwping, fresh, expect=1)).stderr, "xwping")
