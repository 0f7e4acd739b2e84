"""The commands' pure helpers: argument parsers, names, error lines, zipping."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from client.cli import (
    parse_forward_addresses,
    parse_job_status,
    parse_listen_ports,
    parse_platform,
    parse_user_rights,
    reason,
    safe_name,
    zip_dir,
)
from common.enums import CPU, OS, JobStatus, UserRights
from common.errors import NotFound
from common.schemas import DataIn


def test_listen_ports() -> None:
    assert parse_listen_ports("8080") == [8080]
    assert parse_listen_ports("8080, 8081") == [8080, 8081]
    for bad in ("", "http", "80,", "0", "65536", "-1"):
        with pytest.raises(ValueError, match="--xwlistenport"):
            parse_listen_ports(bad)


def test_forward_addresses() -> None:
    (one,) = parse_forward_addresses("192.168.1.14-50163#32.1f:3000@192.168.1.14-4329#86.a4~root#,1234")
    assert (one.address, one.port) == ("192.168.1.14-50163#32.1f:3000@192.168.1.14-4329#86.a4~root#", 1234)
    two = parse_forward_addresses("a,1;b,c,2;")
    assert [(f.address, f.port) for f in two] == [("a", 1), ("b,c", 2)]
    for bad in ("a", "a,", ",80", "a,b", "a,0", "a,70000", ";", ""):
        with pytest.raises(ValueError, match="--xwforwardaddresses"):
            parse_forward_addresses(bad)


def test_platform_in_either_order() -> None:
    assert parse_platform("x86_64", "linux") == (CPU.AMD64, OS.LINUX)
    assert parse_platform("macosx", "x86_64") == (CPU.AMD64, OS.MACOSX)  # as on XWHEP's slides
    assert parse_platform("any", "any") == (CPU.ANY, OS.ANY)
    with pytest.raises(ValueError, match="unknown CPU 'sparc'"):
        parse_platform("sparc", "linux")


def test_status_and_rights_levels() -> None:
    assert parse_job_status("pending") is JobStatus.PENDING
    assert parse_user_rights("advanced_user") is UserRights.ADVANCED_USER
    with pytest.raises(ValueError, match="expected one of"):
        parse_job_status("done")
    with pytest.raises(ValueError, match="expected one of"):
        parse_user_rights("root")


def test_safe_name() -> None:
    assert safe_name("my file (1).txt") == "my_file__1_.txt"
    assert safe_name(".hidden") == "_.hidden"
    assert safe_name("a..b") == "a.b"
    assert len(safe_name("x" * 300)) == 128
    DataIn(name=safe_name("ünïcode ..//\\ name"))  # always a valid name


def test_reasons_are_one_line() -> None:
    assert reason(NotFound("no app 'x'")) == "no app 'x'"
    assert (
        reason(FileNotFoundError(2, "No such file or directory", "in.txt"))
        == "in.txt: No such file or directory"
    )
    with pytest.raises(ValidationError) as info:
        DataIn(name="bad name", size=-1)
    text = reason(info.value)
    assert "\n" not in text
    assert text.startswith("name: must start with") and "size: " in text


def test_zip_dir(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_text("f")
    (src / "top").write_bytes(b"\x00")
    zip_dir(src, tmp_path / "out.zip")
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        assert zf.namelist() == ["d/", "d/f.txt", "top"]
        assert zf.read("d/f.txt") == b"f"
