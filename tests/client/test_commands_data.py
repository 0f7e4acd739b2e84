"""xwsenddata, xwdatas, xwdownload, xwrm, xwchmod against a real server."""

from __future__ import annotations

import json
import os
import re
import zipfile

from client.commands import xwapps, xwchmod, xwdatas, xwdownload, xwrm, xwsendapp, xwsenddata

URI = re.compile(r"^xw://127\.0\.0\.1/[0-9a-f-]{36}$")


async def test_senddata_download_round_trip(grid, tmp_path, xw, user_conf, error_line) -> None:  # type: ignore[no-untyped-def]
    alice, api = await user_conf("alice")
    payload = os.urandom(300_000) + b"\x00\r\n end"
    src = tmp_path / "blob.bin"
    src.write_bytes(payload)
    uri = (
        await xw(xwsenddata, alice, "blob", str(src), "--xwcpu", "x86_64", "--xwos", "linux")
    ).stdout.strip()
    assert URI.match(uri), uri
    uid = uri.rsplit("/", 1)[1]
    assert (await xw(xwdatas, alice)).stdout == f"UID='{uid}', NAME='blob'\n"
    meta = await api.get_data(uid)
    assert (meta.size, meta.cpu.value, meta.os.value, meta.status.value) == (
        len(payload),
        "AMD64",
        "LINUX",
        "AVAILABLE",
    )

    out = tmp_path / "copy.bin"
    got = await xw(xwdownload, alice, uri, "--xwout", str(out))
    assert got.stdout.strip() == str(out)
    assert out.read_bytes() == payload
    outdir = tmp_path / "dl"
    outdir.mkdir()
    await xw(xwdownload, alice, "blob", "--xwout", str(outdir))  # by name, into a directory
    assert (outdir / "blob").read_bytes() == payload
    assert not list(outdir.glob(".*"))  # no partial file left behind

    bob, _ = await user_conf("bob")
    hidden = await xw(xwdownload, bob, uri, "--xwout", str(tmp_path / "bob.bin"), expect=1)
    assert uid in error_line(hidden.stderr, "xwdownload")
    assert not (tmp_path / "bob.bin").exists()

    await xw(xwrm, alice, uri)
    assert (await xw(xwdatas, alice)).stdout == ""
    again = await xw(xwrm, alice, uri, expect=1)
    assert uid in error_line(again.stderr, "xwrm")


async def test_senddata_dirs(grid, tmp_path, xw, user_conf, error_line, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """FILE defaults to NAME; a directory is zipped; bad paths and platforms are one-line errors."""
    alice, api = await user_conf("alice")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "x.txt").write_text("x")
    monkeypatch.chdir(tmp_path)  # FILE defaults to NAME as a path
    uid = (await xw(xwsenddata, alice, "tree", "--xwrights", "0750")).stdout.strip().rsplit("/", 1)[1]
    meta = await api.get_data(uid)
    assert (meta.name, meta.type, meta.access_rights) == ("tree", "ZIP", "0750")
    await xw(xwdownload, alice, uid, "--xwout", str(tmp_path / "tree.zip"))
    assert zipfile.ZipFile(tmp_path / "tree.zip").namelist() == ["sub/", "sub/x.txt"]

    missing = await xw(xwsenddata, alice, "nothing-here", expect=1)
    assert "nothing-here: No such file or directory" == error_line(missing.stderr, "xwsenddata")
    bad_os = await xw(xwsenddata, alice, "x", str(tmp_path / "tree.zip"), "--xwos", "beos", expect=1)
    assert "unknown OS 'beos'" in error_line(bad_os.stderr, "xwsenddata")


async def test_chmod_modes(grid, tmp_path, xw, user_conf, error_line) -> None:  # type: ignore[no-untyped-def]
    alice, api = await user_conf("alice")
    exe = tmp_path / "tool"
    exe.write_bytes(b"\x7fELF fake")
    # XWHEP's order is CPU then OS; the other order is understood too
    app_uri = (await xw(xwsendapp, alice, "tool", "binary", "linux", "x86_64", str(exe))).stdout.strip()
    app_uid = app_uri.rsplit("/", 1)[1]
    app = await api.get_app(app_uid)
    assert app.access_rights == "0700"
    assert [(b.os.value, b.cpu.value) for b in app.binaries] == [("LINUX", "AMD64")]
    assert (await api.get_data(app.binaries[0].data)).access_rights == "1700"

    async def rights() -> str:
        (doc,) = json.loads((await xw(xwapps, alice, "--xwformat", "json")).stdout)
        return str(doc["access_rights"])

    await xw(xwchmod, alice, "0x755", "tool")
    assert await rights() == "0755"
    await xw(xwchmod, alice, "0700", app_uri)
    assert await rights() == "0700"
    await xw(xwchmod, alice, "go+rx", app_uid)
    assert await rights() == "0755"
    for bad in ("0x999", "u+q", "1234567"):
        refused = await xw(xwchmod, alice, bad, app_uid, expect=1)
        assert "invalid mode" in error_line(refused.stderr, "xwchmod")
    assert await rights() == "0755"
    unknown = await xw(xwchmod, alice, "755", "no-such-thing", expect=1)
    assert "'no-such-thing' is not a uid" in error_line(unknown.stderr, "xwchmod")


async def test_sendapp_refusals(grid, tmp_path, xw, user_conf, error_line) -> None:  # type: ignore[no-untyped-def]
    """Bad arguments are refused before any upload; a refused app leaves no binary data behind."""
    alice, api = await user_conf("alice")
    bob, _ = await user_conf("bob")
    exe = tmp_path / "tool"
    exe.write_bytes(b"bin")
    bad = await xw(xwsendapp, alice, "tool", "binary", "sparc", "linux", str(exe), expect=1)
    assert "unknown CPU 'sparc'" in error_line(bad.stderr, "xwsendapp")
    bad = await xw(xwsendapp, alice, "tool", "java", "x86_64", "linux", str(exe), expect=1)
    assert "unknown application type 'java'" in error_line(bad.stderr, "xwsendapp")
    await xw(xwsendapp, alice, "tool", "binary", "x86_64", "linux", str(exe))
    taken = await xw(xwsendapp, bob, "tool", "binary", "x86_64", "linux", str(exe), expect=1)
    assert "belongs to someone else" in error_line(taken.stderr, "xwsendapp")
    assert (await xw(xwdatas, bob)).stdout == ""  # bob's upload was removed again
    assert len(await api.datas()) == 1


async def test_xwdownload_never_writes_where_a_server_supplied_name_points(  # type: ignore[no-untyped-def]
    grid, tmp_path, xw, user_conf, monkeypatch
) -> None:
    """Our server refuses such names; a hostile or broken server must still not choose our paths."""
    from client.api import XWClient

    alice, api = await user_conf("alice")
    src = tmp_path / "blob.bin"
    src.write_bytes(b"payload")
    data = await api.send_file(src)
    real_get = XWClient.get_data

    async def hostile(self, uid):  # type: ignore[no-untyped-def]
        meta = await real_get(self, uid)
        return meta.model_copy(update={"name": "../../escaped.txt"})

    monkeypatch.setattr(XWClient, "get_data", hostile)
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    out = (await xw(xwdownload, alice, data.uid)).stdout.strip()
    written = [p for p in tmp_path.rglob("*escaped*")]
    assert len(written) == 1 and written[0].parent == work, written
    assert out == str(written[0]) and written[0].read_bytes() == b"payload"
    outdir = tmp_path / "into"
    outdir.mkdir()
    await xw(xwdownload, alice, data.uid, "--xwout", str(outdir))
    assert [p.parent for p in tmp_path.rglob("*escaped*")].count(outdir) == 1
